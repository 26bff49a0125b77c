"""Resuming training from a checkpoint folder in the cache: planted pickles never run, damaged or
foreign files and a training log that lost steps make the checkpoint unusable (CheckpointError, so
the pipeline retrains from the start) instead of a silently different run."""
import json
import os
import shutil
import warnings

import pytest
import torch

from dadpo.config import ObjectiveConfig, TrainConfig
from dadpo.examples import encode_rows
from dadpo.methods import build_method
from dadpo.testing import tiny_llama
from dadpo.trainer import CheckpointError, Trainer, read_log

ROWS = [{"id": f"r{i}", "prompt": f"Question number {i}?", "chosen": f"Answer {i}: " + "words " * (i % 4 + 1)}
        for i in range(8)]


class Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _trainer(tok, out):
    cfg = TrainConfig(per_device_batch=4, global_batch=4, lr=1e-3, sft_lr=1e-3, epochs=2, sft_epochs=2,
                      warmup_ratio=0.0, save_every=1)
    return Trainer(tiny_llama(tok, seed=11), tok, build_method("sft", ObjectiveConfig()), cfg, out, seed=0)


@pytest.fixture()
def interrupted(tok, tmp_path, one_thread):
    """A run stopped after 2 of its 4 steps, with its resumable checkpoint; and the full run's log."""
    ex = encode_rows(tok, ROWS, max_len=48, max_prompt_tokens=24)
    full = _trainer(tok, tmp_path / "full").train(ex).log
    out = tmp_path / "run"
    assert _trainer(tok, out).train(ex, max_steps=2).steps == 2
    assert (out / "checkpoint" / "trainer_state.json").is_file()
    return ex, out, full


def _steps(log):
    return [r["step"] for r in log]


def test_an_untouched_checkpoint_resumes_exactly(tok, interrupted):
    ex, out, full = interrupted
    res = _trainer(tok, out).train(ex)
    assert _steps(res.log) == [1, 2, 3, 4]
    assert [r["loss"] for r in res.log] == [r["loss"] for r in full]


@pytest.mark.parametrize("name", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin",
                                  "pytorch_model.bin", "scheduler.bin"])
def test_a_planted_pickle_never_runs(tok, interrupted, tmp_path, name):
    """A pickle that runs a command when loaded, planted in (or replacing a file of) the checkpoint:
    nothing runs, and the checkpoint is refused."""
    ex, out, _ = interrupted
    marker = tmp_path / "pwned"
    torch.save({"state": Evil(marker)}, out / "checkpoint" / name)
    with pytest.raises(CheckpointError, match=f"checkpoint {out / 'checkpoint'} cannot be resumed"):
        _trainer(tok, out).train(ex)
    assert not marker.exists()


def test_a_flipped_byte_in_the_optimizer_state_is_detected(tok, interrupted):
    """Tensor data loads without complaint whatever its bytes: the checkpoint records checksums."""
    ex, out, _ = interrupted
    opt = out / "checkpoint" / "optimizer.bin"
    blob = bytearray(opt.read_bytes())
    blob[int(len(blob) * 0.9)] ^= 0x01
    opt.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="optimizer.bin"):
        _trainer(tok, out).train(ex)


def test_a_training_log_cut_mid_line_is_never_a_silently_missing_row(tok, interrupted):
    """The live log is appended line by line; a last line cut short (full disk, copy interrupted) while
    the checkpoint is at that step once dropped the step from the result (and from _training.csv)."""
    ex, out, full = interrupted
    log = out / "log.jsonl"
    text = log.read_text()
    log.write_text(text[: len(text) - 20])  # the step-2 line loses its end
    with pytest.raises(CheckpointError, match=f"training log {log} .*step 2"):
        _trainer(tok, out).train(ex)
    shutil.rmtree(out / "checkpoint")  # what the pipeline does on CheckpointError: train from the start
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = _trainer(tok, out).train(ex)
    assert _steps(res.log) == [1, 2, 3, 4] and [r["loss"] for r in res.log] == [r["loss"] for r in full]
    assert _steps(read_log(log)) == [1, 2, 3, 4]


def test_a_damaged_line_inside_the_log_names_the_file(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text(json.dumps({"step": 1}) + "\n" + '{"step": 2, "lo' + "\n" + json.dumps({"step": 3}) + "\n")
    with pytest.raises(CheckpointError, match=f"training log {log} is damaged at line 2"):
        read_log(log)
