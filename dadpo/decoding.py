"""Decoding backends: encoded prompts in, new token ids out.

A backend is a callable `decoder(prompt_ids, sampling, stop_ids, seed) -> list[list[int]]`: one
batch of prompts (token ids, unpadded) in, each row's new token ids out. Rows may run past their
first stop id (the caller cuts there). It also has a `name` (recorded in stats and, where answers
can differ, in the generation cache key) and `facts()` (compile seconds, compiled shapes).
Optional: `plan(all_prompt_ids, batch_size, sampling)`, called once before the batches of a call,
and `close()`, called after them.

  eager   transformers' `model.generate` with a dynamic cache: the reference.
  static  transformers' StaticCache driven by a small loop here: prefill uncompiled, then a
          one-token step (forward + greedy / top-p pick) compiled with torch.compile, captured as
          a CUDA graph ("reduce-overhead") on GPU. One compiled shape per (rows, cache length):
          rows = the call's batch size (or the next power of two over a smaller call's prompt
          count; a short batch gets dummy rows), cache length = the call's longest prompt rounded
          up to a power of two (at least 64) + max_new_tokens; so a call compiles one shape, and
          later calls with like prompts reuse it. Why not `model.generate(cache_implementation=
          "static")`: it checks on the host for finished rows and runs its logits processors
          every step; this loop keeps the device busy (a host check every 8 steps) and the pick
          runs inside the graph. Uncompiled (CPU by default) it runs eager's kernels on the same
          numbers: greedy fp32 answers are eager's token for token.
  auto    static on CUDA; on CPU the one measured faster there (CPU_AUTO).

cuDNN attention is switched off while decoding (`decoding_kernels`): it builds a new plan for
every new sequence length, which costs more than the step itself.

Plugging in an external engine (vLLM's offline `LLM`, an OpenAI-compatible server): write a class
with `name` and `facts()` whose `__call__` sends the batch's prompt ids with `sampling`
(temperature, top_p, max_new_tokens; stop_token_ids=stop_ids unless `sampling.ignore_eos`, the
batch's `seed`) and returns the generated ids, e.g. for vLLM
`[o.outputs[0].token_ids for o in llm.generate([TokensPrompt(prompt_token_ids=p) for p in ids],
SamplingParams(...))]`; pass an instance as `generate(..., backend=decoder)`.
"""
from __future__ import annotations

import contextlib
import inspect
import time
import warnings
from dataclasses import dataclass

import torch

# CPU: SmolLM2-135M, 16 ShareGPT prompts, 64 new tokens, one thread, CPU seconds (best of 2-3): fp32 eager
# 34.7 vs static 31.5, bf16 (the CPU inference dtype) eager 165.6 vs static 141.0-177.1: no reliable winner on a
# shared machine, so eager (answers and cache keys as before); compiling on CPU cost minutes and gained nothing.
CPU_AUTO = "eager"
BACKENDS = ("eager", "static")
CHECK_EVERY = 8  # decoding steps between the (host-syncing) all-rows-finished checks


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.7
    top_p: float = 0.95
    max_new_tokens: int = 128
    max_prompt_tokens: int = 256
    seed: int = 0
    ignore_eos: bool = False  # every answer runs to max_new_tokens (shape runs: worst-case time, memory)


def resolve_backend(name: str, device: torch.device | str) -> str:
    if name == "auto":
        return "static" if torch.device(device).type == "cuda" else CPU_AUTO
    if name not in BACKENDS:
        raise ValueError(f"unknown generation backend {name!r}: use auto, {', '.join(BACKENDS)}")
    return name


def make_decoder(name: str, model, pad_id: int, **kw):
    """A decoder for `model` by backend name (`auto` resolved on the model's device)."""
    name = resolve_backend(name, next(model.parameters()).device)
    return EagerDecoder(model, pad_id) if name == "eager" else StaticDecoder(model, pad_id, **kw)


