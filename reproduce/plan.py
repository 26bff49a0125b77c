"""What the paper's settings cost: wall time and GPU memory of every stage, projected from a measured run.

    python -m reproduce.plan --scale paper [--results results] [--out results/paper_scale.csv]

For each setting it reads the provenance of a shape run (`python -m reproduce.tableN --scale paper --set
models.init=random ...`: the paper's architectures with random weights, answers forced to their full
length, fewer prompts) and scales every stage's measured seconds by the ratio of the work the paper
config asks for to the work the run did (prompts x epochs; the lengths are the paper config's in both,
so per-token rates carry over unchanged). 8 GPUs: generation, scoring and judging split the prompts
(data parallel, perfect scaling assumed); training divides by 8 x TRAINING_EFFICIENCY_8 (an assumption:
no multi-GPU run was measured here). Memory: the measured peak of each stage on one GPU; on 8 GPUs
training with FSDP full sharding keeps 1/8 of the weights, gradients and optimizer state per GPU.
The API judge's cost: comparisons x (input, output tokens) at the configured model's list price.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from dadpo.config import config_from_dict, load_config
from evals.judges.api import price_of
from reproduce.provenance import ROOT
from reproduce.tables import write_csv

SUITE_SIZES = {"mt_bench": 80, "vicuna80": 80, "alpaca_eval": 805, "arena_hard": 750}  # whole suites (n = 0)
TRAINING_EFFICIENCY_8 = 0.85  # assumed share of linear scaling for 8-GPU training
JUDGE_TEMPLATE_TOKENS = 330  # the pairwise judge prompt without its fields (system + markers)
JUDGE_OUTPUT_TOKENS = 250  # a short explanation and the verdict
GPU_MEMORY_GB = {"H100 80GB": 80, "H200 141GB": 141}
COLUMNS = ["setting", "stage", "run_seconds", "run_items", "paper_items", "tokens_per_s", "hours_1gpu",
           "hours_8gpu", "peak_memory_gb_1gpu", "peak_memory_gb_8gpu", "fits_h100_80gb", "api_cost_usd", "notes"]


def eval_prompts(cfg) -> int:
    return sum(n or (SUITE_SIZES.get(s) or cfg.data.n_test) for s, n in cfg.eval.suites.items())


def work(stage: str, cfg) -> float:
    """Prompts x passes a stage handles under `cfg` (the unit the measured time is scaled by)."""
    t, n = cfg.train, cfg.data.n_train
    kind, _, what = stage.partition(":")
    models = len(cfg.methods) * max(1, len(cfg.seeds)) + len(cfg.beta2_sweep)
    if kind == "generate":
        return n if what.endswith("/train") else eval_prompts(cfg)
    if kind == "train":
        return n * (t.sft_epochs if what.startswith("sft") else t.epochs)
    if kind == "precompute":
        return n
    if kind == "measure":
        return eval_prompts(cfg) * (models if what.startswith("teacher on") else 1)
    if kind == "judge":
        return eval_prompts(cfg) * models
    return 1  # pruning: one-off


# a method a shape run left out (disk or time) is costed as one that makes the same passes per
# example: dDPO and daDPO both run the policy on chosen and rejected (daDPO's teacher scores are
# precomputed); KD is SFT's pass with a top-k loss
STAND_INS = {"ddpo": "dadpo", "dadpo": "ddpo", "kd": "sft", "sft": "kd"}
# KD's teacher top-k pass and daDPO's teacher scores are one teacher forward over the training answers
# (top-k over the chosen answers only, so the stand-in from scores overstates it)
PRECOMPUTE = {"kd": ("precompute:topk", "precompute:te"), "dadpo": ("precompute:te", "precompute:topk")}


def with_stand_ins(stages: dict, methods: list[str]) -> dict:
    """`stages` plus, for each paper method the run did not train, its stand-in's stages under its name."""
    out = dict(stages)
    for m in methods:
        pairs = [(p.format(m), p.format(STAND_INS.get(m, ""))) for p in ("train:{}", "generate:{}/eval")]
        for name, sub in pairs + ([PRECOMPUTE[m]] if m in PRECOMPUTE else []):
            if name not in out and sub in stages:
                out[name] = {**stages[sub], "stand_in": sub}
    return out


def train_state_gb(params: float) -> float:
    """fp32 weights + fp32 gradients + AdamW's two moments, GB."""
    return params * 16 / 1e9


