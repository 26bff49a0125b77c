"""The pairwise protocol: every (student, teacher) pair judged in both orders.

Order 1 puts the student answer in position A, order 2 puts the teacher answer there. Each
order's verdict is turned into the student's view ("win", "loss", "tie"); the comparison's outcome
is that view when both orders agree, and "tie" when they disagree (a verdict that flips with the
order is a tie: the MT-Bench rule). A failure in either order makes the comparison "failed", with
the reason kept. Both raw verdicts are kept.
"""
from __future__ import annotations

from dataclasses import dataclass

from evals.judges.base import Judge, JudgeItem, Verdict

STUDENT_FIRST, TEACHER_FIRST = "student_first", "teacher_first"
RESULTS = ("win", "tie", "loss", "failed")


@dataclass(frozen=True)
class Pair:
    id: str
    prompt: str
    student: str
    teacher: str
    reference: str | None = None


@dataclass(frozen=True)
class Comparison:
    id: str
    outcome: str  # win | tie | loss | failed (student's view)
    verdicts: dict  # order -> Verdict (raw, positions as the judge saw them)
    consistent: bool | None  # both orders agree; None when failed
    failure: str | None = None


def student_view(verdict: str, student_is_a: bool) -> str:
    """A position verdict ("A", "B", "tie") as win/loss/tie for the student."""
    if verdict == "tie":
        return "tie"
    return "win" if (verdict == "A") == student_is_a else "loss"


def combine(first: Verdict, second: Verdict) -> tuple[str, bool | None, str | None]:
    """(outcome, consistent, failure) from the student-first and teacher-first verdicts."""
    fails = [f"{o}: {v.reason}" for o, v in ((STUDENT_FIRST, first), (TEACHER_FIRST, second)) if v.failed]
    if fails:
        return "failed", None, "; ".join(fails)
    a, b = student_view(first.outcome, True), student_view(second.outcome, False)
    return (a, True, None) if a == b else ("tie", False, None)


def items_for(pair: Pair) -> tuple[JudgeItem, JudgeItem]:
    return (JudgeItem(pair.prompt, pair.student, pair.teacher, pair.reference),
            JudgeItem(pair.prompt, pair.teacher, pair.student, pair.reference))


def compare(judge: Judge, pairs: list[Pair]) -> list[Comparison]:
    """Judge all pairs in both orders with one call (so judges batch / parallelise across pairs)."""
    items = [it for p in pairs for it in items_for(p)]
    verdicts = judge.judge(items)
    out = []
    for k, p in enumerate(pairs):
        v1, v2 = verdicts[2 * k], verdicts[2 * k + 1]
        outcome, consistent, failure = combine(v1, v2)
        out.append(Comparison(p.id, outcome, {STUDENT_FIRST: v1, TEACHER_FIRST: v2}, consistent, failure))
    return out


def position_stats(comparisons: list[Comparison]) -> dict:
    """Position bias of the judge: of the decisive single-order verdicts, the share won by position A
    (0.5 = no bias), plus the share of comparisons whose orders agree."""
    verdicts = [v.outcome for c in comparisons for v in c.verdicts.values() if not v.failed]
    decisive = [v for v in verdicts if v in ("A", "B")]
    judged = [c for c in comparisons if c.outcome != "failed"]
    return {"first_position_win_share": decisive.count("A") / len(decisive) if decisive else float("nan"),
            "decisive_verdicts": len(decisive), "single_order_ties": verdicts.count("tie"),
            "order_consistency": sum(bool(c.consistent) for c in judged) / len(judged) if judged else float("nan")}