@contextlib.contextmanager
def decoding_kernels():
    """cuDNN attention off (a new plan per sequence length); the previous setting is restored."""
    if not torch.cuda.is_available():
        yield
        return
    prev = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(False)
    try:
        yield
    finally:
        torch.backends.cuda.enable_cudnn_sdp(prev)


def left_pad(prompt_ids: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompt_ids)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompt_ids], dtype=torch.long)
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompt_ids], dtype=torch.bool)
    return ids, mask


def pick(logits: torch.Tensor, temperature: float, top_p: float, noise: torch.Tensor | None) -> torch.Tensor:
    """Next ids: argmax when greedy; else a top-p sample by an exponential race (argmax p / E with
    E ~ Exp(1) draws a token with probability p) over the nucleus: the smallest set of most likely
    tokens whose mass reaches top_p (transformers' TopPLogitsWarper keeps the same set)."""
    if temperature <= 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p >= 1:
        return (probs / noise).argmax(-1)
    p_sorted, order = probs.sort(dim=-1, descending=True)
    kept = torch.where(p_sorted.cumsum(-1) - p_sorted < top_p, p_sorted, 0.0)
    return order.gather(-1, (kept / noise).argmax(-1, keepdim=True)).squeeze(-1)


class EagerDecoder:
    """transformers' `generate` with a dynamic cache (the reference path)."""

    name = "eager"

    def __init__(self, model, pad_id: int):
        self.model, self.pad_id = model, pad_id

    def facts(self) -> dict:
        return {"compiled": False, "compile_s": 0.0, "compiled_shapes": 0}

    def __call__(self, prompt_ids, sampling: Sampling, stop_ids, seed: int) -> list[list[int]]:
        dev = next(self.model.parameters()).device
        ids, mask = left_pad(prompt_ids, self.pad_id)
        torch.manual_seed(seed)
        sample = sampling.temperature > 0
        out = self.model.generate(
            input_ids=ids.to(dev), attention_mask=mask.long().to(dev), max_new_tokens=sampling.max_new_tokens,
            do_sample=sample, temperature=sampling.temperature if sample else None,
            top_p=sampling.top_p if sample else None, top_k=0 if sample else None,
            eos_token_id=[] if sampling.ignore_eos else list(stop_ids), pad_token_id=self.pad_id)
        return out[:, ids.shape[1]:].tolist()


PACKED_ATTENTION = "dadpo_packed_sdpa"


