"""The one model loader (with the loading policy), devices and dtypes, and model fingerprints.

Every caller that needs weights goes through `load_pretrained` (or `load_model` for causal LMs):
local folders (ours: converted, pruned, trained) load from safetensors only, so a pickled
`pytorch_model.bin` is never opened; model code shipped in a folder runs only when the caller says
`trust_remote_code=True`; a load failure is one line, not a traceback. `LOADS` counts loads, so a test
can prove that a cached re-run loads no model at all.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import torch

from dadpo.cache import Cache, read_json, stable_hash, write_json

LOADS: Counter = Counter()  # models loaded in this process, by class name
MARKER = "random_init.json"  # a random model's folder (dadpo.shapes): config, tokenizer, seed, no weights


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def cpu_has_bf16() -> bool:
    """Native bf16 matrix units (AVX512-BF16 / AMX). Without them bf16 on the CPU is emulated and far
    slower than fp32 (measured ~5x for SmolLM2 generation on an AVX2-only CPU)."""
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def pick_dtype(name: str, purpose: str = "train") -> torch.dtype:
    """`auto`: bf16 on a GPU; on a CPU bf16 for inference only where the CPU has native bf16 units
    (2-3x faster than fp32 there), else fp32; fp32 for training on a CPU."""
    if name == "bfloat16":
        return torch.bfloat16
    if name == "float32":
        return torch.float32
    if torch.cuda.is_available():
        return torch.bfloat16
    return torch.bfloat16 if purpose == "inference" and cpu_has_bf16() else torch.float32


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


def is_random(folder: str | Path) -> bool:
    return (Path(folder) / MARKER).is_file()

def build_random(cls, folder: str | Path, dtype, device):
    """A model of `cls` from the folder's config with seeded random weights, built on `device`."""
    import torch
    from transformers import AutoConfig

    seed = json.loads((Path(folder) / MARKER).read_text(encoding="utf-8"))["seed"]
    config = AutoConfig.from_pretrained(str(folder))
    torch.manual_seed(seed)
    with torch.device(device):
        model = cls.from_config(config, dtype=dtype)
    if (Path(folder) / "generation_config.json").is_file():  # an encoder (the reference judge's) has none
        from transformers import GenerationConfig

        model.generation_config = GenerationConfig.from_pretrained(str(folder))
    return model


def load_pretrained(cls, spec: str, trust_remote_code: bool = False, device: torch.device | None = None, **kwargs):
    """`cls.from_pretrained` under the suite's loading policy (see the module docstring), on `device`
    (default: where from_pretrained puts it). A random model folder (dadpo.shapes) is built from its
    seed instead, directly on the device."""
    if not spec.startswith("offline:") and os.path.sep in spec and not Path(spec).exists():
        raise FileNotFoundError(f"model path not found: {spec}")
    path = resolve(spec, trust_remote_code)
    local = Path(path).is_dir()
    try:
        if local and is_random(path):
            model = build_random(cls, path, kwargs.get("dtype"), device or "cpu")
        else:
            model = cls.from_pretrained(path, trust_remote_code=trust_remote_code,
                                        use_safetensors=True if local else None, **kwargs)
            model = model if device is None else model.to(device)
    except (OSError, ValueError, RuntimeError):
        raise
    except Exception as e:  # noqa: BLE001 - e.g. SafetensorError on damaged weights: one line, not a traceback
        first = (str(e).strip().splitlines() or [""])[0][:200]
        raise OSError(f"cannot load model {path}: {type(e).__name__}: {first}") from e
    LOADS[cls.__name__] += 1
    return model


def load_model(spec: str, dtype: torch.dtype = torch.float32, trust_remote_code: bool = False,
               on: torch.device | None = None):
    """A causal LM in `dtype` on `on` (default: the GPU if there is one)."""
    from transformers import AutoModelForCausalLM

    return load_pretrained(AutoModelForCausalLM, spec, trust_remote_code, device=on or device(), dtype=dtype)


# A model's identity: its weights and the configs that shape them (a generation config sets the
# end-of-turn ids), the configs read as JSON without the version stamp of the transformers release
# that wrote them. Nothing else: bookkeeping files beside the weights would give the same weights a
# different identity on every machine.
_IDENTITY_CONFIGS = ("config.json", "generation_config.json", MARKER)
_MEMO: dict = {}


def _config_bytes(p: Path) -> bytes:
    cfg = json.loads(p.read_text(encoding="utf-8"))
    cfg.pop("transformers_version", None)
    return json.dumps(cfg, sort_keys=True).encode()


def _weights_digest(folder: Path, cache: Cache | None) -> str:
    """sha256 over a folder's weights and configs, memoised by (path, size, mtime)."""
    files = sorted(p for p in folder.iterdir() if p.is_file() and (p.suffix == ".safetensors"
                                                                   or p.name in _IDENTITY_CONFIGS))
    stat_key = stable_hash([[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in files], 32)
    memo = cache.root / "fingerprints" / f"{stat_key}.json" if cache is not None else None
    if stat_key in _MEMO:
        return _MEMO[stat_key]
    if memo is not None and (hit := read_json(memo)) is not None:
        return _MEMO.setdefault(stat_key, hit["digest"])
    h = hashlib.sha256()
    for p in files:
        h.update(p.name.encode())
        if p.suffix != ".safetensors":
            h.update(_config_bytes(p))
            continue
        with open(p, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    digest = _MEMO[stat_key] = h.hexdigest()[:24]
    if memo is not None:
        write_json(memo, {"digest": digest, "files": [p.name for p in files]})
    return digest


def fingerprint(spec: str, cache: Cache | None = None, trust_remote_code: bool = False) -> str:
    """Identity of a model's weights for cache keys: content hash for folders, the id for hub models.
    With a cache, the hash is memoised there by (path, size, mtime) across processes."""
    path = Path(resolve(spec, trust_remote_code))
    if path.is_dir():
        return _weights_digest(path, cache)
    return "hub:" + spec
