"""Length-controlled win rate: a saturated fit by hand, no length effect, and an outcome that length explains."""
import math

import numpy as np
import pytest

from evals.length_control import lc_win_rate


def test_saturated_fit_by_hand():
    # two length differences only (+10, -10): the fit reproduces each group's win share, 0.8 and 0.4, so
    # a = (logit 0.8 + logit 0.4) / 2 = ln(8/3) / 2 and LC = sigmoid(a)
    out = ["win"] * 8 + ["loss"] * 2 + ["win"] * 4 + ["loss"] * 6
    r = lc_win_rate(out, [10] * 10 + [0] * 10, [0] * 10 + [10] * 10, ridge=0.0)
    assert r["n"] == 20 and r["adj_win_rate"] == pytest.approx(0.6)
    assert r["intercept"] == pytest.approx(math.log(8 / 3) / 2, abs=1e-9)
    assert r["lc_win_rate"] == pytest.approx(math.sqrt(8 / 3) / (1 + math.sqrt(8 / 3)), abs=1e-9)
    assert r["length_coef"] > 0 and r["length_scale"] == pytest.approx(20 * math.sqrt(20 / 19) / 2)
    assert r["lc_win_rate_lo"] < r["lc_win_rate"] < r["lc_win_rate_hi"]


def test_equal_lengths_give_the_adjusted_win_rate_and_failed_are_dropped():
    out = ["win"] * 3 + ["tie", "loss"]
    r = lc_win_rate(out, [5] * 5, [5] * 5)  # no length difference at all: intercept-only fit
    assert r["lc_win_rate"] == pytest.approx(3.5 / 5) and r["adj_win_rate"] == pytest.approx(3.5 / 5)
    assert r["length_coef"] == 0.0
    assert lc_win_rate(out + ["failed"], [5] * 5 + [900], [5] * 6) == r
    empty = lc_win_rate(["failed"], [1], [2])
    assert empty["n"] == 0 and math.isnan(empty["lc_win_rate"])


def test_no_length_effect_leaves_the_rate_unchanged():
    rng = np.random.default_rng(0)
    n = 1000
    out = list(rng.choice(["win", "tie", "loss"], size=n, p=[0.5, 0.2, 0.3]))
    r = lc_win_rate(out, rng.integers(50, 300, n), rng.integers(50, 300, n), seed=1)
    assert r["lc_win_rate"] == pytest.approx(r["adj_win_rate"], abs=0.02)
    assert r["lc_win_rate_lo"] < r["adj_win_rate"] < r["lc_win_rate_hi"]


def test_outcome_explained_by_length_moves_toward_half():
    rng = np.random.default_rng(0)
    n = 400
    student, teacher = rng.integers(90, 340, n), rng.integers(50, 300, n)  # the student is usually longer
    out = ["win" if s > t else "loss" if s < t else "tie" for s, t in zip(student, teacher)]
    r = lc_win_rate(out, student, teacher)
    assert r["adj_win_rate"] > 0.6 and r["length_coef"] > 0
    assert abs(r["lc_win_rate"] - 0.5) < 0.5 * abs(r["adj_win_rate"] - 0.5)


def test_seeded_and_bad_input():
    out, s, t = ["win", "loss", "tie", "win"] * 10, list(range(40)), [20] * 40
    assert lc_win_rate(out, s, t, seed=3) == lc_win_rate(out, s, t, seed=3)
    assert lc_win_rate(out, s, t, seed=3) != lc_win_rate(out, s, t, seed=4)
    with pytest.raises(ValueError, match="differ in length"):
        lc_win_rate(out, s[:-1], t)
    with pytest.raises(ValueError, match="unknown outcomes"):
        lc_win_rate(["draw"], [1], [1])
    with pytest.raises(ValueError, match=">= 1000"):
        lc_win_rate(out, s, t, n_resamples=10)
