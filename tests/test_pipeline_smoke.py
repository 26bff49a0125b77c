"""The whole table1 pipeline at the smoke scale on the real SmolLM2 (fetched from its package)."""
import csv
import json
import math
import os
import subprocess
import sys
import time

import pytest

pytestmark = pytest.mark.slow


def _run(args, tmp_path):
    # bounded threads: torch's one-per-core default stalls on a busy shared machine
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    t0 = time.time()
    r = subprocess.run([sys.executable, "-m", "reproduce.table1", *args, "--out", str(tmp_path / "results")],
                       env=env, capture_output=True, text=True, timeout=1500)
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, time.time() - t0


# The smoke config cut further for the test suite (minutes of a shared 2-core machine otherwise): one
# optimizer step per method, short prompts and answers, two prompts per eval suite. Every stage still
# runs on the real SmolLM2, pruned, and each assertion below holds at the shipped smoke sizes too.
SMALLER = ["--set", "data.n_train=4", "--set", "data.n_test=2", "--set", "data.max_prompt_tokens=48",
           "--set", "train.max_len=72", "--set", "generation.max_new_tokens=8", "--set", "eval.max_new_tokens=8",
           "--set", "eval.suites={in_domain: 2, mt_bench: 2}", "--set", "models.prune.calibration_prompts=2"]


def test_table1_smoke_end_to_end_then_cached(tmp_path):
    out, first = _run(["--scale", "smoke", *SMALLER], tmp_path)
    path = tmp_path / "results" / "table1_smoke.csv"
    rows = list(csv.DictReader(open(path)))
    assert {r["method"] for r in rows} == {"student", "sft", "kd", "ddpo", "dadpo"}
    assert {r["suite"] for r in rows} == {"in_domain", "mt_bench"}
    assert all(r["judge"] == "reference" and r["proxy"] == "True" for r in rows)
    paper = [r for r in rows if r["paper_value"]]
    assert {(r["method"], r["paper_metric"]) for r in paper} == {("dadpo", "pref_rate"), ("ddpo", "pref_rate")}
    assert (tmp_path / "results" / "table1_smoke.provenance.json").is_file()
    assert (tmp_path / "results" / "table1_smoke_training.csv").is_file()
    before = path.read_bytes()
    out2, second = _run(["--scale", "smoke", *SMALLER], tmp_path)
    assert path.read_bytes() == before  # deterministic and fully cached
    assert "train:" not in out2 and "generate:" not in out2 and "prune" not in out2, out2
    prov = json.loads((tmp_path / "results" / "table1_smoke.provenance.json").read_text())
    assert "train:sft" not in prov["stage_seconds"] and prov["stage_seconds_last_ran"]["train:sft"] > 0
    assert prov["facts"]["generation"]["teacher/train"]["new_tokens"] > 0  # kept from the first run
    # reference scores in the trainer's numerics: dDPO starts at exactly log 2
    training = list(csv.DictReader(open(tmp_path / "results" / "table1_smoke_training.csv")))
    step1 = {r["method"]: r for r in training if r["step"] == "1"}
    assert float(step1["ddpo"]["loss"]) == pytest.approx(math.log(2), abs=1e-4)
    assert float(step1["dadpo"]["loss"]) == pytest.approx(float(step1["dadpo"]["loss_at_ref"]), abs=1e-4)
    print(f"smoke: first run {first:.0f}s, cached re-run {second:.0f}s")
