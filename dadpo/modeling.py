"""Loading models and tokenizers, devices and dtypes, and model fingerprints for cache keys."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

from dadpo.cache import cache_root, read_json, stable_hash, write_json


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def pick_dtype(name: str, purpose: str = "train") -> torch.dtype:
    """`auto`: bf16 on GPU; on CPU bf16 for inference (2-3x faster there, ASSETS.md), fp32 for training."""
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16
    return torch.bfloat16 if purpose == "inference" else torch.float32


def resolve(spec: str, trust_remote_code: bool = False) -> str:
    """A model spec ("offline:NAME", a local folder, or a hub id) as something from_pretrained takes.

    A path that is no folder with a config.json and no org/name hub id is a one-line AssetError here,
    not a hub lookup (retries, then an error about repo ids) deep inside transformers."""
    from dadpo.assets import resolve_model

    return resolve_model(spec, trust_remote_code=trust_remote_code)


def load_tokenizer(spec: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(spec, trust_remote_code), trust_remote_code=trust_remote_code)
    if tok.pad_token is None:  # causal LMs often ship without one; padding is always masked
        tok.pad_token = tok.eos_token
    return tok


def load_model(spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               on: torch.device | None = None):
    from transformers import AutoModelForCausalLM

    path = resolve(spec, trust_remote_code)
    if not spec.startswith("offline:") and os.path.sep in spec and not Path(spec).exists():
        raise FileNotFoundError(f"model path not found: {spec}")
    # Local folders (ours: converted, pruned, trained) load from safetensors only: a pickled
    # pytorch_model.bin is never opened. Hub ids keep transformers' default (safetensors first).
    local = Path(path).is_dir()
    try:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code,
                                                     use_safetensors=True if local else None)
    except (OSError, ValueError, RuntimeError):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. SafetensorError on damaged weights: one line, not a traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OSError(f"cannot load model {path}: {type(e).__name__}: {first}") from e
    return model.to(on or device())


def _weights_digest(folder: Path) -> str:
    """sha256 over a folder's weight and config files, memoised by (path, size, mtime)."""
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".json", ".bin") and p.is_file())
    stat_key = stable_hash([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files], 32)
    memo = cache_root() / "fingerprints" / f"{stat_key}.json"
    if (hit := read_json(memo)) is not None:
        return hit["digest"]
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    digest = h.hexdigest()[:24]
    write_json(memo, {"digest": digest, "files": [p.name for p in files]})
    return digest


def fingerprint(spec: str, trust_remote_code: bool = False) -> str:
    """Identity of a model's weights for cache keys: content hash for folders, the id for hub models."""
    path = Path(resolve(spec, trust_remote_code))
    if path.is_dir():
        return _weights_digest(path)
    return "hub:" + spec


def model_facts(model) -> dict:
    """Facts recorded in provenance: parameter count, layers, vocabulary rows, architecture."""
    cfg = model.config
    return {
        "architecture": (cfg.architectures or [type(model).__name__])[0],
        "parameters": sum(p.numel() for p in model.parameters()),
        "layers": getattr(cfg, "num_hidden_layers", None),
        "vocab_rows": model.get_input_embeddings().weight.shape[0],
        "dtype": str(next(model.parameters()).dtype).replace("torch.", ""),
    }


def json_dump(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=True, default=str)
