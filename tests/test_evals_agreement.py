"""Judge agreement: Cohen's kappa by hand, with and without ties, and the per-suite table from records."""
import math

import pytest

from evals.agreement import AGREEMENT_COLUMNS, agreement_table, cohen_kappa, judge_agreement

A = ["win"] * 4 + ["tie"] * 2 + ["loss"] * 4
B = ["win"] * 3 + ["tie", "tie"] + ["loss"] * 4 + ["win"]


def test_kappa_by_hand_with_and_without_ties():
    ag = judge_agreement(dict(enumerate(A)), dict(enumerate(B)))
    # with ties: p_o = 7/10; marginals (4, 2, 4) for both judges, p_e = (16 + 4 + 16) / 100
    assert ag["ties_included"] == pytest.approx({"n": 10, "agreement": 0.7, "kappa": (0.7 - 0.36) / 0.64})
    # without: items 0-2, 6-9 remain; p_o = 6/7, marginals (3 wins, 4 losses) and (4, 3): p_e = 24/49
    assert ag["ties_excluded"] == pytest.approx({"n": 7, "agreement": 6 / 7, "kappa": 18 / 25})


def test_failed_and_unshared_comparisons_are_dropped():
    a = {**dict(enumerate(A)), 10: "failed", 11: "win", 12: "loss"}
    b = {**dict(enumerate(B)), 10: "win", 11: "failed", 13: "win"}
    assert judge_agreement(a, b) == judge_agreement(dict(enumerate(A)), dict(enumerate(B)))


def test_kappa_edge_cases():
    assert cohen_kappa(["win", "loss"], ["win", "loss"])["kappa"] == 1.0
    assert cohen_kappa(["win", "loss"], ["loss", "win"])["kappa"] == -1.0
    assert math.isnan(cohen_kappa(["win"] * 3, ["win"] * 3)["kappa"])  # chance agreement is already 1
    assert math.isnan(cohen_kappa([], [])["agreement"])


def _rec(suite, student, pid, judge, model, outcome):
    ident = {"name": judge, **({"model": model} if model else {})}
    return {"suite": suite, "student": student, "prompt_id": pid, "judge": judge, "judge_id": f"{judge}-{model}",
            "judge_identity": ident, "outcome": outcome}


def test_agreement_table_from_records():
    recs = []
    for i, (x, y) in enumerate(zip(A, B)):  # two students share prompt ids: the student is part of the key
        recs += [_rec("chat", "s1" if i < 5 else "s2", f"p{i % 5}", "api", "gpt-4o", x),
                 _rec("chat", "s1" if i < 5 else "s2", f"p{i % 5}", "pairrm", None, y)]
    recs += [_rec("chat", "s1", "p0", "local", "qwen", "win"), _rec("chat", "s1", "p1", "local", "qwen", "tie"),
             _rec("math", "s1", "p0", "api", "gpt-4o", "win")]
    rows = agreement_table(recs)
    assert [(r["suite"], r["judge_a"], r["judge_b"]) for r in rows] == [
        ("chat", "api:gpt-4o", "local:qwen"), ("chat", "api:gpt-4o", "pairrm"), ("chat", "local:qwen", "pairrm")]
    assert all(list(r) == AGREEMENT_COLUMNS for r in rows)
    main = rows[1]
    assert (main["n"], main["n_decided"]) == (10, 7)
    assert main["kappa"] == pytest.approx(0.34 / 0.64) and main["kappa_decided"] == pytest.approx(18 / 25)
    assert (main["judge_a_id"], main["judge_b_id"]) == ("api-gpt-4o", "pairrm-None")
    assert (rows[0]["n"], rows[0]["agreement"]) == (2, 0.5)  # api: win, win vs local: win, tie
    with pytest.raises(ValueError, match="conflicting outcomes for judge pairrm"):
        agreement_table(recs + [_rec("chat", "s1", "p0", "pairrm", None, "loss")])
