"""A local instruct model as a pairwise judge, read from verdict-token probabilities.

The pairwise prompt (the one the API judge gets) is rendered with the model's chat template, the
assistant turn is started with "[[", and one forward pass (a prefill, no free generation) gives the
next-token probabilities of "A", "B" and "C" (tie). The verdict is the most probable of the three;
the probabilities are returned with it. When the three hold less than `min_mass` of the probability
the model is not answering in the format, and the item fails instead of getting a verdict.
"""
from __future__ import annotations

from typing import Iterator

from evals.judges.base import (VERDICT_LABELS, Judge, JudgeError, JudgeItem, Verdict, VerdictCache, first_line,
                               load_judge_model, model_fingerprint, pairwise_messages, pick_device, resolve_model, sha256_text,
                               template_hash)

RESPONSE_PREFIX = "[["
DTYPES = ("auto", "bfloat16", "float32", "float16")


class LocalJudge(Judge):
    name = "local"
    version = 1

    def __init__(self, model: str, batch_size: int = 4, dtype: str = "auto", device: str | None = None,
                 max_input_tokens: int = 4096, min_mass: float = 0.1, use_reference: bool = True,
                 cache: VerdictCache | None = None):
        super().__init__(cache)
        from transformers import AutoTokenizer

        if dtype not in DTYPES:
            raise JudgeError(f"local judge: dtype must be one of {', '.join(DTYPES)}")
        self.model_id = model
        self.path = resolve_model(model)
        self.device = pick_device(device)
        # bf16 prefill is 2-3x faster than fp32 on CPU too (docs/assets.md); the dtype is in the identity.
        self.dtype = "bfloat16" if dtype == "auto" else dtype
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(self.path)
        except Exception as e:  # noqa: BLE001
            raise JudgeError(f"local judge: cannot load {model!r}: {first_line(e)}") from None
        if not self.tokenizer.chat_template:
            raise JudgeError(f"local judge: {model!r} has no chat template")
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None \
            else self.tokenizer.eos_token_id
        self.fingerprint = model_fingerprint(self.path)
        self.batch_size, self.max_input_tokens, self.min_mass = batch_size, max_input_tokens, min_mass
        self.use_reference = use_reference
        self.label_ids = self._label_ids()

    def _load_model(self):
        import torch
        from transformers import AutoModelForCausalLM

        model = load_judge_model(AutoModelForCausalLM, self.path, "local judge", dtype=getattr(torch, self.dtype))
        return model.to(self.device).eval()

    def _render(self, item: JudgeItem) -> str:
        messages = pairwise_messages(item, self.use_reference)
        try:
            text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        except Exception:  # noqa: BLE001 - templates without a system role: fold it into the user turn
            merged = [{"role": "user", "content": messages[0]["content"] + "\n\n" + messages[1]["content"]}]
            text = self.tokenizer.apply_chat_template(merged, tokenize=False, add_generation_prompt=True)
        return text + RESPONSE_PREFIX

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def _label_ids(self) -> dict[str, int]:
        """Token of each verdict letter right after the prefix, checked to be one token in context."""
        base_text = self._render(JudgeItem("q", "a", "b"))
        base = self._encode(base_text)
        out = {}
        for letter in VERDICT_LABELS:
            full = self._encode(base_text + letter)
            if len(full) != len(base) + 1 or full[:len(base)] != base:
                raise JudgeError(f"local judge: verdict letter {letter!r} is not one token after "
                                 f"{RESPONSE_PREFIX!r} in {self.model_id!r}'s tokenizer")
            out[letter] = full[-1]
        if len(set(out.values())) != 3:
            raise JudgeError("local judge: verdict letters share a token")
        return out

    @property
    def identity(self) -> dict:
        return {"name": self.name, "model": self.model_id, "weights": self.fingerprint,
                "template": template_hash(self.use_reference), "use_reference": self.use_reference,
                "chat_template": sha256_text(self.tokenizer.chat_template)[:12],
                "response_prefix": RESPONSE_PREFIX, "decoding": {"mode": "verdict-token probabilities",
                                                                "min_mass": self.min_mass},
                "dtype": self.dtype, "version": self.version}

    def probabilities(self, texts: list[str]) -> list[dict]:
        """p(A), p(B), p(C) of the next token after each text, in batched prefills."""
        rows = [self._encode(t) for t in texts]
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        out: list[dict] = [None] * len(rows)  # type: ignore[list-item]
        for s in range(0, len(order), self.batch_size):
            idx = order[s:s + self.batch_size]
            for i, res in zip(idx, self._prefill([rows[i] for i in idx])):
                out[i] = res
        return out

    def _prefill(self, rows: list[list[int]]) -> list[dict]:
        """One forward pass over a left-padded batch; only the last position's logits are computed."""
        import torch

        letters = list(VERDICT_LABELS)
        ids = torch.tensor([self.label_ids[c] for c in letters])
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for r, row in enumerate(rows):  # left padding: the last position is every row's next token
            input_ids[r, width - len(row):] = torch.tensor(row)
            mask[r, width - len(row):] = 1
        # Positions count real tokens only, so a padded row scores as it would alone.
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=mask.to(self.device),
                                position_ids=pos.to(self.device), logits_to_keep=1).logits[:, -1]
        probs = torch.softmax(logits.float(), dim=-1)[:, ids.to(logits.device)].cpu()
        return [{"p": dict(zip(letters, probs[r].tolist())), "tokens": len(row)} for r, row in enumerate(rows)]

    def _judge_iter(self, items: list[JudgeItem]) -> Iterator[tuple[int, Verdict]]:
        rows = [self._encode(self._render(it)) for it in items]
        fits = []
        for i, row in enumerate(rows):
            if len(row) > self.max_input_tokens:
                yield i, Verdict.fail(f"judge input too long ({len(row)} tokens > {self.max_input_tokens})",
                                      tokens=len(row))
            else:
                fits.append(i)
        fits.sort(key=lambda i: len(rows[i]))  # similar lengths per batch: less padding
        for s in range(0, len(fits), self.batch_size):  # yield per batch: the cache keeps finished work
            chunk = fits[s:s + self.batch_size]
            for i, res in zip(chunk, self._prefill([rows[i] for i in chunk])):
                p = res["p"]
                mass = sum(p.values())
                details = {"p": p, "mass": mass, "p_norm": {k: v / mass if mass else 0.0 for k, v in p.items()},
                           "tokens": res["tokens"]}
                if mass < self.min_mass:
                    yield i, Verdict.fail(f"verdict tokens hold only {mass:.3g} of the probability "
                                          f"(min_mass {self.min_mass})", **details)
                else:
                    yield i, Verdict(VERDICT_LABELS[max(p, key=p.get)], None, details)
