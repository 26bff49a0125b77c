"""Adding a training method is one loss class plus one registry line (docs/architecture.md)."""
import pytest

from dadpo import methods
from dadpo.config import ObjectiveConfig, TrainConfig, load_config
from dadpo.examples import encode_rows
from dadpo.methods import METHODS, SFT, build_method
from dadpo.testing import tiny_llama
from dadpo.trainer import Trainer

ROWS = [{"id": f"r{i}", "prompt": f"Question {i}?", "chosen": f"The answer is {i}."} for i in range(8)]


class HalfSFT(SFT):
    """A toy method: dSFT at half the loss (what a new method's class looks like)."""
    name = "half_sft"

    def loss(self, out, exs):
        loss, metrics = super().loss(out, exs)
        return 0.5 * loss, {**metrics, "loss": 0.5 * metrics["loss"]}


@pytest.fixture()
def registered(monkeypatch):
    monkeypatch.setitem(METHODS, HalfSFT.name, HalfSFT)  # the one registry line


def _first_loss(tok, tmp_path, name):
    ex = encode_rows(tok, ROWS, 48, 24)
    cfg = TrainConfig(per_device_batch=4, global_batch=4, lr=1e-3, sft_lr=1e-3, warmup_ratio=0.0, max_len=48)
    trainer = Trainer(tiny_llama(tok, seed=3), tok, build_method(name, ObjectiveConfig()), cfg, tmp_path / name)
    return trainer.train(ex, max_steps=1).log[0]["loss"]


def test_a_registered_method_is_accepted_by_the_config_and_trained(registered, tok, tmp_path):
    cfg = load_config(None, ["methods=[student, half_sft]"])
    assert cfg.methods == ["student", "half_sft"]
    assert _first_loss(tok, tmp_path, "half_sft") == pytest.approx(0.5 * _first_loss(tok, tmp_path, "sft"), rel=1e-6)


def test_an_unregistered_method_is_a_one_line_error(tok):
    with pytest.raises(ValueError, match="unknown method 'half_sft'"):
        build_method("half_sft", ObjectiveConfig())


def test_methods_declare_what_they_need_instead_of_being_switched_on():
    assert set(METHODS) == {"sft", "kd", "ddpo", "dadpo", "dadpo_token"}
    assert METHODS["dadpo"].scores == ("ref", "te") and METHODS["dadpo"].start == "dsft"
    assert METHODS["kd"].scores == ("topk",) and METHODS["kd"].start == "student"
    # a method's cache key holds only the settings it reads: changing beta2 retrains daDPO alone
    changed = ObjectiveConfig(beta2=0.3)
    same = [n for n in METHODS if build_method(n, changed).settings == build_method(n, ObjectiveConfig()).settings]
    assert same == ["sft", "kd", "ddpo", "dadpo_token"]
    assert methods.Method.fields == ()
