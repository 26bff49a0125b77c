"""Response-token scoring shared by training and precomputation.

Only response tokens need log-probs, so the decoder runs once, the hidden states of response
positions are selected, and the LM head is applied to those alone, in chunks: the full
[batch, length, vocabulary] logits of a model never exist.
"""
from __future__ import annotations

import torch
from torch import nn

from dadpo.chat import pad_batch
from baselines.numerics import hidden_to_token_logprobs


def response_hidden(model, input_ids, attention_mask, response_mask):
    """Hidden states that predict response tokens: (h [N, H], labels [N], example index [N]).

    Token t is predicted by the hidden state at t-1; rows are in row-major order, so each
    example's tokens are contiguous and in order (the top-k cache relies on this).
    """
    decoder = model.get_decoder()
    hidden = decoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    sel = response_mask[:, 1:].bool()
    h = hidden[:, :-1][sel]
    labels = input_ids[:, 1:][sel]
    ex = torch.arange(input_ids.shape[0], device=input_ids.device)[:, None].expand_as(sel)[sel]
    return h, labels, ex


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

    def __init__(self, model, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def forward(self, input_ids, attention_mask, response_mask, want_logits: bool = False):
        h, labels, ex = response_hidden(self.model, input_ids, attention_mask, response_mask)
        head = self.model.get_output_embeddings()
        if want_logits:
            return head(h), labels, ex
        lp = hidden_to_token_logprobs(h[None], head.weight, labels[None], self.chunk_size, bias=head.bias)[0]
        return lp, labels, ex


def batches_by_length(encoded: list[dict], batch_size: int):
    """Index batches of similar length (less padding), in a fixed order."""
    order = sorted(range(len(encoded)), key=lambda i: len(encoded[i]["input_ids"]))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def collate(encoded: list[dict], idx: list[int], pad_id: int, on) -> dict:
    b = pad_batch([encoded[i] for i in idx], pad_id)
    return {k: v.to(on) for k, v in b.items()}
