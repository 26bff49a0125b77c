"""Batched, cached generation: left padding, seeded sampling, stop at end of turn.

Answers are cached per (model fingerprint, chat template, decoding settings, seed) in one
checksummed file, keyed by the prompt text, so no answer is generated twice. Missing prompts are
generated in batches sorted by length (less padding); the file is rewritten atomically after
every batch, so a killed run keeps what it finished.
"""
from __future__ import annotations

import hashlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from dadpo.cache import Cache, read_json, safe_join, stable_hash, write_json
from dadpo.chat import encode_prompt, end_of_turn_ids, pad_batch


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    max_prompt_tokens: int = 256
    seed: int = 0


def cache_file(cache: Cache, model_fp: str, tokenizer, sampling: Sampling) -> Path:
    """The answer file of one model under one chat template and decoding setting."""
    template = hashlib.sha256((tokenizer.chat_template or "").encode()).hexdigest()[:12]
    key = stable_hash({"model": model_fp, "template": template, "sampling": asdict(sampling)})
    return safe_join(cache.root, "generations", f"{key}.json")


def _prompt_key(prompt: str) -> str:
    return hashlib.sha256(prompt.encode("utf-8")).hexdigest()[:32]


def cached_answers(path: Path, prompts: list[str]) -> list[str] | None:
    """The cached answers to `prompts` in `path`, or None if any is missing (no model needed)."""
    store = read_json(path) or {}
    keys = [_prompt_key(p) for p in prompts]
    return [store[k] for k in keys] if all(k in store for k in keys) else None


@torch.no_grad()
def generate(model, tokenizer, prompts: list[str], sampling: Sampling, path: Path,
             batch_size: int = 16, desc: str = "generate") -> tuple[list[str], dict]:
    """Answers for `prompts`, cached in the answer file `path` (see cache_file), and stats:
    generated tokens, seconds, cache hits."""
    store: dict = read_json(path) or {}
    # (length, text): ties in length must not be ordered by the process's string-hash seed
    todo = sorted({p for p in prompts if _prompt_key(p) not in store}, key=lambda p: (len(p), p))
    stats = {"prompts": len(prompts), "cached": sum(_prompt_key(p) in store for p in prompts),
             "new_tokens": 0, "seconds": 0.0}
    if todo:
        tokenizer.padding_side = "left"
        stop = end_of_turn_ids(tokenizer, getattr(model, "generation_config", None))
        dev = next(model.parameters()).device
        model.eval()
        t0 = time.perf_counter()
        bar = tqdm(total=len(todo), desc=desc, unit="prompt", leave=False)
        for i in range(0, len(todo), batch_size):
            chunk = todo[i:i + batch_size]
            rows = [{"input_ids": encode_prompt(tokenizer, p, sampling.max_prompt_tokens)} for p in chunk]
            batch = pad_batch(rows, tokenizer.pad_token_id, keys=("input_ids",), left=True)
            # Seed from the batch's content so results do not depend on what was cached before.
            torch.manual_seed(sampling.seed + int(_prompt_key(chunk[0])[:8], 16))
            sample = sampling.temperature > 0
            out = model.generate(
                input_ids=batch["input_ids"].to(dev), attention_mask=batch["attention_mask"].to(dev),
                max_new_tokens=sampling.max_new_tokens, do_sample=sample,
                temperature=sampling.temperature if sample else None, top_p=sampling.top_p if sample else None,
                top_k=None if not sample else 0, eos_token_id=stop, pad_token_id=tokenizer.pad_token_id)
            new = out[:, batch["input_ids"].shape[1]:].cpu()
            for p, ids in zip(chunk, new):
                ids = ids.tolist()
                n = next((j + 1 for j, t in enumerate(ids) if t in stop), len(ids))
                stats["new_tokens"] += n
                store[_prompt_key(p)] = tokenizer.decode(ids[:n], skip_special_tokens=True).strip()
            write_json(path, store)
            bar.update(len(chunk))
        bar.close()
        stats["seconds"] = time.perf_counter() - t0
    return [store[_prompt_key(p)] for p in prompts], stats
