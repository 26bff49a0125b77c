"""Precomputation with frozen models, so no teacher or reference model is resident while training.

- Sequence log-probs (sum over response tokens, and token counts) of encoded answers under a model:
  pi_ref = pi_dSFT and pi_te, for chosen and rejected answers.
- The teacher's top-k next-token log-probs plus the log of the remaining mass, per response token,
  for KD (float16 log-probs + int32 ids: 6k+4 bytes a token instead of 2V), and (cache format 2)
  m ids sampled from the teacher's tail with their log-probs (6m bytes more), which make the cached
  KD loss an unbiased estimate instead of a lower bound (baselines.kd).
Batches are packed (no padding, dadpo.packing) when `packing` is set, as the trainer packs them.
The functions here only compute; the pipeline stores their results in the cache under
`score_key(...)`, a key computable without loading the model (so a cached re-run loads none).
"""
from __future__ import annotations

import torch
from tqdm.auto import tqdm

from baselines.head import LIGER_CHUNK_MEM_CONST
from baselines.numerics import topk_with_samples
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
                      desc: str = "score", packing: bool = False, head: str = "chunked",
                      liger_chunk_mem_const: int = LIGER_CHUNK_MEM_CONST) -> dict:
    """{"sum": [N] float64, "count": [N] int64} of response-token log-probs under `model`; `head` is a
    resolved baselines.head implementation."""
    model.eval()
    scorer = ResponseScorer(model, chunk_size, head, liger_chunk_mem_const)
    dev = next(model.parameters()).device
    sums = torch.zeros(len(encoded), dtype=torch.float64)
    counts = torch.zeros(len(encoded), dtype=torch.int64)
    for idx in tqdm(batches_by_length(encoded, batch_size), desc=desc, leave=False):
        lp, _, ex = scorer(**collate(encoded, idx, pad_id, dev, packing))
        s, c = per_sequence(lp.double(), ex, len(idx))
        sums[idx] = s.cpu()
        counts[idx] = c.cpu()
    return {"sum": sums, "count": counts}


# the stored layout of teacher_topk; part of the cache key, so an older layout is never misread
TOPK_FORMAT = 2
_TOPK_FIELDS = (("logprobs", torch.float16), ("ids", torch.int32), ("tail", torch.float32),
                ("sample_logprobs", torch.float16), ("sample_ids", torch.int32))


@torch.no_grad()
def teacher_topk(model, encoded: list[dict], pad_id: int, k: int, temperature: float = 1.0,
                 batch_size: int = 8, vocab: int | None = None, desc: str = "teacher top-k",
                 tail_samples: int = 0, seed: int = 0, packing: bool = False) -> dict:
    """Flat per-token top-k cache: logprobs [M, k] f16, ids [M, k] i32, tail [M] f32, offsets [N+1], and
    with `tail_samples` = m > 0 also sample_logprobs [M, m] f16, sample_ids [M, m] i32 drawn from the
    teacher's tail by a generator seeded with `seed` (the same cache on the same device and numerics).

    Example i's response tokens are rows offsets[i]:offsets[i+1], in order. `vocab` cuts padded
    embedding rows beyond the tokenizer (e.g. Qwen's 151936 vs 152064).
    """
    model.eval()
    scorer = ResponseScorer(model)
    dev = next(model.parameters()).device
    gen = torch.Generator(device=dev).manual_seed(seed)
    fields = _TOPK_FIELDS if tail_samples else _TOPK_FIELDS[:3]
    per_example: list = [None] * len(encoded)
    for idx in tqdm(batches_by_length(encoded, batch_size), desc=desc, leave=False):
        logits, _, ex = scorer(**collate(encoded, idx, pad_id, dev, packing), want_logits=True)
        if vocab is not None:
            logits = logits[:, :vocab]
        top = topk_with_samples(logits, k, tail_samples, temperature, gen)
        for j, i in enumerate(idx):
            rows = ex == j
            per_example[i] = [t[rows].to(dtype).cpu() for t, (_, dtype) in zip(top, fields)]
    lens = torch.tensor([0] + [p[0].shape[0] for p in per_example])
    out = {name: torch.cat([p[f] for p in per_example]) for f, (name, _) in enumerate(fields)}
    return {**out, "offsets": torch.cumsum(lens, 0)}
