"""Agreement between judges on the same comparisons: raw agreement and Cohen's kappa.

Two variants: with ties (3 categories win / tie / loss, over comparisons neither judge failed) and without
(2 categories, over comparisons both judges decided as win or loss). Cohen's kappa is
(p_o - p_e) / (1 - p_e), p_o the share of comparisons on which the judges agree and p_e the agreement
expected by chance from the two judges' marginal category shares; NaN when p_e = 1 (both judges used one
and the same category throughout) or when nothing is compared.
"""
from __future__ import annotations

import itertools
import math
from typing import Hashable, Iterable, Mapping

AGREEMENT_COLUMNS = ["suite", "judge_a", "judge_b", "judge_a_id", "judge_b_id", "n", "agreement", "kappa",
                     "n_decided", "agreement_decided", "kappa_decided"]


def cohen_kappa(a: list[str], b: list[str]) -> dict:
    """{"n", "agreement": p_o, "kappa"} of two equally long label lists (same items, same order)."""
    n = len(a)
    if n == 0:
        return {"n": 0, "agreement": math.nan, "kappa": math.nan}
    p_o = sum(x == y for x, y in zip(a, b)) / n
    p_e = sum(a.count(c) * b.count(c) for c in set(a) | set(b)) / n ** 2
    return {"n": n, "agreement": p_o, "kappa": (p_o - p_e) / (1 - p_e) if p_e < 1 else math.nan}


def judge_agreement(a: Mapping[Hashable, str], b: Mapping[Hashable, str]) -> dict:
    """Agreement of two judges' outcomes {comparison key: outcome} on the keys both have.

    Returns {"ties_included": {"n", "agreement", "kappa"}, "ties_excluded": {"n", "agreement", "kappa"}}:
    failed comparisons (either judge) are dropped; ties_excluded keeps only keys both judges decided."""
    keys = [k for k in a if k in b and a[k] != "failed" and b[k] != "failed"]
    decided = [k for k in keys if a[k] != "tie" and b[k] != "tie"]
    return {"ties_included": cohen_kappa([a[k] for k in keys], [b[k] for k in keys]),
            "ties_excluded": cohen_kappa([a[k] for k in decided], [b[k] for k in decided])}


def judge_label(record: dict) -> str:
    """A judge's name, with its model when its identity names one (e.g. "api:gpt-4o")."""
    model = (record.get("judge_identity") or {}).get("model")
    return f"{record['judge']}:{model}" if model else record["judge"]


def agreement_table(records: Iterable[dict]) -> list[dict]:
    """One row per (suite, judge pair) from comparison records (the JSONL dicts of evals.records), with the
    columns AGREEMENT_COLUMNS. Judges are told apart by judge_id; comparisons are matched on
    (student, prompt_id) within a suite. Rows are sorted by suite, then judge labels."""
    outcomes: dict = {}  # (suite, judge_id) -> {(student, prompt_id): outcome}
    labels: dict = {}
    for r in records:
        key, judge = (r["student"], r["prompt_id"]), (r["suite"], r["judge_id"])
        seen = outcomes.setdefault(judge, {})
        if seen.get(key, r["outcome"]) != r["outcome"]:
            raise ValueError(f"conflicting outcomes for judge {judge_label(r)} on {r['suite']}/{key[0]}/{key[1]}")
        seen[key] = r["outcome"]
        labels[r["judge_id"]] = judge_label(r)
    rows = []
    for suite in sorted({s for s, _ in outcomes}):
        judges = sorted((j for s, j in outcomes if s == suite), key=lambda j: (labels[j], j))
        for ja, jb in itertools.combinations(judges, 2):
            ag = judge_agreement(outcomes[suite, ja], outcomes[suite, jb])
            t, d = ag["ties_included"], ag["ties_excluded"]
            rows.append({"suite": suite, "judge_a": labels[ja], "judge_b": labels[jb], "judge_a_id": ja,
                         "judge_b_id": jb, "n": t["n"], "agreement": t["agreement"], "kappa": t["kappa"],
                         "n_decided": d["n"], "agreement_decided": d["agreement"], "kappa_decided": d["kappa"]})
    return rows
