"""Shared numerics (the bottom layer): per-token and per-sequence log-probabilities without
full-vocabulary copies, and the teacher top-k + tail compression.

Memory is the constraint here: for a Qwen-sized vocabulary (V ~ 152k) a [B, T, V] float32
log_softmax copy of a 4 x 512 batch is 1.2 GB, and autograd would keep it alive until backward.
So every function below walks over chunks of token positions, upcasts one chunk at a time to
float32 (bf16 logsumexp over 152k entries is too coarse), and keeps only [B, T]-sized results.

Alignment convention: `labels[..., t]` is the token whose log-prob is read from `logits[..., t, :]`;
nothing is shifted here. For a causal LM the caller shifts once, e.g. passes the full (contiguous)
logits with `labels = cat(input_ids[:, 1:], -100)`; sliced (non-contiguous) logits also work and
are never copied whole.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

IGNORE_INDEX = -100
# Floor for log-masses that are exactly zero (e.g. the tail when k = V): finite so that 0 * log 0
# terms stay 0 rather than NaN, and exp(LOG_FLOOR) == 0 in every float dtype (fp16 included).
LOG_FLOOR = -1.0e4
# Finite stand-in for -inf when masking entries out of a logsumexp: a row that is fully masked
# then gives ~-1e30 (later floored) instead of -inf, whose backward would be NaN.
MASKED = -1.0e30


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulation dtype: float32 for half types, float64 stays float64."""
    return torch.promote_types(dtype, torch.float32)


def chunks(index: tuple[torch.Tensor, ...], chunk_size: int):
    """Split a `nonzero(as_tuple=True)` index into tuples of at most `chunk_size` positions."""
    n = index[0].numel()
    for s in range(0, n, chunk_size):
        yield tuple(i[s:s + chunk_size] for i in index)


class _TokenLogprob(torch.autograd.Function):
    """lp[i] = logits[i, y_i] - logsumexp(logits[i]), chunked, with a hand-written backward.

    Plain autograd would save each chunk's float32 upcast for the logsumexp backward, i.e. a full
    float32 copy of bf16 logits across chunks. Here only the logits (already alive in the graph),
    the labels and a float32 [N] logsumexp are saved; backward rebuilds softmax chunk by chunk:
        d lp_i / d logits_i = onehot(y_i) - softmax(logits_i).
    """

    @staticmethod
    def forward(ctx, logits, labels, chunk_size):
        acc = acc_dtype(logits.dtype)
        valid = labels != IGNORE_INDEX
        index = valid.nonzero(as_tuple=True)
        out = torch.zeros(labels.shape, dtype=acc, device=logits.device)
        lse = torch.empty(index[0].numel(), dtype=acc, device=logits.device)
        pos = 0
        for idx in chunks(index, chunk_size):
            rows = logits[idx].to(acc)  # [c, V]: the only vocabulary-sized buffer (chunk-sized)
            lse_c = torch.logsumexp(rows, dim=-1)
            lse[pos:pos + lse_c.numel()] = lse_c
            out[idx] = rows.gather(-1, labels[idx].long().unsqueeze(-1)).squeeze(-1) - lse_c
            pos += lse_c.numel()
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(logits, labels, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        logits, labels, lse = ctx.saved_tensors
        acc = lse.dtype
        grad = torch.zeros(logits.shape, dtype=logits.dtype, device=logits.device)
        index = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
        pos = 0
        for idx in chunks(index, ctx.chunk_size):
            c = idx[0].numel()
            g = grad_out[idx].to(acc).unsqueeze(-1)  # [c, 1]
            # one float32 chunk buffer, updated in place: -g * softmax, then + g at the label
            gc = logits[idx].to(acc).sub_(lse[pos:pos + c].unsqueeze(-1)).exp_().mul_(-g)
            gc.scatter_add_(-1, labels[idx].long().unsqueeze(-1), g)
            grad[idx] = gc.to(logits.dtype)
            pos += c
        return grad, None, None


def token_logprobs(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 1024) -> torch.Tensor:
    """log p(labels | logits) per position: gather(logits, y) - logsumexp(logits).

    logits [..., V] (any float dtype, may be non-contiguous), labels [...] (int, -100 = ignored).
    Returns [...] in float32 (float64 for float64 logits), 0 at ignored positions. Positions are
    processed `chunk_size` at a time; ignored positions (prompt, padding) cost nothing.
    """
    if logits.shape[:-1] != labels.shape:
        raise ValueError(f"token_logprobs: logits {tuple(logits.shape)} and labels {tuple(labels.shape)} "
                         "disagree on the leading dimensions")
    if chunk_size < 1:
        raise ValueError("token_logprobs: chunk_size must be >= 1")
    return _TokenLogprob.apply(logits, labels, int(chunk_size))


def sequence_logprobs(token_lp: torch.Tensor, mask: torch.Tensor, length_average: bool = False) -> torch.Tensor:
    """log pi(y|x) = sum_t mask_t * lp_t over the last dim -> [B]; / sum_t mask_t if `length_average`.

    Masked-out entries are dropped with `where`, so a NaN/inf there cannot leak into the sum.
    A row with an empty mask gives 0 (the average divides by max(n, 1)).
    """
    mask = mask.bool()
    total = torch.where(mask, token_lp, torch.zeros((), dtype=token_lp.dtype, device=token_lp.device)).sum(-1)
    if length_average:
        total = total / mask.sum(-1).clamp_min(1).to(total.dtype)
    return total


def _hidden_chunk_logprobs(h: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                           labels: torch.Tensor) -> torch.Tensor:
    logits = F.linear(h, weight, bias).to(acc_dtype(h.dtype))  # [c, V], chunk-sized
    return logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)


