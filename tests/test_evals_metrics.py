"""Metrics against hand-computed values; bootstrap seeding; judge-free distillation measures."""
import math

import numpy as np
import pytest
import torch

from evals.metrics import (bootstrap_intervals, counts, mean_words, paired_bootstrap_difference, rates, summarize,
                           teacher_nll, token_kl, token_length_summary)

OUT = ["win"] * 3 + ["tie"] * 2 + ["loss"] * 4 + ["failed"]


def test_counts_and_rates_by_hand():
    c = counts(OUT)
    assert c == {"n": 9, "wins": 3, "ties": 2, "losses": 4, "failed": 1}
    r = rates(3, 2, 4)
    assert r["win_rate"] == pytest.approx(3 / 9)
    assert r["adj_win_rate"] == pytest.approx(4 / 9)
    assert r["pref_rate"] == pytest.approx(-1 / 9)
    with pytest.raises(ValueError, match="unknown outcomes"):
        counts(["win", "draw"])


def test_summarize_fields_and_lengths():
    s = summarize(OUT, ["one two", "three"], ["a b c d"], n_resamples=1000, seed=0)
    assert (s["n"], s["failed"]) == (9, 1)
    assert s["win_rate"] == pytest.approx(3 / 9) and s["pref_rate"] == pytest.approx(-1 / 9)
    for k in ("win_rate", "adj_win_rate", "pref_rate"):
        assert s[f"{k}_lo"] <= s[k] <= s[f"{k}_hi"]
    assert s["student_len"] == 1.5 and s["teacher_len"] == 4.0 and s["length_unit"] == "words"
    empty = summarize(["failed"], ["x"], ["y"])
    assert empty["n"] == 0 and math.isnan(empty["win_rate"]) and math.isnan(empty["win_rate_lo"])
    assert mean_words([]) != mean_words([])  # NaN


def test_bootstrap_seeded_and_close_to_normal_approximation():
    rng = np.random.default_rng(1)
    outcomes = list(rng.choice(["win", "tie", "loss"], size=400, p=[0.3, 0.2, 0.5]))
    a = bootstrap_intervals(outcomes, 2000, seed=7)
    assert a == bootstrap_intervals(outcomes, 2000, seed=7)
    assert a != bootstrap_intervals(outcomes, 2000, seed=8)
    p = outcomes.count("win") / 400
    half = 1.96 * math.sqrt(p * (1 - p) / 400)
    assert a["win_rate"][0] == pytest.approx(p - half, abs=0.012)
    assert a["win_rate"][1] == pytest.approx(p + half, abs=0.012)
    # failed comparisons are dropped before resampling
    assert bootstrap_intervals(outcomes + ["failed"] * 50, 2000, seed=7) == a
    assert bootstrap_intervals(["win"] * 5, 1000)["win_rate"] == (1.0, 1.0)
    with pytest.raises(ValueError):
        bootstrap_intervals(outcomes, 999)


def test_paired_bootstrap_difference():
    a = {str(i): o for i, o in enumerate(["win", "loss", "tie", "win"] * 10)}
    same = paired_bootstrap_difference(a, a, 1000, seed=0)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    b = {k: "loss" for k in a}
    d = paired_bootstrap_difference(a, b, 1000, seed=0)
    assert d["win_rate"][0] == pytest.approx(0.5)
    assert d["pref_rate"][0] == pytest.approx(0.5 - 0.25 + 1.0)
    assert d["win_rate"][1] < 0.5 < d["win_rate"][2]
    b["0"] = "failed"  # dropped for both students
    assert paired_bootstrap_difference(a, b, 1000)["win_rate"][0] == pytest.approx(19 / 39)


def test_token_length_summary_by_hand():
    # cut: at the limit without end-of-turn; an answer that ends exactly at the limit with end-of-turn is not
    s = token_length_summary([(10, True), (64, False), (64, True), (30, False)], max_new_tokens=64)
    assert s == {"n": 4, "mean_tokens": 42.0, "cut": 1, "cut_share": 0.25, "max_new_tokens": 64}
    empty = token_length_summary([], 64)
    assert empty["n"] == 0 and math.isnan(empty["mean_tokens"]) and math.isnan(empty["cut_share"])
    with pytest.raises(ValueError, match="max_new_tokens=64"):
        token_length_summary([(65, False)], 64)


def test_teacher_nll_by_hand():
    lp = torch.tensor([[-1.0, -2.0, -3.0], [-4.0, -9.0, -9.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    assert teacher_nll(lp, mask).item() == pytest.approx(10 / 4)
    assert teacher_nll(lp, mask, per_sequence=True).tolist() == pytest.approx([2.0, 4.0])


def test_token_kl_by_hand():
    t = torch.tensor([[[0.0, 0.0], [5.0, -5.0]]])
    s = torch.tensor([[[math.log(3.0), 0.0], [-5.0, 5.0]]])
    mask = torch.tensor([[1, 0]])  # the second position (a huge KL) is masked out
    assert token_kl(t, s, mask).item() == pytest.approx(0.5 * math.log(4 / 3), rel=1e-5)
    assert token_kl(t, t, torch.ones(1, 2)).item() == pytest.approx(0.0, abs=1e-7)
    both = token_kl(t, s, torch.ones(1, 2)).item()
    assert both > token_kl(t, s, mask).item()
    ruled_out = torch.tensor([[[0.0, -math.inf]]])  # teacher gives token 1 zero probability
    assert math.isfinite(token_kl(ruled_out, torch.zeros(1, 1, 2), torch.ones(1, 1)).item())
    assert token_kl(ruled_out, torch.zeros(1, 1, 2), torch.ones(1, 1)).item() == pytest.approx(math.log(2))
    with pytest.raises(ValueError, match="vocabulary"):
        token_kl(torch.zeros(1, 1, 3), torch.zeros(1, 1, 4), torch.ones(1, 1))
