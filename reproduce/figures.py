"""Rebuild the figures from the result CSVs alone: `python -m reproduce.figures [--results DIR]`.

For every results/{setting}_{scale}.csv (`draw_all(results_dir, stem)` draws one stem):
  {stem}_pref.png      preference rate (wins - losses) / n per method with 95% intervals, one panel per
                       suite and judge; the paper's value, where it reports one, as a marker
  {stem}_beta2.png     daDPO's beta2 sweep (dDPO is beta2 = 0), when the CSV has sweep rows
  {stem}_training.png  training loss per step (DPO family: also loss minus its value at pi_ref on the
                       same batch, and reward margins), from {stem}_training.csv
Every title names the teacher and the student.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["student", "sft", "kd", "ddpo", "dadpo", "dadpo_token"]
# fixed look per method, so that one method reads the same in every figure; dDPO sits above daDPO
# (solid with circles over dashed with squares) because their curves often coincide
STYLES = {
    "student": dict(color="tab:gray", ls="-", marker="x", zorder=2),
    "sft": dict(color="tab:brown", ls="-", marker="v", zorder=2),
    "kd": dict(color="tab:purple", ls="-", marker="^", zorder=2),
    "ddpo": dict(color="tab:red", ls="-", marker="o", zorder=4),
    "dadpo": dict(color="tab:blue", ls="--", marker="s", zorder=3),
    "dadpo_token": dict(color="tab:cyan", ls="-.", marker="D", zorder=3),
}
# dotted lines are kept for the thin helper curves (a batch's loss at pi_ref, a margin's part)
SPARE = [dict(color=c, ls=ls, marker=m, zorder=3) for c, ls, m in
         [("tab:green", "-.", "P"), ("tab:olive", "-", "*"), ("tab:orange", "--", "h"), ("tab:pink", "-.", "X"),
          ("black", "-", "d"), ("tab:cyan", "--", "<")]]


def _method_order(methods) -> list[str]:
    known = [m for m in ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def method_styles(methods) -> dict[str, dict]:
    """A distinct colour, line style, marker and z-order for every method."""
    ordered = _method_order(methods)
    spare = iter(SPARE * (1 + len(ordered) // len(SPARE)))
    return {m: STYLES.get(m) or next(spare) for m in ordered}


def _short(model: str) -> str:
    return str(model).removeprefix("offline:")


def pair_label(teacher: str, student: str) -> str:
    """'teacher T -> student: its 20%-pruned copy' (or '-> student S' for a different model)."""
    t, s = _short(teacher), _short(student)
    if s.startswith(t + " pruned "):
        return f"teacher {t} -> student: its {s.removeprefix(t + ' pruned ')}-pruned copy"
    return f"teacher {t} -> student {s}"


def preference_figure(df: pd.DataFrame, title: str, path: Path) -> None:
    panels = df.groupby(["suite", "judge"], sort=False)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4.0), squeeze=False, sharey=True)
    for ax, ((suite, judge), g) in zip(axes[0], panels):
        g = g.set_index("method").loc[_method_order(g["method"])]
        x = range(len(g))
        err = [g["pref_rate"] - g["pref_rate_lo"], g["pref_rate_hi"] - g["pref_rate"]]
        ax.errorbar(x, g["pref_rate"], yerr=err, fmt="o", capsize=4, label="this suite (95% CI)")
        paper = g["paper_value"].dropna() if "paper_value" in g else []
        for m, v in getattr(paper, "items", lambda: [])():
            if g.loc[m, "paper_metric"] == "pref_rate":
                ax.plot(list(g.index).index(m), v, "r*", ms=12,
                        label=f"paper ({g.loc[m, 'paper_setting'] or 'its own models'})")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(list(x), [f"{m}{' (ext.)' if m == 'dadpo_token' else ''}" for m in g.index],
                      rotation=35, ha="right", fontsize=8)
        proxy = " (proxy judge)" if str(g["proxy"].iloc[0]) == "True" else ""
        ax.set_title(f"{suite} - {judge}{proxy}, n={int(g['n'].max())}", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
    axes[0][0].set_ylabel("preference rate vs teacher\n(wins - losses) / n")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        uniq = dict(zip(labels, handles))
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.93))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def beta2_figure(df: pd.DataFrame, title: str, path: Path) -> bool:
    """Preference rate against beta2, one series per suite / judge. beta2 values sit at even
    positions (0, 0.01, 0.1, ... would crowd on a linear axis) and the series are nudged apart so
    that their intervals do not cover each other; the legend sits below the axes."""
    sweep = df[df["beta2"].notna() | (df["method"] == "ddpo")].copy()
    sweep.loc[sweep["method"] == "ddpo", "beta2"] = 0.0
    values = sorted(sweep["beta2"].unique())
    if len(values) < 3:
        return False
    series = list(sweep.groupby(["suite", "judge"], sort=False))
    fig, ax = plt.subplots(figsize=(6, 5))
    for i, ((suite, judge), g) in enumerate(series):
        g = g.sort_values("beta2")
        nudge = (i - (len(series) - 1) / 2) * 0.06
        x = [values.index(b) + nudge for b in g["beta2"]]
        ax.errorbar(x, g["pref_rate"], yerr=[g["pref_rate"] - g["pref_rate_lo"], g["pref_rate_hi"] - g["pref_rate"]],
                    fmt="o-", capsize=3, label=f"{suite} / {judge} (n={int(g['n'].max())})")
    ax.set_xticks(range(len(values)), [f"{b:g}" + (" (dDPO)" if b == 0 else "") for b in values])
    ax.set_xlabel("beta2 (evenly spaced; 0 = dDPO)")
    ax.set_ylabel("preference rate vs teacher\n(wins - losses) / n, 95% CI")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=2, frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _plot(ax, x, y, style: dict, label: str, **extra) -> None:
    opts = {**style, "lw": 1.4, "ms": 4, "markevery": max(1, len(x) // 12), **extra}
    ax.plot(x, y, label=label, **opts)


TRAINING_PANELS = [
    ("raw training loss (each method's own objective)", "training loss"),
    ("progress: loss - loss of the same batch at pi_ref\n(below 0 = better than the starting student)",
     "loss - loss at pi_ref (same batch)"),
    ("reward margin (chosen - rejected)\nthin dotted: daDPO's policy-vs-pi_ref part", "reward margin"),
]
DADPO_NOTE = ("\ndaDPO's raw loss includes the per-batch teacher-gap term (thin dotted:\n"
              "the same batch at pi_ref), so its level moves from batch to batch and\n"
              "a rise is not divergence: the middle panel is the progress measure")


def training_figure(tr: pd.DataFrame, title: str, path: Path) -> None:
    """Loss per step; for the DPO family also the loss minus the same batch's loss at pi_ref (a
    same-batch measure of progress: daDPO's raw loss spreads by nats from batch to batch, since it
    includes a teacher-gap term) and the reward margins."""
    optional = ["loss_at_ref", "rewards/margins", "dadpo/teacher_term", "dadpo/margin_ref"]
    tr = tr.reindex(columns=list(dict.fromkeys([*tr.columns, *optional])))  # older logs lack some
    dpo = tr[tr["loss_at_ref"].notna()]
    dadpo_family = set(dpo.loc[dpo["dadpo/teacher_term"].notna(), "method"])
    n = 3 if len(dpo) else 1
    fig, axes = plt.subplots(1, n, figsize=(5.4 * n, 4.6), squeeze=False)
    ax = axes[0]
    styles = method_styles(tr["method"])
    for method, style in styles.items():
        g = tr[tr["method"] == method]
        _plot(ax[0], g["step"], g["loss"], style, method)
        if method in dadpo_family:
            ax[0].plot(g["step"], g["loss_at_ref"], color=style["color"], ls=":", lw=0.9, alpha=0.8, zorder=1)
        if method in set(dpo["method"]):
            _plot(ax[1], g["step"], g["loss"] - g["loss_at_ref"], style, method)
            _plot(ax[2], g["step"], g["rewards/margins"], style, method)
            if method in dadpo_family:
                ax[2].plot(g["step"], g["dadpo/margin_ref"], color=style["color"], ls=":", lw=1.1, zorder=5)
    for i, (a, (panel_title, ylabel)) in enumerate(zip(ax, TRAINING_PANELS)):
        note = DADPO_NOTE if i == 0 and n == 3 and dadpo_family else ""
        a.set_title(panel_title + note, fontsize=9 if not note else 8)
        a.set_xlabel("optimizer step")
        a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a.set_ylabel(ylabel, fontsize=8)
    if n == 3:
        ax[1].axhline(0, color="grey", lw=0.8, zorder=0)
    handles, labels = ax[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(labels), 6), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.07, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def result_stems(results: Path) -> list[str]:
    """Stems of the table CSVs in a results folder (table1_gpu.csv -> table1_gpu)."""
    side = ("_training", "_differences", "_agreement")
    return [p.stem for p in sorted(Path(results).glob("table*_*.csv")) if not p.stem.endswith(side)]


def headline(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method, suite and judge: the mean over seeds where a method was trained with several
    (seed "mean"), else its one row."""
    if "seed" not in df or not (df["seed"].astype(str) == "mean").any():
        return df
    mean = df["seed"].astype(str) == "mean"
    several = set(zip(df.loc[mean, "method"], df.loc[mean, "suite"], df.loc[mean, "judge"]))
    keep = [m or (r.method, r.suite, r.judge) not in several for m, r in zip(mean, df.itertuples())]
    return df[keep].reset_index(drop=True)


