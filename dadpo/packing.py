"""Micro-batches without padding waste: rows packed end to end into a few bins.

A padded batch of rows of lengths l_i costs B x max(l_i) positions. Packed, the rows are laid end to
end into bins of max(l_i) positions (first fit, longest rows first), and only the end of a bin is
padded. Position ids restart at 0 for every row (and for a bin's padding) and no
attention mask is passed: transformers' mask utilities (`find_packed_sequence_indices` in
`transformers.masking_utils`, >= 5.x) see the restarts and build a block-diagonal causal mask per bin
for sdpa / eager, and flash attention reads the same position ids as varlen boundaries. So no token
attends across rows, and each row's log-probs are those of the row alone. Bins of the longest row's
length, not one sequence of every row: sdpa with a block-diagonal mask computes the whole
[length x length] score matrix, so one sequence of 16 rows of 512 tokens would cost 16x the
attention of the padded batch; a bin costs what one padded row does.

The first token of every row is taken out of the response mask: it has no predecessor in its own row
(in the padded layout it is position 0, which is never scored either), and the hidden state before it
belongs to the previous row.
"""
from __future__ import annotations

import torch

from dadpo.chat import pad_batch

# named in cache keys: a packed layout's rounding differs from another's (the earlier one put a whole
# micro-batch into one sequence)
LAYOUT = "bins-first-fit"


def pack_rows(rows: list[dict], pad_id: int = 0, width: int | None = None) -> dict:
    """Rows {"input_ids", "response_mask"} packed into bins of `width` positions, by default the longest
    row's length (first fit, longest first): input_ids, response_mask, position_ids and `row` (each
    position's row index, -1 on padding), all [bins, width]; no attention_mask. A row's tokens are
    contiguous and in order within its bin; dadpo.scoring puts the scored tokens back in row order."""
    for i, r in enumerate(rows):
        if len(r["response_mask"]) != len(r["input_ids"]):
            raise ValueError(f"pack_rows: row {i} has {len(r['input_ids'])} token ids but "
                             f"{len(r['response_mask'])} mask entries")
    width = width or max((len(r["input_ids"]) for r in rows), default=0)
    bins: list[dict] = []
    for i in sorted(range(len(rows)), key=lambda i: -len(rows[i]["input_ids"])):
        r, n = rows[i], len(rows[i]["input_ids"])
        b = next((b for b in bins if len(b["input_ids"]) + n <= width), None)
        if b is None:
            b = {"input_ids": [], "response_mask": [], "position_ids": [], "row": []}
            bins.append(b)
        b["input_ids"] += r["input_ids"]
        b["response_mask"] += [0] + list(r["response_mask"][1:]) if n else []
        b["position_ids"] += range(n)
        b["row"] += [i] * n
    for b in bins:  # the padding at a bin's end is a sequence of its own, never scored
        fill = width - len(b["input_ids"])
        for key, value in (("input_ids", [pad_id] * fill), ("response_mask", [0] * fill),
                           ("position_ids", range(fill)), ("row", [-1] * fill)):
            b[key] += value
    return {k: torch.tensor([b[k] for b in bins], dtype=torch.long).reshape(len(bins), width)
            for k in ("input_ids", "response_mask", "position_ids", "row")}


def micro_batch(rows: list[dict], pad_id: int, packing: bool) -> dict:
    """The scorer's inputs for `rows`: packed (`pack_rows`) or right-padded (`pad_batch`)."""
    return pack_rows(rows, pad_id) if packing else pad_batch(rows, pad_id)


def real_tokens(batch: dict) -> int:
    """Tokens of the rows themselves, padding not counted."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int((batch["row"] >= 0).sum())
