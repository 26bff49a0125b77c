"""Metrics of pairwise comparisons (student's view), as pure functions.

Outcomes are "win", "tie", "loss" or "failed". Failed comparisons are counted but excluded from n
and from every rate: n = wins + ties + losses.
- win rate = wins / n
- adjusted win rate = (wins + ties / 2) / n
- preference rate = (wins - losses) / n  (our reading of the paper's term; -0.073 means the student is
  preferred slightly less often than the teacher)
Intervals: paired bootstrap over prompts (each resample draws n prompts with replacement, keeping a
prompt's student and teacher answers and both order verdicts together), percentile method, seeded.
Answer lengths are in whitespace-separated words (tokenizer-independent, so comparable across
models).

Two judge-free distillation measures, for torch tensors: the teacher's per-token NLL of the
student's answers, and token-level KL(teacher || student) on held-out teacher answers.
"""
from __future__ import annotations

import math
from typing import Iterable, Mapping, Sequence

import numpy as np

RATES = ("win_rate", "adj_win_rate", "pref_rate")
LENGTH_UNIT = "words"


def counts(outcomes: Iterable[str]) -> dict:
    """{"n": judged, "wins", "ties", "losses", "failed"}; ValueError on an unknown outcome."""
    outcomes = list(outcomes)
    bad = set(outcomes) - {"win", "tie", "loss", "failed"}
    if bad:
        raise ValueError(f"unknown outcomes: {sorted(bad)}")
    c = {k: outcomes.count(k) for k in ("win", "tie", "loss", "failed")}
    return {"n": c["win"] + c["tie"] + c["loss"], "wins": c["win"], "ties": c["tie"], "losses": c["loss"],
            "failed": c["failed"]}


def rates(wins, ties, losses):
    """The three rates; works on numbers or on numpy arrays of counts (for the bootstrap)."""
    n = wins + ties + losses
    with np.errstate(invalid="ignore", divide="ignore"):
        return {"win_rate": np.divide(wins, n), "adj_win_rate": np.divide(wins + ties / 2, n),
                "pref_rate": np.divide(wins - losses, n)}


def outcome_indicators(outcomes: Sequence[str]) -> np.ndarray:
    """(n_judged, 3) float array of 0/1 columns win, tie, loss; failed comparisons dropped."""
    judged = [o for o in outcomes if o != "failed"]
    return np.array([[o == "win", o == "tie", o == "loss"] for o in judged], dtype=np.float64).reshape(-1, 3)


def paired_indicators(a: Mapping[str, str], b: Mapping[str, str]) -> tuple[np.ndarray, np.ndarray]:
    """outcome_indicators of two students over the prompts judged (not failed) for both, in prompt-id order."""
    ids = sorted(k for k in a.keys() & b.keys() if a[k] != "failed" and b[k] != "failed")
    return outcome_indicators([a[k] for k in ids]), outcome_indicators([b[k] for k in ids])


def percentile_intervals(samples: dict, level: float) -> dict:
    """{name: (low, high)}: the central `level` percentile interval of each array of bootstrap samples."""
    q = [100 * (1 - level) / 2, 100 * (1 + level) / 2]
    return {k: tuple(float(x) for x in np.percentile(v, q)) for k, v in samples.items()}


def bootstrap_intervals(outcomes: Sequence[str], n_resamples: int = 1000, seed: int = 0,
                        level: float = 0.95) -> dict:
    """{rate: (low, high)} from a paired bootstrap over prompts; NaN bounds when nothing was judged."""
    if n_resamples < 1000:
        raise ValueError("n_resamples must be >= 1000")
    x = outcome_indicators(outcomes)
    if len(x) == 0:
        return {k: (math.nan, math.nan) for k in RATES}
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_resamples, len(x)))
    s = x[idx].sum(axis=1)  # (n_resamples, 3)
    return percentile_intervals(rates(s[:, 0], s[:, 1], s[:, 2]), level)


def paired_bootstrap_difference(a: Mapping[str, str], b: Mapping[str, str], n_resamples: int = 1000,
                                seed: int = 0, level: float = 0.95) -> dict:
    """Rate differences (a - b) of two students judged on the same prompts (dicts prompt id -> outcome):
    {rate: (difference, low, high)} resampling the shared prompts judged for both."""
    if n_resamples < 1000:
        raise ValueError("n_resamples must be >= 1000")
    xa, xb = paired_indicators(a, b)
    if len(xa) == 0:
        return {k: (math.nan, math.nan, math.nan) for k in RATES}
    point = {k: float(rates(*xa.sum(0))[k] - rates(*xb.sum(0))[k]) for k in RATES}
    idx = np.random.default_rng(seed).integers(0, len(xa), size=(n_resamples, len(xa)))
    sa, sb = xa[idx].sum(1), xb[idx].sum(1)
    ra, rb = rates(sa[:, 0], sa[:, 1], sa[:, 2]), rates(sb[:, 0], sb[:, 1], sb[:, 2])
    ci = percentile_intervals({k: ra[k] - rb[k] for k in RATES}, level)
    return {k: (point[k], *ci[k]) for k in RATES}


