"""Reference-similarity judge: prefer the answer whose sentence embedding is closer to the reference.

Embeddings as sentence-transformers computes them for all-MiniLM-L6-v2: mean of the last hidden
states over real tokens, L2-normalised; texts longer than `max_seq_length` word pieces are cut (and
the cut is recorded). Verdict "A" when cos(A, ref) - cos(B, ref) > tie_margin, "B" when below
-tie_margin, else "tie". Order-independent by construction. An item without a reference fails.
"""
from __future__ import annotations

from typing import Iterator

from evals.judges.base import (Judge, JudgeError, JudgeItem, Verdict, VerdictCache, first_line, load_judge_model,
                               model_fingerprint, pick_device, resolve_model)


class ReferenceJudge(Judge):
    name = "reference"
    version = 1

    def __init__(self, embedder: str = "offline:all-minilm-l6-v2", tie_margin: float = 0.01,
                 max_seq_length: int = 256, batch_size: int = 32, device: str | None = None,
                 cache: VerdictCache | None = None):
        super().__init__(cache)
        from transformers import AutoTokenizer

        if tie_margin < 0:
            raise JudgeError("reference judge: tie_margin must be >= 0")
        self.embedder = embedder
        self.path = resolve_model(embedder)
        self.device = pick_device(device)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # noqa: BLE001
            raise JudgeError(f"reference judge: cannot load {embedder!r}: {first_line(e)}") from None
        self.fingerprint = model_fingerprint(self.path)
        self.tie_margin, self.max_seq_length, self.batch_size = tie_margin, max_seq_length, batch_size

    def _load_model(self):
        from transformers import AutoModel

        return load_judge_model(AutoModel, self.path, "reference judge").to(self.device).eval()

    @property
    def identity(self) -> dict:
        return {"name": self.name, "model": self.embedder, "weights": self.fingerprint,
                "pooling": "mean, L2-normalised", "max_seq_length": self.max_seq_length,
                "tie_margin": self.tie_margin, "version": self.version}

    def embed(self, texts: list[str]) -> tuple["torch.Tensor", list[bool]]:  # noqa: F821
        """Unit-norm embeddings (rows follow `texts`) and whether each text was cut."""
        import torch

        vecs, cut = [], []
        for s in range(0, len(texts), self.batch_size):
            chunk = texts[s:s + self.batch_size]
            full = self.tokenizer(chunk, truncation=False, verbose=False)["input_ids"]
            cut += [len(ids) > self.max_seq_length for ids in full]
            enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_seq_length,
                                 return_tensors="pt").to(self.device)
            with torch.no_grad():
                hidden = self.model(**enc).last_hidden_state.float()
            m = enc["attention_mask"].unsqueeze(-1).float()
            mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            vecs.append(torch.nn.functional.normalize(mean, dim=-1).cpu())
        return (torch.cat(vecs) if vecs else torch.zeros(0)), cut

    def _judge_iter(self, items: list[JudgeItem]) -> Iterator[tuple[int, Verdict]]:
        ok = [i for i, it in enumerate(items) if it.reference is not None and it.reference.strip()]
        for i in sorted(set(range(len(items))) - set(ok)):
            yield i, Verdict.fail("no reference")
        # Each distinct text is embedded once: references and teacher answers recur across orders.
        texts = sorted({t for i in ok for t in (items[i].answer_a, items[i].answer_b, items[i].reference)},
                       key=lambda t: (len(t), t))  # no tie left to the string-hash seed
        if not texts:
            return
        vecs, cut = self.embed(texts)
        row = {t: r for r, t in enumerate(texts)}
        for i in ok:
            it = items[i]
            a, b, ref = row[it.answer_a], row[it.answer_b], row[it.reference]
            sim_a, sim_b = float(vecs[a] @ vecs[ref]), float(vecs[b] @ vecs[ref])
            d = sim_a - sim_b
            verdict = "A" if d > self.tie_margin else "B" if d < -self.tie_margin else "tie"
            yield i, Verdict(verdict, None, {"sim_a": sim_a, "sim_b": sim_b,
                                             "cut": {"a": cut[a], "b": cut[b], "reference": cut[ref]}})
