"""Training methods: one loss object per method, built from the config's `objective` section.

A method says what it trains on (the teacher's answer only, or teacher-vs-student pairs), where it
starts (the untrained student or pi_dSFT), which frozen-model scores must be precomputed for it, and
how the policy's outputs on one micro-batch become a loss. The trainer and the pipeline read these
attributes; neither switches on method names.

Adding a method is one subclass of `Method` and one line in `METHODS` (docs/architecture.md shows a
worked example). Its `fields` (the objective settings it reads) enter its cache key, so changing a
setting retrains only the methods that read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from baselines.ddpo import ddpo_loss
from baselines.kd import kd_loss
from baselines.numerics import token_logprobs
from baselines.sft import sft_loss
from dadpo.objectives import dadpo_loss, token_dadpo_loss


@dataclass
class PolicyOutputs:
    """The policy on one micro-batch: rows are `exs`' answers in `Method.answers` order (all chosen
    answers first, then all rejected ones); token values cover response tokens only, row-major."""
    labels: torch.Tensor  # [N] each response token
    row: torch.Tensor  # [N] row index of each token
    rows: int
    logits: torch.Tensor | None = None  # [N, V] when the method asks for logits
    lp: torch.Tensor | None = None  # [N] log pi_theta of each token (computed from logits if not given)

    @property
    def token_logprobs(self) -> torch.Tensor:
        if self.lp is None:
            self.lp = token_logprobs(self.logits, self.labels)
        return self.lp

    def sequence_logprobs(self, length_average: bool = False) -> torch.Tensor:
        """[rows] summed (or length-averaged) response log-probs."""
        lp = self.token_logprobs
        sums = torch.zeros(self.rows, dtype=lp.dtype, device=lp.device).index_add(0, self.row, lp)
        if length_average:
            sums = sums / torch.bincount(self.row, minlength=self.rows).clamp(min=1)
        return sums


def frozen_scores(exs: list[dict], key: str, length_average: bool, device) -> torch.Tensor:
    """Precomputed sequence log-probs `key` (e.g. "ref_chosen") of `exs` as a float32 tensor."""
    v = torch.tensor([e[key] for e in exs], dtype=torch.float64)
    if length_average:
        v = v / torch.tensor([max(1, e[key + "_count"]) for e in exs], dtype=torch.float64)
    return v.to(device, torch.float32)


def teacher_topk(exs: list[dict], keys: tuple[str, ...], device) -> tuple[torch.Tensor, ...]:
    """The cached teacher top-k rows of `exs`' answers, in the policy's token order, batched as [1, N, ...]:
    (logprobs, ids, tail) and, for a cache with tail samples, (sample_logprobs, sample_ids)."""
    width = len(exs[0][keys[0]])
    parts = [torch.cat([e[k][i] for k in keys for e in exs]).to(device)[None] for i in range(width)]
    return tuple(x.long() if i in (1, 4) else x.float() for i, x in enumerate(parts))


class Method:
    """Base of every training method; subclasses set the class attributes and `loss`."""
    name: ClassVar[str]
    answers: ClassVar[tuple[str, ...]] = ("chosen",)  # chosen = teacher's answer, rejected = student's
    start: ClassVar[str] = "student"  # "student" (untrained) or "dsft" (pi_dSFT, which is also pi_ref)
    # frozen-model scores precomputed before training: "ref" / "te" (sequence log-probs of both answers
    # under pi_ref / pi_te), "topk" / "topk2" (teacher top-k + tail of the chosen / of both answers)
    scores: ClassVar[tuple[str, ...]] = ()
    wants_logits: ClassVar[bool] = False
    per_token: ClassVar[bool] = False  # loss units: response tokens (else: pairs)
    sft_schedule: ClassVar[bool] = False  # trains with train.sft_lr and train.sft_epochs
    extension: ClassVar[bool] = False  # not in the paper
    fields: ClassVar[tuple[str, ...]] = ()  # objective settings it reads

    def __init__(self, **settings):
        missing = set(self.fields) - set(settings)
        if missing:
            raise ValueError(f"method {self.name}: missing settings {sorted(missing)}")
        self.settings = {f: settings[f] for f in self.fields}
        for k, v in self.settings.items():
            setattr(self, k, v)

    @classmethod
    def from_config(cls, objective) -> "Method":
        return cls(**{f: getattr(objective, f) for f in cls.fields})

    def units(self, ex: dict) -> int:
        """Loss units of one example; losses are normalised by the units of the whole global batch."""
        return max(1, sum(ex["chosen"]["response_mask"][1:])) if self.per_token else 1

    def loss(self, out: PolicyOutputs, exs: list[dict]) -> tuple[torch.Tensor, dict]:
        """(sum of the loss over this micro-batch's units, metrics)."""
        raise NotImplementedError


class SFT(Method):
    name, per_token, sft_schedule = "sft", True, True

    def loss(self, out, exs):
        lp = out.token_logprobs
        loss, metrics = sft_loss(lp[None], torch.ones_like(lp)[None])
        return loss * lp.numel(), metrics


_KD_FIELDS = ("divergence", "kd_temperature", "jsd_lambda", "skew_alpha", "top_k", "kd_tail_samples")


class KD(Method):
    name, per_token, wants_logits, scores, fields = "kd", True, True, ("topk",), _KD_FIELDS

    def loss(self, out, exs):
        logits = out.logits
        mask = torch.ones(logits.shape[:-1], device=logits.device)[None]
        loss, metrics = kd_loss(logits[None], mask, self.divergence, self.kd_temperature, self.jsd_lambda,
                                self.skew_alpha, teacher_topk=teacher_topk(exs, ("kd",), logits.device))
        return loss * logits.shape[0], metrics


class _Pairs(Method):
    """The DPO family: teacher answer (chosen) vs the dSFT student's sample (rejected), from pi_dSFT."""
    answers, start = ("chosen", "rejected"), "dsft"

    def policy_and_ref(self, out, exs):
        seq = out.sequence_logprobs(self.length_average)
        n, dev = len(exs), seq.device
        return (seq[:n], seq[n:], frozen_scores(exs, "ref_chosen", self.length_average, dev),
                frozen_scores(exs, "ref_rejected", self.length_average, dev))


class DDPO(_Pairs):
    name, scores, fields = "ddpo", ("ref",), ("beta", "length_average")

    def loss(self, out, exs):
        loss, metrics = ddpo_loss(*self.policy_and_ref(out, exs), self.beta)
        return loss * len(exs), metrics


class DADPO(_Pairs):
    name, scores, fields = "dadpo", ("ref", "te"), ("beta1", "beta2", "length_average")

    def loss(self, out, exs):
        dev = out.row.device
        tc = frozen_scores(exs, "te_chosen", self.length_average, dev)
        tr = frozen_scores(exs, "te_rejected", self.length_average, dev)
        loss, metrics = dadpo_loss(*self.policy_and_ref(out, exs), tc, tr, self.beta1, self.beta2)
        return loss * len(exs), metrics


class TokenDADPO(_Pairs):
    """Extension, not in the paper: dDPO + lambda x token-level KD on both answers."""
    name, scores, wants_logits, extension = "dadpo_token", ("ref", "topk2"), True, True
    fields = ("beta", "token_kd_lambda", "length_average") + _KD_FIELDS

    def loss(self, out, exs):
        logits = out.logits
        mask = torch.ones(logits.shape[:-1], device=logits.device)[None]
        loss, metrics = token_dadpo_loss(
            *self.policy_and_ref(out, exs), self.beta, logits[None], mask, self.token_kd_lambda, self.divergence,
            self.kd_temperature, self.jsd_lambda, self.skew_alpha,
            teacher_topk=teacher_topk(exs, ("kd", "kd_rejected"), logits.device))
        return loss * len(exs), metrics


METHODS: dict[str, type[Method]] = {m.name: m for m in (SFT, KD, DDPO, DADPO, TokenDADPO)}


def build_method(name: str, objective) -> Method:
    """The method `name` with its settings read from an ObjectiveConfig (or any object with those fields)."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r} (known: {', '.join(METHODS)})")
    return METHODS[name].from_config(objective)
