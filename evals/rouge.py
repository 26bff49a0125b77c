"""ROUGE-L of answers against reference answers: `rouge-score`'s tokenizer, rapidfuzz's LCS.

The scores equal `rouge_score.RougeScorer(["rougeL"], use_stemmer=True)` (tested): tokens come from
rouge-score's own tokenizer with the Porter stemmer, memoised per word; the longest common subsequence,
which rouge-score computes as a pure-Python table (O(n*m): ~10 ms per 200-word pair, minutes for a
paper-scale evaluation), comes from rapidfuzz's bit-parallel LCSseq.
"""
from __future__ import annotations

import functools
import math
from types import SimpleNamespace
from typing import Sequence

from rapidfuzz.distance import LCSseq
from rouge_score import tokenize
from nltk.stem.porter import PorterStemmer  # the stemmer rouge-score uses


# rouge-score's Porter stemmer with a cache (answers repeat their words); tokenize only calls .stem
_STEMMER = SimpleNamespace(stem=functools.lru_cache(maxsize=1 << 16)(PorterStemmer().stem))


@functools.lru_cache(maxsize=1 << 13)
def _reference_tokens(text: str) -> list[str]:
    """Tokens of a reference answer: every model of a run is scored against the same references."""
    return tokenize.tokenize(text, _STEMMER)


def _f_measure(lcs: int, n_ref: int, n_ans: int) -> float:
    """rouge-score's F1 of LCS precision (over the answer) and recall (over the reference)."""
    if lcs == 0:
        return 0.0
    p, r = lcs / n_ans, lcs / n_ref
    return 2 * p * r / (p + r)


def rouge_l(answers: Sequence[str], references: Sequence[str | None]) -> dict:
    """Mean ROUGE-L F-measure (longest common subsequence of tokens, Porter stemming on) of each answer
    against its reference, over the items that have one; items whose reference is None or blank are
    skipped, not scored 0. Returns {"rouge_l_f": mean (NaN if no item has a reference), "n": items scored}."""
    if len(answers) != len(references):
        raise ValueError(f"{len(answers)} answers but {len(references)} references")
    scores = []
    for ans, ref in zip(answers, references):
        if ref is None or not ref.strip():
            continue
        a, r = tokenize.tokenize(ans, _STEMMER), _reference_tokens(ref)
        scores.append(_f_measure(LCSseq.similarity(r, a), len(r), len(a)) if a and r else 0.0)
    return {"rouge_l_f": sum(scores) / len(scores) if scores else math.nan, "n": len(scores)}
