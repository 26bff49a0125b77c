"""KD-only baseline: token-level divergences between teacher and student next-token distributions.

Notation: p = teacher, q = student, both softmax(logits / temperature) over the same buckets.
    forward_kl       KL(p || q)            = sum p (log p - log q)         (word-level KD; default)
    reverse_kl       KL(q || p)            = sum q (log q - log p)
    jsd (lambda)     lam KL(p || m) + (1 - lam) KL(q || m),   m = lam p + (1 - lam) q
                     (the generalized JSD of GKD, Agarwal et al. 2024; lam = 0.5 is the usual JSD;
                      it is 0 at lam = 0 (m = q) and at lam = 1 (m = p), so both ends are degenerate)
    skew_kl (alpha)  KL(p || alpha p + (1 - alpha) q)  (DistiLLM's SKL; alpha = 0 is forward KL)
    skew_reverse_kl  KL(q || alpha q + (1 - alpha) p)  (DistiLLM's SRKL; alpha = 0 is reverse KL)
Temperature divides both teacher and student logits; the loss is NOT multiplied by T^2 (Hinton's
gradient-scale correction): the trainer may do so. The loss is the mean over masked tokens.

Two teacher forms:
  (a) full teacher logits [..., V] (online teacher): the divergence is over the whole vocabulary;
  (b) a cached `TopKTail(logprobs, ids, tail)` from `baselines.numerics.topk_with_tail`: the student is
      restricted to the same k ids plus one tail bucket (student tail = 1 - sum of its probs on
      those ids), and the divergence is over those k + 1 buckets. Merging vocabulary entries into
      a bucket can only lower an f-divergence (data processing inequality), so the cached value is
      a lower bound that grows with k and is exact at k = V;
  (c) a cached `TopKSamples` (`topk_with_samples`): the k ids exactly, and the tail's sum of per-token
      terms estimated from m ids drawn from the teacher's tail, each term weighted by
      P_tail / (m p_j): unbiased in expectation over the draw, for every divergence here (each is a
      sum of per-token terms f(p_i, q_i)); the student's log-probs there are exact (full softmax).
  A cache must have been built at the same temperature; here the temperature only rescales the student.

Memory: only masked positions are touched, `chunk_size` positions at a time, and each chunk runs
under `torch.utils.checkpoint`, so the float32 log_softmax/mixture buffers of one chunk are alive at
a time in forward and in backward (they are recomputed there rather than stored).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from baselines.numerics import LOG_FLOOR, MASKED, acc_dtype, chunks

DIVERGENCES = ("forward_kl", "reverse_kl", "jsd", "skew_kl", "skew_reverse_kl")


# --- divergences between two distributions given as log-probs over the last dim -----------------
# Inputs are log-probabilities over the same buckets (vocabulary or k + 1 buckets); outputs drop the
# last dim. Log-probs are floored at LOG_FLOOR (finite), so p * (log p - log q) with p == 0 is 0 and
# never 0 * inf = NaN, in forward or backward.

def _kl(lp: torch.Tensor, lq: torch.Tensor, w=None) -> torch.Tensor:
    """KL(p || q) = sum_i w_i p_i (log p_i - log q_i); w (importance weights of sampled buckets) = 1 if None."""
    terms = lp.exp() * (lp - lq)
    return (terms if w is None else terms * w).sum(-1)


def _log_mix(la: torch.Tensor, lb: torch.Tensor, w: float) -> torch.Tensor:
    """log(w a + (1 - w) b) for 0 < w < 1, from log a and log b, without leaving log space."""
    return torch.logaddexp(la + math.log(w), lb + math.log1p(-w))


def forward_kl(lp: torch.Tensor, lq: torch.Tensor, w=None) -> torch.Tensor:
    """KL(p_teacher || q_student)."""
    return _kl(lp, lq, w)


def reverse_kl(lp: torch.Tensor, lq: torch.Tensor, w=None) -> torch.Tensor:
    """KL(q_student || p_teacher)."""
    return _kl(lq, lp, w)


def jsd(lp: torch.Tensor, lq: torch.Tensor, lam: float = 0.5, w=None) -> torch.Tensor:
    """lam KL(p || m) + (1 - lam) KL(q || m), m = lam p + (1 - lam) q; exactly 0 at lam in {0, 1}."""
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"jsd: lam must be in [0, 1], got {lam}")
    if lam in (0.0, 1.0):
        return (lq * 0).sum(-1)  # zero that keeps the graph (and gives zero gradients)
    lm = _log_mix(lp, lq, lam)
    return lam * _kl(lp, lm, w) + (1 - lam) * _kl(lq, lm, w)


def skew_kl(lp: torch.Tensor, lq: torch.Tensor, alpha: float = 0.1, w=None) -> torch.Tensor:
    """KL(p || alpha p + (1 - alpha) q); alpha = 0 is forward KL, alpha = 1 is 0."""
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"skew_kl: alpha must be in [0, 1], got {alpha}")
    if alpha == 0.0:
        return _kl(lp, lq, w)
    if alpha == 1.0:
        return (lq * 0).sum(-1)
    return _kl(lp, _log_mix(lp, lq, alpha), w)


def skew_reverse_kl(lp: torch.Tensor, lq: torch.Tensor, alpha: float = 0.1, w=None) -> torch.Tensor:
    """KL(q || alpha q + (1 - alpha) p); alpha = 0 is reverse KL, alpha = 1 is 0."""
    return skew_kl(lq, lp, alpha, w)


def divergence_from_logprobs(lp: torch.Tensor, lq: torch.Tensor, divergence: str = "forward_kl",
                             lam: float = 0.5, alpha: float = 0.1, weight: torch.Tensor | None = None) -> torch.Tensor:
    """Dispatch on `divergence`; lp = teacher log-probs, lq = student log-probs, [..., K] -> [...].
    Every divergence here is a sum of per-bucket terms; `weight` [..., K] scales each term (None = 1)."""
    lp, lq = lp.clamp_min(LOG_FLOOR), lq.clamp_min(LOG_FLOOR)
    if divergence == "forward_kl":
        return forward_kl(lp, lq, weight)
    if divergence == "reverse_kl":
        return reverse_kl(lp, lq, weight)
    if divergence == "jsd":
        return jsd(lp, lq, lam, weight)
    if divergence == "skew_kl":
        return skew_kl(lp, lq, alpha, weight)
    if divergence == "skew_reverse_kl":
        return skew_reverse_kl(lp, lq, alpha, weight)
    raise ValueError(f"unknown divergence {divergence!r} (known: {', '.join(DIVERGENCES)})")


# --- chunk kernels (run under checkpoint) -------------------------------------------------------

def _full_chunk(student_logits, teacher_logits, idx, divergence, temperature, lam, alpha):
    acc = acc_dtype(student_logits.dtype)
    lq = F.log_softmax(student_logits[idx].to(acc) / temperature, dim=-1)
    lp = F.log_softmax(teacher_logits[idx].to(acc) / temperature, dim=-1)
    return divergence_from_logprobs(lp, lq, divergence, lam, alpha).sum()


def _topk_chunk(student_logits, t_lp, t_ids, t_tail, idx, divergence, temperature, lam, alpha):
    acc = acc_dtype(student_logits.dtype)
    s = student_logits[idx].to(acc) / temperature  # [c, V]
    ids = t_ids[idx].long()  # [c, k]
    lse = torch.logsumexp(s, dim=-1, keepdim=True)
    lq_top = s.gather(-1, ids) - lse
    # student tail = logsumexp over the ids NOT in the teacher's top-k; the scatter routes no
    # gradient to the top-k entries, and the finite fill keeps k = V (empty tail) NaN-free
    lq_tail = torch.logsumexp(s.scatter(-1, ids, MASKED), dim=-1) - lse.squeeze(-1)
    lq = torch.cat([lq_top, lq_tail.clamp_min(LOG_FLOOR).unsqueeze(-1)], dim=-1)
    lp = torch.cat([t_lp[idx].to(acc), t_tail[idx].to(acc).unsqueeze(-1)], dim=-1)
    return divergence_from_logprobs(lp, lq, divergence, lam, alpha).sum()


def _sampled_chunk(student_logits, t_lp, t_ids, t_tail, s_lp, s_ids, idx, divergence, temperature, lam, alpha):
    """The top-k ids exactly, the tail by its importance-weighted samples (no merged tail bucket)."""
    acc = acc_dtype(student_logits.dtype)
    s = student_logits[idx].to(acc) / temperature  # [c, V]
    ids = torch.cat([t_ids[idx], s_ids[idx]], dim=-1).long()  # [c, k + m]
    lq = s.gather(-1, ids) - torch.logsumexp(s, dim=-1, keepdim=True)
    samp = s_lp[idx].to(acc)
    lp = torch.cat([t_lp[idx].to(acc), samp], dim=-1)
    m = samp.shape[-1]
    # sample weight: a term f(p_j, q_j) of the tail sum is estimated by f(p_s, q_s) P_tail / (m p_s)
    w_s = (t_tail[idx].to(acc).unsqueeze(-1) - samp.clamp_min(LOG_FLOOR)).exp() / m
    w = torch.cat([torch.ones_like(t_lp[idx], dtype=acc), w_s], dim=-1)
    return divergence_from_logprobs(lp, lq, divergence, lam, alpha, weight=w).sum()


def kd_divergence_sum(student_logits: torch.Tensor, mask: torch.Tensor, divergence: str = "forward_kl",
                      temperature: float = 1.0, lam: float = 0.5, alpha: float = 0.1,
                      teacher_logits: torch.Tensor | None = None,
                      teacher_topk: Sequence[torch.Tensor] | None = None,
                      chunk_size: int = 512) -> tuple[torch.Tensor, int]:
    """(sum over masked positions of the per-token divergence, number of masked positions).

    student_logits [..., V]; mask [...] (bool or 0/1: positions whose next-token distribution is
    distilled); exactly one of teacher_logits [..., V] or teacher_topk = (logprobs [..., k],
    ids [..., k], tail [...][, sample_logprobs [..., m], sample_ids [..., m]]). The sum is a float32 (float64) scalar carrying the student graph.
    """
    if (teacher_logits is None) == (teacher_topk is None):
        raise ValueError("kd: pass exactly one of teacher_logits (online teacher) or teacher_topk (cache)")
    if divergence not in DIVERGENCES:
        raise ValueError(f"kd: unknown divergence {divergence!r} (known: {', '.join(DIVERGENCES)})")
    if temperature <= 0:
        raise ValueError("kd: temperature must be > 0")
    if chunk_size < 1:
        raise ValueError("kd: chunk_size must be >= 1")
    lead, V = student_logits.shape[:-1], student_logits.shape[-1]
    if mask.shape != lead:
        raise ValueError(f"kd: mask {tuple(mask.shape)} does not match student logits {tuple(student_logits.shape)}")
    if teacher_logits is not None:
        if teacher_logits.shape != student_logits.shape:
            raise ValueError(f"kd: teacher logits {tuple(teacher_logits.shape)} and student logits "
                             f"{tuple(student_logits.shape)} differ (vocabulary mismatch? slice the padded "
                             "rows explicitly if that is intended)")
        teacher = (teacher_logits.detach(),)
        kernel = _full_chunk
    else:
        if len(teacher_topk) not in (3, 5):
            raise ValueError("kd: teacher_topk is (logprobs, ids, tail) or those plus (sample_logprobs, sample_ids)")
        t_lp, t_ids, t_tail = teacher_topk[:3]
        if t_lp.shape[:-1] != lead or t_ids.shape != t_lp.shape or t_tail.shape != lead:
            raise ValueError(f"kd: teacher_topk shapes {tuple(t_lp.shape)}, {tuple(t_ids.shape)}, "
                             f"{tuple(t_tail.shape)} do not match student logits {tuple(student_logits.shape)}")
        teacher = (t_lp.detach(), t_ids, t_tail.detach())
        kernel = _topk_chunk
        if len(teacher_topk) == 5 and teacher_topk[4].shape[-1] > 0:
            s_lp, s_ids = teacher_topk[3:]
            if s_lp.shape[:-1] != lead or s_ids.shape != s_lp.shape:
                raise ValueError(f"kd: tail samples {tuple(s_lp.shape)}, {tuple(s_ids.shape)} do not match "
                                 f"student logits {tuple(student_logits.shape)}")
            teacher = (*teacher, s_lp.detach(), s_ids)
            kernel = _sampled_chunk
    index = mask.bool().nonzero(as_tuple=True)
    n = int(index[0].numel())
    if teacher_topk is not None and n:
        top_id = max(int(teacher[i][index].max()) for i in ((1, 4) if len(teacher) == 5 else (1,)))
        if top_id >= V:
            raise ValueError(f"kd: cached teacher ids reach {top_id} >= student vocabulary {V}")
    acc = acc_dtype(student_logits.dtype)
    if n == 0:  # a zero that still sits on the student graph, so backward() works on an empty batch
        return (student_logits.sum() * 0).to(acc), 0
    total = torch.zeros((), dtype=acc, device=student_logits.device)
    use_ckpt = torch.is_grad_enabled() and student_logits.requires_grad
    for idx in chunks(index, chunk_size):
        args = (student_logits, *teacher, idx, divergence, float(temperature), float(lam), float(alpha))
        total = total + (checkpoint(kernel, *args, use_reentrant=False) if use_ckpt else kernel(*args))
    return total, n


def kd_loss(student_logits: torch.Tensor, mask: torch.Tensor, divergence: str = "forward_kl",
            temperature: float = 1.0, lam: float = 0.5, alpha: float = 0.1,
            teacher_logits: torch.Tensor | None = None,
            teacher_topk: Sequence[torch.Tensor] | None = None,
            chunk_size: int = 512, num_tokens: int | float | None = None) -> tuple[torch.Tensor, dict]:
    """Token-level KD loss: mean over masked positions of D(p_teacher, q_student) (see module doc).

    `num_tokens` overrides the denominator (e.g. masked tokens of the whole accumulated global
    batch, so micro-batches are weighted by their token counts). Returns (loss scalar, metrics):
    metrics = {"loss", "kd/<divergence>" (the mean divergence), "kd/tokens"} plus, in cached mode,
    "kd/teacher_tail_mass" (mean teacher probability outside the top-k: how lossy the cache is).
    """
    total, n = kd_divergence_sum(student_logits, mask, divergence, temperature, lam, alpha,
                                 teacher_logits, teacher_topk, chunk_size)
    denom = float(num_tokens) if num_tokens is not None else float(max(n, 1))
    loss = total / denom
    metrics = {"loss": loss.detach(), f"kd/{divergence}": (total / max(n, 1)).detach(),
               "kd/tokens": torch.tensor(float(n), device=loss.device)}
    if teacher_topk is not None:
        tail = teacher_topk[2].detach().float().exp()
        metrics["kd/teacher_tail_mass"] = (tail[mask.bool()].sum() / max(n, 1))
    return loss, metrics
