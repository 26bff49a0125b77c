"""dSFT baseline: negative log-likelihood of the teacher's response y_t given the prompt x."""
from __future__ import annotations

import torch


def sft_loss(token_lp: torch.Tensor, mask: torch.Tensor,
             num_tokens: int | float | None = None) -> tuple[torch.Tensor, dict]:
    """L = -sum_{b,t} mask_bt * lp_bt / sum_{b,t} mask_bt  (token mean over the whole batch).

    token_lp [B, T] per-token log-probs (e.g. from `dadpo.logprobs.token_logprobs`), mask [B, T]
    (bool or 0/1) marking response tokens. Token mean over the batch, not a mean of per-sequence
    means: every response token weighs the same, as in HF/OpenRLHF SFT, so long answers are not
    down-weighted. `num_tokens` overrides the denominator (e.g. the response-token count of the
    whole accumulated global batch, so gradient accumulation matches one large batch exactly).
    Returns (loss, {"loss", "sft/nll" (token-mean NLL of this batch), "sft/tokens"}).
    """
    m = mask.bool()
    nll_sum = -torch.where(m, token_lp, torch.zeros((), dtype=token_lp.dtype, device=token_lp.device)).sum()
    n = m.sum()
    denom = n.clamp_min(1).to(nll_sum.dtype) if num_tokens is None else float(num_tokens)
    loss = nll_sum / denom
    metrics = {"loss": loss.detach(), "sft/nll": (nll_sum / n.clamp_min(1)).detach(),
               "sft/tokens": n.detach().to(nll_sum.dtype)}
    return loss, metrics
