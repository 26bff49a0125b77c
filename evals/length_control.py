"""Length-controlled win rate against the teacher (after AlpacaEval 2.0), fitted with plain numpy.

Model, per judged comparison i (failed ones dropped):
    y_i = 1 for a student win, 0.5 for a tie, 0 for a loss (a fractional target)
    d_i = student length - teacher length;  s = std(d) over the judged comparisons (ddof=1)
    P(student wins) = sigmoid(a + b * tanh(d_i / s))
fitted by maximum likelihood with the Bernoulli log-likelihood of the fractional targets
    sum_i y_i log p_i + (1 - y_i) log(1 - p_i)  -  ridge / 2 * b^2
(Newton / IRLS). The small ridge penalty on the length slope b only keeps b finite when length separates
wins from losses; the intercept a is not penalised. LC win rate = sigmoid(a), the predicted win
probability at zero length difference. Its raw counterpart is the adjusted win rate (ties as half a win),
the mean of y. Interval: percentile bootstrap over comparisons, refitting (s included) on each resample.

How it differs from AlpacaEval 2.0's GLM (alpaca_eval.metrics.glm_winrate, "length_controlled_v1"):
AlpacaEval's logit also has an instruction-difficulty term gamma * difficulty_i, with difficulties estimated
beforehand from many models' annotations on its own 805 instructions and downloaded at fit time, and it
regularises toward two deliberately length-gamed baselines; it fits with an L1 penalty chosen by 5-fold
cross-validation (scikit-learn), measures length in characters, and reports the mean over instructions of
the predicted win probability at d = 0. Our prompts have no such difficulty estimates, so the model keeps
only the intercept and the length term, and the mean prediction at d = 0 reduces to sigmoid(a). That
package cannot be driven offline on our data (it downloads those files from the Hub at fit time and its
import pulls openai, scikit-learn, patsy and tiktoken), hence this implementation. Lengths may be in any
unit; the pipeline's records give words.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from evals.metrics import counts, percentile_intervals

TARGET = {"win": 1.0, "tie": 0.5, "loss": 0.0}
DEFAULT_RIDGE = 0.01
_MAX_ITER, _MAX_STEP, _TOL = 100, 4.0, 1e-10


def _sigmoid(z):
    """1 / (1 + exp(-z)), without overflow."""
    return np.exp(-np.logaddexp(0.0, -z))


def _length_feature(d: np.ndarray, w: np.ndarray) -> np.ndarray:
    """tanh(d / s) per row of weights w (B, n), s the weighted (ddof=1) std of d; zeros where s is 0."""
    n = w.sum(axis=1, keepdims=True)
    mean = (w * d).sum(axis=1, keepdims=True) / n
    var = (w * (d - mean) ** 2).sum(axis=1, keepdims=True) / np.maximum(n - 1, 1)
    sd = np.sqrt(var)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sd > 0, np.tanh(d / sd), 0.0)


def fit_length_logit(y: np.ndarray, t: np.ndarray, w: np.ndarray, ridge: float = DEFAULT_RIDGE) -> np.ndarray:
    """(B, 2) maximum-likelihood [a, b] of sigmoid(a + b t) for B weighted problems at once.

    y (n,) targets in [0, 1]; t (B, n) length features; w (B, n) case weights (bootstrap counts); ridge
    penalises b only. Newton steps, each scaled down to length <= 4 to stay stable on near-separable data."""
    theta = np.zeros((t.shape[0], 2))
    for _ in range(_MAX_ITER):
        p = _sigmoid(theta[:, :1] + theta[:, 1:] * t)
        r, h = w * (p - y), w * p * (1 - p)
        grad = np.stack([r.sum(1), (r * t).sum(1) + ridge * theta[:, 1]], axis=1)
        haa, hab, hbb = h.sum(1) + 1e-12, (h * t).sum(1), (h * t * t).sum(1) + ridge + 1e-12
        det = (haa * hbb - hab ** 2)[:, None]  # the 2 x 2 Hessian inverted in closed form
        step = np.stack([hbb * grad[:, 0] - hab * grad[:, 1], haa * grad[:, 1] - hab * grad[:, 0]], axis=1) / det
        norm = np.linalg.norm(step, axis=1, keepdims=True)
        step *= np.minimum(1.0, _MAX_STEP / np.maximum(norm, 1e-300))
        theta -= step
        if np.max(np.abs(step)) < _TOL:
            break
    return theta


def lc_win_rate(outcomes: Sequence[str], student_lengths: Sequence[float], teacher_lengths: Sequence[float],
                n_resamples: int = 1000, seed: int = 0, level: float = 0.95, ridge: float = DEFAULT_RIDGE) -> dict:
    """Raw and length-controlled win rate of the student against the teacher, one entry per comparison.

    Returns {"n": judged, "adj_win_rate": raw (wins + ties/2) / n, "lc_win_rate": sigmoid(a),
    "lc_win_rate_lo", "lc_win_rate_hi": bootstrap interval, "intercept": a, "length_coef": b,
    "length_scale": s}; NaN values when nothing was judged."""
    if not len(outcomes) == len(student_lengths) == len(teacher_lengths):
        raise ValueError("outcomes, student_lengths and teacher_lengths differ in length")
    if n_resamples < 1000:
        raise ValueError("n_resamples must be >= 1000")
    counts(outcomes)  # validates the outcome names
    keep = [i for i, o in enumerate(outcomes) if o != "failed"]
    if not keep:
        return {"n": 0, **{k: math.nan for k in ("adj_win_rate", "lc_win_rate", "lc_win_rate_lo", "lc_win_rate_hi",
                                                   "intercept", "length_coef", "length_scale")}}
    y = np.array([TARGET[outcomes[i]] for i in keep])
    d = np.array([float(student_lengths[i]) - float(teacher_lengths[i]) for i in keep])
    n = len(y)
    ones = np.ones((1, n))
    a, b = fit_length_logit(y, _length_feature(d, ones), ones, ridge)[0]
    w = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=n_resamples).astype(np.float64)
    lc_samples = _sigmoid(fit_length_logit(y, _length_feature(d, w), w, ridge)[:, 0])
    lo, hi = percentile_intervals({"lc": lc_samples}, level)["lc"]
    return {"n": n, "adj_win_rate": float(y.mean()), "lc_win_rate": float(_sigmoid(a)), "lc_win_rate_lo": lo,
            "lc_win_rate_hi": hi, "intercept": float(a), "length_coef": float(b),
            "length_scale": float(np.std(d, ddof=1)) if n > 1 else math.nan}
