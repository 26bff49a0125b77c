"""reproduce.plan: the paper-scale projection from a shape run's measured stages."""
import json
from dataclasses import asdict

import pytest

from dadpo.config import load_config
from reproduce import plan


def _shape_run_provenance(tmp_path, stages: dict, training: dict) -> None:
    run = load_config(None, setting="table2", scale="paper", overrides=[
        "models.init=random", "data.n_train=64", "methods=[student, sft, dadpo]",
        "eval.suites={in_domain: 8, mt_bench: 8}"])
    prov = {"config": asdict(run), "facts": {"stages": stages, "training": training}, "git_sha": "abc"}
    (tmp_path / "table2_paper_random.provenance.json").write_text(json.dumps(prov))


def test_stages_scale_by_work_and_missing_methods_take_a_stand_in(tmp_path):
    gb = 1024.0
    _shape_run_provenance(tmp_path, {
        "generate:teacher/train": {"seconds": 100.0, "peak_memory_mb": 20 * gb, "tokens": 64 * 512},
        "train:sft": {"seconds": 30.0, "peak_memory_mb": 40 * gb},
        "train:dadpo": {"seconds": 20.0, "peak_memory_mb": 60 * gb},
        "generate:dadpo/eval": {"seconds": 50.0, "peak_memory_mb": 10 * gb},
        "precompute:te": {"seconds": 8.0, "peak_memory_mb": 30 * gb},
    }, {"dadpo": {"params": 1.5e9}})
    rows = {r["stage"]: r for r in plan.plan("table2", tmp_path)}
    paper = load_config(None, setting="table2", scale="paper")
    # teacher answers: 64 prompts measured, 8,000 asked for
    assert rows["generate:teacher/train"]["hours_1gpu"] == pytest.approx(100 * 8000 / 64 / 3600)
    assert rows["generate:teacher/train"]["hours_8gpu"] == pytest.approx(100 * 8000 / 64 / 3600 / 8)
    assert rows["generate:teacher/train"]["tokens_per_s"] == pytest.approx(64 * 512 / 100, rel=1e-3)
    # dDPO was not run: costed as daDPO (same passes), and said so
    assert rows["train:ddpo"]["hours_1gpu"] == pytest.approx(rows["train:dadpo"]["hours_1gpu"])
    assert "costed as train:dadpo" in rows["train:ddpo"]["notes"]
    assert rows["train:dadpo"]["hours_1gpu"] == pytest.approx(20 * 8000 * paper.train.epochs / (64 * 2) / 3600)
    # KD stands in for nothing here (SFT is its stand-in and was run): SFT's epochs scale it
    assert rows["train:kd"]["hours_1gpu"] == pytest.approx(30 * 8000 * paper.train.epochs / (64 * 3) / 3600)
    # memory: FSDP on 8 GPUs keeps 1/8 of the 16 bytes/parameter training state
    assert rows["train:dadpo"]["peak_memory_gb_8gpu"] == pytest.approx(60 - 1.5e9 * 16 / 1e9 * 7 / 8)
    assert rows["generate:ddpo/eval"]["hours_1gpu"] == pytest.approx(rows["generate:dadpo/eval"]["hours_1gpu"])
    # KD's teacher top-k pass was not run either: costed as the teacher's scoring pass
    assert rows["precompute:topk"]["hours_1gpu"] == pytest.approx(8 * 8000 / 64 / 3600)
    assert "costed as precompute:te" in rows["precompute:topk"]["notes"]
    total = rows["total"]
    assert total["peak_memory_gb_1gpu"] == 60 and total["hours_1gpu"] == pytest.approx(
        sum(r.get("hours_1gpu") or 0 for s, r in rows.items() if s != "total"))
    assert rows["train:dadpo"]["fits_h100_80gb"] and rows["total"]["fits_h100_80gb"]


def test_no_shape_run_is_a_one_line_error(tmp_path, capsys):
    assert plan.main(["--results", str(tmp_path), "--out", str(tmp_path / "p.csv")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no shape run of table1")
    assert not (tmp_path / "p.csv").exists()


def test_a_run_without_memory_figures_is_costed_in_time_only(tmp_path):
    _shape_run_provenance(tmp_path, {"generate:teacher/train": {"seconds": 100.0, "peak_memory_mb": None}}, {})
    rows = {r["stage"]: r for r in plan.plan("table2", tmp_path)}
    row = rows["generate:teacher/train"]
    assert row["hours_1gpu"] == pytest.approx(100 * 8000 / 64 / 3600)
    assert row["peak_memory_gb_1gpu"] is None and row["fits_h100_80gb"] is None
    assert "peak memory not recorded" in row["notes"]
    assert rows["total"]["peak_memory_gb_1gpu"] is None and rows["total"].get("fits_h100_80gb") is None
