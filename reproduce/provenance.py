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


def device_facts() -> dict:
    """The hardware and numeric settings a result may depend on."""
    import torch

    d = {"platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
         "torch_threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
         "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
         "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        d.update(gpu=torch.cuda.get_device_name(0), gpus=torch.cuda.device_count(), cuda_version=torch.version.cuda,
                 cudnn=torch.backends.cudnn.version(), tf32_matmul=torch.backends.cuda.matmul.allow_tf32)
    return d


def relative(path: str | Path) -> str:
    """A path as recorded: relative to the repository or the home folder, never absolute."""
    p = Path(path)
    for base, label in ((ROOT, ""), (Path.home(), "~/")):
        try:
            return label + str(p.resolve().relative_to(base.resolve()))
        except ValueError:
            continue
    return p.name if p.is_absolute() else str(p)
