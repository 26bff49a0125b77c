"""Batched, cached generation: left padding, seeded sampling, stop at end of turn.

Answers are cached per (model fingerprint, chat template, decoding settings, seed) in one
checksummed file, keyed by the prompt text, so no answer is generated twice. Missing prompts are
generated in batches sorted by length (less padding); the file is rewritten atomically after
every batch, so a killed run keeps what it finished. The decoding itself is a backend of
dadpo.decoding (eager: transformers' generate; static: a compiled step over a static KV cache).

The cache key records the backend only where answers can differ between backends: sampled
answers (each backend draws its own random numbers) and non-fp32 weights (other kernels, other
roundings). Greedy fp32 answers are the same token for token (tested on CPU), so backends share
them; eager keys are the keys this file always had.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dadpo.cache import Cache, read_json, safe_join, stable_hash, write_json
from dadpo.chat import encode_prompt, end_of_turn_ids
from dadpo.decoding import Sampling, decoding_kernels, make_decoder, resolve_backend

__all__ = ["Sampling", "answer_lengths", "cache_file", "cached_answers", "generate", "resolve_backend"]
LENGTHS = "__lengths__"  # the answer file's record of [tokens, ended on end-of-turn] per prompt key


def backend_tag(backend: str, sampling: Sampling, dtype: torch.dtype | None = torch.float32) -> str | None:
    """The backend as recorded in the cache key: None where its answers are eager's."""
    if backend == "eager" or (sampling.temperature <= 0 and dtype == torch.float32):
        return None
    return backend


def cache_file(cache: Cache, model_fp: str, tokenizer, sampling: Sampling, backend: str = "eager",
               dtype: torch.dtype | None = torch.float32) -> Path:
    """The answers file; `backend` is a resolved name (resolve_backend), `dtype` the model's."""
    if backend == "auto":
        raise ValueError("cache_file needs the backend that will run: resolve 'auto' with resolve_backend first")
    template = hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:12]
    settings = asdict(sampling)
    if not settings["ignore_eos"]:  # keys from before the option existed stay valid
        del settings["ignore_eos"]
    key = {"model": model_fp, "template": template, "sampling": settings}
    if (tag := backend_tag(backend, sampling, dtype)) is not None:
        key["backend"] = tag
    return safe_join(cache.root, "generations", f"{stable_hash(key)}.json")


def _prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def cached_answers(path: Path, prompts: list[str]) -> list[str] | None:
    """The cached answers to `prompts` in the answer file `path`, or None if any is missing (no model needed)."""
    store = read_json(path) or {}
    keys = [_prompt_key(p) for p in prompts]
    return [store[k] for k in keys] if all(k in store for k in keys) else None


def answer_lengths(path: Path, prompts: list[str]) -> list[tuple[int, bool]] | None:
    """(tokens, ended on an end-of-turn) of each cached answer, or None if any was not recorded."""
    lengths = (read_json(path) or {}).get(LENGTHS, {})
    keys = [_prompt_key(p) for p in prompts]
    return [tuple(lengths[k]) for k in keys] if all(k in lengths for k in keys) else None


def _cut(ids: list[int], stop: set, ignore_eos: bool) -> tuple[list[int], bool]:
    """The answer's ids up to and including the first end-of-turn id, and whether there was one."""
    if not ignore_eos:
        for j, t in enumerate(ids):
            if t in stop:
                return ids[:j + 1], True
    return ids, False


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], sampling: Sampling, model_fp: str, *, cache: Cache,
             batch_size: int = 16, desc: str = "generate", backend="eager") -> tuple[list[str], dict]:
    """Answers for `prompts`, cached in `cache` (cache_file of this model, sampling, backend and dtype),
    and stats.

    backend: a name (auto, eager, static; dadpo.decoding) or a decoder object (an external engine,
    or one reused across calls to keep its compiled shapes). Stats: prompts, cached, backend,
    new_tokens, seconds (all of it), compile_s (of it: compiling and capturing), compiled_shapes,
    and for each new answer [tokens, ended on end-of-turn] (`answers`, by prompt key) with the
    count cut at max_new_tokens; each answer's [tokens, ended on end-of-turn] is kept in the answer
    file (answer_lengths)."""
    decoder = make_decoder(backend, model, tokenizer.pad_token_id) if isinstance(backend, str) else backend
    path = cache_file(cache, model_fp, tokenizer, sampling, decoder.name, next(model.parameters()).dtype)
    store: dict = read_json(path) or {}
    lengths = store.setdefault(LENGTHS, {})
    # (length, text): ties in length must not be ordered by the process's string-hash seed
    todo = sorted({p for p in prompts if _prompt_key(p) not in store}, key=lambda p: (len(p), p))
    stats = {"prompts": len(prompts), "cached": sum(_prompt_key(p) in store for p in prompts),
             "backend": decoder.name, "new_tokens": 0, "seconds": 0.0, "compile_s": 0.0, "compiled_shapes": 0,
             "answers": {}, "cut_at_max_new_tokens": 0}
    if not todo:
        return [store[_prompt_key(p)] for p in prompts], stats
    stop = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
    model.eval()
    t0 = time.perf_counter()
    encoded = [encode_prompt(tokenizer, p, sampling.max_prompt_tokens) for p in todo]
    before = decoder.facts()
    if hasattr(decoder, "plan"):
        decoder.plan(encoded, batch_size, sampling)
    bar = tqdm(total=len(todo), desc=desc, unit="prompt", leave=False)
    try:
        with decoding_kernels():
            for i in range(0, len(todo), batch_size):
                chunk = todo[i:i + batch_size]
                # Seed from the batch's content so results do not depend on what was cached before.
                seed = sampling.seed + int(_prompt_key(chunk[0])[:8], 16)
                new = decoder(encoded[i:i + batch_size], sampling, stop, seed)
                for p, ids in zip(chunk, new):
                    ids, eot = _cut(ids, set(stop), sampling.ignore_eos)
                    stats["new_tokens"] += len(ids)
                    stats["answers"][_prompt_key(p)] = lengths[_prompt_key(p)] = [len(ids), eot]
                    stats["cut_at_max_new_tokens"] += not eot and len(ids) >= sampling.max_new_tokens
                    store[_prompt_key(p)] = tokenizer.decode(ids, skip_special_tokens=True).strip()
                write_json(path, store)
                bar.update(len(chunk))
    finally:
        bar.close()
        facts = decoder.facts()
        if isinstance(backend, str) and hasattr(decoder, "close"):
            decoder.close()
    stats.update(seconds=time.perf_counter() - t0, compile_s=facts["compile_s"] - before["compile_s"],
                 compiled_shapes=facts["compiled_shapes"] - before["compiled_shapes"])
    return [store[_prompt_key(p)] for p in prompts], stats
