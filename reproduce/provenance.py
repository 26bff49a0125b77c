"""Provenance of a run: commit, versions, device, and every setting that can change a number.

Nothing machine-specific that does not change a number is recorded (no absolute paths), and no
secret (the entry point scrubs the record with evals.judges.api.scrub_secrets).
"""
from __future__ import annotations

import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("torch", "transformers", "accelerate", "datasets", "tokenizers", "safetensors", "numpy", "gguf",
            "pandas", "openai", "llm-blender", "peft", "trl", "rouge-score")


def git_sha() -> str:
    # a copy of the tree shipped elsewhere (e.g. a GPU host) may carry no .git or a stale one: the
    # sender names the commit it sent
    exported = os.environ.get("DADPO_SOURCE_SHA")
    if exported:
        return f"{exported} (named by DADPO_SOURCE_SHA for a copied tree, unverified)"
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True).stdout.strip()
        if sha:
            return sha + ("-dirty" if dirty else "")
    except OSError:
        pass
    return "unknown"


def versions() -> dict:
    out = {"python": platform.python_version()}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "TOKENIZERS_PARALLELISM",
              "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED")


def device_facts(cfg=None) -> dict:
    """The hardware and numeric settings a result may depend on: the CPU and whether it has native
    bf16 units (which decides the inference dtype of `auto`), thread counts (they change the order of
    float reductions), deterministic-algorithm settings, and the dtypes the run used."""
    import torch

    from dadpo.modeling import cpu_has_bf16, pick_dtype

    d = {"platform": platform.platform(), "machine": platform.machine(), "cpu": cpu_model(),
         "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
         "torch_interop_threads": torch.get_num_interop_threads(),
         "thread_env": {k: os.environ.get(k) for k in THREAD_ENV},
         "cpu_capability": torch.backends.cpu.get_cpu_capability(), "cpu_native_bf16": cpu_has_bf16(),
         "mkldnn": torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled,
         "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
         "float32_matmul_precision": torch.get_float32_matmul_precision(),
         "cuda": torch.cuda.is_available()}
    if cfg is not None:
        d["dtypes"] = {"generation": str(pick_dtype(cfg.generation.dtype, "inference")),
                       "scoring": str(pick_dtype(cfg.models.dtype, "inference")), "training": "torch.float32",
                       "training_autocast": "bf16" if torch.cuda.is_available() else None}
    if torch.cuda.is_available():
        d.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda_version=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32,
                 cudnn_deterministic=torch.backends.cudnn.deterministic)
    return d


def public_paths(obj):
    """A copy of a JSON-like object in which every absolute path (a string starting with / or ~) is
    made `relative`: the record names no folder of the machine that wrote it."""
    if isinstance(obj, str):
        return relative(Path(obj).expanduser()) if obj.startswith(("/", "~")) else obj
    if isinstance(obj, dict):
        return {public_paths(k): public_paths(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(public_paths(v) for v in obj)
    return obj


def relative(path: str | Path) -> str:
    """A path as recorded: relative to the repository or the home folder, never absolute."""
    p = Path(path)
    for base, label in ((ROOT, ""), (Path.home(), "~/")):
        try:
            return label + str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return p.name if p.is_absolute() else str(p)