def draw_all(results_dir: Path, stem: str) -> list[Path]:
    """Draw every figure of one stem from {stem}.csv and {stem}_training.csv; the paths written."""
    results_dir = Path(results_dir)
    df = headline(pd.read_csv(results_dir / f"{stem}.csv"))
    if df.empty:
        return []
    models = pair_label(df["teacher"].iloc[0], df["student"].iloc[0])
    made = [results_dir / f"{stem}_pref.png"]
    preference_figure(df, f"{stem} (scale {df['scale'].iloc[0]})\n{models}", made[0])
    beta2 = results_dir / f"{stem}_beta2.png"
    if beta2_figure(df, f"{stem}: daDPO beta2 sweep (beta2 = 0 is dDPO)\n{models}", beta2):
        made.append(beta2)
    tr_path = results_dir / f"{stem}_training.csv"
    if tr_path.is_file():
        tr = pd.read_csv(tr_path)
        if not tr.empty:
            made.append(results_dir / f"{stem}_training.png")
            training_figure(tr, f"{stem}: training curves\n{models}", made[-1])
    return made


def build(results: Path) -> list[Path]:
    return [p for stem in result_stems(results) for p in draw_all(results, stem)]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.figures", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", default=str(ROOT / "results"))
    args = ap.parse_args(argv)
    results = Path(args.results)
    if not results.is_dir():
        print(f"error: no results folder {results}", file=sys.stderr)
        return 2
    made = build(results)
    if not made:
        print(f"error: no result CSVs (table*_*.csv) in {results}", file=sys.stderr)
        return 2
    for p in made:
        print(f"wrote {p}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
