"""Precomputation with frozen models, so no teacher or reference model is resident while training.

- Sequence log-probs (sum over response tokens, and token counts) of encoded examples under a
  model: pi_ref = pi_dSFT and pi_te, for chosen and rejected answers.
- The teacher's top-k next-token log-probs plus the log of the remaining mass, per response
  token, for KD (float16 log-probs + int32 ids: 6k+4 bytes a token instead of 2V).
Both are cached on disk under a key of (model fingerprint, data fingerprint, settings).
"""
from __future__ import annotations

from pathlib import Path

import torch
from tqdm.auto import tqdm

from dadpo.cache import cache_root, load_tensors, safe_join, save_tensors, stable_hash
from dadpo.logprobs import topk_with_tail
from dadpo.scoring import ResponseScorer, batches_by_length, collate, per_sequence


def data_fingerprint(encoded: list[dict]) -> str:
    return stable_hash([[e["input_ids"], e["response_mask"]] for e in encoded], 24)


def _key_path(kind: str, **parts) -> Path:
    return safe_join(cache_root(), "scores", f"{kind}-{stable_hash(parts, 24)}.safetensors")


def _numerics(model) -> str:
    dtype = next(model.parameters()).dtype
    return f"{dtype}+autocast-bf16" if torch.is_autocast_enabled("cuda") else str(dtype)


@torch.no_grad()
def sequence_logprobs(model, encoded: list[dict], pad_id: int, model_fp: str, batch_size: int = 8,
                      chunk_size: int = 1024, desc: str = "score") -> dict:
    """{"sum": [N] float64, "count": [N] int64} of response-token log-probs, cached."""
    # numerics are part of the key: bf16 and fp32 sums over a few hundred tokens differ by nats
    path = _key_path("seqlp", model=model_fp, data=data_fingerprint(encoded), numerics=_numerics(model))
    if (hit := load_tensors(path)) is not None:
        return hit
    model.eval()
    scorer = ResponseScorer(model, chunk_size)
    dev = next(model.parameters()).device
    sums = torch.zeros(len(encoded), dtype=torch.float64)
    counts = torch.zeros(len(encoded), dtype=torch.int64)
    for idx in tqdm(batches_by_length(encoded, batch_size), desc=desc, leave=False):
        b = collate(encoded, idx, pad_id, dev)
        lp, _, ex = scorer(b["input_ids"], b["attention_mask"], b["response_mask"])
        s, c = per_sequence(lp.double(), ex, len(idx))
        sums[idx] = s.cpu()
        counts[idx] = c.cpu()
    out = {"sum": sums, "count": counts}
    save_tensors(path, out)
    return out


@torch.no_grad()
def teacher_topk(model, encoded: list[dict], pad_id: int, model_fp: str, k: int, temperature: float = 1.0,
                 batch_size: int = 8, vocab: int | None = None, desc: str = "teacher top-k") -> dict:
    """Flat per-token top-k cache: logprobs [M, k] f16, ids [M, k] i32, tail [M] f32, offsets [N+1].

    Example i's response tokens are rows offsets[i]:offsets[i+1], in order. `vocab` cuts padded
    embedding rows beyond the tokenizer (e.g. Qwen's 151936 vs 152064).
    """
    path = _key_path("topk", model=model_fp, data=data_fingerprint(encoded), k=k, t=temperature, vocab=vocab)
    if (hit := load_tensors(path)) is not None:
        return hit
    model.eval()
    scorer = ResponseScorer(model)
    dev = next(model.parameters()).device
    per_example: list = [None] * len(encoded)
    for idx in tqdm(batches_by_length(encoded, batch_size), desc=desc, leave=False):
        b = collate(encoded, idx, pad_id, dev)
        logits, _, ex = scorer(b["input_ids"], b["attention_mask"], b["response_mask"], want_logits=True)
        if vocab is not None:
            logits = logits[:, :vocab]
        lp, ids, tail = topk_with_tail(logits, k, temperature)
        for j, i in enumerate(idx):
            rows = ex == j
            per_example[i] = (lp[rows].half().cpu(), ids[rows].int().cpu(), tail[rows].float().cpu())
    lens = torch.tensor([0] + [p[0].shape[0] for p in per_example])
    out = {
        "logprobs": torch.cat([p[0] for p in per_example]),
        "ids": torch.cat([p[1] for p in per_example]),
        "tail": torch.cat([p[2] for p in per_example]),
        "offsets": torch.cumsum(lens, 0),
    }
    save_tensors(path, out)
    return out
