"""Is a file still the one recorded? sha256 / CRC-32 checks that skip files known unchanged.

A file is hashed again only when its (size, mtime, ctime, inode) differ from when its digest last
matched. ctime cannot be set back from user space, so on a POSIX file system any change made through
it (a write, a truncation, a copy over the file, even with the mtime restored) forces a new hash;
changes below the file system (bit rot, raw device writes) are seen only by a full check.
"""
from __future__ import annotations

import contextlib
import zlib
from pathlib import Path

from .cache import file_sha256, read_json, write_json


def stat_key(path: Path, digest) -> list:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, digest]


def first_mismatch(root: Path, files: dict[str, str], memo_path: Path, full: bool = False) -> str | None:
    """None when every file (root-relative path -> sha256) matches, else what is wrong with the first
    that does not. Matches are remembered in `memo_path` (not written when that fails, e.g. read-only);
    `full` hashes every file regardless of it."""
    seen = {} if full else (read_json(memo_path) or {})
    now = {}
    for rel, sha in files.items():
        path = root / rel
        try:
            now[rel] = stat_key(path, sha)
            if seen.get(rel) != now[rel] and file_sha256(path) != sha:
                return f"{rel} does not match its recorded sha256"
        except OSError as e:
            return f"{rel}: {e.strerror or e}"
    if now != seen:
        with contextlib.suppress(OSError):
            write_json(memo_path, now)
    return None


_CRC_MATCHED: set[tuple] = set()  # (path, stat key) of files whose CRC-32 matched in this process


def crc_matches(path: Path, crc: int) -> bool:
    """Whether the file's CRC-32 is `crc` (a zip member's), computed once per process per file state."""
    key = (str(path), *stat_key(path, crc))
    if key not in _CRC_MATCHED:
        value = 0
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                value = zlib.crc32(block, value)
        if value != crc:
            return False
        _CRC_MATCHED.add(key)
    return True
