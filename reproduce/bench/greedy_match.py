"""Do the decoding backends give the same greedy answers? `python -m reproduce.bench.greedy_match`

Real weights (default offline:smollm2-135m-instruct), the first --n in-domain ShareGPT test prompts,
greedy, --new tokens, the eager backend (transformers' generate) against the static one (compiled and
graph-captured on GPU), in --dtype, through dadpo.generation.generate in a throw-away cache. Prints
and writes (--out JSON, with provenance) the share of answers identical as text, and for the others
where they part: the position of the first differing token (answers re-encoded) and its share of the
answer. In fp32 the backends agree token for token (tests/test_decoding.py); in bf16 their kernels
round differently (attention over a padded static cache against a growing dynamic one), and greedy
decoding turns one flipped near-tie into a different continuation from there on.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from dadpo.cache import Cache, atomic_write_text
from dadpo.decoding import Sampling
from dadpo.generation import generate
from reproduce.provenance import device_facts, git_sha, versions

DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def first_difference(a: list[int], b: list[int]) -> int:
    """Index of the first position where two token lists differ (the shorter length if one is a prefix)."""
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def compare(tokenizer, eager: list[str], static: list[str]) -> dict:
    """Share of identical answers; for differing ones, where (in tokens and as a share) they part."""
    parts = []
    for a, b in zip(eager, static):
        if a != b:
            ta, tb = (tokenizer(x, add_special_tokens=False)["input_ids"] for x in (a, b))
            i = first_difference(ta, tb)
            parts.append({"first_diff_token": i, "share_of_answer": round(i / max(1, max(len(ta), len(tb))), 3)})
    n = len(eager)
    return {"answers": n, "identical": n - len(parts), "identical_share": round((n - len(parts)) / max(1, n), 4),
            "differing": parts}


def run(model_spec: str, dtype: str, n: int, new: int, batch: int, say=print) -> dict:
    from dadpo.config import DataConfig
    from dadpo.data import load_in_domain
    from dadpo.modeling import load_model, load_tokenizer

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(model_spec)
    model = load_model(model_spec, DTYPES[dtype], on=dev).eval()
    prompts = list(load_in_domain(DataConfig())[1]["prompt"][:n])
    sampling = Sampling(temperature=0.0, max_new_tokens=new)
    out, timing = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in ("eager", "static"):
            t0 = time.perf_counter()
            out[backend], st = generate(model, tok, prompts, sampling, backend, cache=Cache(tmp), batch_size=batch,
                                        backend=backend)
            timing[backend] = {"seconds": round(time.perf_counter() - t0, 2), "compile_s": round(st["compile_s"], 2),
                               "new_tokens": st["new_tokens"], "cut_at_max_new_tokens": st["cut_at_max_new_tokens"]}
            say(f"[greedy_match] {backend}: {timing[backend]}")
    result = compare(tok, out["eager"], out["static"])
    return {"model": model_spec, "dtype": dtype, "device": device_facts(), "prompts": n, "new_tokens": new,
            "batch": batch, "timing": timing, **result, "git_sha": git_sha(), "versions": versions(),
            "utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "command": "python -m reproduce.bench.greedy_match " + " ".join(sys.argv[1:])}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench.greedy_match", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="offline:smollm2-135m-instruct")
    ap.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    ap.add_argument("--n", type=int, default=32, help="in-domain test prompts")
    ap.add_argument("--new", type=int, default=128, help="new tokens per answer")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--out", help="JSON file to write")
    args = ap.parse_args(argv)
    if min(args.n, args.new, args.batch) < 1:
        print("error: --n, --new and --batch must be >= 1", file=sys.stderr)
        return 2
    res = run(args.model, args.dtype, args.n, args.new, args.batch)
    print(f"[greedy_match] {res['identical']}/{res['answers']} identical ({res['identical_share']:.1%}), "
          f"{args.dtype} on {res['device'].get('gpu', 'cpu')}; first differing tokens: "
          f"{[d['first_diff_token'] for d in res['differing']]}")
    if args.out:
        atomic_write_text(Path(args.out), json.dumps(res, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
