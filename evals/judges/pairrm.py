"""PairRM (llm-blender) as a pairwise judge, on transformers 5.

Uses llm-blender's own `DebertaV2PairRM` model class and `tokenize_pair` input builder (the
"llm-blender/PairRM-hf" checkpoint format). llm-blender 0.0.2 imports
`transformers.utils.hub.TRANSFORMERS_CACHE`, which transformers 5 removed; we set it before the
import. Its `Blender.compare` path is not used: its collators call `batch_encode_plus`, also gone in
transformers 5, and the "llm-blender/PairRM" (Blender-format) checkpoint needs
microsoft/deberta-v3-large from the hub on top of its own weights; "llm-blender/PairRM-hf" holds the
same model in one self-contained folder.

One forward pass per (prompt, A, B): logit > 0 means A is better. Inputs longer than the budgets are
cut by `tokenize_pair`; whether each part was cut is recorded beside the verdict.
"""
from __future__ import annotations

from typing import Iterator

from evals.judges.base import (Judge, JudgeError, JudgeItem, Verdict, VerdictCache, first_line,
                               load_judge_model, model_fingerprint, pick_device, resolve_model)

SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX = "<|source|>", "<|candidate1|>", "<|candidate2|>"
HF_FORMAT = {"llm-blender/PairRM": "llm-blender/PairRM-hf"}  # same weights, self-contained format


def import_llm_blender():
    """(DebertaV2PairRM, tokenize_pair, version), importable on transformers 5."""
    import transformers.utils.hub as hub

    if not hasattr(hub, "TRANSFORMERS_CACHE"):  # removed in transformers 5; llm-blender imports it
        from huggingface_hub import constants

        hub.TRANSFORMERS_CACHE = constants.HF_HUB_CACHE
    try:
        from llm_blender.blender.blender_utils import tokenize_pair
        from llm_blender.pair_ranker.pairrm import DebertaV2PairRM
    except ImportError as e:
        raise JudgeError(f"pairrm judge needs llm-blender: pip install 'dadpo-repro[pairrm]' ({first_line(e)})") \
            from None
    from importlib.metadata import version

    return DebertaV2PairRM, tokenize_pair, version("llm-blender")


class PairRMJudge(Judge):
    name = "pairrm"
    version = 1

    def __init__(self, model: str = "llm-blender/PairRM-hf", source_max_length: int = 1224,
                 candidate_max_length: int = 412, batch_size: int = 4, device: str | None = None,
                 tie_margin: float = 0.0, cache: VerdictCache | None = None):
        super().__init__(cache)
        DebertaV2PairRM, self._tokenize_pair, self._lib_version = import_llm_blender()
        from transformers import AutoConfig, AutoTokenizer

        self.requested = model
        self.model_id = HF_FORMAT.get(model, model)
        self.path = resolve_model(self.model_id)
        self.device = pick_device(device)
        self._model_class = DebertaV2PairRM
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
            cfg = AutoConfig.from_pretrained(self.path)
        except Exception as e:  # noqa: BLE001 - hub unreachable, wrong folder: one line, not a traceback
            raise JudgeError(f"pairrm: cannot load {self.model_id!r} (a local folder, or a hub id with the hub "
                             f"reachable): {first_line(e)}") from None
        for attr in ("source_prefix_id", "cand1_prefix_id", "cand2_prefix_id"):
            if getattr(cfg, attr, None) is None:
                raise JudgeError(f"pairrm: {self.model_id!r} is not a DebertaV2PairRM checkpoint (no {attr})")
        ids = self.tokenizer.convert_tokens_to_ids([SOURCE_PREFIX, CAND1_PREFIX, CAND2_PREFIX])
        if ids != [cfg.source_prefix_id, cfg.cand1_prefix_id, cfg.cand2_prefix_id]:
            raise JudgeError(f"pairrm: tokenizer and model of {self.model_id!r} disagree on the prefix tokens")
        self.fingerprint = model_fingerprint(self.path)
        self.source_max_length, self.candidate_max_length = source_max_length, candidate_max_length
        self.batch_size, self.tie_margin = batch_size, tie_margin

    @property
    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "weights": self.fingerprint,
                "llm_blender": self._lib_version, "source_max_length": self.source_max_length,
                "candidate_max_length": self.candidate_max_length, "tie_margin": self.tie_margin,
                "dtype": "torch.float32", "version": self.version}  # loaded in its saved (fp32) weights

    def _load_model(self):
        return load_judge_model(self._model_class, self.path, "pairrm").to(self.device).eval()

    def truncation(self, item: JudgeItem) -> dict:
        """Token counts and whether tokenize_pair cuts each part (its budgets, recomputed here)."""
        enc = lambda t: len(self.tokenizer.encode(t))  # noqa: E731 - with special tokens, as tokenize_pair
        src = enc(SOURCE_PREFIX + item.prompt)
        budget = (self.source_max_length + 2 * self.candidate_max_length - min(src, self.source_max_length)) // 2
        a, b = enc(CAND1_PREFIX + item.answer_a), enc(CAND2_PREFIX + item.answer_b)
        return {"source_tokens": src, "source_max": self.source_max_length, "source_cut": src > self.source_max_length,
                "candidate_max": budget, "a_tokens": a, "a_cut": a > budget, "b_tokens": b, "b_cut": b > budget}

    def _judge_iter(self, items: list[JudgeItem]) -> Iterator[tuple[int, Verdict]]:
        import torch

        order = sorted(range(len(items)), key=lambda i: len(items[i].prompt) + len(items[i].answer_a)
                       + len(items[i].answer_b))  # similar lengths together: less padding
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            batch = [items[i] for i in idx]
            enc = self._tokenize_pair(self.tokenizer, [it.prompt for it in batch], [it.answer_a for it in batch],
                                      [it.answer_b for it in batch], source_max_length=self.source_max_length,
                                      candidate_max_length=self.candidate_max_length)
            with torch.no_grad():
                logits = self.model(**{k: v.to(self.device) for k, v in enc.items()}).logits.float().cpu()
            for i, it, lg in zip(idx, batch, logits.tolist()):
                verdict = "A" if lg > self.tie_margin else "B" if lg < -self.tie_margin else "tie"
                yield i, Verdict(verdict, None, {"logit": lg, "truncation": self.truncation(it)})
