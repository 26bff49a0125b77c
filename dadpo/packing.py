"""Micro-batches without padding: every row of a micro-batch packed into one sequence.

A padded batch of rows of lengths l_i costs B x max(l_i) positions; a packed one costs sum(l_i).
Rows are laid end to end in one [1, L] sequence whose position ids restart at 0 for every row and no
attention mask is passed: transformers' mask utilities (`find_packed_sequence_indices` in
`transformers.masking_utils`, >= 5.x) then see the restarts and build a block-diagonal causal mask
for sdpa / eager, and flash attention reads the same position ids as varlen boundaries. So no token
attends across rows, and each row's log-probs are those of the row alone.

The first token of every row is taken out of the response mask: it has no predecessor in its own row
(in the padded layout it is position 0, which is never scored either), and the hidden state before it
belongs to the previous row.
"""
from __future__ import annotations

import torch

from dadpo.chat import pad_batch


def pack_rows(rows: list[dict]) -> dict:
    """Rows {"input_ids", "response_mask"} as one sequence: input_ids, response_mask, position_ids
    and `row` (each position's row index), all [1, sum of lengths]; no attention_mask."""
    ids, resp, pos, row = [], [], [], []
    for i, r in enumerate(rows):
        n = len(r["input_ids"])
        if len(r["response_mask"]) != n:
            raise ValueError(f"pack_rows: row {i} has {n} token ids but {len(r['response_mask'])} mask entries")
        ids += r["input_ids"]
        resp += [0] + list(r["response_mask"][1:]) if n else []
        pos += range(n)
        row += [i] * n
    return {k: torch.tensor([v], dtype=torch.long)
            for k, v in (("input_ids", ids), ("response_mask", resp), ("position_ids", pos), ("row", row))}


def micro_batch(rows: list[dict], pad_id: int, packing: bool) -> dict:
    """The scorer's inputs for `rows`: packed (`pack_rows`) or right-padded (`pad_batch`)."""
    return pack_rows(rows) if packing else pad_batch(rows, pad_id)


def real_tokens(batch: dict) -> int:
    """Tokens of the rows themselves, padding not counted."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())
