"""Training examples: encoded (prompt, teacher answer[, student answer]) plus precomputed scores.

The frozen models' numbers are attached here, before training, so the trainer never needs a
teacher or reference model in memory (METHOD.md pipeline step 5).
"""
from __future__ import annotations

from dadpo.chat import encode_example
from dadpo.precompute import sequence_logprobs, teacher_topk


def encode_rows(tokenizer, rows: list[dict], max_len: int, max_prompt_tokens: int) -> list[dict]:
    """rows: {"id", "prompt", "chosen"[, "rejected"]} -> examples with encoded answers."""
    out = []
    for r in rows:
        ex = {"id": r["id"], "chosen": encode_example(tokenizer, r["prompt"], r["chosen"], max_len, max_prompt_tokens)}
        if r.get("rejected") is not None:
            ex["rejected"] = encode_example(tokenizer, r["prompt"], r["rejected"], max_len, max_prompt_tokens)
        out.append(ex)
    return out


def attach_sequence_scores(examples: list[dict], model, model_fp: str, pad_id: int, prefix: str,
                           batch_size: int = 8, chunk_size: int = 1024) -> None:
    """Add `{prefix}_chosen`, `{prefix}_rejected` (+ `_count`) sequence log-probs under `model`."""
    enc = [e["chosen"] for e in examples] + [e["rejected"] for e in examples]
    s = sequence_logprobs(model, enc, pad_id, model_fp, batch_size, chunk_size, desc=f"score {prefix}")
    n = len(examples)
    for i, e in enumerate(examples):
        e[f"{prefix}_chosen"], e[f"{prefix}_chosen_count"] = float(s["sum"][i]), int(s["count"][i])
        e[f"{prefix}_rejected"], e[f"{prefix}_rejected_count"] = float(s["sum"][n + i]), int(s["count"][n + i])


def attach_teacher_topk(examples: list[dict], teacher, teacher_fp: str, pad_id: int, k: int,
                        temperature: float = 1.0, batch_size: int = 8, vocab: int | None = None,
                        answers: tuple[str, ...] = ("chosen",)) -> dict:
    """Add `kd` (chosen) / `kd_rejected` = (logprobs, ids, tail) rows of the teacher's top-k cache."""
    report = {}
    for answer in answers:
        enc = [e[answer] for e in examples]
        c = teacher_topk(teacher, enc, pad_id, teacher_fp, k, temperature, batch_size, vocab,
                         desc=f"teacher top-{k} ({answer})")
        off = c["offsets"].tolist()
        key = "kd" if answer == "chosen" else f"kd_{answer}"
        for i, e in enumerate(examples):
            a, b = off[i], off[i + 1]
            e[key] = (c["logprobs"][a:b], c["ids"][a:b], c["tail"][a:b])
        report[answer] = {"tokens": int(off[-1]), "bytes": sum(int(t.numel() * t.element_size())
                                                               for t in (c["logprobs"], c["ids"], c["tail"]))}
    return report
