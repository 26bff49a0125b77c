"""A cached re-run recomputes nothing and loads no model: every stage's output is found by a key
computable without the model (answers, precomputed scores, trained folders, judge verdicts)."""
import json

import pytest

from rel_tiny import build_tiny
from reproduce.run import main

pytestmark = pytest.mark.slow  # the tiny experiment reads real ShareGPT prompts (offline:sharegpt)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_assets):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_ASSETS", str(shared_assets))
        return build_tiny(tmp_path_factory.mktemp("tiny_rerun"))


def test_cached_rerun_loads_no_model_and_writes_the_same_results(tiny, tmp_path, one_thread, capsys):
    from dadpo.modeling import LOADS

    cfg = tiny.write_config(tmp_path / "c.yaml")
    cache = tmp_path / "cache"
    LOADS.clear()
    assert main("table1", ["--config", str(cfg), "--out", str(tmp_path / "a"), "--cache", str(cache)]) == 0
    first = dict(LOADS)
    assert first.get("AutoModelForCausalLM", 0) >= 5 and first.get("AutoModel") == 1  # the counter sees loads
    LOADS.clear()
    capsys.readouterr()
    assert main("table1", ["--config", str(cfg), "--out", str(tmp_path / "b"), "--cache", str(cache)]) == 0
    printed = capsys.readouterr().out
    assert dict(LOADS) == {}, LOADS
    assert "train:" not in printed and "generate:" not in printed and "precompute:" not in printed, printed
    for name in ("table1_custom.csv", "table1_custom_training.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "b" / "runs" / "table1_custom" / "records.jsonl").is_file()
    # b's folder held no earlier provenance: the stages measured by run a come from the cache's journal
    prov_a, prov_b = (json.loads((tmp_path / d / "table1_custom.provenance.json").read_text()) for d in "ab")
    trained = sorted(s for s in prov_a["facts"]["stages"] if s.startswith(("train:", "generate:")))
    assert len(trained) >= 6 and set(trained) <= set(prov_b["facts"]["stages_measured_earlier"])
    assert {s: prov_b["facts"]["stages"][s] for s in trained} == {s: prov_a["facts"]["stages"][s] for s in trained}


def test_a_run_split_over_processes_reports_every_stage():
    """A run killed at a time limit and started again reuses the cached stages; its provenance keeps
    the earlier process's measurements of those stages and says which they are."""
    from reproduce.run import keep_earlier

    prev = {"stage_seconds_last_ran": {"prune": 9.0, "train:sft": 4.0},
            "facts": {"stages": {"prune": {"seconds": 9.0, "peak_memory_mb": 10.0},
                                 "train:sft": {"seconds": 4.0, "peak_memory_mb": 5.0}},
                      "training": {"sft": {"steps": 2}}, "generation": {"teacher/train": {"new_tokens": 8}}}}
    now = {"stages": {"train:sft": {"seconds": 3.0, "peak_memory_mb": 6.0}}, "training": {"kd": {"steps": 1}}}
    seconds, facts = keep_earlier(prev, {"train:sft": 3.0}, now)
    assert seconds == {"prune": 9.0, "train:sft": 3.0}
    assert facts["stages"] == {"prune": {"seconds": 9.0, "peak_memory_mb": 10.0},
                               "train:sft": {"seconds": 3.0, "peak_memory_mb": 6.0}}
    assert facts["training"] == {"sft": {"steps": 2}, "kd": {"steps": 1}}
    assert facts["generation"] == {"teacher/train": {"new_tokens": 8}}
    assert facts["stages_measured_earlier"] == ["prune"]
