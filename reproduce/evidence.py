"""Evidence beyond one seed and one judge, for the result tables of a run.

- per trained model: judge-free measures (answer length in tokens, share cut at max_new_tokens,
  ROUGE-L against the suite's reference, the model's NLL of the teacher's answers, the teacher's NLL of
  the model's answers) and the length-controlled win rate;
- per method trained with several seeds: the mean over seeds with a two-level bootstrap interval
  (seeds, then prompts), and paired differences between methods (is daDPO ahead of dDPO beyond seed
  noise?);
- with two or more judges: their agreement (raw and Cohen's kappa, ties included and excluded).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from evals.agreement import agreement_table
from evals.length_control import lc_win_rate
from evals.metrics import RATES, token_length_summary
from evals.rouge import rouge_l
from evals.seed_bootstrap import CI_TWO_LEVEL, paired_seed_bootstrap_difference, seed_bootstrap

MEASURES = ["answer_tokens", "cut_share", "rouge_l", "student_nll", "teacher_nll"]
DIFFERENCES = [("dadpo", "ddpo"), ("dadpo", "sft"), ("ddpo", "sft"), ("kd", "sft")]
DIFFERENCE_COLUMNS = ["method_a", "method_b", "suite", "judge", "n_seeds", "ci"] + [
    f"{r}{s}" for r in RATES for s in ("", "_lo", "_hi")]


@dataclass(frozen=True)
class Trained:
    """One evaluated model: the table row (method), its training seed and, for the sweep, beta2."""
    name: str
    method: str
    seed: int | None = None
    beta2: float | None = None
    sweep: bool = False  # an extra daDPO run of the beta2 sweep


def answer_measures(answers: dict[str, dict], name: str, lengths: dict | None, max_new_tokens: int,
                    nll: dict | None) -> dict:
    """{suite: measures} of one model's answers (see the module docstring); `lengths` maps a suite to
    (tokens, ended on an end-of-turn) per answer when the generator recorded them."""
    out = {}
    for suite, ans in answers.items():
        m = {"rouge_l": rouge_l(ans[name], [it["reference"] for it in ans["items"]])["rouge_l_f"]}
        if lengths and suite in lengths:
            s = token_length_summary(lengths[suite], max_new_tokens)
            m.update(answer_tokens=s["mean_tokens"], cut_share=s["cut_share"])
        if nll and (name, suite) in nll:
            m.update(nll[name, suite])
        out[suite] = m
    return out


def lc_columns(records: list[dict], n_resamples: int, seed: int) -> dict:
    """{(student, suite, judge): lc_win_rate, lo, hi} from the comparison records (lengths in words)."""
    groups: dict = {}
    for r in records:
        groups.setdefault((r["student"], r["suite"], r["judge"]), []).append(r)
    out = {}
    for key, rs in groups.items():
        lc = lc_win_rate([r["outcome"] for r in rs], [r["student_words"] for r in rs],
                         [r["teacher_words"] for r in rs], n_resamples, seed)
        out[key] = {k: lc[k] for k in ("lc_win_rate", "lc_win_rate_lo", "lc_win_rate_hi")}
    return out


def _outcomes(records: list[dict], names: dict[str, Trained]) -> dict:
    """{(method, suite, judge): {seed: {prompt_id: outcome}}} over models that have a seed."""
    out: dict = {}
    for r in records:
        t = names.get(r["student"])
        if t is not None and t.seed is not None and not t.sweep:
            out.setdefault((t.method, r["suite"], r["judge"]), {}).setdefault(t.seed, {})[str(r["prompt_id"])] = \
                r["outcome"]
    return out


def seed_rows(rows: list[dict], records: list[dict], names: dict[str, Trained], n_resamples: int,
              seed: int) -> list[dict]:
    """For every method trained with two or more seeds: one row per suite and judge with the mean over
    seeds of each rate, its two-level interval, and the mean of every per-seed measure."""
    out = []
    for (method, suite, judge), by_seed in _outcomes(records, names).items():
        if len(by_seed) < 2:
            continue
        agg = seed_bootstrap(by_seed, n_resamples, seed)
        per = [r for r in rows if names[r["name"]].method == method and names[r["name"]].seed is not None
               and not names[r["name"]].sweep and r["suite"] == suite and r["judge"] == judge]
        base = dict(per[0])
        for k in ("wins", "ties", "losses", "failed", "n"):
            base[k] = sum(r[k] for r in per)
        for k in MEASURES + ["lc_win_rate", "student_len", "teacher_len", "first_position_win_share"]:
            vals = [r[k] for r in per if isinstance(r.get(k), (int, float)) and not math.isnan(r[k])]
            base[k] = sum(vals) / len(vals) if vals else None
        base.update({k: agg[k] for r in RATES for k in (r, f"{r}_lo", f"{r}_hi")})
        base.update(name=method, seed="mean", n_seeds=agg["n_seeds"], ci=CI_TWO_LEVEL,
                    lc_win_rate_lo=None, lc_win_rate_hi=None)
        out.append(base)
    return out


def difference_rows(records: list[dict], names: dict[str, Trained], n_resamples: int, seed: int) -> list[dict]:
    """Paired differences (method a - method b) over the seeds both were trained with."""
    outcomes = _outcomes(records, names)
    out = []
    for a, b in DIFFERENCES:
        for (method, suite, judge), by_seed in sorted(outcomes.items()):
            other = outcomes.get((b, suite, judge))
            if method != a or other is None:
                continue
            shared = sorted(set(by_seed) & set(other))
            d = paired_seed_bootstrap_difference({s: by_seed[s] for s in shared}, {s: other[s] for s in shared},
                                                 n_resamples, seed)
            out.append({"method_a": a, "method_b": b, "suite": suite, "judge": judge, "n_seeds": d["n_seeds"],
                        "ci": CI_TWO_LEVEL if len(shared) > 1 else "95% paired bootstrap over prompts",
                        **{k: d[k] for r in RATES for k in (r, f"{r}_lo", f"{r}_hi")}})
    return out


def agreement_rows(records: list[dict]) -> list[dict]:
    """Judge agreement per suite when two or more judges decided the same comparisons."""
    return agreement_table(records) if len({r["judge_id"] for r in records}) > 1 else []