def hidden_to_token_logprobs(hidden: torch.Tensor, lm_head_weight: torch.Tensor, labels: torch.Tensor,
                             chunk_size: int = 1024, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Token log-probs straight from final hidden states: lp = (h W^T)[y] - logsumexp(h W^T).

    hidden [..., H] (the final, normed hidden state the LM head reads), lm_head_weight [V, H],
    labels [...] (-100 ignored). Returns [...] float32 (float64 for float64 inputs), 0 where ignored.
    Full [..., V] logits never exist: each chunk of positions gets its own logits inside
    `torch.utils.checkpoint`, so backward recomputes that chunk's logits instead of storing them
    (peak extra memory ~ one chunk of logits). Gradients flow to `hidden` and `lm_head_weight`.
    Not for models that post-process logits (soft-capping, logit scaling).
    """
    if hidden.shape[:-1] != labels.shape:
        raise ValueError(f"hidden_to_token_logprobs: hidden {tuple(hidden.shape)} and labels "
                         f"{tuple(labels.shape)} disagree on the leading dimensions")
    if chunk_size < 1:
        raise ValueError("hidden_to_token_logprobs: chunk_size must be >= 1")
    out = torch.zeros(labels.shape, dtype=acc_dtype(hidden.dtype), device=hidden.device)
    index = (labels != IGNORE_INDEX).nonzero(as_tuple=True)
    need_grad = torch.is_grad_enabled() and (hidden.requires_grad or lm_head_weight.requires_grad
                                             or (bias is not None and bias.requires_grad))
    parts = []
    for idx in chunks(index, chunk_size):
        h, y = hidden[idx], labels[idx].long()
        if need_grad:
            parts.append(checkpoint(_hidden_chunk_logprobs, h, lm_head_weight, bias, y, use_reentrant=False))
        else:
            parts.append(_hidden_chunk_logprobs(h, lm_head_weight, bias, y))
    if parts:
        # one index_put of all chunk results: out-of-place so autograd sees a single clean op
        out = out.index_put(index, torch.cat(parts))
    return out


class TopKTail(NamedTuple):
    """Teacher next-token distribution compressed to k ids plus one tail bucket."""
    logprobs: torch.Tensor  # [..., k] log p(id) at the cache temperature, descending
    ids: torch.Tensor  # [..., k] int64 token ids
    tail: torch.Tensor  # [...] log(1 - sum_k p), floored at LOG_FLOOR


@torch.no_grad()
def topk_with_tail(logits: torch.Tensor, k: int, temperature: float = 1.0, chunk_size: int = 1024) -> TopKTail:
    """Top-k log-probs of softmax(logits / temperature), their ids, and the log of the rest.

    tail = log(1 - sum_{i in top-k} p_i), computed as logsumexp(logits/T over the complement) -
    logsumexp(logits/T): the same quantity as log1p(-sum exp(topk_logprobs)), but accurate when the
    tail is tiny (log1p(-s) is -inf once s rounds to 1). Floored at LOG_FLOOR (an exact-zero tail,
    k = V, gives LOG_FLOOR, whose exp is 0). Returns float32 (float64 for float64 input). Frozen
    teacher only: no gradient.
    """
    V = logits.shape[-1]
    if not 1 <= k <= V:
        raise ValueError(f"topk_with_tail: k must be in [1, {V}] (the vocabulary size), got {k}")
    if temperature <= 0:
        raise ValueError("topk_with_tail: temperature must be > 0")
    acc = acc_dtype(logits.dtype)
    lead = logits.shape[:-1]
    flat = logits.reshape(-1, V)  # teacher logits are usually contiguous, so this is a view
    if flat.shape[0] == 0:
        z = logits.new_zeros((*lead, k), dtype=acc)
        return TopKTail(z, z.long(), logits.new_zeros(lead, dtype=acc))
    lps, ids, tails = [], [], []
    for s in range(0, flat.shape[0], chunk_size):
        rows = flat[s:s + chunk_size].to(acc) / temperature
        lse = torch.logsumexp(rows, dim=-1, keepdim=True)
        top, top_ids = rows.topk(k, dim=-1)
        rest = rows.scatter(-1, top_ids, MASKED)
        lps.append(top - lse)
        ids.append(top_ids)
        tails.append((torch.logsumexp(rest, dim=-1) - lse.squeeze(-1)).clamp(LOG_FLOOR, 0.0))
    return TopKTail(torch.cat(lps).reshape(*lead, k), torch.cat(ids).reshape(*lead, k),
                    torch.cat(tails).reshape(lead))


class TopKSamples(NamedTuple):
    """TopKTail plus tokens drawn from the teacher's tail: each sample j stands for the tail mass
    exp(tail) / m spread with importance weight exp(tail - sample_logprob_j) / m per unit of its own
    probability, so a sum over the tail of any per-token term f(p_j, q_j) is estimated without bias by
    sum_s f(p_s, q_s) * exp(tail - lp_s) / m."""
    logprobs: torch.Tensor  # [..., k]
    ids: torch.Tensor  # [..., k]
    tail: torch.Tensor  # [...]
    sample_logprobs: torch.Tensor  # [..., m] the teacher's log p of each sampled id (same temperature)
    sample_ids: torch.Tensor  # [..., m] ids drawn from p restricted to the tail, with replacement


@torch.no_grad()
def topk_with_samples(logits: torch.Tensor, k: int, samples: int, temperature: float = 1.0,
                      generator: torch.Generator | None = None, chunk_size: int = 1024) -> TopKSamples:
    """`topk_with_tail` plus `samples` ids per position drawn from softmax(logits / T) restricted to the
    ids outside the top-k (a seeded `generator` on the logits' device makes the draw reproducible).
    Where the tail is empty (k = V) the samples carry weight 0 (tail = LOG_FLOOR)."""
    top = topk_with_tail(logits, k, temperature, chunk_size)
    if samples < 0:
        raise ValueError(f"topk_with_samples: samples must be >= 0, got {samples}")
    V, lead = logits.shape[-1], logits.shape[:-1]
    flat, top_ids = logits.reshape(-1, V), top.ids.reshape(-1, k)
    acc = acc_dtype(logits.dtype)
    lps, ids = [], []
    for s in range(0, flat.shape[0], chunk_size):
        rows = flat[s:s + chunk_size].to(acc) / temperature
        lp = rows - torch.logsumexp(rows, dim=-1, keepdim=True)
        if samples == 0 or k == V:
            drawn = top_ids[s:s + chunk_size, :1].expand(-1, samples)
        else:
            tail_p = torch.softmax(rows.scatter(-1, top_ids[s:s + chunk_size], MASKED), dim=-1)
            drawn = torch.multinomial(tail_p, samples, replacement=True, generator=generator)
        ids.append(drawn)
        lps.append(lp.gather(-1, drawn).clamp_min(LOG_FLOOR))
    sample_ids = torch.cat(ids).reshape(*lead, samples) if ids else top.ids.new_zeros((*lead, samples))
    sample_lp = torch.cat(lps).reshape(*lead, samples) if lps else top.logprobs.new_zeros((*lead, samples))
    return TopKSamples(*top, sample_lp, sample_ids)
