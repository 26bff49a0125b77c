"""Content-addressed caching with atomic writes and checksums.

Every stage output lands under a key derived from its inputs. Writes go to a temp file in the
same folder and are renamed into place, so a killed run never leaves a half file that later
counts as done. JSON entries carry a sha256 of their payload that is verified on load; a corrupted
entry is reported and treated as missing (so it is recomputed).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

ENV_CACHE = "DADPO_CACHE"


def cache_root() -> Path:
    """The default cache directory (entry points only): `DADPO_CACHE`, else ~/.cache/dadpo."""
    root = os.environ.get(ENV_CACHE) or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "dadpo")
    return Path(root)


class Cache:
    """One cache folder, passed explicitly to every stage that stores results.

    Entries live at `<root>/<kind>/<kind>-<hash of the key>` (a key is any JSON-able object naming
    the inputs). `lock(path)` serialises the computation of one entry across processes: a second
    run waits for the first and then finds the entry done instead of computing it twice."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    @classmethod
    def default(cls) -> "Cache":
        return cls(cache_root())

    def path(self, kind: str, key: Any, suffix: str = "", n: int = 20) -> Path:
        return safe_join(self.root, kind, f"{kind}-{stable_hash(key, n)}{suffix}")

    def lock(self, path: str | Path, timeout_s: float = -1):
        """A cross-process lock for the entry at `path` (filelock; released if the holder dies)."""
        from filelock import FileLock

        lock_file = self.root / "locks" / f"{stable_hash(str(path), 24)}.lock"
        lock_file.parent.mkdir(parents=True, exist_ok=True)
        return FileLock(str(lock_file), timeout=timeout_s)


def stable_hash(obj: Any, n: int = 16) -> str:
    """sha256 of a JSON-serialisable object with sorted keys, truncated to n hex chars."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str).encode("utf-8")
    return hashlib.sha256(blob).hexdigest()[:n]


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()
_SAFE = re.compile(r"[^A-Za-z0-9._-]+")


def safe_name(name: str) -> str:
    """A file-name component derived from a name or id that cannot leave its folder."""
    cleaned = _SAFE.sub("_", name).strip("._") or "x"
    # over-long names are cut too (with the hash keeping them apart): a path component over the
    # file system's limit (255 bytes) would fail to be created
    return f"{cleaned[:80]}-{stable_hash(name, 8)}" if cleaned != name or len(name) > 80 else cleaned


def safe_join(root: str | Path, *parts: str) -> Path:
    """Join name-derived parts under root; refuses any result outside root."""
    root = Path(root).resolve()
    out = root.joinpath(*(safe_name(p) for p in parts)).resolve()
    if root != out and root not in out.parents:
        raise ValueError(f"cache path escapes {root}: {parts}")
    return out


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temp path beside `path`; on success it is renamed onto `path`, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        # mkstemp makes 0600, and some writers (safetensors) create the file anew with their own mode:
        # a cache shared between users needs the umask's mode, set last
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    except BaseException:
        if os.path.lexists(tmp):
            os.unlink(tmp)
        raise


def share_modes(folder: str | Path) -> None:
    """Give a folder and everything in it the umask's modes: mkdtemp makes 0700 and safetensors writes
    0600 whatever the umask, which locks the other users of a shared cache out."""
    for p in [Path(folder), *Path(folder).rglob("*")]:
        if not p.is_symlink():
            os.chmod(p, (0o777 if p.is_dir() else 0o666) & ~_UMASK)


@contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temp folder beside `path`; on success it replaces `path`, else it is removed."""
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        share_modes(tmp)
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, payload: Any) -> None:
    """Write `payload` with its checksum, atomically."""
    body = json.dumps(payload, sort_keys=True, ensure_ascii=False)
    digest = hashlib.sha256(body.encode("utf-8")).hexdigest()
    atomic_write_text(path, json.dumps({"sha256": digest, "payload": json.loads(body)}, ensure_ascii=False))


def read_json(path: str | Path) -> Any | None:
    """The payload of a checksummed entry, or None when missing or corrupted (with a warning)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        wrapper = json.loads(path.read_text(encoding="utf-8"))
        body = json.dumps(wrapper["payload"], sort_keys=True, ensure_ascii=False)
        if hashlib.sha256(body.encode("utf-8")).hexdigest() != wrapper["sha256"]:
            raise ValueError("checksum mismatch")
        return wrapper["payload"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        warnings.warn(f"cache entry {path} is corrupted ({e}); recomputing", stacklevel=2)
        return None


def save_tensors(path: str | Path, tensors: dict, meta: dict | None = None) -> None:
    """Save a dict of tensors as safetensors (atomic); the file's sha256 goes into a sidecar."""
    from safetensors.torch import save_file

    path = Path(path)
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp),
                  metadata={k: str(v) for k, v in (meta or {}).items()})
    write_json(path.with_suffix(path.suffix + ".sha256.json"), {"sha256": file_sha256(path)})


def load_tensors(path: str | Path) -> dict | None:
    """Tensors saved by `save_tensors`, or None when missing or failing their checksum."""
    from safetensors.torch import load_file

    path = Path(path)
    side = read_json(path.with_suffix(path.suffix + ".sha256.json"))
    if not path.is_file() or side is None:
        return None
    if file_sha256(path) != side["sha256"]:
        warnings.warn(f"cache entry {path} is corrupted (checksum mismatch); recomputing", stacklevel=2)
        return None
    return load_file(str(path))
