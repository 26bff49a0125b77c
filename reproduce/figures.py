"""Rebuild the figures from the result CSVs alone: `python -m reproduce.figures [--results DIR]`.

For every results/{setting}_{scale}.csv:
  {stem}_pref.png      preference rate (wins - losses) / n per method with 95% intervals, one panel per
                       suite and judge; the paper's value, where it reports one, as a marker
  {stem}_beta2.png     daDPO's beta2 sweep (dDPO is beta2 = 0), when the CSV has sweep rows
  {stem}_training.png  training loss per step (DPO family: also loss minus its value at pi_ref on the
                       same batch, and reward margins), from {stem}_training.csv
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
ORDER = ["student", "sft", "kd", "ddpo", "dadpo", "dadpo_token"]


def _method_order(methods) -> list[str]:
    known = [m for m in ORDER if m in set(methods)]
    return known + sorted(set(methods) - set(known))


def preference_figure(df: pd.DataFrame, title: str, path: Path) -> None:
    panels = df.groupby(["suite", "judge"], sort=False)
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.8), squeeze=False, sharey=True)
    for ax, ((suite, judge), g) in zip(axes[0], panels):
        g = g.set_index("method").loc[_method_order(g["method"])]
        x = range(len(g))
        err = [g["pref_rate"] - g["pref_rate_lo"], g["pref_rate_hi"] - g["pref_rate"]]
        ax.errorbar(x, g["pref_rate"], yerr=err, fmt="o", capsize=4, label="this suite (95% CI)")
        paper = g["paper_value"].dropna() if "paper_value" in g else []
        for m, v in getattr(paper, "items", lambda: [])():
            if g.loc[m, "paper_metric"] == "pref_rate":
                ax.plot(list(g.index).index(m), v, "r*", ms=12, label="paper (its own models)")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(list(x), [f"{m}{' (ext.)' if m == 'dadpo_token' else ''}" for m in g.index], rotation=30)
        proxy = " (proxy judge)" if str(g["proxy"].iloc[0]) == "True" else ""
        ax.set_title(f"{suite} - {judge}{proxy}, n={int(g['n'].max())}", fontsize=9)
        ax.set_ylim(-1.05, 1.05)
    axes[0][0].set_ylabel("preference rate vs teacher\n(wins - losses) / n")
    handles, labels = axes[0][0].get_legend_handles_labels()
    if handles:
        uniq = dict(zip(labels, handles))
        fig.legend(uniq.values(), uniq.keys(), loc="lower center", ncol=2, fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.08, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)


def beta2_figure(df: pd.DataFrame, title: str, path: Path) -> bool:
    sweep = df[df["beta2"].notna() | (df["method"] == "ddpo")].copy()
    sweep.loc[sweep["method"] == "ddpo", "beta2"] = 0.0
    if sweep["beta2"].nunique() < 3:
        return False
    fig, ax = plt.subplots(figsize=(5, 3.6))
    for (suite, judge), g in sweep.groupby(["suite", "judge"]):
        g = g.sort_values("beta2")
        ax.errorbar(g["beta2"], g["pref_rate"], yerr=[g["pref_rate"] - g["pref_rate_lo"],
                                                     g["pref_rate_hi"] - g["pref_rate"]],
                    fmt="o-", capsize=3, label=f"{suite} / {judge}")
    ax.set_xlabel("beta2 (0 = dDPO)")
    ax.set_ylabel("preference rate vs teacher")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def training_figure(tr: pd.DataFrame, title: str, path: Path) -> None:
    """Loss per step; for the DPO family also the loss minus the same batch's loss at pi_ref (a
    same-batch measure of progress: daDPO's raw loss spreads by nats from batch to batch) and the
    reward margins."""
    dpo = tr[tr["loss_at_ref"].notna()] if "loss_at_ref" in tr else tr.iloc[:0]
    n = 3 if len(dpo) else 1
    fig, axes = plt.subplots(1, n, figsize=(5 * n, 3.6), squeeze=False)
    ax = axes[0]
    for method, g in tr.groupby("method"):
        line, = ax[0].plot(g["step"], g["loss"], label=method)
        if method in set(dpo["method"]):
            ax[1].plot(g["step"], g["loss"] - g["loss_at_ref"], label=method, color=line.get_color())
            ax[2].plot(g["step"], g["rewards/margins"], label=method, color=line.get_color())
            if "dadpo/margin_ref" in g and g["dadpo/margin_ref"].notna().any():
                ax[2].plot(g["step"], g["dadpo/margin_ref"], "--", color=line.get_color(),
                           label=f"{method}: policy-vs-ref part")
    labels = ["training loss (per method's objective)", "loss - loss of the same batch at pi_ref",
              "reward margin (chosen - rejected)"]
    for a, label in zip(ax, labels):
        a.set_xlabel("optimizer step")
        a.set_ylabel(label, fontsize=8)
        a.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def build(results: Path) -> list[Path]:
    made = []
    for csv_path in sorted(results.glob("table*_*.csv")):
        if csv_path.stem.endswith("_training"):
            continue
        df = pd.read_csv(csv_path)
        if df.empty:
            continue
        stem = csv_path.stem
        models = f"{df['teacher'].iloc[0]} -> {df['student'].iloc[0]}"
        title = f"{stem}: {models} (scale {df['scale'].iloc[0]})"
        out = results / f"{stem}_pref.png"
        preference_figure(df, title, out)
        made.append(out)
        if beta2_figure(df, f"{stem}: daDPO beta2 sweep", results / f"{stem}_beta2.png"):
            made.append(results / f"{stem}_beta2.png")
        tr_path = results / f"{stem}_training.csv"
        if tr_path.is_file():
            tr = pd.read_csv(tr_path)
            if not tr.empty:
                training_figure(tr, f"{stem}: training curves", results / f"{stem}_training.png")
                made.append(results / f"{stem}_training.png")
    return made


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
