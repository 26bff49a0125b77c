"""Packed layouts against padding: `python -m reproduce.bench.packing [--model SPEC] [--rows N] [--max-len L]`

One micro-batch of N rows (lengths uniform in [L/8, L], seeded random token ids, the last two thirds
of each row scored), forward + backward of the suite's response scorer (dadpo.scoring), in three
layouts: right-padded rows; every row in one sequence (dadpo.packing with one bin as wide as all
rows: the packing of an earlier version, where sdpa computes a block-diagonal mask over the whole
[sum of lengths]^2); and dadpo.packing's bins of the longest row's length. Prints ms per step
(median of --repeat after a warm-up), positions computed and the ratio to padded, and checks that the
three give the same summed log-prob. Default: real SmolLM2-135M-Instruct in fp32 on CPU, 16 rows of
<= 256 tokens (the default-scale Table-1 micro-batch: 8 pairs); on a GPU, bf16.
"""
from __future__ import annotations

import argparse
import statistics
import sys

import torch

from dadpo.chat import pad_batch
from dadpo.packing import pack_rows
from dadpo.scoring import ResponseScorer
from reproduce.bench.measure import timed


def random_rows(n: int, max_len: int, vocab: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(max_len // 8, max_len + 1, (1,), generator=g))
        ids = torch.randint(100, vocab, (length,), generator=g).tolist()
        rows.append({"input_ids": ids, "response_mask": [0] * (length // 3) + [1] * (length - length // 3)})
    return rows


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m reproduce.bench.packing", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="offline:smollm2-135m-instruct")
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--max-len", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    if min(args.rows, args.max_len, args.repeat) < 1 or args.max_len < 4:
        print("error: --rows and --repeat must be >= 1, --max-len >= 4", file=sys.stderr)
        return 2
    from dadpo.modeling import load_model, load_tokenizer

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    tok = load_tokenizer(args.model)
    model = load_model(args.model, torch.bfloat16 if dev.type == "cuda" else torch.float32, on=dev).train()
    scorer = ResponseScorer(model)
    rows = random_rows(args.rows, args.max_len, len(tok))
    total = sum(len(r["input_ids"]) for r in rows)
    layouts = {"padded": pad_batch(rows, tok.pad_token_id), "one sequence": pack_rows(rows, tok.pad_token_id, total),
               "bins": pack_rows(rows, tok.pad_token_id)}

    def step(batch):
        model.zero_grad(set_to_none=True)
        lp, _, _ = scorer(**{k: v.to(dev) for k, v in batch.items()})
        lp.sum().backward()
        return float(lp.sum().detach())

    print(f"[bench.packing] {args.model} on {dev.type}, {args.rows} rows of {args.max_len // 8}-{args.max_len} tokens "
          f"({total} real), forward + backward, median of {args.repeat}")
    base = None
    for name, batch in layouts.items():
        lp_sum = step(batch)  # warm-up
        ms = statistics.median(timed(lambda: step(batch), dev)[0] * 1000 for _ in range(args.repeat))
        base = base or ms
        shape = "x".join(map(str, batch["input_ids"].shape))
        print(f"  {name:<13} {ms:9.1f} ms  {shape:>9} positions  {base / ms:5.2f}x padded's speed  "
              f"sum log-prob {lp_sum:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
