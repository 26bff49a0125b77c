"""Precomputation with frozen models, so no teacher or reference model is resident while training.

- Sequence log-probs (sum over response tokens, and token counts) of encoded answers under a model:
  pi_ref = pi_dSFT and pi_te, for chosen and rejected answers.
- The teacher's top-k next-token log-probs plus the log of the remaining mass, per response token,
  for KD (float16 log-probs + int32 ids: 6k+4 bytes a token instead of 2V).
The functions here only compute; the pipeline stores their results in the cache under
`score_key(...)`, a key computable without loading the model (so a cached re-run loads none).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from baselines.numerics import topk_with_tail
from dadpo.cache import stable_hash
from dadpo.scoring import ResponseScorer, batches_by_length, collate, per_sequence


def data_fingerprint(encoded: list[dict]) -> str:
    return stable_hash([[e["input_ids"], e["response_mask"]] for e in encoded], 24)


def score_key(kind: str, model_fp: str, encoded: list[dict], **settings) -> dict:
    """The cache key of precomputed scores: kind, model identity, the exact token ids, the settings
    (numerics, k, temperature, ...)."""
    return {"kind": kind, "model": model_fp, "data": data_fingerprint(encoded), **settings}


@torch.no_grad()
def sequence_logprobs(model, encoded: list[dict], pad_id: int, batch_size: int = 8, chunk_size: int = 1024,
                      desc: str = "score") -> dict:
    """{"sum": [N] float64, "count": [N] int64} of response-token log-probs under `model`."""
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
    return {"sum": sums, "count": counts}


@torch.no_grad()
def teacher_topk(model, encoded: list[dict], pad_id: int, k: int, temperature: float = 1.0,
                 batch_size: int = 8, vocab: int | None = None, desc: str = "teacher top-k") -> dict:
    """Flat per-token top-k cache: logprobs [M, k] f16, ids [M, k] i32, tail [M] f32, offsets [N+1].

    Example i's response tokens are rows offsets[i]:offsets[i+1], in order. `vocab` cuts padded
    embedding rows beyond the tokenizer (e.g. Qwen's 151936 vs 152064).
    """
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
    return {
        "logprobs": torch.cat([p[0] for p in per_example]),
        "ids": torch.cat([p[1] for p in per_example]),
        "tail": torch.cat([p[2] for p in per_example]),
        "offsets": torch.cumsum(lens, 0),
    }