def project(prov: dict, paper) -> list[dict]:
    run = config_from_dict(prov["config"])
    stages = with_stand_ins(prov["facts"].get("stages", {}), paper.methods)
    training = prov["facts"].get("training", {})
    rows = []
    for stage, st in stages.items():
        if stage in ("assets", "data"):
            continue
        measured = st.get("stand_in", stage)
        done, todo = work(measured, run), work(stage, paper)
        factor = todo / done if done else 1.0
        hours = st["seconds"] * factor / 3600
        # a run whose provenance was assembled from its log may lack memory: costed in time only
        peak = st["peak_memory_mb"] / 1024 if st.get("peak_memory_mb") is not None else None
        par = 8 * TRAINING_EFFICIENCY_8 if stage.startswith("train:") else (1 if stage == "prune" else 8)
        peak8 = peak
        res = training.get(measured.split(":", 1)[1], {}) if stage.startswith("train:") else {}
        note = f"not run: costed as {measured} (same passes per example); " if measured != stage else ""
        if res.get("params") and peak is not None:  # FSDP full sharding: 1/8 of the training state per GPU
            peak8 = peak - train_state_gb(res["params"]) * 7 / 8
            note += "8 GPUs: FSDP full shard, state / 8"
        rows.append({"stage": stage, "run_seconds": st["seconds"], "run_items": done, "paper_items": todo,
                     "tokens_per_s": round(st["tokens"] / st["seconds"], 1) if st.get("tokens") else None,
                     "hours_1gpu": hours, "hours_8gpu": hours / par, "peak_memory_gb_1gpu": peak,
                     "peak_memory_gb_8gpu": peak8, "fits_h100_80gb": None if peak is None else peak <= 80,
                     "notes": note + ("" if peak is not None else "peak memory not recorded")})
    return rows


def api_cost(paper, prompt_tokens: float) -> tuple[float, int]:
    """(USD, comparisons) of judging every model vs the teacher in both orders with the API judge."""
    if "api" not in paper.eval.judges:
        return 0.0, 0
    price = price_of(paper.eval.api_model)
    comparisons = 2 * eval_prompts(paper) * len([m for m in paper.methods])
    tokens_in = JUDGE_TEMPLATE_TOKENS + prompt_tokens + 2 * paper.eval.max_new_tokens
    if price is None:
        return math.nan, comparisons
    return comparisons * (tokens_in * price[0] + JUDGE_OUTPUT_TOKENS * price[1]) / 1e6, comparisons


def plan(setting: str, results: Path) -> list[dict]:
    paper = load_config(None, setting=setting, scale="paper")
    path = results / f"{setting}_paper_random.provenance.json"
    if not path.is_file():
        raise FileNotFoundError(f"no shape run of {setting} at {path}: run `python -m reproduce.{setting} --scale "
                                "paper --set models.init=random ...` first (see README: Paper scale)")
    prov = json.loads(path.read_text(encoding="utf-8"))
    rows = [{"setting": setting, **r} for r in project(prov, paper)]
    cost, comparisons = api_cost(paper, paper.data.max_prompt_tokens / 2)
    rows.append({"setting": setting, "stage": f"judge:api ({paper.eval.api_model})", "paper_items": comparisons,
                 "api_cost_usd": cost, "notes": "list price; answers assumed at full length (upper bound)"})
    total = {k: sum(r.get(k) or 0 for r in rows) for k in ("hours_1gpu", "hours_8gpu", "api_cost_usd")}
    rows.append({"setting": setting, "stage": "total", **total,
                 **{k: max((r[k] for r in rows if r.get(k) is not None), default=None)
                    for k in ("peak_memory_gb_1gpu", "peak_memory_gb_8gpu")},
                 "notes": f"from {path.name}: {prov.get('device', {}).get('gpu', 'cpu')}, git {prov.get('git_sha')}"})
    for r in rows:
        if r.get("peak_memory_gb_1gpu") is not None:
            r["fits_h100_80gb"] = r["peak_memory_gb_1gpu"] <= GPU_MEMORY_GB["H100 80GB"]
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.plan", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", default="paper", choices=["paper"])
    ap.add_argument("--results", default=str(ROOT / "results"), help="folder holding the shape runs' provenance")
    ap.add_argument("--out", default=str(ROOT / "results" / "paper_scale.csv"))
    ap.add_argument("--settings", nargs="+", default=["table1", "table2"], choices=["table1", "table2"],
                    help="the settings whose shape runs to project (each needs its shape run)")
    args = ap.parse_args(argv)
    rows = []
    try:
        for setting in args.settings:
            rows += plan(setting, Path(args.results))
    except (FileNotFoundError, ValueError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    write_csv(Path(args.out), rows, COLUMNS)
    print(f"{'setting':<8}{'stage':<34}{'1 GPU h':>9}{'8 GPU h':>9}{'peak GB':>9}{'8-GPU GB':>9}{'USD':>9}")
    for r in rows:
        f = lambda k, d=1: "" if r.get(k) is None else f"{r[k]:.{d}f}"  # noqa: E731
        print(f"{r['setting']:<8}{r['stage']:<34}{f('hours_1gpu', 2):>9}{f('hours_8gpu', 2):>9}"
              f"{f('peak_memory_gb_1gpu'):>9}{f('peak_memory_gb_8gpu'):>9}{f('api_cost_usd', 0):>9}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
