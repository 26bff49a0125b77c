"""Response-token scoring shared by training and precomputation.

Only response tokens need log-probs, so the decoder runs once, the hidden states of response
positions are selected, and the LM head is applied to those alone (baselines.head: chunked, fused
or liger-kernel): the full [batch, length, vocabulary] logits of a model never exist. Batches come
padded (`attention_mask`) or packed (`position_ids` and `row`, dadpo.packing).
"""
from __future__ import annotations

import torch
from torch import nn

from dadpo.packing import micro_batch
from baselines.head import LIGER_CHUNK_MEM_CONST, head_logprobs


def response_hidden(model, input_ids, attention_mask, response_mask, position_ids=None, row=None):
    """Hidden states that predict response tokens: (h [N, H], labels [N], example index [N]).

    Token t is predicted by the hidden state at t-1; rows are in row-major order, so each
    example's tokens are contiguous and in order (the top-k cache relies on this). A packed batch
    (dadpo.packing.pack_rows) passes no attention mask, its `position_ids` and each position's `row`.
    """
    decoder = model.get_decoder()
    # no KV cache: a cache would also switch off transformers' packed-sequence detection
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                     use_cache=False).last_hidden_state
    sel = response_mask[:, 1:].bool()
    h = hidden[:, :-1][sel]
    labels = input_ids[:, 1:][sel]
    if row is None:
        row = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(input_ids)
        return h, labels, row[:, 1:][sel]
    ex = row[:, 1:][sel]
    order = torch.argsort(ex, stable=True)  # packed bins hold rows out of order: back to row-major
    return h[order], labels[order], ex[order]


def per_sequence(token_values, ex, n: int):
    """Sum per example of per-token values, and the token counts."""
    sums = torch.zeros(n, dtype=token_values.dtype, device=token_values.device).index_add(0, ex, token_values)
    counts = torch.bincount(ex, minlength=n)
    return sums, counts


class ResponseScorer(nn.Module):
    """Wraps a causal LM so that one forward gives response-token log-probs (or logits).

    Wrapping (instead of calling submodules of a DDP model) keeps data-parallel gradient
    synchronisation working under `accelerate launch`.
    """

    def __init__(self, model, chunk_size: int = 1024, head: str = "chunked",
                 liger_chunk_mem_const: int = LIGER_CHUNK_MEM_CONST):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size
        self.head = head  # a resolved baselines.head implementation
        self.liger_chunk_mem_const = liger_chunk_mem_const

    def forward(self, input_ids, attention_mask=None, response_mask=None, want_logits: bool = False,
                position_ids=None, row=None):
        h, labels, ex = response_hidden(self.model, input_ids, attention_mask, response_mask, position_ids, row)
        head = self.model.get_output_embeddings()
        if want_logits:
            return head(h), labels, ex
        lp = head_logprobs(self.head, h, head.weight, labels, self.chunk_size, head.bias, self.liger_chunk_mem_const)
        return lp, labels, ex


def batches_by_length(encoded: list[dict], batch_size: int):
    """Index batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded: list[dict], idx: list[int], pad_id: int, on, packing: bool = False) -> dict:
    b = micro_batch([encoded[i] for i in idx], pad_id, packing)
    return {k: v.to(on) for k, v in b.items()}
