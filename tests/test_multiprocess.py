"""Two processes under `accelerate launch` give the loss curve of one process with doubled accumulation."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).with_name("ddp_train_script.py")


def _run(cmd, env):
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["sft", "dadpo"])
def test_two_processes_match_one_with_double_accumulation(tmp_path, method):
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parent.parent), "OMP_NUM_THREADS": "1"}
    one = _run([sys.executable, str(SCRIPT), str(tmp_path / "one"), method, "2"], env)
    # --multi_gpu starts torchrun; with no GPU the script's Accelerator(cpu=True) runs gloo on CPU
    two = _run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
                str(SCRIPT), str(tmp_path / "two"), method, "2"], env)
    assert (one["processes"], one["accumulation"]) == (1, 4)
    assert (two["processes"], two["accumulation"]) == (2, 2)
    la = [json.loads(l)["loss"] for l in open(tmp_path / "one" / "log.jsonl")]
    lb = [json.loads(l)["loss"] for l in open(tmp_path / "two" / "log.jsonl")]
    assert len(la) == len(lb) == 4
    assert la == pytest.approx(lb, rel=1e-5)
