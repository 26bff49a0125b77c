"""The daDPO objective (reconstructed, see docs/method.md#dadpo) and a labelled token-level extension.

All functions are pure: tensors in, (loss scalar, metrics dict of detached scalars) out.
Inputs are sequence log-probs [B] (sum of response-token log-probs, or their mean when
length-averaged) of the chosen answer y_t (teacher's) and rejected answer y_s (student's) under
pi_theta (with gradient), the frozen reference pi_ref = pi_dSFT and the frozen teacher pi_te.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from baselines.ddpo import ddpo_loss, preference_metrics
from baselines.kd import kd_loss

# Objectives here that are NOT in the paper (beyond-the-paper variants, docs/method.md#extensions).
EXTENSIONS = ("token_dadpo_loss",)


def dadpo_margin(pol_chosen, pol_rejected, ref_chosen, ref_rejected, te_chosen, te_rejected,
                 beta1: float, beta2: float) -> torch.Tensor:
    """m = (b1 + b2)(pc - pr) - b1 (rc - rr) - b2 (tc - tr)            (docs/method.md#dadpo)
         = b1 [(pc - rc) - (pr - rr)] + b2 [(pc - tc) - (pr - tr)]             (computed form)
    i.e. a dDPO margin against pi_ref plus one against pi_te. The second form is what is evaluated:
    with b2 = 0 it is bit-identical to dDPO's margin, with b1 = 0 to DPO with the teacher as
    reference.
    """
    return (beta1 * ((pol_chosen - ref_chosen) - (pol_rejected - ref_rejected))
            + beta2 * ((pol_chosen - te_chosen) - (pol_rejected - te_rejected)))


def dadpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
               ref_rejected: torch.Tensor, te_chosen: torch.Tensor, te_rejected: torch.Tensor,
               beta1: float, beta2: float) -> tuple[torch.Tensor, dict]:
    """daDPO: L = mean_b -log sigmoid(m), m = dadpo_margin(...) (see there).

    Underlying objective (reconstruction): max_pi E_pi[r] - b1 KL(pi || pi_ref) - b2 KL(pi || pi_te),
    whose optimum is  pi*(y|x) ∝ pi_ref^(b1/(b1+b2)) * pi_te^(b2/(b1+b2)) * exp(r / (b1+b2)),
    so the implicit reward is r = (b1+b2) log pi - b1 log pi_ref - b2 log pi_te (+ a function of x),
    and m = r(y_t) - r(y_s) under the Bradley-Terry model.
    Gradient: dL/dtheta = -(b1+b2) sigmoid(-m) [grad log pi(y_t) - grad log pi(y_s)]; since
    m = (b1+b2) h - b2 delta_te with h = (pc - rc) - (pr - rr) and
    delta_te = log[pi_te(y_t)/pi_ref(y_t)] - log[pi_te(y_s)/pi_ref(y_s)], pairs the teacher prefers
    more strongly than pi_ref does get a larger weight.
    Special cases: b2 = 0 is dDPO with beta = b1; b1 = 0 is DPO with pi_te as reference, beta = b2.

    Returns (loss, metrics): the dDPO keys (loss, loss_at_ref, rewards/chosen, rewards/rejected, rewards/margins,
    rewards/accuracy, logps/chosen, logps/rejected), where rewards are the implicit rewards above,
    plus margin (= rewards/margins), dadpo/delta_te, dadpo/teacher_term = b2 (tc - tr),
    dadpo/ref_term = b1 (rc - rr), dadpo/margin_ref = b1 h, dadpo/margin_te = b2 [(pc-tc)-(pr-tr)].
    """
    if beta1 < 0 or beta2 < 0 or beta1 + beta2 <= 0:
        raise ValueError(f"dadpo_loss: need beta1, beta2 >= 0 and beta1 + beta2 > 0, got {beta1}, {beta2}")
    margin = dadpo_margin(pol_chosen, pol_rejected, ref_chosen, ref_rejected, te_chosen, te_rejected,
                          beta1, beta2)
    loss = -F.logsigmoid(margin).mean()
    reward_chosen = beta1 * (pol_chosen - ref_chosen) + beta2 * (pol_chosen - te_chosen)
    reward_rejected = beta1 * (pol_rejected - ref_rejected) + beta2 * (pol_rejected - te_rejected)
    at_ref = dadpo_margin(ref_chosen, ref_rejected, ref_chosen, ref_rejected, te_chosen, te_rejected, beta1, beta2)
    metrics = preference_metrics(margin, reward_chosen, reward_rejected, loss, pol_chosen, pol_rejected, at_ref)
    d = lambda x: x.detach().mean()  # noqa: E731
    metrics.update({
        "margin": d(margin),
        "dadpo/delta_te": d((te_chosen - ref_chosen) - (te_rejected - ref_rejected)),
        "dadpo/teacher_term": d(beta2 * (te_chosen - te_rejected)),
        "dadpo/ref_term": d(beta1 * (ref_chosen - ref_rejected)),
        "dadpo/margin_ref": d(beta1 * ((pol_chosen - ref_chosen) - (pol_rejected - ref_rejected))),
        "dadpo/margin_te": d(beta2 * ((pol_chosen - te_chosen) - (pol_rejected - te_rejected))),
    })
    return loss, metrics


def token_dadpo_loss(pol_chosen: torch.Tensor, pol_rejected: torch.Tensor, ref_chosen: torch.Tensor,
                     ref_rejected: torch.Tensor, beta: float, student_logits: torch.Tensor,
                     kd_mask: torch.Tensor, token_kd_lambda: float, divergence: str = "forward_kl",
                     temperature: float = 1.0, lam: float = 0.5, alpha: float = 0.1,
                     teacher_logits: torch.Tensor | None = None,
                     teacher_topk: Sequence[torch.Tensor] | None = None, chunk_size: int = 512,
                     num_kd_tokens: int | float | None = None) -> tuple[torch.Tensor, dict]:
    """EXTENSION, NOT IN THE PAPER: token-level daDPO = dDPO + lambda * token-level KD.

    L = ddpo_loss(pc, pr, rc, rr, beta) + token_kd_lambda * kd_loss(student_logits, kd_mask, ...)
    where the KD term (baselines.kd, any divergence, online teacher logits or cached top-k + tail)
    is the token mean over the response positions of BOTH answers: pass the policy logits of the
    chosen and rejected sequences stacked along the batch (as in a concatenated DPO forward), with
    kd_mask marking their response positions and the teacher inputs stacked the same way.
    Returns (loss, metrics): dDPO metrics (with "loss" = the total) plus ext_token_kd/ddpo_loss,
    ext_token_kd/kd (mean divergence), ext_token_kd/tokens, and ext_token_kd/teacher_tail_mass in
    cached mode.
    """
    if token_kd_lambda < 0:
        raise ValueError("token_dadpo_loss: token_kd_lambda must be >= 0")
    pref, metrics = ddpo_loss(pol_chosen, pol_rejected, ref_chosen, ref_rejected, beta)
    kd, kd_metrics = kd_loss(student_logits, kd_mask, divergence, temperature, lam, alpha,
                             teacher_logits=teacher_logits, teacher_topk=teacher_topk,
                             chunk_size=chunk_size, num_tokens=num_kd_tokens)
    loss = pref + token_kd_lambda * kd
    metrics["loss"] = loss.detach()
    metrics["ext_token_kd/ddpo_loss"] = pref.detach()
    metrics["ext_token_kd/kd"] = kd_metrics[f"kd/{divergence}"]
    metrics["ext_token_kd/tokens"] = kd_metrics["kd/tokens"]
    if "kd/teacher_tail_mass" in kd_metrics:
        metrics["ext_token_kd/teacher_tail_mass"] = kd_metrics["kd/teacher_tail_mass"]
    return loss, metrics
