"""On-disk layout of the block cache (docs/cache.md).

::

    <root>/v1/objects/<oid[:2]>/<oid>/meta.json      ObjectMeta (provider, key, version, size, ...)
    <root>/v1/objects/<oid[:2]>/<oid>/b<bs>/<index>    one block: 24-byte header + data

``oid`` = sha256(provider NUL key NUL version)[:32], so a new version never shares a block file with
an old one. The block size is part of the path, so changing it between mounts only makes old
blocks unused (they age out through LRU). Every block file is written to a ``.tmp`` name and
renamed into place; its header carries a CRC32 of the data that is checked on every load. A block
that fails the check is deleted and reported as missing, never served.

Everything here is synchronous and small; callers run bulk work (scans, big reads) in threads.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import struct
import zlib
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_MAGIC = b"FFSB"
_HEADER = struct.Struct("<4sIIQI")  # magic, format, crc32, offset, length
FORMAT = 1


def object_id(provider: str, key: str, version: str) -> str:
    return hashlib.sha256(f"{provider}\0{key}\0{version}".encode()).hexdigest()[:32]


@dataclass(slots=True)
class ObjectMeta:
    provider: str
    key: str
    version: str
    size: int | None  # None until a whole-object download finished
    pinned: bool = False  # pinned or one-shot: never evicted, counted apart
    complete: bool = False  # every block present (whole-object sources)
    one_shot: bool = False


class BlockStore:
    """Block files on disk plus an in-memory LRU index of the unpinned ones."""

    def __init__(self, root: Path, block_size: int, max_bytes: int, min_free_ratio: float) -> None:
        self.root = root / "v1" / "objects"
        self.block_size = block_size
        self.max_bytes = max_bytes
        self.min_free_ratio = min_free_ratio
        self.root.mkdir(parents=True, exist_ok=True)
        # LRU of unpinned block files: path -> bytes on disk
        self._lru: OrderedDict[str, int] = OrderedDict()
        self.unpinned_bytes = 0
        self.pinned_bytes = 0
        self._meta: dict[str, ObjectMeta] = {}
        self.corrupt_blocks = 0

    # -- paths -----------------------------------------------------------------------------
    def object_dir(self, oid: str) -> Path:
        return self.root / oid[:2] / oid

    def block_path(self, oid: str, index: int) -> Path:
        return self.object_dir(oid) / f"b{self.block_size}" / str(index)

    # -- metadata --------------------------------------------------------------------------
    def meta(self, oid: str) -> ObjectMeta | None:
        if oid in self._meta:
            return self._meta[oid]
        path = self.object_dir(oid) / "meta.json"
        try:
            raw = json.loads(path.read_text())
            meta = ObjectMeta(**raw)
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("dropping unreadable cache metadata %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self._meta[oid] = meta
        return meta

    def save_meta(self, oid: str, meta: ObjectMeta) -> None:
        d = self.object_dir(oid)
        d.mkdir(parents=True, exist_ok=True)
        tmp = d / "meta.json.tmp"
        tmp.write_text(json.dumps(asdict(meta)))
        os.replace(tmp, d / "meta.json")
        self._meta[oid] = meta

    # -- blocks ----------------------------------------------------------------------------
    def load(self, oid: str, index: int) -> bytes | None:
        """The verified data of a block, or None if absent or corrupt (then it is deleted)."""
        path = self.block_path(oid, index)
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return None
        data = self._verify(raw, index)
        spath = str(path)
        if data is None:
            self.corrupt_blocks += 1
            log.warning("cache block %s failed its checksum; dropped and refetched", path)
            self._forget(spath)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        if spath in self._lru:
            self._lru.move_to_end(spath)
        return data

    def _verify(self, raw: bytes, index: int) -> bytes | None:
        if len(raw) < _HEADER.size:
            return None
        magic, fmt, crc, offset, length = _HEADER.unpack_from(raw)
        if magic != _MAGIC or fmt != FORMAT or length != len(raw) - _HEADER.size:
            return None
        if offset != index * self.block_size:
            return None
        data = raw[_HEADER.size :]
        if zlib.crc32(data) != crc:
            return None
        return data

    def store(self, oid: str, index: int, data: bytes, *, pinned: bool) -> None:
        """Write one block atomically, then make room under the cap (LRU, unpinned only)."""
        path = self.block_path(oid, index)
        path.parent.mkdir(parents=True, exist_ok=True)
        header = _HEADER.pack(_MAGIC, FORMAT, zlib.crc32(data), index * self.block_size, len(data))
        tmp = path.with_name(f"{index}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.writev(fd, [header, data])
        finally:
            os.close(fd)
        os.replace(tmp, path)
        size = len(data) + _HEADER.size
        spath = str(path)
        if pinned:
            self.pinned_bytes += size
        else:
            self._forget(spath)
            self._lru[spath] = size
            self.unpinned_bytes += size
            self.evict_nowait()

    def drop_block(self, oid: str, index: int) -> None:
        path = self.block_path(oid, index)
        spath = str(path)
        if spath in self._lru:
            self._forget(spath)
        else:
            with contextlib.suppress(OSError):
                self.pinned_bytes -= path.stat().st_size
        with contextlib.suppress(OSError):
            path.unlink()

    def has(self, oid: str, index: int) -> bool:
        return self.block_path(oid, index).exists()

    def _forget(self, spath: str) -> None:
        old = self._lru.pop(spath, None)
        if old is not None:
            self.unpinned_bytes -= old

    def _disk_too_full(self) -> bool:
        if self.min_free_ratio <= 0:
            return False
        try:
            st = os.statvfs(self.root)
        except OSError:
            return False
        return st.f_bavail < self.min_free_ratio * st.f_blocks

    def evict_nowait(self) -> int:
        """Trim unpinned blocks (least recently used first) to the cap; returns bytes freed."""
        freed = 0
        while self._lru and (self.unpinned_bytes > self.max_bytes or self._disk_too_full()):
            spath, size = self._lru.popitem(last=False)
            self.unpinned_bytes -= size
            freed += size
            with contextlib.suppress(OSError):
                os.unlink(spath)
        return freed

    # -- start-up --------------------------------------------------------------------------
    def scan(self) -> None:
        """Rebuild the LRU index from disk (oldest access first); drop leftover .tmp files."""
        entries: list[tuple[float, str, int]] = []
        pinned_dirs: set[str] = set()
        for meta_path in self.root.glob("*/*/meta.json"):
            try:
                raw = json.loads(meta_path.read_text())
            except (OSError, ValueError):
                continue
            if raw.get("pinned") or raw.get("one_shot"):
                pinned_dirs.add(str(meta_path.parent))
        self.pinned_bytes = 0
        for dirpath, _dirs, files in os.walk(self.root):
            for name in files:
                full = os.path.join(dirpath, name)
                if name.endswith(".tmp"):
                    with contextlib.suppress(OSError):
                        os.unlink(full)
                    continue
                if name == "meta.json":
                    continue
                try:
                    st = os.stat(full)
                except OSError:
                    continue
                objdir = os.path.dirname(os.path.dirname(full))
                if objdir in pinned_dirs:
                    self.pinned_bytes += st.st_size
                else:
                    entries.append((max(st.st_atime, st.st_mtime), full, st.st_size))
        entries.sort()
        self._lru = OrderedDict((p, s) for _, p, s in entries)
        self.unpinned_bytes = sum(s for _, _, s in entries)
        self.evict_nowait()

    def stats(self) -> dict[str, int]:
        return {
            "unpinned_bytes": self.unpinned_bytes,
            "pinned_bytes": self.pinned_bytes,
            "blocks": len(self._lru),
            "max_bytes": self.max_bytes,
            "corrupt_blocks": self.corrupt_blocks,
        }
