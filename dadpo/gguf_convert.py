"""GGUF -> a plain float32 safetensors folder that loads without the gguf package.

transformers loads a GGUF dequantized but keeps a GGUF quantizer on the model: `save_pretrained`
refuses and the Trainer will not fine-tune it. `convert_gguf` drops the quantizer, adds the chat
template and stop tokens the hub tokenizer ships, saves, and proves that the saved folder gives the
GGUF's next-token logits. The folder holds only what `from_pretrained` reads and is byte-reproducible:
the same GGUF gives the same bytes wherever the same library versions run (no paths, no timestamps,
no version stamps; safetensors writes tensors in sorted order with one metadata key).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from .chat import CHAT_STOP_TOKENS, CHAT_TEMPLATES

# Q4 weights dequantize exactly into float32; bf16 would round them a second time. CPU training runs
# in fp32 anyway, and callers wanting bf16 inference pass dtype=torch.bfloat16 when loading.
# Cost: 4 bytes/param on disk (SmolLM2 0.5 GB, Qwen 0.5B 2.5 GB, Qwen 1.5B 7 GB).
CONVERT_DTYPE = "float32"

# Every model here fits one file; naming the size keeps the file layout independent of the
# transformers default, which has changed between releases.
_SHARD_SIZE = "50GB"

# The reload check is for conversion defects: a missing, misplaced or re-rounded tensor (rounding
# SmolLM2's weights to bf16 alone moves its probe logits, max |logit| 26, by 0.10). The same weights
# usually give identical logits, but once, in a fresh environment, CPU kernels moved them by 1.65e-3.
MAX_LOGIT_DIFF = 1e-2


def _drop_version_stamps(folder: Path) -> None:
    """transformers stamps its version into the configs; the same weights would differ per machine."""
    for name in ("config.json", "generation_config.json"):
        path = folder / name
        if path.is_file():
            cfg = json.loads(path.read_text(encoding="utf-8"))
            if cfg.pop("transformers_version", None) is not None:
                path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def convert_gguf(gguf_path: Path, out: Path, template: str, label: str) -> dict:
    """Convert `gguf_path` into the new folder `out`; returns facts about the conversion.

    `template` names the chat template family used when the GGUF carries none; `label` names the
    model in messages and on the progress bar."""
    import torch
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = getattr(torch, CONVERT_DTYPE)
    t0 = time.time()
    # disable=None: silent when stderr is no tty
    steps = tqdm(total=4, desc=f"{label}: convert", unit="step", file=sys.stderr, disable=None)
    step, done = steps.set_postfix_str, steps.update
    kw = dict(gguf_file=gguf_path.name)
    step("tokenizer from GGUF")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    done()
    step("dequantize weights")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=dtype, **kw)
    done()
    facts: dict = {"load_gguf_s": round(time.time() - t0, 1)}

    # Drop the GGUF quantizer: weights are already dense, but its presence blocks save_pretrained
    # and makes the Trainer refuse to fine-tune. The reload below proves the folder is clean.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        model.__dict__.pop(attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    if tok.chat_template:
        facts["chat_template"] = "from GGUF"
    else:  # the family's hub template; see dadpo.chat.CHAT_TEMPLATES
        tok.chat_template = CHAT_TEMPLATES[template]
        facts["chat_template"] = f"added: {template} ChatML (GGUF has none)"
    if tok.model_max_length > 10**8:  # "unbounded" from GGUF; the model's context is the real bound
        tok.model_max_length = model.config.max_position_embeddings
    gen, vocab = model.generation_config, tok.get_vocab()
    # Stop tokens as in the hub's generation_config: ChatML turns end at <|im_end|>.
    stops = [vocab.get(t) for t in CHAT_STOP_TOKENS[template]]
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in dict.fromkeys([*stops, *eos]) if e is not None]
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    probe = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ref_logits = model(**probe).logits[0, -1].float()
    step("save safetensors")
    model.save_pretrained(str(out), safe_serialization=True, max_shard_size=_SHARD_SIZE)
    tok.save_pretrained(str(out))
    _drop_version_stamps(out)
    done()
    n_params = sum(p.numel() for p in model.parameters())
    del model

    # Check: the folder loads without GGUF and gives the same next-token logits.
    step("verify reload")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=dtype)
    if getattr(reloaded, "hf_quantizer", None) is not None or getattr(reloaded.config, "quantization_config", None):
        raise RuntimeError(f"{label}: converted folder still carries a quantizer; report this as a bug")
    with torch.no_grad():
        diff = (reloaded(**probe).logits[0, -1].float() - ref_logits).abs().max().item()
    if diff > MAX_LOGIT_DIFF:
        raise RuntimeError(f"{label}: converted model differs from the GGUF (max logit diff {diff:.2e}, "
                           f"allowed {MAX_LOGIT_DIFF:g})")
    done()
    steps.close()
    cfg = reloaded.config
    return {**facts, "convert_s": round(time.time() - t0, 1), "dtype": CONVERT_DTYPE, "params": n_params,
            "layers": cfg.num_hidden_layers, "vocab_size": cfg.vocab_size, "max_logit_diff": diff,
            "model_type": cfg.model_type}
