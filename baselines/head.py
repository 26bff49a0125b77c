"""Token log-probs straight from the LM head's input: lp_i = (h_i W^T + b)[y_i] - logsumexp(h_i W^T + b).

Implementations (all take h [N, H], weight [V, H], labels [N], optional bias [V]; return float32 [N],
float64 for float64 inputs; gradients flow to h, weight and bias):
  chunked  `hidden_to_token_logprobs`: chunks of positions, each under torch.utils.checkpoint, so only
           one chunk of logits exists at a time, in forward and in backward (runs anywhere).
  fused    a hand-written autograd function: forward keeps only a float32 [N] logsumexp, backward
           recomputes each chunk's logits once and forms the softmax gradient in place (no second
           logsumexp, no autograd graph per chunk). Runs anywhere.
  liger    liger-kernel's LigerFusedLinearCrossEntropyFunction with reduction="none" (lp = -loss):
           Triton kernels, CUDA only; `chunk_mem_const` bounds the transient logits to about
           chunk_mem_const x N x H elements (liger's default 1 makes many small chunks).
`pick_implementation` resolves "auto". Models that post-process logits (soft-capping, scaling) need
the plain logits path instead.
"""
from __future__ import annotations

import torch

from baselines.numerics import IGNORE_INDEX, acc_dtype, hidden_to_token_logprobs

IMPLEMENTATIONS = ("chunked", "fused", "liger")
LIGER_CHUNK_MEM_CONST = 32  # fewer, larger chunks than liger's default: faster at the same results


def liger_available() -> bool:
    try:
        from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction  # noqa: F401
    except Exception:  # noqa: BLE001 - not installed, or no Triton / CUDA build behind it
        return False
    return True


def pick_implementation(requested: str, device) -> str:
    """The implementation to run: "auto" is liger on CUDA when it imports, else chunked; an explicit
    "liger" where it cannot run is an error rather than a silent fallback."""
    dev = torch.device(device)
    if requested == "auto":
        return "liger" if dev.type == "cuda" and liger_available() else "chunked"
    if requested not in IMPLEMENTATIONS:
        raise ValueError(f"unknown LM head implementation {requested!r} (known: auto, {', '.join(IMPLEMENTATIONS)})")
    if requested == "liger" and (dev.type != "cuda" or not liger_available()):
        raise ValueError("train.lm_head=liger needs CUDA and liger-kernel (pip install -e '.[fast]'); "
                         "use auto or chunked here")
    return requested


class _FusedHeadLogprob(torch.autograd.Function):
    """d lp_i / d logits_i = onehot(y_i) - softmax(logits_i); logits are recomputed per chunk in backward."""

    @staticmethod
    def forward(ctx, h, weight, bias, labels, chunk_size):
        acc = acc_dtype(h.dtype)
        n = h.shape[0]
        out = torch.empty(n, dtype=acc, device=h.device)
        lse = torch.empty(n, dtype=acc, device=h.device)
        for s in range(0, n, chunk_size):
            logits = torch.nn.functional.linear(h[s:s + chunk_size], weight, bias).to(acc)
            lse[s:s + chunk_size] = torch.logsumexp(logits, dim=-1)
            out[s:s + chunk_size] = logits.gather(-1, labels[s:s + chunk_size, None]).squeeze(-1) - lse[s:s + chunk_size]
        ctx.chunk_size = chunk_size
        ctx.save_for_backward(h, weight, bias, labels, lse)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out):
        h, weight, bias, labels, lse = ctx.saved_tensors
        acc, c = lse.dtype, ctx.chunk_size
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        gh = torch.empty_like(h) if need_h else None
        gw = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_w else None
        gb = torch.zeros(bias.shape, dtype=acc, device=bias.device) if need_b else None
        for s in range(0, h.shape[0], c):
            hc, g = h[s:s + c], grad_out[s:s + c].to(acc)[:, None]
            # one float32 chunk buffer, updated in place: -g * softmax, then + g at the label
            gl = torch.nn.functional.linear(hc, weight, bias).to(acc).sub_(lse[s:s + c, None]).exp_().mul_(-g)
            gl.scatter_add_(-1, labels[s:s + c, None], g)
            gl = gl.to(h.dtype)
            if need_h:
                gh[s:s + c] = gl @ weight.to(h.dtype)
            if need_w:
                gw.addmm_(gl.t().to(acc), hc.to(acc))
            if need_b:
                gb += gl.sum(0).to(acc)
        return (gh, None if gw is None else gw.to(weight.dtype), None if gb is None else gb.to(bias.dtype),
                None, None)


def fused_logprobs(h, weight, labels, chunk_size: int = 1024, bias=None) -> torch.Tensor:
    if chunk_size < 1:
        raise ValueError("fused_logprobs: chunk_size must be >= 1")
    return _FusedHeadLogprob.apply(h, weight, bias, labels.long(), int(chunk_size))


def liger_logprobs(h, weight, labels, chunk_mem_const: int = LIGER_CHUNK_MEM_CONST, bias=None) -> torch.Tensor:
    from liger_kernel.ops.fused_linear_cross_entropy import LigerFusedLinearCrossEntropyFunction as F

    # positional: _input, weight, target, bias, ce_weight, ignore_index, lse_square_scale, label_smoothing,
    # reduction, softcap, return_z_loss, accum_dtype, use_token_scaling, return_token_accuracy,
    # return_predicted_tokens, ce_impl, ce_mode, chunk_mem_const (liger-kernel 0.8.5)
    loss = F.apply(h, weight, labels.long(), bias, None, IGNORE_INDEX, 0.0, 0.0, "none", None, False, None,
                   False, False, False, None, None, int(chunk_mem_const))[0]
    return -loss.to(acc_dtype(h.dtype))


def head_logprobs(implementation: str, h: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor,
                  chunk_size: int = 1024, bias: torch.Tensor | None = None,
                  liger_chunk_mem_const: int = LIGER_CHUNK_MEM_CONST) -> torch.Tensor:
    """Token log-probs [N] of labels [N] from hidden states h [N, H] with one resolved implementation."""
    if h.ndim != 2 or labels.shape != h.shape[:1]:
        raise ValueError(f"head_logprobs: expected h [N, H] and labels [N], got {tuple(h.shape)}, {tuple(labels.shape)}")
    if implementation == "chunked":
        return hidden_to_token_logprobs(h[None], weight, labels[None], chunk_size, bias=bias)[0]
    if implementation == "fused":
        return fused_logprobs(h, weight, labels, chunk_size, bias)
    if implementation == "liger":
        return liger_logprobs(h, weight, labels, liger_chunk_mem_const, bias)
    raise ValueError(f"head_logprobs: unresolved implementation {implementation!r} (use pick_implementation)")
