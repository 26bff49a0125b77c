"""Decoding speed of the generation backends: `python -m reproduce.bench.decoders [--out CSV]`.

Random-weight Qwen2.5 shapes (0.5B, 1.5B, 7B), bf16, prompt 128 tokens, 256 new tokens, greedy,
every answer forced to full length (Sampling.ignore_eos), batch 64 and 256, through the suite's
own decoders (dadpo.decoding): eager (transformers' generate, dynamic cache) and static (compiled
step over a static cache). On CPU a tiny shape in fp32 (a dry run of the same code; `--shapes`
picks others).

  cold  compiled static only (GPU): the first call of a (model, batch) shape, compiling and
        capturing included (compile_s in the notes); end-to-end tokens/s = B x new / seconds.
  warm  the shape again: decode tokens/s = B x (new - 1) / (t(new) - t(1 new)), i.e. the
        prefill removed. Paths with nothing to compile (eager; static on CPU) are warmed up by a
        2-token call and have warm rows only.
Floor: decode tokens/s if every step only read the weights once at the measured copy bandwidth:
B x bandwidth / (bytes of decoder layers + LM head); bw_share = tokens/s / floor. The KV cache
read per step is not in the floor. Rows carry reproduce.bench's columns; case + implementation +
model + batch + the cold/warm word opening the notes identify a row.
Time on one H200 (expected): a compiled case ~1 min (mostly compiling), an eager one ~10 s, so all
six (shape, batch) pairs take ~8 min; cases not started within --budget-s (default 300 s) are
skipped, every shape's batch 64 first. Split longer runs with --shapes / --batches.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from dadpo.cache import atomic_write_text
from dadpo.decoding import Sampling, decoding_kernels, make_decoder
from reproduce.bench.cases import QWEN_SHAPES as SHAPES
from reproduce.bench.cases import random_model
from reproduce.bench.flops import decode_weight_bytes, shape_of
from reproduce.bench.measure import PeakMemory, copy_bandwidth_gbs, device_name, model_bytes, timed
from reproduce.bench.rows import COLUMNS, versions_str, write_csv
from reproduce.provenance import device_facts, git_sha, versions

GPU_SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b")
EOS, PAD, LOW = 2, 3, 10  # random ids are drawn from [LOW, vocab): never a stop or padding id


def bench_case(name: str, B: int, dev: torch.device, dtype: torch.dtype, bw_gbs: float, prompt_len: int,
               new: int, impls, case: str, say) -> list[dict]:
    """Rows of one (shape, batch): each implementation's warm decode rate, and the compiled path's cold run."""
    model = random_model(name, dev, dtype).eval()
    shape = shape_of(model)
    wbytes = decode_weight_bytes(shape, dtype)
    floor = B * bw_gbs * 1e9 / wbytes
    vocab = min(shape.vocab, model.get_input_embeddings().weight.shape[0])
    prompts = torch.randint(LOW, vocab, (B, prompt_len), generator=torch.Generator().manual_seed(B)).tolist()
    full = Sampling(temperature=0.0, max_new_tokens=new, max_prompt_tokens=prompt_len, ignore_eos=True)
    row = dict(case=case, device=dev.type, stage="generate", device_name=device_name(dev), model=name,
               params_m=round(shape.n_total / 1e6, 1), dtype=str(dtype).replace("torch.", ""), batch=B,
               seq_len_max=prompt_len + new, tokens_per_step=B, versions=versions_str(versions()))
    rows, warm = [], {}
    for impl in impls:
        dec = make_decoder(impl, model, PAD)
        if impl == "static":
            dec.plan(prompts, B, full)
        cold = getattr(dec, "compiled", False)
        with decoding_kernels(), torch.no_grad(), PeakMemory(dev) as pm:
            if cold:  # cold: the first call compiles and captures the shape
                t_cold, _ = timed(lambda: dec(prompts, full, [EOS], 0), dev)
                compile_s = dec.facts()["compile_s"]
            else:  # nothing to compile: a short call warms the kernels up
                dec(prompts, replace(full, max_new_tokens=2), [EOS], 0)
            t1, _ = timed(lambda: dec(prompts, replace(full, max_new_tokens=1), [EOS], 0), dev)
            tn, out = timed(lambda: dec(prompts, full, [EOS], 0), dev)
        assert all(len(r) == new for r in out)
        mem = pm.added_mb + model_bytes(model) / 2 ** 20
        label = f"{impl} (compiled)" if getattr(dec, "compiled", False) else impl  # a failed compile falls back
        if cold:
            tps = B * new / t_cold
            rows.append(dict(row, implementation=f"{impl}:cold", tokens_per_s=tps, step_ms=1e3 * t_cold / new,
                             bw_share=tps / floor, peak_mem_mb=mem,
                             notes=f"cold: first call, compiling and capturing {compile_s:.1f} s of it; end-to-end "
                                   f"{B * new} tokens in {t_cold:.1f} s incl. a {prompt_len}-token prefill; "
                                   "random weights"))
            say(f"{name} b={B} {label} cold: {tps:.0f} tok/s end-to-end, compile {compile_s:.1f} s")
        step = max(tn - t1, 1e-9) / (new - 1)
        tps = B / step
        warm[impl] = dict(row, implementation=impl, step_ms=1e3 * step, tokens_per_s=tps, bw_share=tps / floor,
                          peak_mem_mb=mem,
                          notes=f"warm: {label}; decode rate = B x {new - 1} / (t({new} new) - t(1 new)); end-to-end "
                                f"{B * new / tn:.0f} tok/s; floor {floor:.0f} tok/s = {wbytes / 1e9:.3f} GB weights "
                                f"per step at {bw_gbs:.0f} GB/s copy; greedy, full length; random weights")
        rows.append(warm[impl])
        say(f"{name} b={B} {label} warm: {tps:.0f} tok/s decode ({1e3 * step:.2f} ms/step, "
            f"{tps / floor:.1%} of the {floor:.0f} tok/s floor), peak {mem:.0f} MB")
        if hasattr(dec, "close"):
            dec.close()
    if len(warm) == 2:
        warm["static"].update(ratio=warm["static"]["tokens_per_s"] / warm["eager"]["tokens_per_s"],
                              ratio_of="static/eager decode tokens/s")
    del model
    if dev.type == "cuda":
        torch.cuda.empty_cache()
    return rows


def run(shapes=None, batches=None, impls=("eager", "static"), prompt_len=None, new=None, budget_s: float = 300,
        out: str | Path | None = None, say=print) -> list[dict]:
    """Rows for each shape x batch x implementation; on CPU defaults to a tiny fp32 dry run."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    gpu = dev.type == "cuda"
    shapes = shapes or (GPU_SHAPES if gpu else ("tiny-student",))
    batches = batches or ((64, 256) if gpu else (4,))
    prompt_len, new = prompt_len or (128 if gpu else 16), new or (256 if gpu else 8)
    dtype = torch.bfloat16 if gpu else torch.float32
    for s in shapes:
        if s not in SHAPES:
            raise ValueError(f"unknown shape {s!r}: one of {', '.join(sorted(SHAPES))}")
    bw = copy_bandwidth_gbs(dev)
    say(f"[bench.decoders] {device_name(dev)}, copy bandwidth {bw:.0f} GB/s, {dtype}, prompt {prompt_len}, "
        f"{new} new tokens, batches {list(batches)}, shapes {list(shapes)}")
    case = "gpu-generation" if gpu else "cpu-generation"
    end = time.perf_counter() + budget_s
    rows = []
    for B in batches:  # every shape at the first batch size first: the budget cuts the larger batches
        for name in shapes:
            if time.perf_counter() > end:
                say(f"{name} b={B}: skipped (time budget)")
                rows += [dict(case=case, device=dev.type, stage="generate", implementation=impl, model=name, batch=B,
                              notes="skipped: time budget (--budget-s)") for impl in impls]
                continue
            rows += bench_case(name, B, dev, dtype, bw, prompt_len, new, impls, case, say)
            if out:
                write_csv(Path(out), rows, COLUMNS)
                write_provenance(Path(out), case, dict(copy_bandwidth_gbs=round(bw, 1), dtype=str(dtype),
                                                       prompt_tokens=prompt_len, new_tokens=new, batches=list(batches),
                                                       shapes=list(shapes), budget_s=budget_s))
    return rows


