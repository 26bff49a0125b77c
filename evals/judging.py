"""Judge every student against the teacher on every suite: the one judging loop of the suite.

Used by the table runs (reproduce/) and by `python -m evals.run`. Each judge gets all pairs of all
suites and students in one call, both orders, so it can batch and parallelise across them (the
reference judge embeds each distinct text once); results come back split per suite and student.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from evals.judges import Judge
from evals.protocol import Pair, compare, position_stats
from evals.records import comparison_record, summary_row


@dataclass
class JudgeRun:
    """What one judge decided: summary rows, per-comparison records and run facts."""
    judge: str
    identity: dict
    rows: list[dict] = field(default_factory=list)
    records: list[dict] = field(default_factory=list)
    facts: dict = field(default_factory=dict)


def pairs_of(answers: dict, student: str, teacher: str = "teacher") -> list[Pair]:
    """Pairs of one suite's answers: {"items": [{id, prompt, reference}], teacher: [...], student: [...]}."""
    return [Pair(str(it["id"]), it["prompt"], s, t, it.get("reference")) for it, s, t in
            zip(answers["items"], answers[student], answers[teacher])]


def judge_all(judges: list[Judge], answers: dict[str, dict], students: list[str], teacher: str = "teacher",
              n_resamples: int = 1000, seed: int = 0) -> list[JudgeRun]:
    """Every student vs the teacher on every suite of `answers` ({suite: {"items", teacher, student...}}),
    by every judge. A judge that failed every call raises JudgeError (a run judged by nobody must not
    look like a result)."""
    runs = []
    for judge in judges:
        groups = [(suite, s, pairs_of(ans, s, teacher)) for suite, ans in answers.items() for s in students]
        everything = [p for _, _, ps in groups for p in ps]
        t0 = time.perf_counter()
        comps = compare(judge, everything)
        seconds = time.perf_counter() - t0
        judge.raise_if_all_failed()
        ident = judge.identity
        run = JudgeRun(judge.name, ident)
        k = 0
        for suite, student, ps in groups:
            cs = comps[k:k + len(ps)]
            k += len(ps)
            run.records += [comparison_record(suite, student, teacher, ident, judge.proxy, p, c) for p, c in zip(ps, cs)]
            run.rows.append(summary_row(suite, student, teacher, ident, judge.proxy, ps, cs, n_resamples, seed))
        run.facts = {"identity": ident, "stats": dict(judge.stats), "comparisons": len(everything),
                     "seconds": round(seconds, 3),
                     "comparisons_per_s": round(len(everything) / seconds, 3) if seconds > 0 else None,
                     "position": position_stats(comps)}
        if hasattr(judge, "usage"):
            run.facts["api_usage"] = {**judge.usage, "cost_usd": judge.cost()}
        runs.append(run)
    return runs