def word_count(text: str) -> int:
    """Number of whitespace-separated words."""
    return len(text.split())


def mean_words(texts: Iterable[str]) -> float:
    """Mean word count of the texts; NaN for none."""
    lens = [word_count(t) for t in texts]
    return float(np.mean(lens)) if lens else math.nan


def token_length_summary(answers: Iterable[tuple[int, bool]], max_new_tokens: int) -> dict:
    """Answer lengths in generated tokens, from (n_tokens, finished) per answer, `finished` meaning the
    answer ended with end-of-turn. An answer is cut when n_tokens == max_new_tokens and it did not finish.
    Returns {"n", "mean_tokens", "cut", "cut_share", "max_new_tokens"} (NaN mean and share for no answers)."""
    answers = [(int(n), bool(f)) for n, f in answers]
    if any(n < 0 or n > max_new_tokens for n, _ in answers):
        raise ValueError(f"token counts must lie in [0, max_new_tokens={max_new_tokens}]")
    cut = sum(n == max_new_tokens and not f for n, f in answers)
    mean = float(np.mean([n for n, _ in answers])) if answers else math.nan
    return {"n": len(answers), "mean_tokens": mean, "cut": cut,
            "cut_share": cut / len(answers) if answers else math.nan, "max_new_tokens": max_new_tokens}


def summarize(outcomes: Sequence[str], student_answers: Sequence[str], teacher_answers: Sequence[str],
              n_resamples: int = 1000, seed: int = 0) -> dict:
    """Counts, rates, their 95% bootstrap intervals, and mean answer lengths (words) in one flat dict."""
    c = counts(outcomes)
    r = rates(c["wins"], c["ties"], c["losses"])
    ci = bootstrap_intervals(outcomes, n_resamples, seed)
    out = dict(c)
    for k in RATES:
        out[k], out[f"{k}_lo"], out[f"{k}_hi"] = float(r[k]), ci[k][0], ci[k][1]
    out.update({"student_len": mean_words(student_answers), "teacher_len": mean_words(teacher_answers),
                "length_unit": LENGTH_UNIT, "bootstrap": n_resamples, "bootstrap_seed": seed,
                "ci": "95% paired bootstrap over prompts, percentile"})
    return out


# ---- judge-free distillation measures (torch) ----

def teacher_nll(token_logprobs, mask, per_sequence: bool = False):
    """Teacher's mean negative log-likelihood per answer token.

    token_logprobs: (batch, T) log pi_teacher(y_t | x, y_<t) of the student's answer tokens;
    mask: (batch, T) 1 on answer tokens. Returns the token-weighted mean over the batch, or with
    `per_sequence` a (batch,) tensor of each answer's mean (NaN for an empty answer)."""
    m = mask.to(token_logprobs.dtype)
    nll = -(token_logprobs * m)
    if per_sequence:
        return nll.sum(-1) / m.sum(-1)
    return nll.sum() / m.sum().clamp(min=1)


def token_kl(teacher_logits, student_logits, mask, temperature: float = 1.0):
    """Masked mean over positions of KL(p_teacher || p_student) of the next-token distributions.

    Logits: (batch, T, V) at the positions that predict the teacher answer's tokens; mask (batch, T).
    Computed in float32 from log-softmax (no exp of differences of large logits)."""
    import torch

    if teacher_logits.shape != student_logits.shape:
        raise ValueError(f"teacher and student logits differ in shape: {tuple(teacher_logits.shape)} vs "
                         f"{tuple(student_logits.shape)} (vocabulary mismatch?)")
    lt = torch.log_softmax(teacher_logits.float() / temperature, dim=-1)
    ls = torch.log_softmax(student_logits.float() / temperature, dim=-1)
    pt = lt.exp()
    # 0 * log 0 = 0: tokens the teacher rules out (-inf logits) add nothing instead of NaN.
    kl = torch.where(pt > 0, pt * (lt - ls), torch.zeros_like(pt)).sum(-1)  # (batch, T)
    m = mask.to(kl.dtype)
    return (kl * m).sum() / m.sum().clamp(min=1)
