"""Randomly initialised models of named architectures, for time and memory runs ("shape runs").

With `models.init: random` every model of a run is replaced by one of the same architecture with
random weights: its config comes from reproduce/configs/arch/ (the hub config of Vicuna-7B v1.5,
Qwen2.5-7B/1.5B-Instruct, SmolLM2-135M), its tokenizer is the real one of its family (an offline asset
or a hub id). Nothing is downloaded but the tokenizer, so the paper's settings can be rehearsed on
a machine without the weights. Answers are generated to their full length (no end-of-turn stop) so
time and memory are the worst case. Quality numbers of such a run mean nothing; every output says so.

A random model is a folder holding config.json, generation_config.json, the tokenizer and
`random_init.json` (the seed) but no weights: `dadpo.modeling.load_pretrained` builds the weights on
the target device from the seed (`MARKER`), the same every time.
"""
from __future__ import annotations

import json
from pathlib import Path

from dadpo.cache import Cache, atomic_dir
from dadpo.modeling import MARKER, load_tokenizer

ARCH_DIR = Path(__file__).resolve().parent.parent / "reproduce" / "configs" / "arch"


def arch_names() -> list[str]:
    return sorted(p.stem for p in ARCH_DIR.glob("*.json"))


def arch_file(spec: str) -> Path:
    """The architecture config for a model spec: a path to an arch JSON, an arch name, or a hub id /
    offline name whose hub id an arch JSON names."""
    if spec.endswith(".json") and Path(spec).is_file():
        return Path(spec)
    if (ARCH_DIR / f"{spec}.json").is_file():
        return ARCH_DIR / f"{spec}.json"
    hub = spec
    if spec.startswith("offline:"):
        from dadpo.asset_registry import REGISTRY

        asset = REGISTRY.get(spec[len("offline:"):])
        hub = asset.hub_id if asset else spec
    for p in sorted(ARCH_DIR.glob("*.json")):
        if json.loads(p.read_text(encoding="utf-8"))["dadpo"]["hub_id"] == hub:
            return p
    raise ValueError(f"models.init=random: no architecture config for {spec!r} (known: {', '.join(arch_names())}, "
                     "or a path to an arch .json)")


def random_model_folder(spec: str, cache: Cache, seed: int = 0) -> str:
    """The folder of a random model with the architecture of `spec` (made once, in the cache)."""
    path = arch_file(spec)
    arch = json.loads(path.read_text(encoding="utf-8"))
    meta = arch.pop("dadpo")
    folder = cache.path("random", {"arch": arch, "meta": meta, "seed": seed})
    if (folder / MARKER).is_file():
        return str(folder)
    with cache.lock(folder):
        if not (folder / MARKER).is_file():
            tok = load_tokenizer(meta["tokenizer"])
            with atomic_dir(folder) as tmp:
                (tmp / "config.json").write_text(json.dumps(arch, indent=2, sort_keys=True), encoding="utf-8")
                (tmp / "generation_config.json").write_text(json.dumps(meta.get("generation", {}), sort_keys=True),
                                                            encoding="utf-8")
                tok.save_pretrained(tmp)
                (tmp / MARKER).write_text(json.dumps({"seed": seed, "arch": path.stem}), encoding="utf-8")
    return str(folder)