def write_provenance(csv_path: Path, case: str, settings: dict) -> None:
    """`<csv stem>.provenance.json` in the benchmark's per-case format (python -m reproduce.bench --merge)."""
    facts = {"utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "git_sha": git_sha(),
             "device": device_facts(), "versions": versions(), "settings": settings,
             "command": "python -m reproduce.bench.decoders " + " ".join(sys.argv[1:])}
    atomic_write_text(csv_path.with_suffix(".provenance.json"), json.dumps({case: facts}, indent=2, default=str) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench.decoders", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", help=f"default: {' '.join(GPU_SHAPES)} on GPU, tiny-student on CPU")
    ap.add_argument("--batches", nargs="+", type=int, help="default: 64 256 on GPU, 4 on CPU")
    ap.add_argument("--impls", nargs="+", default=["eager", "static"], choices=["eager", "static"])
    ap.add_argument("--prompt", type=int, help="prompt tokens (default 128 on GPU, 16 on CPU)")
    ap.add_argument("--new", type=int, help="new tokens (default 256 on GPU, 8 on CPU)")
    ap.add_argument("--budget-s", type=float, default=300,
                    help="cases not started when this has passed are skipped (a compiled case takes ~1 min on GPU)")
    ap.add_argument("--out", help="CSV file to write (rewritten after each shape)")
    args = ap.parse_args(argv)
    if args.new is not None and args.new < 2:
        print("error: --new must be >= 2 (the decode rate is t(new) - t(1 new))", file=sys.stderr)
        return 2
    try:
        rows = run(args.shapes, args.batches, tuple(args.impls), args.prompt, args.new, args.budget_s, args.out,
                   say=lambda s: print(s, flush=True))
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"[bench.decoders] {len(rows)} rows" + (f" -> {args.out}" if args.out else ""), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
