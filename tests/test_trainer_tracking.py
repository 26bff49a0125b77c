"""What a training run shows while it runs: a progress bar with step, loss and tokens/s, and
accelerate's trackers (TensorBoard) receiving every step's record beside log.jsonl."""
import re

import pytest

from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.examples import encode_rows
from dadpo.methods import build_method
from dadpo.testing import tiny_llama
from dadpo.trainer import Trainer, check_tracker

ROWS = [{"id": f"r{i}", "prompt": f"Question {i}?", "chosen": f"Answer number {i} is here.", "rejected": "no"}
        for i in range(4)]


def _trainer(tok, tmp_path, **cfg):
    tcfg = TrainConfig(per_device_batch=2, global_batch=2, sft_lr=1e-3, sft_epochs=3, warmup_ratio=0.0, **cfg)
    return Trainer(tiny_llama(tok, seed=11), tok, build_method("sft", ObjectiveConfig()), tcfg, tmp_path)


def test_tensorboard_receives_every_step(tok, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ex = encode_rows(tok, ROWS, max_len=48, max_prompt_tokens=16)
    res = _trainer(tok, tmp_path, log_with="tensorboard").train(ex)
    runs = [p.parent for p in (tmp_path / "trackers").rglob("events.out.tfevents.*")]
    assert runs, "no TensorBoard event file written"
    acc = EventAccumulator(str(runs[0]))
    acc.Reload()
    loss = [(e.step, e.value) for e in acc.Scalars("loss")]
    assert [s for s, _ in loss] == [r["step"] for r in res.log] == list(range(1, 7))
    assert [v for _, v in loss] == pytest.approx([r["loss"] for r in res.log], rel=1e-6)
    assert loss[-1][1] < loss[0][1]  # the loss moves (and the tracker shows it)
    assert {"lr", "tokens", "grad_norm"} <= set(acc.Tags()["scalars"])


def test_progress_bar_shows_step_loss_and_rate(tok, tmp_path, capsys):
    ex = encode_rows(tok, ROWS, max_len=48, max_prompt_tokens=16)
    _trainer(tok, tmp_path).train(ex)
    err = capsys.readouterr().err
    assert re.search(r"train sft: .*\| [1-6]/6 \[.*<.*, loss=[-\d.e]+, tok_s=\d+\]", err), err[-500:]


def test_a_missing_tracker_is_named_before_any_work(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match=r"train.log_with=wandb needs the wandb package \(pip install wandb\)"):
        check_tracker("wandb")
    check_tracker("none")


def test_a_bf16_run_saves_bf16_weights(tok, tmp_path):
    """Mixed precision bf16 (a GPU's default; here forced on the CPU): the saved model is bf16, half
    the disk of fp32; an fp32 run saves fp32."""
    from accelerate.state import AcceleratorState
    from safetensors import safe_open

    ex = encode_rows(tok, ROWS, max_len=48, max_prompt_tokens=16)
    for precision, want in (("bf16", "BF16"), ("no", "F32")):
        AcceleratorState._reset_state(True)  # accelerate keeps one precision per process
        tcfg = TrainConfig(per_device_batch=2, global_batch=2, sft_epochs=1, warmup_ratio=0.0)
        tr = Trainer(tiny_llama(tok, seed=11), tok, build_method("sft", ObjectiveConfig()), tcfg,
                     tmp_path / precision, mixed_precision=precision, cpu=True)
        folder = tr.train(ex).model_dir
        with safe_open(f"{folder}/model.safetensors", "pt") as f:
            assert {f.get_slice(k).get_dtype() for k in f.keys()} == {want}
    AcceleratorState._reset_state(True)
