"""Rates over several training seeds, with a two-level bootstrap (seeds, then prompts within a seed).

A method trained with k seeds and judged on the same prompts gives k outcome maps prompt id -> outcome.
The point value of a rate is the mean over seeds of each seed's rate (rates as in evals.metrics; failed
comparisons dropped). Its interval comes from a two-level bootstrap: each resample draws k seeds with
replacement, then, for every drawn seed independently, that seed's judged prompts with replacement, and
averages the drawn seeds' rates; percentile method, seeded. Seed-to-seed variation therefore widens the
interval, which a bootstrap over the pooled prompts alone would hide.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from evals.metrics import RATES, outcome_indicators, paired_indicators, percentile_intervals, rates

CI_TWO_LEVEL = "95% two-level bootstrap (seeds, then prompts within seed), percentile"


def _rates_of(x: np.ndarray, idx: np.ndarray) -> dict:
    """Rates of the prompt resamples idx (m, n) drawn from one seed's indicator rows x (n, 3)."""
    s = x[idx].sum(axis=1)
    return rates(s[:, 0], s[:, 1], s[:, 2])


def _two_level(per_seed: list[tuple[np.ndarray, ...]], n_resamples: int, seed: int) -> dict:
    """{rate: (n_resamples,) samples} of the mean over drawn seeds of a seed's rate (one indicator array) or
    rate difference (two arrays over the same prompts, resampled together)."""
    if n_resamples < 1000:
        raise ValueError("n_resamples must be >= 1000")
    rng = np.random.default_rng(seed)
    k = len(per_seed)
    picks = rng.integers(0, k, size=(n_resamples, k))
    total = {r: np.zeros(n_resamples) for r in RATES}
    for s, arrays in enumerate(per_seed):
        rows = np.nonzero(picks == s)[0]  # one entry per slot that drew seed s (repeats kept)
        idx = rng.integers(0, len(arrays[0]), size=(len(rows), len(arrays[0])))
        values = [_rates_of(x, idx) for x in arrays]
        for r in RATES:
            v = values[0][r] if len(values) == 1 else values[0][r] - values[1][r]
            np.add.at(total[r], rows, v)
    return {r: total[r] / k for r in RATES}


def _result(per_seed_rates: dict, samples: dict | None, level: float) -> dict:
    """Flat dict: n_seeds, per_seed, and rate / rate_lo / rate_hi for each rate."""
    out = {"n_seeds": len(per_seed_rates), "per_seed": per_seed_rates}
    ci = percentile_intervals(samples, level) if samples else {r: (math.nan, math.nan) for r in RATES}
    for r in RATES:
        vals = [v[r] for v in per_seed_rates.values()]
        out[r] = float(np.mean(vals)) if vals else math.nan
        out[f"{r}_lo"], out[f"{r}_hi"] = ci[r]
    return out


def _judged(label, outcomes: Mapping[str, str]) -> np.ndarray:
    """One seed's outcome indicators; ValueError when it has none judged."""
    x = outcome_indicators(list(outcomes.values()))
    if len(x) == 0:
        raise ValueError(f"seed {label!r} has no judged comparisons")
    return x


def seed_bootstrap(outcomes_by_seed: Mapping[object, Mapping[str, str]], n_resamples: int = 1000, seed: int = 0,
                   level: float = 0.95) -> dict:
    """Mean over training seeds of each rate, with a two-level bootstrap interval.

    outcomes_by_seed: {seed label: {prompt id: outcome}} for one method, suite and judge.
    Returns {"n_seeds": k, "per_seed": {label: {"n": judged, rate: value, ...}},
             rate: mean over seeds, f"{rate}_lo": low, f"{rate}_hi": high} for rate in RATES.
    No seeds: NaN everywhere. A seed with nothing judged: ValueError."""
    arrays = {label: _judged(label, o) for label, o in outcomes_by_seed.items()}
    per_seed = {label: {"n": len(x), **{r: float(v) for r, v in rates(*x.sum(0)).items()}}
                for label, x in arrays.items()}
    samples = _two_level([(x,) for x in arrays.values()], n_resamples, seed) if arrays else None
    return _result(per_seed, samples, level)


def paired_seed_bootstrap_difference(a_by_seed: Mapping[object, Mapping[str, str]],
                                     b_by_seed: Mapping[object, Mapping[str, str]], n_resamples: int = 1000,
                                     seed: int = 0, level: float = 0.95) -> dict:
    """Rate differences (a - b) of two methods trained with the same seeds and judged on the same prompts.

    Seed s of a is paired with seed s of b (the seed labels must match); within a seed, only prompts judged
    (not failed) for both methods count, and a resample draws them for both together. The point value is the
    mean over seeds of the per-seed differences. Same return shape as seed_bootstrap, with differences:
    {"n_seeds", "per_seed": {label: {"n": shared judged prompts, rate: a - b}}, rate, rate_lo, rate_hi}."""
    if set(a_by_seed) != set(b_by_seed):
        raise ValueError(f"the two methods have different seeds: {sorted(map(str, a_by_seed))} vs "
                         f"{sorted(map(str, b_by_seed))}")
    arrays, per_seed = {}, {}
    for label in a_by_seed:
        xa, xb = paired_indicators(a_by_seed[label], b_by_seed[label])
        if len(xa) == 0:
            raise ValueError(f"seed {label!r} has no prompt judged for both methods")
        arrays[label] = (xa, xb)
        ra, rb = rates(*xa.sum(0)), rates(*xb.sum(0))
        per_seed[label] = {"n": len(xa), **{r: float(ra[r] - rb[r]) for r in RATES}}
    samples = _two_level(list(arrays.values()), n_resamples, seed) if arrays else None
    return _result(per_seed, samples, level)
