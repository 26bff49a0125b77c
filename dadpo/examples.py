"""Training examples: encoded (prompt, teacher answer[, student answer]) plus precomputed scores.

The frozen models' numbers are attached here, before training, so the trainer never needs a
teacher or reference model in memory.
"""
from __future__ import annotations

from dadpo.chat import encode_examples


def encode_rows(tokenizer, rows: list[dict], max_len: int, max_prompt_tokens: int) -> list[dict]:
    """rows: {"id", "prompt", "chosen"[, "rejected"]} -> examples with encoded answers."""
    paired = [r for r in rows if r.get("rejected") is not None]
    enc = iter(encode_examples(tokenizer, [r["prompt"] for r in rows + paired],
                               [r["chosen"] for r in rows] + [r["rejected"] for r in paired], max_len, max_prompt_tokens))
    out = [{"id": r["id"], "chosen": next(enc)} for r in rows]
    for ex, r in zip(out, rows):
        if r.get("rejected") is not None:
            ex["rejected"] = next(enc)
    return out


def answers_of(examples: list[dict], answers: tuple[str, ...] = ("chosen", "rejected")) -> list[dict]:
    """The encoded answers in scoring order: every example's first answer, then every example's second."""
    return [e[a] for a in answers for e in examples]


def attach_sequence_scores(examples: list[dict], scores: dict, prefix: str) -> None:
    """Add `{prefix}_chosen`, `{prefix}_rejected` (+ `_count`) from sequence_logprobs of answers_of(examples)."""
    n = len(examples)
    for i, e in enumerate(examples):
        e[f"{prefix}_chosen"], e[f"{prefix}_chosen_count"] = float(scores["sum"][i]), int(scores["count"][i])
        e[f"{prefix}_rejected"], e[f"{prefix}_rejected_count"] = (float(scores["sum"][n + i]),
                                                                  int(scores["count"][n + i]))


def attach_teacher_topk(examples: list[dict], cache: dict, answer: str = "chosen") -> dict:
    """Add `kd` (chosen) / `kd_<answer>` = (logprobs, ids, tail[, sample_logprobs, sample_ids]) rows of a
    teacher_topk cache of that answer of every example; returns its size (tokens, bytes)."""
    off = cache["offsets"].tolist()
    key = "kd" if answer == "chosen" else f"kd_{answer}"
    fields = ("logprobs", "ids", "tail") + (("sample_logprobs", "sample_ids") if "sample_ids" in cache else ())
    for i, e in enumerate(examples):
        a, b = off[i], off[i + 1]
        e[key] = tuple(cache[f][a:b] for f in fields)
    return {"tokens": int(off[-1]), "bytes": sum(int(cache[k].numel() * cache[k].element_size()) for k in fields)}
