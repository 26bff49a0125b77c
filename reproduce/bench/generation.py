"""Generate stage: decoding tokens/s of `model.generate` with the suite's sampling settings
(dadpo.generation), against the memory-bandwidth floor of reading every weight once per step."""
from __future__ import annotations

import torch

from reproduce.bench.flops import decode_weight_bytes, shape_of
from reproduce.bench.measure import Budget, PeakMemory, dtype_name, model_bytes, timed
from reproduce.bench.rows import Sink


def bench_generate(sink: Sink, name: str, model, batches=(1, 16, 64), prompt_len: int = 128, new_tokens: int = 64,
                   eos_id: int = 2, pad_id: int = 3, low: int = 10, budget: Budget | None = None) -> None:
    """Random prompts of `prompt_len` tokens, forced to exactly `new_tokens` new tokens; the decoding
    rate is B x (n - 1) / (t(n new) - t(1 new)), so the prefill cancels out."""
    dev, shape = sink.dev, shape_of(model)
    dtype = next(model.parameters()).dtype
    wbytes = decode_weight_bytes(shape, dtype)
    model.eval()
    vocab = min(shape.vocab, model.get_input_embeddings().weight.shape[0])
    g = torch.Generator().manual_seed(0)

    def gen(B, n):
        ids = torch.randint(low, vocab, (B, prompt_len), generator=g).to(dev)
        return model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                              do_sample=True, temperature=0.7, top_p=0.95, top_k=0, eos_token_id=eos_id,
                              pad_token_id=pad_id)

    for B in batches:
        if budget is not None and budget.left() < 15:
            sink.add(stage="generate", implementation=f"hf_generate:b={B}", model=name, notes="skipped: time budget")
            continue
        torch.manual_seed(0)
        with torch.no_grad(), PeakMemory(dev) as pm:
            gen(B, 2)
            t1, _ = timed(lambda: gen(B, 1), dev)
            tn, out = timed(lambda: gen(B, new_tokens), dev)
        if out.shape[1] != prompt_len + new_tokens:
            raise RuntimeError(f"generate gave {out.shape[1] - prompt_len} new tokens, not {new_tokens}")
        step = max(tn - t1, 1e-9) / (new_tokens - 1)
        tps = B / step
        floor = B * sink.bw_gbs * 1e9 / wbytes
        head_dim = shape.d_att // model.config.num_attention_heads
        kv = (2 * shape.layers * model.config.num_key_value_heads * head_dim * dtype.itemsize * B
              * (prompt_len + new_tokens / 2))
        sink.add(stage="generate", implementation=f"hf_generate:b={B}", model=name,
                 params_m=round(shape.n_total / 1e6, 1), dtype=dtype_name(dtype), batch=B,
                 seq_len_max=prompt_len + new_tokens, tokens_per_step=B, step_ms=1e3 * step, tokens_per_s=tps,
                 peak_mem_mb=pm.added_mb + model_bytes(model) / 2 ** 20, bw_share=tps / floor,
                 notes=f"decoding rate = B x {new_tokens - 1} / (t({new_tokens} new) - t(1 new)); end-to-end "
                       f"{B * new_tokens / tn:.1f} tok/s incl. a {prompt_len}-token prefill; floor = "
                       f"{wbytes / 1e9:.3f} GB weights per step / {sink.bw_gbs:.0f} GB/s copy = {floor:.0f} tok/s "
                       f"(KV cache adds ~{kv / 1e9:.3f} GB per step, not in the floor); sampling T=0.7, top-p 0.95")
