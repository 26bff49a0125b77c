"""The result tables of a run: tidy rows, CSV files and the printed table."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from dadpo.cache import atomic_write_text
from dadpo.methods import METHODS
from reproduce.paper import PAPER_MODELS, paper_value

RESULT_COLUMNS = [
    "setting", "scale", "method", "extension", "beta2", "suite", "judge", "judge_model", "proxy",
    "n", "wins", "ties", "losses", "failed", "win_rate", "win_rate_lo", "win_rate_hi",
    "adj_win_rate", "adj_win_rate_lo", "adj_win_rate_hi",
    "pref_rate", "pref_rate_lo", "pref_rate_hi",
    "first_position_win_share", "student_len", "teacher_len",
    "paper_metric", "paper_value", "paper_setting", "teacher", "student",
    # beyond one seed and one judge (reproduce/evidence.py)
    "seed", "n_seeds", "ci", "lc_win_rate", "lc_win_rate_lo", "lc_win_rate_hi",
    "answer_tokens", "cut_share", "rouge_l", "student_nll", "teacher_nll",
    "teacher_answer_tokens", "teacher_cut_share", "teacher_rouge_l", "shape_run",
]
TRAINING_COLUMNS = ["method", "step", "epoch", "loss", "loss_at_ref", "lr", "grad_norm", "tokens",
                    "rewards/chosen", "rewards/rejected", "rewards/margins", "rewards/accuracy",
                    "dadpo/teacher_term", "dadpo/margin_ref", "dadpo/delta_te"]


def fmt(v) -> str:
    """One CSV cell: floats with 6 significant digits, empty for missing."""
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.6g}"
    return str(v)


def write_csv(path: Path, rows: list[dict], columns: list[str]) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({k: fmt(r.get(k)) for k in columns})
    atomic_write_text(path, buf.getvalue())


def result_rows(cfg, summary: list[dict], names: dict, measures: dict, lc: dict) -> list[dict]:
    """One tidy row per model x suite x judge: the judge's summary, the model's seed, its judge-free
    measures (`measures[name][suite]`, the teacher's beside them), its length-controlled rate, and the
    paper's number where it reports one for this row."""
    out = []
    for s in summary:
        name, suite = s["student"], s["suite"]
        t = names[name]
        metric, value = paper_value(cfg.setting, t.method, suite) if not t.sweep else ("", None)
        teacher = measures.get("teacher", {}).get(suite, {})
        out.append({**s, "name": name, "setting": cfg.setting, "scale": cfg.scale,
                    "method": name if t.sweep else t.method, "extension": METHODS.get(t.method) is not None
                    and METHODS[t.method].extension, "beta2": "" if t.beta2 is None else t.beta2,
                    "seed": "" if t.seed is None else t.seed, "n_seeds": 1 if t.seed is not None else "",
                    **measures.get(name, {}).get(suite, {}), **lc.get((name, suite, s["judge"]), {}),
                    **{f"teacher_{k}": teacher.get(k) for k in ("answer_tokens", "cut_share", "rouge_l")},
                    "paper_metric": metric, "paper_value": value,
                    "paper_setting": PAPER_MODELS[cfg.setting] if metric else "",
                    "teacher": cfg.models.teacher, "shape_run": cfg.models.init == "random",
                    "student": cfg.models.student + (f" pruned {cfg.models.prune.target_share:.0%}"
                                                     if cfg.models.prune.enabled else "")})
    return out


def training_rows(logs: dict[str, list[dict]]) -> list[dict]:
    return [{**rec, "method": name} for name, log in sorted(logs.items()) for rec in log]


def print_table(rows: list[dict], shape_run: bool = False) -> None:
    """The table as text: rows of one seed, or the mean over seeds where a method has several."""
    several = {(r["method"], r["suite"], r["judge"]) for r in rows if r.get("seed") == "mean"}
    rows = [r for r in rows if r.get("seed") == "mean" or (r["method"], r["suite"], r["judge"]) not in several]
    if shape_run:
        print("SHAPE RUN: random weights of the paper's architectures; times and memory only, every quality "
              "number below means nothing")
    head = (f"{'method':<20}{'suite':<13}{'judge':<10}{'n':>4} {'W/T/L':>10} {'win':>6} {'LC win':>6} "
            f"{'pref (95% CI)':>24} {'paper':>14}")
    print(head)
    print("-" * len(head))
    for r in rows:
        pref = (f"{r['pref_rate']:+.3f} [{r['pref_rate_lo']:+.2f},{r['pref_rate_hi']:+.2f}]"
                if isinstance(r.get("pref_rate"), float) else "n/a")
        paper = (f"{'pref' if r['paper_metric'] == 'pref_rate' else 'win'} {r['paper_value']:+.3f}"
                 if r.get("paper_value") is not None else "")
        judge = r["judge"] + ("*" if r.get("proxy") else "")
        wtl = f"{r['wins']}/{r['ties']}/{r['losses']}"
        win = f"{r['win_rate']:.3f}" if isinstance(r.get("win_rate"), float) else "n/a"
        lc = f"{r['lc_win_rate']:.3f}" if isinstance(r.get("lc_win_rate"), float) else ""
        seeds = f"x{r['n_seeds']}" if r.get("seed") == "mean" else ""
        print(f"{r['method'] + seeds:<20}{r['suite']:<13}{judge:<10}{r['n']:>4} {wtl:>10} {win:>6} {lc:>6} "
              f"{pref:>24} {paper:>14}")
    print("* proxy judge (offline stand-in, not the paper's judge). LC win = length-controlled win rate. xN = mean "
          "over N training seeds (two-level bootstrap interval). paper = the paper's number for its own models, shown "
          "for comparison only.")
