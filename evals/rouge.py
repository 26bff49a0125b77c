"""ROUGE-L of answers against reference answers, with the maintained `rouge-score` package."""
from __future__ import annotations

import math
from typing import Sequence

from rouge_score import rouge_scorer


def rouge_l(answers: Sequence[str], references: Sequence[str | None]) -> dict:
    """Mean ROUGE-L F-measure (longest common subsequence of tokens, Porter stemming on) of each answer
    against its reference, over the items that have one; items whose reference is None or blank are
    skipped, not scored 0. Returns {"rouge_l_f": mean (NaN if no item has a reference), "n": items scored}."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    scores = [scorer.score(ref, ans)["rougeL"].fmeasure for ans, ref in zip(answers, references)
              if ref is not None and ref.strip()]
    return {"rouge_l_f": sum(scores) / len(scores) if scores else math.nan, "n": len(scores)}
