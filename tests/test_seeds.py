"""--seeds: every method trained once per seed, a seed-mean row with a two-level bootstrap interval,
and a seed added later computes only what that seed needs."""
import csv

import pytest

from reproduce.run import main
from tests.rel_tiny import build_tiny


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, shared_assets):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("DADPO_ASSETS", str(shared_assets))
        return build_tiny(tmp_path_factory.mktemp("tiny_seeds"))


def _run(tiny, tmp_path, capsys, *seeds):
    cfg = tiny.write_config(tmp_path / "c.yaml", **{"methods": ["student", "sft"], "eval.suites": {"in_domain": 4}})
    capsys.readouterr()
    rc = main("table1", ["--config", str(cfg), "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "cache"),
                         "--seeds", *map(str, seeds)])
    out = capsys.readouterr().out
    assert rc == 0, out[-2000:]
    return list(csv.DictReader(open(tmp_path / "out" / "table1_custom.csv"))), out


def test_seeds_train_per_seed_and_average(tiny, tmp_path, capsys, one_thread):
    rows, log = _run(tiny, tmp_path, capsys, 0, 1)
    sft = {r["seed"]: r for r in rows if r["method"] == "sft"}
    assert set(sft) == {"0", "1", "mean"} and sft["mean"]["n_seeds"] == "2"
    assert float(sft["mean"]["pref_rate"]) == pytest.approx((float(sft["0"]["pref_rate"]) + float(sft["1"]["pref_rate"])) / 2)
    assert "two-level" in sft["mean"]["ci"]
    assert "train:sft ..." in log and "train:sft@seed=1 ..." in log  # the first seed keeps the plain name
    rows, log = _run(tiny, tmp_path, capsys, 0, 1, 2)  # a third seed: only its own stages run
    assert {r["seed"] for r in rows if r["method"] == "sft"} == {"0", "1", "2", "mean"}
    assert "train:sft@seed=2 ..." in log and "train:sft ..." not in log and "train:sft@seed=1 ..." not in log
    assert "generate:teacher/train ..." not in log  # teacher answers are data, shared by the seeds
