"""`python -m reproduce.bench [--case cpu|gpu|tiny|profile]`: the performance benchmark.

Runs every implementation side by side in one process and merges one row per (case, device, stage,
implementation) into results/perf.csv, plus results/perf.provenance.json (device, versions,
settings, measured peaks, formulas). Stages (--stages, default all):
  score     teacher scoring: sequence log-probs and the top-k cache (dadpo.precompute)
  kd_topk   bytes per token and KD-loss error of the top-k cache against the full vocabulary (cpu)
  parity    our dDPO loss against TRL DPOTrainer's on the same batch (and KD against TRL's, gpu/tiny)
  train     one optimizer step of SFT, dDPO, daDPO and KD through the suite's Trainer.step, of TRL's
            DPOTrainer and of TRL's GKDTrainer KD loss, on the same batches, interleaved
  generate  decoding tokens/s at batch 1, 16, 64 against the memory-bandwidth floor
Stages not chosen still compute what later ones need (the scores), untimed. Cases: see
reproduce.bench.cases; profile: see reproduce.bench.profile. The tiny case writes under runs/
unless --out is given.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from reproduce.bench.cases import DEFAULTS, QWEN_SHAPES, run_cpu, run_random
from reproduce.bench.profile import SECTIONS, run_profile
from reproduce.bench.rows import STAGES, merge_into, print_table, read_csv

ROOT = Path(__file__).resolve().parents[2]


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench", description=__doc__.split("\n\n")[0])
    ap.add_argument("--case", choices=("auto", "cpu", "gpu", "tiny", "profile"), default="auto",
                    help="auto: gpu with CUDA, else cpu")
    ap.add_argument("--stages", default=",".join(STAGES), help=f"comma-separated, of: {', '.join(STAGES)}")
    ap.add_argument("--case-name", default=None, help="row label (default cpu-smollm2 / gpu-<student> / tiny-<dev>)")
    ap.add_argument("--out", default=None, help="CSV to merge rows into (default results/perf.csv; tiny: runs/)")
    ap.add_argument("--provenance", default=None, help="JSON beside it (default: the CSV's stem + .provenance.json)")
    ap.add_argument("--merge", nargs="+", metavar="FILE", help="only merge this CSV [+ provenance JSON] into --out")
    ap.add_argument("--student", default="qwen2.5-1.5b", choices=sorted(QWEN_SHAPES), help="gpu / profile")
    ap.add_argument("--teacher", default="qwen2.5-7b", choices=sorted(QWEN_SHAPES), help="gpu")
    for name, what in (("pairs", "examples (pairs) in the data"), ("batch", "pairs per step"),
                       ("warmup", "untimed steps per implementation"), ("steps", "timed rounds"),
                       ("score-batch", "scoring batch"), ("gen-prompt", "generation prompt tokens"),
                       ("gen-new", "generated tokens")):
        ap.add_argument(f"--{name}", type=int, default=None, help=f"{what} (default: per case)")
    ap.add_argument("--big-batch", type=int, default=1, help="pairs per step for the teacher-shape training (gpu)")
    ap.add_argument("--topk", type=int, default=64)
    ap.add_argument("--train-teacher-shape", action=argparse.BooleanOptionalAction, default=True,
                    help="also time a training step with the teacher's shape as the student (gpu/tiny)")
    ap.add_argument("--sections", default=SECTIONS, help="profile case: any of A B C D E (reproduce.bench.profile)")
    ap.add_argument("--budget-s", type=float, default=1e9, help="skip later gpu/tiny stages past this many seconds")
    args = ap.parse_args(argv)
    if args.case == "auto":
        import torch

        args.case = "gpu" if torch.cuda.is_available() else "cpu"
    args.stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = sorted(set(args.stages) - set(STAGES))
    if unknown or not args.stages:
        ap.error(f"--stages: unknown {', '.join(unknown) or '(none given)'} (known: {', '.join(STAGES)})")
    if set(args.sections.upper()) - set(SECTIONS):
        ap.error(f"--sections: only letters of {SECTIONS}")
    for k, v in DEFAULTS[args.case].items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    for k in ("pairs", "batch", "steps", "score_batch", "gen_new"):
        if getattr(args, k) < 1:
            ap.error(f"--{k.replace('_', '-')} must be >= 1")
    if args.batch > args.pairs:
        ap.error(f"--batch {args.batch} is more than --pairs {args.pairs}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    default_out = ROOT / ("runs/bench-tiny/perf.csv" if args.case == "tiny" else "results/perf.csv")
    out = Path(args.out) if args.out else default_out
    prov = Path(args.provenance) if args.provenance else out.with_suffix(".provenance.json")
    if args.merge:
        for f in args.merge:
            if not Path(f).is_file():
                raise SystemExit(f"bench: --merge: no file {f}")
        rows = read_csv(Path(args.merge[0]))
        extra = json.loads(Path(args.merge[1]).read_text()) if len(args.merge) > 1 else {}
        merge_into(out, prov, rows, extra)
        print(f"merged {len(rows)} rows into {out}")
        return 0
    partial = out.with_name(out.stem + ".partial.csv")  # rows so far, should the run be cut short
    if args.case == "profile":
        rows, facts = run_profile(args, out.with_name("profile.txt"), partial)
    elif args.case == "cpu":
        rows, facts = run_cpu(args, partial)
    else:
        rows, facts = run_random(args, partial)
    merge_into(out, prov, rows, facts)
    partial.unlink(missing_ok=True)
    print_table(rows)
    print(f"wrote {len(rows)} rows into {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
