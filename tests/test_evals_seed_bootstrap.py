"""Two-level bootstrap over training seeds, then prompts: point values by hand, and seed noise widening it."""
import math

import numpy as np
import pytest

from evals.metrics import bootstrap_intervals, rates
from evals.seed_bootstrap import paired_seed_bootstrap_difference, seed_bootstrap


def _ids(outcomes):
    return {f"p{i}": o for i, o in enumerate(outcomes)}


def test_seed_variance_widens_interval_beyond_pooled_prompt_bootstrap():
    by_seed = {"A": _ids(["win"] * 200), "B": _ids(["loss"] * 200)}
    s = seed_bootstrap(by_seed, 2000, seed=0)
    assert s["n_seeds"] == 2 and s["win_rate"] == 0.5 and s["pref_rate"] == 0.0
    assert s["per_seed"]["A"] == {"n": 200, "win_rate": 1.0, "adj_win_rate": 1.0, "pref_rate": 1.0}
    assert s["per_seed"]["B"]["win_rate"] == 0.0
    assert (s["win_rate_lo"], s["win_rate_hi"]) == (0.0, 1.0)  # both draws of one seed are likely
    pooled = bootstrap_intervals(["win"] * 200 + ["loss"] * 200, 2000, seed=0)["win_rate"]
    assert pooled[1] - pooled[0] < 0.15
    assert (s["win_rate_hi"] - s["win_rate_lo"]) > 5 * (pooled[1] - pooled[0])


def test_single_seed_matches_one_level_bootstrap():
    out = ["win"] * 3 + ["tie"] * 2 + ["loss"] * 4 + ["failed"]
    s = seed_bootstrap({0: _ids(out)}, 1000, seed=0)
    assert s["win_rate"] == pytest.approx(3 / 9) and s["adj_win_rate"] == pytest.approx(4 / 9)
    assert s["pref_rate"] == pytest.approx(-1 / 9) and s["per_seed"][0]["n"] == 9
    rng = np.random.default_rng(3)
    many = list(rng.choice(["win", "tie", "loss"], size=400, p=[0.4, 0.2, 0.4]))
    s = seed_bootstrap({0: _ids(many)}, 2000, seed=1)
    one = bootstrap_intervals(many, 2000, seed=1)
    c = np.array([many.count(k) for k in ("win", "tie", "loss")])
    for r in ("win_rate", "adj_win_rate", "pref_rate"):
        assert s[r] == pytest.approx(float(rates(*c)[r]))
        assert s[f"{r}_lo"] == pytest.approx(one[r][0], abs=0.015)
        assert s[f"{r}_hi"] == pytest.approx(one[r][1], abs=0.015)


def test_seeded_and_bad_input():
    by_seed = {s: _ids(np.random.default_rng(s).choice(["win", "loss"], 50)) for s in range(3)}
    assert seed_bootstrap(by_seed, 1000, seed=5) == seed_bootstrap(by_seed, 1000, seed=5)
    assert seed_bootstrap(by_seed, 1000, seed=5) != seed_bootstrap(by_seed, 1000, seed=6)
    with pytest.raises(ValueError, match=">= 1000"):
        seed_bootstrap(by_seed, 999)
    with pytest.raises(ValueError, match="seed 'x' has no judged"):
        seed_bootstrap({"x": {"p": "failed"}})
    empty = seed_bootstrap({})
    assert empty["n_seeds"] == 0 and math.isnan(empty["win_rate"]) and math.isnan(empty["win_rate_hi"])


def test_paired_difference_consistent_gain_vs_seed_dependent_sign():
    a = {s: _ids(["win"] * 60 + ["loss"] * 40) for s in range(3)}
    b = {s: _ids(["win"] * 30 + ["loss"] * 70) for s in range(3)}
    d = paired_seed_bootstrap_difference(a, b, 2000, seed=0)
    assert d["n_seeds"] == 3 and d["win_rate"] == pytest.approx(0.3)
    assert d["pref_rate"] == pytest.approx(0.6) and d["per_seed"][1] == pytest.approx(
        {"n": 100, "win_rate": 0.3, "adj_win_rate": 0.3, "pref_rate": 0.6})
    assert 0 < d["win_rate_lo"] < 0.3 < d["win_rate_hi"]
    # a beats b on seed 0 and loses on seed 1 by the same margin: no difference beyond seed noise
    flip_a = {0: _ids(["win"] * 100), 1: _ids(["loss"] * 100)}
    flip_b = {0: _ids(["loss"] * 100), 1: _ids(["win"] * 100)}
    f = paired_seed_bootstrap_difference(flip_a, flip_b, 2000, seed=0)
    assert f["win_rate"] == 0.0 and f["win_rate_lo"] < -0.9 and f["win_rate_hi"] > 0.9


def test_paired_difference_drops_failed_and_needs_same_seeds():
    a = {0: {"p0": "win", "p1": "win", "p2": "failed", "p3": "tie"}}
    b = {0: {"p0": "loss", "p1": "failed", "p2": "win", "p3": "tie", "p4": "win"}}
    d = paired_seed_bootstrap_difference(a, b, 1000)
    assert d["per_seed"][0]["n"] == 2  # p0 and p3 judged for both
    assert d["win_rate"] == pytest.approx(0.5) and d["adj_win_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="different seeds"):
        paired_seed_bootstrap_difference(a, {1: b[0]})
    with pytest.raises(ValueError, match="no prompt judged for both"):
        paired_seed_bootstrap_difference({0: {"p": "win"}}, {0: {"p": "failed"}})
