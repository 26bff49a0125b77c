"""Decoding speed of the generation backends: `python -m reproduce.bench_generation [--out CSV]`.

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
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from dadpo.decoding import EagerDecoder, Sampling, StaticDecoder, decoding_kernels
from reproduce.bench import (QWEN_SHAPES, PeakMemory, copy_bandwidth_gbs, decode_weight_bytes, device_name,
                             model_bytes, shape_of, sync, versions, versions_str, write_csv)

SHAPES = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                         num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True),
    **QWEN_SHAPES,
}
GPU_SHAPES = ("qwen2.5-0.5b", "qwen2.5-1.5b", "qwen2.5-7b")
EOS, PAD, LOW = 2, 3, 10  # random ids are drawn from [LOW, vocab): never a stop or padding id


def random_model(name: str, dev: torch.device, dtype: torch.dtype, seed: int = 0):
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = Qwen2Config(**SHAPES[name], max_position_embeddings=32768, rope_theta=1e6, rms_norm_eps=1e-6,
                      bos_token_id=None, eos_token_id=EOS, pad_token_id=PAD)
    torch.manual_seed(seed)
    with torch.device(dev):
        return Qwen2ForCausalLM._from_config(cfg, dtype=dtype, attn_implementation="sdpa").eval()


def _timed(fn, dev) -> tuple[float, object]:
    sync(dev)
    t = time.perf_counter()
    out = fn()
    sync(dev)
    return time.perf_counter() - t, out


def bench_model(name: str, batches, dev: torch.device, dtype: torch.dtype, bw_gbs: float, prompt_len: int,
                new: int, impls, case: str, budget_end: float, say) -> list[dict]:
    model = random_model(name, dev, dtype)
    shape = shape_of(model)
    wbytes = decode_weight_bytes(shape, dtype)
    vocab = min(shape.vocab, model.get_input_embeddings().weight.shape[0])
    full = Sampling(temperature=0.0, max_new_tokens=new, max_prompt_tokens=prompt_len, ignore_eos=True)
    one = Sampling(temperature=0.0, max_new_tokens=1, max_prompt_tokens=prompt_len, ignore_eos=True)
    base = dict(case=case, device=dev.type, stage="generate", device_name=device_name(dev), model=name,
                params_m=round(shape.n_total / 1e6, 1), dtype=str(dtype).replace("torch.", ""),
                seq_len_max=prompt_len + new, versions=versions_str(versions()))
    rows = []
    for B in batches:
        g = torch.Generator().manual_seed(B)
        prompts = torch.randint(LOW, vocab, (B, prompt_len), generator=g).tolist()
        floor = B * bw_gbs * 1e9 / wbytes
        warm_tps = {}
        for impl in impls:
            row = dict(base, implementation=impl, batch=B, tokens_per_step=B)
            if time.perf_counter() > budget_end:
                rows.append(dict(row, notes="skipped: time budget (--budget-s)"))
                say(f"{name} b={B} {impl}: skipped (time budget)")
                continue
            dec = (StaticDecoder(model, PAD) if impl == "static" else EagerDecoder(model, PAD))
            if impl == "static":
                dec.plan(prompts, B, full)
            with decoding_kernels(), torch.no_grad(), PeakMemory(dev) as pm:
                if impl == "static" and dec.compiled:  # cold: the first call compiles and captures the shape
                    t_cold, out = _timed(lambda: dec(prompts, full, [EOS], 0), dev)
                    assert all(len(r) == new for r in out)
                    f = dec.facts()
                    cold = dict(row, tokens_per_s=B * new / t_cold, step_ms=1e3 * t_cold / new,
                                notes=f"cold: first call incl. compile/capture {f['compile_s']:.1f} s "
                                      f"({f['compiled_shapes']} shape(s), compiled={f['compiled']}); end-to-end "
                                      f"{B * new} tokens in {t_cold:.1f} s incl. a {prompt_len}-token prefill")
                else:  # nothing to compile: a short call warms the kernels up
                    dec(prompts, replace(full, max_new_tokens=2), [EOS], 0)
                t1, _ = _timed(lambda: dec(prompts, one, [EOS], 0), dev)
                tn, out = _timed(lambda: dec(prompts, full, [EOS], 0), dev)
            assert all(len(r) == new for r in out)
            step = max(tn - t1, 1e-9) / (new - 1)
            tps = B / step
            warm_tps[impl] = tps
            mem = pm.added_mb + model_bytes(model) / 2 ** 20
            warm = dict(row, step_ms=1e3 * step, tokens_per_s=tps, bw_share=tps / floor, peak_mem_mb=mem,
                        notes=f"warm: decode rate = B x {new - 1} / (t({new} new) - t(1 new)); end-to-end "
                              f"{B * new / tn:.0f} tok/s; floor {floor:.0f} tok/s = {wbytes / 1e9:.3f} GB weights "
                              f"per step at {bw_gbs:.0f} GB/s copy; greedy, full length; random weights")
            if impl == "static" and dec.compiled:
                rows.append(dict(cold, peak_mem_mb=mem, bw_share=cold["tokens_per_s"] / floor))
                say(f"{name} b={B} static cold: {cold['tokens_per_s']:.0f} tok/s end-to-end, "
                    f"compile {f['compile_s']:.1f} s")
            rows.append(warm)
            say(f"{name} b={B} {impl} warm: {tps:.0f} tok/s decode ({1e3 * step:.2f} ms/step, "
                f"{tps / floor:.1%} of the {floor:.0f} tok/s floor), peak {mem:.0f} MB")
            if hasattr(dec, "close"):
                dec.close()
            del dec
        if "eager" in warm_tps and "static" in warm_tps:
            for r in rows:
                if r.get("batch") == B and r["implementation"] == "static" and r["notes"].startswith("warm"):
                    r.update(ratio=warm_tps["static"] / warm_tps["eager"], ratio_of="static/eager decode tokens/s")
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
    say(f"[bench_generation] {device_name(dev)}, copy bandwidth {bw:.0f} GB/s, {dtype}, prompt {prompt_len}, "
        f"{new} new tokens, batches {list(batches)}, shapes {list(shapes)}")
    case = "gpu-generation" if gpu else "cpu-generation"
    end = time.perf_counter() + budget_s
    rows = []
    for name in shapes:
        rows += bench_model(name, batches, dev, dtype, bw, prompt_len, new, impls, case, end, say)
        if out:
            write_csv(Path(out), rows)
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench_generation", description=__doc__.split("\n")[0])
    ap.add_argument("--shapes", nargs="+", help=f"default: {' '.join(GPU_SHAPES)} on GPU, tiny-student on CPU")
    ap.add_argument("--batches", nargs="+", type=int, help="default: 64 256 on GPU, 4 on CPU")
    ap.add_argument("--impls", nargs="+", default=["eager", "static"], choices=["eager", "static"])
    ap.add_argument("--prompt", type=int, help="prompt tokens (default 128 on GPU, 16 on CPU)")
    ap.add_argument("--new", type=int, help="new tokens (default 256 on GPU, 8 on CPU)")
    ap.add_argument("--budget-s", type=float, default=300, help="later cases are skipped once this has passed")
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
    print(f"[bench_generation] {len(rows)} rows" + (f" -> {args.out}" if args.out else ""), flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
