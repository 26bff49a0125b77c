"""dDPO baseline: DPO on (chosen = teacher answer y_t, rejected = student answer y_s) pairs."""
from __future__ import annotations

import torch
import torch.nn.functional as F


def preference_metrics(margin: torch.Tensor, reward_chosen: torch.Tensor, reward_rejected: torch.Tensor,
                       loss: torch.Tensor, pol_chosen: torch.Tensor, pol_rejected: torch.Tensor,
                       margin_at_ref: torch.Tensor) -> dict:
    """Batch-mean metrics shared by dDPO and daDPO (TRL's names), all detached.

    `loss_at_ref` is the loss this batch has when pi_theta = pi_ref (margin_at_ref), i.e. its loss
    before the first update when training starts from the reference, as dDPO and daDPO do here:
    `loss - loss_at_ref` is then a same-batch measure of how far training has lowered the loss,
    free of the batch-to-batch spread that daDPO's teacher term puts into the raw loss.
    """
    return {
        "loss": loss.detach(),
        "loss_at_ref": -F.logsigmoid(margin_at_ref.detach()).mean(),
        "rewards/chosen": reward_chosen.detach().mean(),
        "rewards/rejected": reward_rejected.detach().mean(),
        "rewards/margins": margin.detach().mean(),
        "rewards/accuracy": (margin.detach() > 0).to(margin.dtype).mean(),
        "logps/chosen": pol_chosen.detach().mean(),
        "logps/rejected": pol_rejected.detach().mean(),
    }


def ddpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
              ref_rejected: torch.Tensor, beta: float) -> tuple[torch.Tensor, dict]:
    """L = mean_b -log sigmoid(beta * [(pc - rc) - (pr - rr)]).

    Inputs: sequence log-probs [B] of the chosen (teacher) and rejected (student) answers under the
    policy (with gradient) and the frozen reference pi_dSFT. Implicit rewards are
    beta * (pc - rc) and beta * (pr - rr); their difference is the margin.
    Returns (loss, metrics) with metrics keys: loss, rewards/chosen, rewards/rejected,
    rewards/margins, rewards/accuracy (share of margins > 0), logps/chosen, logps/rejected,
    loss_at_ref (= log 2: see preference_metrics).
    """
    reward_chosen = beta * (pol_chosen - ref_chosen)
    reward_rejected = beta * (pol_rejected - ref_rejected)
    # the margin is beta * (difference of log-ratios), written in this order so that daDPO with
    # beta2 = 0 (dadpo.objectives) reproduces it bit for bit
    margin = beta * ((pol_chosen - ref_chosen) - (pol_rejected - ref_rejected))
    loss = -F.logsigmoid(margin).mean()
    return loss, preference_metrics(margin, reward_chosen, reward_rejected, loss, pol_chosen, pol_rejected,
                                    torch.zeros_like(margin))
