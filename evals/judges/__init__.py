"""Judges behind one interface: `Judge.judge(list[JudgeItem]) -> list[Verdict]`.

- `api`: any OpenAI-compatible chat-completions endpoint (MT-Bench-style pairwise prompt).
- `pairrm`: PairRM through llm-blender (optional extra `pairrm`).
- `local`: a local instruct model, verdict read from the probabilities of the verdict tokens.
- `reference`: sentence-embedding similarity to a reference answer.
Model-backed judge modules import their heavy dependencies only when built.
"""
from __future__ import annotations

from dadpo.config import JUDGES  # the one list of judge names
from evals.judges.base import Judge, JudgeError, JudgeItem, Verdict, VerdictCache, identity_hash

__all__ = ["Judge", "JudgeError", "JudgeItem", "Verdict", "VerdictCache", "identity_hash", "make_judge", "JUDGES"]


def make_judge(name: str, cfg=None, cache: VerdictCache | None = None, **overrides) -> Judge:
    """Build a judge from an `EvalConfig` (dadpo.config) plus keyword overrides."""
    from dadpo.config import EvalConfig

    cfg = cfg or EvalConfig()
    if name == "reference":
        from evals.judges.reference import ReferenceJudge

        kw = {"embedder": cfg.reference_embedder, "tie_margin": cfg.reference_tie_margin}
        return ReferenceJudge(**{**kw, **overrides}, cache=cache)
    if name == "local":
        from evals.judges.local import LocalJudge

        return LocalJudge(**{"model": cfg.local_judge, **overrides}, cache=cache)
    if name == "pairrm":
        from evals.judges.pairrm import PairRMJudge

        return PairRMJudge(**{"model": cfg.pairrm, **overrides}, cache=cache)
    if name == "api":
        from evals.judges.api import ApiJudge

        kw = {"model": cfg.api_model, "base_url": cfg.api_base_url or None, "concurrency": cfg.api_concurrency,
              "timeout_s": cfg.api_timeout, "max_attempts": cfg.api_max_attempts}
        return ApiJudge(**{**kw, **overrides}, cache=cache)
    raise JudgeError(f"unknown judge {name!r} (known: {', '.join(JUDGES)})")
