"""Two processes under `accelerate launch` (DDP, and DeepSpeed ZeRO-2 where it is installed) give the loss
curve of one process with doubled accumulation."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train_script.py")
ROOT = SCRIPT.parent.parent


def _free_port() -> str:  # a fixed default port can still be held by the previous launch
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return str(sock.getsockname()[1])


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def _losses_and_norms(folder):
    recs = [json.loads(l) for l in open(folder / "log.jsonl")]
    return [r["loss"] for r in recs], [r["grad_norm"] for r in recs]


@pytest.mark.parametrize("method", ["sft", "dadpo"])
def test_two_processes_match_one_with_double_accumulation(tmp_path, method):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), method, "2"], env)
    # --multi_gpu starts torchrun; with no GPU the script's Accelerator(cpu=True) runs gloo on CPU
    two = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--main_process_port", _free_port(), "--mixed_precision", "no",
                "--dynamo_backend", "no",
                str(SCRIPT), str(tmp_path / "two"), method, "2"], env)
    assert (one["processes"], one["accumulation"]) == (1, 4)
    assert (two["processes"], two["accumulation"]) == (2, 2)
    (la, _), (lb, _) = _losses_and_norms(tmp_path / "one"), _losses_and_norms(tmp_path / "two")
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, rel=1e-5)


def test_processes_that_would_not_sync_are_refused(tmp_path):
    """accelerate sets up no distributed training for the FSDP config without GPUs: each process would
    train alone on its share (seen: half the loss, other gradients). The trainer refuses that."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                        str(ROOT / "reproduce/configs/accelerate/fsdp.yaml"), "--num_processes", "2",
                        "--main_process_port", _free_port(), "--mixed_precision", "no", "--dynamo_backend", "no",
                        str(SCRIPT), str(tmp_path / "fsdp"), "sft", "2", "deepspeed"],
                       env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode != 0
    assert "2 processes but accelerate set up no distributed training" in r.stderr
    assert not (tmp_path / "fsdp" / "model").exists()


@pytest.mark.slow
def test_deepspeed_zero2_two_processes_match_one_plain_process(tmp_path):
    # DeepSpeed accumulates, clips and steps inside backward; the trainer hands it the run's
    # micro-batch / accumulation / clipping and undoes its 1/accumulation loss scaling
    pytest.importorskip("deepspeed", reason="DeepSpeed not installed: an optional extra, not in the test extra "
                        "(DS_BUILD_OPS=0 pip install --no-build-isolation -e '.[deepspeed]'; README: Multi-GPU)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
           "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu"}
    one = _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), "dadpo", "2"], env)
    two = _run([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                str(ROOT / "reproduce/configs/accelerate/deepspeed_zero2.yaml"), "--num_processes", "2",
                "--main_process_port", _free_port(), "--mixed_precision", "no",
                str(SCRIPT), str(tmp_path / "two"), "dadpo", "2", "deepspeed"], env)
    assert (one["processes"], one["accumulation"]) == (1, 4)
    assert (two["processes"], two["accumulation"]) == (2, 2)
    (la, na), (lb, nb) = _losses_and_norms(tmp_path / "one"), _losses_and_norms(tmp_path / "two")
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, rel=1e-5) and na == pytest.approx(nb, rel=1e-4)
