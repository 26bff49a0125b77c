import pytest

from dadpo.testing import save_tiny_model, tiny_llama, tiny_tokenizer


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Each test gets its own cache directory, so no test reads another's results."""
    monkeypatch.setenv("DADPO_CACHE", str(tmp_path / "cache"))


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