def packed_decode_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kw):
    """transformers' SDPA attention, except for a one-token query of grouped-query attention: there
    the query heads that share a key/value head become that head's query rows, so the cache is read
    once, not copied per query head (transformers' repeat_kv, its path under torch.compile, copies
    it: at batch 256 that traffic outweighs the weights). Without compiling, transformers 5.2x runs
    this same packing in its own decode step."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    groups = getattr(module, "num_key_value_groups", 1)
    if query.shape[2] != 1 or groups == 1:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw)
    b, heads, _, dim = query.shape
    out = torch.nn.functional.scaled_dot_product_attention(
        query.reshape(b, heads // groups, groups, dim), key, value, attn_mask=attention_mask, scale=scaling)
    return out.reshape(b, heads, 1, value.shape[-1]).transpose(1, 2).contiguous(), None


@contextlib.contextmanager
def packed_attention(model):
    """The model runs packed_decode_attention (it also takes our 4D boolean masks) for the block."""
    from transformers import AttentionInterface

    AttentionInterface.register(PACKED_ATTENTION, packed_decode_attention)
    prev = model.config._attn_implementation
    model.set_attn_implementation(PACKED_ATTENTION)
    if model.config._attn_implementation != PACKED_ATTENTION:
        raise ValueError(f"backend static needs a model on transformers' attention interface ({type(model).__name__} "
                         "is not); use generation.backend=eager")
    try:
        yield
    finally:
        model.set_attn_implementation(prev)


def _pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


class StaticDecoder:
    """A StaticCache per (rows, cache length) and a compiled one-token step; see the module doc.

    compile: None = on CUDA only; compile_backend / compile_mode go to torch.compile (tests use
    "aot_eager" to check that the step traces as one graph without paying for code generation)."""

    name = "static"

    def __init__(self, model, pad_id: int, compile: bool | None = None, compile_backend: str = "inductor",
                 compile_mode: str | None = None, min_prompt_bucket: int = 64):
        from transformers import StaticCache  # noqa: F401  (fail here, not mid-run, without it)

        self.model, self.pad_id, self.min_prompt_bucket = model, pad_id, min_prompt_bucket
        self.dev = next(model.parameters()).device
        self.compiled = self.dev.type == "cuda" if compile is None else compile
        self.compile_kw = dict(backend=compile_backend, fullgraph=True, dynamic=False,
                               mode=compile_mode or ("reduce-overhead" if self.dev.type == "cuda" else None))
        params = inspect.signature(model.forward).parameters
        self.cache_kw = "cache" if "cache" in params else "past_key_values"  # renamed in transformers 5.2x
        self.trim_logits = {"logits_to_keep": 1} if "logits_to_keep" in params else {}
        self.shape: tuple[int, int] | None = None  # planned (rows, cache length)
        self.caches: dict = {}
        self.warm: set = set()
        self.compile_s = 0.0
        self.steps: dict = {}  # (temperature, top_p) -> step; the pick's settings are constants of the graph

    def facts(self) -> dict:
        return {"compiled": self.compiled, "compile_s": self.compile_s,
                "compiled_shapes": len(self.warm) if self.compiled else 0,
                "shapes": sorted(self.caches)}

    def plan(self, all_prompt_ids, batch_size: int, sampling: Sampling) -> None:
        rows = min(batch_size, _pow2(len(all_prompt_ids)))
        width = max(len(p) for p in all_prompt_ids)
        bucket = min(max(_pow2(width), self.min_prompt_bucket), max(width, sampling.max_prompt_tokens))
        self.shape = (rows, bucket + sampling.max_new_tokens)

    def close(self) -> None:
        self.caches.clear()
        if self.compiled and self.warm:
            torch._dynamo.reset()  # drops the compiled graphs and their CUDA-graph memory pools

    def _cache(self, rows: int, length: int):
        from transformers import StaticCache

        key = (rows, length)
        if key not in self.caches:
            cache = StaticCache(config=self.model.config, max_cache_len=length)
            if any(getattr(layer, "is_sliding", False) for layer in getattr(cache, "layers", [])):
                raise ValueError("backend static handles full-attention models only; use generation.backend=eager")
            self.caches[key] = cache
        cache = self.caches[key]
        cache.reset()
        return cache

    def _forward_pick(self, ids, pos, mask, cache, noise, temperature: float, top_p: float, **extra):
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True,
                         **{self.cache_kw: cache}, **extra)
        return pick(out.logits[:, -1, :].float(), temperature, top_p, noise)

    def _last_logits(self, ids, pos, mask, cache):
        out = self.model(input_ids=ids, position_ids=pos, attention_mask=mask, use_cache=True, **{self.cache_kw: cache})
        return out.logits[:, -1, :].float()

    def _step_for(self, temperature: float, top_p: float):
        if (temperature, top_p) not in self.steps:
            if self.compiled and temperature > 0 and top_p < 1:
                # inductor cannot fuse the nucleus's vocabulary-long cumsum with the sampling argmax
                # ("NYI TritonSplitDimKernel reductions" on CUDA): the graph ends at the logits and the
                # pick (a few kernels, ~1% of a step) runs eagerly on the graph's output buffer
                forward = torch.compile(self._last_logits, **self.compile_kw)

                def step(ids, pos, mask, cache, noise):
                    return pick(forward(ids, pos, mask, cache), temperature, top_p, noise)

                self.steps[temperature, top_p] = step
            else:
                def step(ids, pos, mask, cache, noise):
                    return self._forward_pick(ids, pos, mask, cache, noise, temperature, top_p)

                self.steps[temperature, top_p] = torch.compile(step, **self.compile_kw) if self.compiled else step
        return self.steps[temperature, top_p]

    def __call__(self, prompt_ids, sampling: Sampling, stop_ids, seed: int) -> list[list[int]]:
        if self.shape is None:
            self.plan(prompt_ids, len(prompt_ids), sampling)
        try:
            with packed_attention(self.model):
                return self._decode(prompt_ids, sampling, stop_ids, seed)
        except Exception as e:  # noqa: BLE001 - a step that fails to compile must not end the run
            if not self.compiled or isinstance(e, (ValueError, torch.cuda.OutOfMemoryError)):
                raise
            warnings.warn(f"static decoding: the compiled step failed ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200] if str(e) else ''}); decoding uncompiled", stacklevel=2)
            self.compiled = False
            self.steps.clear()
            torch._dynamo.reset()
            with packed_attention(self.model):
                return self._decode(prompt_ids, sampling, stop_ids, seed)

    @torch.no_grad()
    def _decode(self, prompt_ids, sampling: Sampling, stop_ids, seed: int) -> list[list[int]]:
        n, new = len(prompt_ids), sampling.max_new_tokens
        rows, length = self.shape
        width = max(len(p) for p in prompt_ids)
        if n > rows or width + new > length:  # a batch outside the plan gets its own shape
            rows, length = max(rows, n), max(_pow2(width), self.min_prompt_bucket) + new
        ids, real = left_pad(list(prompt_ids) + [[self.pad_id]] * (rows - n), self.pad_id)  # dummy rows
        dev = self.dev
        ids, real = ids.to(dev), real.to(dev)
        slots = torch.zeros(rows, length, dtype=torch.bool, device=dev)  # cache slots a query may see
        slots[:, :width] = real
        pos = (real.long().cumsum(-1) - 1).clamp(min=0)
        # prefill: causal over real tokens; a padding query sees itself (no all-masked row, no NaN)
        q = torch.arange(width, device=dev)[:, None]
        k = torch.arange(length, device=dev)[None, :]
        mask = ((k <= q) & slots[:, None, :]) | (k == q)
        cache = self._cache(rows, length)
        sample = sampling.temperature > 0
        gen = torch.Generator(dev).manual_seed(seed) if sample else None
        vocab = self.model.get_output_embeddings().weight.shape[0]
        noise = torch.empty(rows, vocab, device=dev) if sample else None

        def draw():
            return noise.exponential_(generator=gen) if sample else None

        args = (sampling.temperature, sampling.top_p)
        step = self._step_for(*args)
        nxt = self._forward_pick(ids, pos, mask[:, None], cache, draw(), *args, **self.trim_logits)
        out = torch.empty(rows, new, dtype=torch.long, device=dev)
        out[:, 0] = nxt
        stops = torch.tensor(sorted(stop_ids), dtype=torch.long, device=dev)
        watch = bool(stop_ids) and not sampling.ignore_eos
        done = torch.arange(rows, device=dev) >= n  # dummy rows never hold the loop open
        tok, cur = nxt[:, None].clone(), pos[:, -1:] + 1
        step_mask = slots[:, None, None, :].clone()
        cold = self.compiled and (rows, length) not in self.warm
        t_cold = time.perf_counter()
        last = 1
        for t in range(1, new):
            if watch and t % CHECK_EVERY == 0:  # rows that ended their turn keep decoding until all have
                done |= torch.isin(out[:, t - CHECK_EVERY:t], stops).any(-1)
                if bool(done.all()):
                    break
            step_mask[:, 0, 0, width + t - 1] = True  # the slot the input token is written to
            if self.compiled:
                torch.compiler.cudagraph_mark_step_begin()
            nxt = step(tok, cur, step_mask, cache, draw())
            out[:, t] = nxt
            tok.copy_(nxt[:, None])
            cur += 1
            last = t + 1
            if cold and t == 3:  # the first calls of a new shape compile, warm up and capture it
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                self.compile_s += time.perf_counter() - t_cold
                self.warm.add((rows, length))
                cold = False
        if cold:
            self.compile_s += time.perf_counter() - t_cold
            self.warm.add((rows, length))
        return out[:n, :last].tolist()
