"""Per-comparison JSONL records and the summary CSV, written atomically.

Record (one JSON object per line, one per student x prompt):
  suite, prompt_id, student, teacher, judge, judge_id (hash of judge_identity), judge_identity,
  proxy (offline judge standing in for the paper's), outcome (win|tie|loss|failed, student's view),
  consistent (both orders agree; null if failed), failure (reason or null),
  verdicts: {student_first|teacher_first: {verdict: A|B|tie|null, failure, details}},
  student_words, teacher_words
Summary CSV: one row per student x suite x judge, columns SUMMARY_COLUMNS.
"""
from __future__ import annotations

import csv
import io
import json
import math

from dadpo.cache import atomic_write_text
from evals.judges.base import identity_hash
from evals.metrics import RATES, summarize, word_count
from evals.protocol import Comparison, Pair, position_stats

SUMMARY_COLUMNS = (
    ["suite", "student", "teacher", "judge", "judge_model", "judge_id", "proxy",
     "n", "wins", "ties", "losses", "failed"]
    + [f"{r}{s}" for r in RATES for s in ("", "_lo", "_hi")]
    + ["ci", "bootstrap", "bootstrap_seed", "first_position_win_share", "order_consistency",
       "student_len", "teacher_len", "length_unit", "judge_prompt_tokens", "judge_completion_tokens",
       "judge_cost_usd", "judge_identity"]
)


def comparison_record(suite: str, student: str, teacher: str, judge_identity: dict, proxy: bool,
                      pair: Pair, comp: Comparison) -> dict:
    return {"suite": suite, "prompt_id": pair.id, "student": student, "teacher": teacher,
            "judge": judge_identity["name"], "judge_id": identity_hash(judge_identity),
            "judge_identity": judge_identity, "proxy": proxy, "outcome": comp.outcome,
            "consistent": comp.consistent, "failure": comp.failure,
            "verdicts": {order: v.to_dict() for order, v in comp.verdicts.items()},
            "student_words": word_count(pair.student), "teacher_words": word_count(pair.teacher)}


def _usage_totals(comparisons: list[Comparison], model: str | None) -> dict:
    """Tokens that these verdicts cost when they were made (cached ones included), and USD."""
    tin = tout = 0
    seen = False
    for c in comparisons:
        for v in c.verdicts.values():
            u = v.details.get("usage")
            if u:
                seen = True
                tin += u.get("prompt_tokens", 0)
                tout += u.get("completion_tokens", 0)
    if not seen:
        return {"judge_prompt_tokens": "", "judge_completion_tokens": "", "judge_cost_usd": ""}
    from evals.judges.api import price_of

    price = price_of(model or "")
    cost = "unknown" if price is None else round((tin * price[0] + tout * price[1]) / 1e6, 6)
    return {"judge_prompt_tokens": tin, "judge_completion_tokens": tout, "judge_cost_usd": cost}


def summary_row(suite: str, student: str, teacher: str, judge_identity: dict, proxy: bool, pairs: list[Pair],
                comparisons: list[Comparison], n_resamples: int = 1000, seed: int = 0) -> dict:
    s = summarize([c.outcome for c in comparisons], [p.student for p in pairs], [p.teacher for p in pairs],
                  n_resamples, seed)
    pos = position_stats(comparisons)
    row = {"suite": suite, "student": student, "teacher": teacher, "judge": judge_identity["name"],
           "judge_model": judge_identity.get("model", ""), "judge_id": identity_hash(judge_identity),
           "proxy": proxy, **s, "first_position_win_share": pos["first_position_win_share"],
           "order_consistency": pos["order_consistency"],
           **_usage_totals(comparisons, judge_identity.get("model") if judge_identity["name"] == "api" else None),
           "judge_identity": json.dumps(judge_identity, sort_keys=True)}
    return {k: row[k] for k in SUMMARY_COLUMNS}


def _json_safe(obj):
    """NaN is not JSON: write null instead."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    return obj


def write_jsonl(path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(_json_safe(r), ensure_ascii=False, sort_keys=True) + "\n"
                                    for r in rows))


def write_csv(path, rows: list[dict], columns=SUMMARY_COLUMNS) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(columns), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if isinstance(v, float) and math.isnan(v) else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
