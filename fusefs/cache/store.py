"""On-disk layout of the block cache (docs/cache.md).

::

    <root>/v2/objects/<oid[:2]>/<oid>/meta.json     ObjectMeta (provider, key, version, size, ...)
    <root>/v2/objects/<oid[:2]>/<oid>/data-b<bs>    the object's blocks at index * bs (sparse)
    <root>/v2/objects/<oid[:2]>/<oid>/table-b<bs>s<seg>   one record per block (see _Rec)

``oid`` = sha256(provider NUL key NUL version)[:32], so a new version never shares a file with an
old one. A *block* (``bs``, 1 MiB) is the unit of eviction and of the LRU; a *segment* (``seg``,
64 KiB) is the unit of integrity and of a random read: each segment present has its own CRC32 in
the block's record, so a 4 KiB read from disk reads and checks 64 KiB, not a whole block, and a
random read fetches only the segments it touches. Both sizes are part of the file names, so
changing them between mounts only leaves the old files unused (they age out).

A segment is valid only if its bit is set in the record **and** the CRC32 of its bytes in the data
file matches; the data is written before the record, so a segment torn by a crash fails the check
and is dropped, never served. Every read from the data file checks the segments it returns.

Data is written with ``O_DIRECT`` where the file system allows it (docs/cache.md, "Writing"):
the cache file does not fill the page cache a second time with bytes the kernel already holds
in the mount's own page cache.

Threads: ``write_unit``, ``read_blocking`` and ``find_corrupt`` do file IO only and are safe in
worker threads. Everything that touches the in-memory index runs in the trio thread.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import hashlib
import json
import logging
import mmap
import os
import shutil
import struct
import threading
import time
import zlib
from array import array
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path

log = logging.getLogger(__name__)

_HEAD = struct.Struct("<4sIIQ")  # magic, index, block length, present-segment mask
_MAGIC = b"FFS2"
LAYOUT = "v2"
MAX_SEGMENTS = 64  # the mask is a u64

BlockKey = tuple[str, int]
DIRECT_ALIGN = 4096  # O_DIRECT: offsets, lengths and buffer addresses in multiples of this
CORRUPT = object()  # read result: the bytes on disk failed their checksum
DISK_CHECK_BYTES = 64 << 20  # free space asked again after this many more bytes cached ...
DISK_CHECK_SECONDS = 1.0  # ... or this long


def object_id(provider: str, key: str, version: str) -> str:
    return hashlib.sha256(f"{provider}\0{key}\0{version}".encode()).hexdigest()[:32]


def segment_size_for(block_size: int, wanted: int = 64 << 10) -> int:
    """The segment size: ``wanted`` if it divides the block into at most 64 parts, else larger."""
    seg = min(wanted, block_size)
    while block_size % seg or block_size // seg > MAX_SEGMENTS:
        seg *= 2
        if seg >= block_size:
            return block_size
    return seg


@dataclass(slots=True)
class ObjectMeta:
    provider: str
    key: str
    version: str
    size: int | None  # None until a whole-object download finished
    pinned: bool = False  # pinned or one-shot: never evicted, counted apart
    complete: bool = False  # every block present (whole-object sources)
    one_shot: bool = False


class _Rec:
    """One block's record: its length, which segments are present, their CRCs."""

    __slots__ = ("crcs", "length", "mask")

    def __init__(self, nseg: int) -> None:
        self.length = 0
        self.mask = 0
        self.crcs = array("I", bytes(4 * nseg))


def _punch_hole_fn() -> ctypes._CFuncPtr | None:  # type: ignore[name-defined]
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        fn = ctypes.CDLL(name, use_errno=True).fallocate
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long]
    return fn


_FALLOCATE = _punch_hole_fn()
_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_RWF_NOWAIT = getattr(os, "RWF_NOWAIT", 0)


def _punch_hole(fd: int, offset: int, length: int) -> None:
    if _FALLOCATE is not None:
        _FALLOCATE(fd, _PUNCH_HOLE, offset, length)


def _write_private(path: Path | str, text: str, *, exclusive: bool = False) -> None:
    """A 0600 file holding ``text``: three system calls (a cache fills thousands of these)."""
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC) | os.O_CLOEXEC
    fd = os.open(path, flags, 0o600)
    try:
        raw = text.encode()
        done = 0
        while done < len(raw):
            done += os.write(fd, raw[done:])
    finally:
        os.close(fd)


LOCK_NAME = "lock"


class CacheDirBusy(Exception):
    """Another daemon holds the cache dir's lock; the message names it."""


def lock_cache_dir(root: Path, mountpoint: Path) -> int:
    """Take the cache dir's exclusive lock (``<root>/lock``, flock) for the daemon's life.

    Two daemons on one cache dir would evict, index and rewrite each other's blocks. The lock
    file holds the holder's pid and mountpoint for the message; the kernel drops the lock when
    the holder exits, even by ``kill -9``. Returns the fd (close it to release the lock)."""
    path = root / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 4096, 0).decode(errors="replace")
        os.close(fd)
        try:
            who = json.loads(holder)
            other = f"the mount at {who['mountpoint']} (pid {who['pid']})"
        except (ValueError, KeyError, TypeError):
            other = "another fusefs daemon"
        raise CacheDirBusy(
            f"cache dir {root} is in use by {other}: give each mount its own [cache] dir"
        ) from None
    except OSError as exc:  # a file system without locks: warn, do not refuse
        log.warning("cannot lock %s (%s): a second mount here is not refused", path, exc)
        return fd
    try:  # who holds it, for the message of a second mount
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "mountpoint": str(mountpoint)}).encode(), 0)
    except OSError as exc:  # a full or read-only disk: the lock holds, the note is missing
        log.warning("cannot write %s (%s): a second mount will not be told who holds it", path, exc)
    return fd


def _open_for_reads(path: str) -> int:
    """A read-only fd of a data file, without the kernel's own readahead: reads name exactly
    what they need (and ``advise_willneed`` what comes next). Readahead would run into space
    ``preallocate`` reserved and not yet written, and the kernel zero-fills those pages only
    for the writer to overwrite them: measured with 8 cold readers, the largest single cost
    of the daemon (15 % of the machine's CPU in memset)."""
    fd = os.open(path, os.O_RDONLY)
    with contextlib.suppress(OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
    return fd


class BlockStore:
    """Blocks on disk plus an in-memory index: present segments, LRU of unpinned blocks."""

    def __init__(
        self,
        root: Path,
        block_size: int,
        max_bytes: int,
        min_free_ratio: float,
        *,
        segment_size: int | None = None,
    ) -> None:
        self.root = root / LAYOUT / "objects"
        self.block_size = block_size
        self.seg = segment_size or segment_size_for(block_size)
        self.nseg = block_size // self.seg
        self.max_bytes = max_bytes
        self.min_free_ratio = min_free_ratio
        self._disk_full = False
        self._disk_checked_at = (0, -DISK_CHECK_SECONDS)  # (bytes cached, time.monotonic())
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._root_s = str(self.root)
        self._data_name = f"data-b{block_size}"
        self._table_name = f"table-b{block_size}s{self.seg}"
        self._rec_size = _HEAD.size + 4 * self.nseg
        self._lru: OrderedDict[BlockKey, int] = OrderedDict()  # unpinned blocks -> bytes
        self._pinned: dict[BlockKey, int] = {}  # pinned and one-shot blocks -> bytes
        self.unpinned_bytes = 0
        self.pinned_bytes = 0
        self._meta: dict[str, ObjectMeta] = {}
        # objects found by ``scan``: others have no files (new ones are known from memory), so
        # a lookup of an object new to this run costs no failing open() on the event loop
        self._on_disk: set[str] | None = None
        self._present: dict[str, dict[int, _Rec]] = {}
        self._fds: OrderedDict[str, int] = OrderedDict()  # read-only data fds (trio thread only)
        # O_DIRECT for data writes until the file system refuses it (then buffered, logged once)
        self.direct_writes = hasattr(os, "O_DIRECT")
        self._bounce = threading.local()  # per writing thread: one aligned block-sized buffer
        self.direct_write_bytes = 0  # bytes written with O_DIRECT (the rest went buffered)
        self.corrupt_blocks = 0
        self.evicted_blocks = 0  # blocks trimmed to keep under the cap (LRU)
        self.disk_reads = 0  # reads done in a worker thread (page cache missed, or > 1 check)
        self.disk_read_bytes = 0  # bytes read from the data files (page cache or disk)

    # -- paths -----------------------------------------------------------------------------
    def object_dir(self, oid: str) -> Path:
        return self.root / oid[:2] / oid

    def _dir(self, oid: str) -> str:
        return os.path.join(self._root_s, oid[:2], oid)

    def data_path(self, oid: str) -> str:
        return os.path.join(self._root_s, oid[:2], oid, self._data_name)

    def table_path(self, oid: str) -> str:
        return os.path.join(self._root_s, oid[:2], oid, self._table_name)

    # -- metadata --------------------------------------------------------------------------
    def meta(self, oid: str) -> ObjectMeta | None:
        if oid in self._meta:
            return self._meta[oid]
        if self._on_disk is not None and oid not in self._on_disk:
            return None  # not in the cache at start, not written since: no file to try
        path = self.object_dir(oid) / "meta.json"
        try:
            meta = ObjectMeta(**json.loads(path.read_text()))
        except FileNotFoundError:
            return None
        except (ValueError, TypeError) as exc:
            log.warning("dropping unreadable cache metadata %s: %s", path, exc)
            with contextlib.suppress(OSError):
                path.unlink()
            return None
        self._meta[oid] = meta
        return meta

    def write_meta_file(self, oid: str, meta: ObjectMeta) -> None:
        """File IO only (thread-safe): meta.json, 0600. A new object's is written in place (a
        torn one, after a crash, is unreadable JSON: deleted when read, with a warning, and
        written again by the object's next fetch; its blocks stay valid, checked by their
        CRCs); one that exists is replaced through a temp file and a rename, never torn."""
        d = self._dir(oid)
        text = json.dumps(asdict(meta))
        path = os.path.join(d, "meta.json")
        try:
            os.mkdir(d, 0o700)
        except FileNotFoundError:  # the first object of its oid[:2] folder
            os.makedirs(d, mode=0o700, exist_ok=True)
        except FileExistsError:
            pass
        else:  # a new folder: no meta.json yet, and no other writer of this object's
            with contextlib.suppress(FileExistsError):
                _write_private(path, text, exclusive=True)
                return
        tmp = f"{path}.{threading.get_ident()}.tmp"  # writers in two threads never clash
        _write_private(tmp, text)
        os.replace(tmp, path)

    def save_meta(self, oid: str, meta: ObjectMeta) -> None:
        self.write_meta_file(oid, meta)
        self._meta[oid] = meta

    def remember_meta(self, oid: str, meta: ObjectMeta) -> None:
        """Record metadata a worker thread wrote with ``write_meta_file``."""
        self._meta[oid] = meta

    # -- the block table -------------------------------------------------------------------
    def _read_table(self, oid: str) -> dict[int, _Rec]:
        try:
            with open(self.table_path(oid), "rb") as f:
                raw = f.read()
        except FileNotFoundError:
            return {}
        out: dict[int, _Rec] = {}
        size = self._rec_size
        full = (1 << self.nseg) - 1
        for pos in range(0, len(raw) - size + 1, size):
            magic, index, length, mask = _HEAD.unpack_from(raw, pos)
            if (
                magic != _MAGIC
                or index != pos // size
                or not 0 < length <= self.block_size
                or not mask
                or mask & ~full
            ):
                continue
            rec = _Rec(self.nseg)
            rec.length = length
            rec.mask = mask
            rec.crcs = array("I", raw[pos + _HEAD.size : pos + size])
            out[index] = rec
        return out

    def present(self, oid: str) -> dict[int, _Rec]:
        """Blocks on disk with their records, read once per object from its table."""
        have = self._present.get(oid)
        if have is None:
            known = self._on_disk is None or oid in self._on_disk
            have = self._read_table(oid) if known else {}
            self._present[oid] = have
        return have

    def seg_mask(self, rec_length: int, start: int, end: int) -> int:
        """The mask of the segments covering bytes [start, end) of a block."""
        first = start // self.seg
        last = (min(end, rec_length) - 1) // self.seg
        return ((1 << (last - first + 1)) - 1) << first

    def has(self, oid: str, index: int) -> bool:
        """The whole block is present."""
        rec = self.present(oid).get(index)
        return rec is not None and rec.mask == self._full_mask(rec.length)

    def has_range(self, oid: str, index: int, start: int, end: int) -> bool:
        rec = self.present(oid).get(index)
        if rec is None or end > rec.length:
            return False
        want = self.seg_mask(rec.length, start, end)
        return rec.mask & want == want

    def _full_mask(self, length: int) -> int:
        return (1 << ((length + self.seg - 1) // self.seg)) - 1

    def _rec_bytes(self, rec: _Rec) -> int:
        """Bytes of the present segments of a block."""
        n = rec.mask.bit_count() * self.seg
        last = (rec.length - 1) // self.seg
        if rec.mask >> last & 1:
            n -= self.seg - (rec.length - last * self.seg)
        return n

    def object_bytes(self, oid: str) -> int:
        """Bytes of an object on disk: O(blocks present), never O(size)."""
        return sum(self._rec_bytes(r) for r in self.present(oid).values())

    # -- writing (worker threads: file IO only) ----------------------------------------------
    def crcs(self, data: bytes | bytearray) -> array[int]:
        """The CRC32 of each segment of ``data`` (thread-safe)."""
        view, seg = memoryview(data), self.seg
        return array("I", (zlib.crc32(view[i : i + seg]) for i in range(0, len(view), seg)))

    def _open_data(self, oid: str, extra_flags: int = 0) -> int:
        # the object's directory exists but on the first write (it goes only at a scan)
        path = self.data_path(oid)
        flags = os.O_WRONLY | os.O_CREAT | extra_flags
        try:
            return os.open(path, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(self._dir(oid), mode=0o700, exist_ok=True)
            return os.open(path, flags, 0o600)

    def _bounce_buffer(self) -> mmap.mmap:
        buf: mmap.mmap | None = getattr(self._bounce, "buf", None)
        if buf is None:
            # anonymous mmap: page-aligned, as O_DIRECT wants; reused for every write of the
            # thread, so its pages are faulted in once, not once per block
            size = -(-self.block_size // DIRECT_ALIGN) * DIRECT_ALIGN
            buf = self._bounce.buf = mmap.mmap(-1, size)
        return buf

    def _write_direct(self, oid: str, off: int, view: memoryview) -> None:
        """``O_DIRECT`` write of ``view`` (a multiple of DIRECT_ALIGN long, at an aligned
        ``off``) through this thread's aligned bounce buffer: one memcpy per block."""
        fd = self._open_data(oid, os.O_DIRECT)
        try:
            bounce = self._bounce_buffer()
            out = memoryview(bounce)
            try:
                pos = 0
                while pos < len(view):
                    n = min(len(out), len(view) - pos)
                    out[:n] = view[pos : pos + n]
                    done = 0
                    while done < n:
                        done += os.pwrite(fd, out[done:n], off + pos + done)
                    pos += n
            finally:
                out.release()
        finally:
            os.close(fd)

    def _write_buffered(self, oid: str, off: int, view: memoryview) -> None:
        fd = self._open_data(oid)
        try:
            done = 0
            while done < len(view):
                done += os.pwrite(fd, view[done:], off + done)
        finally:
            os.close(fd)

    def write_unit(
        self,
        oid: str,
        index: int,
        seg_first: int,
        data: bytes | bytearray,
        crcs: array[int] | None = None,
    ) -> array[int]:
        """Write whole segments of one block starting at segment ``seg_first``; return their
        CRCs (``crcs`` if given). The record is written later, by ``commit`` (data first,
        record second)."""
        view = memoryview(data)
        off = index * self.block_size + seg_first * self.seg
        aligned = 0
        if self.direct_writes and off % DIRECT_ALIGN == 0:
            aligned = len(view) - len(view) % DIRECT_ALIGN
        if aligned:
            try:
                self._write_direct(oid, off, view[:aligned])
                self.direct_write_bytes += aligned
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EOPNOTSUPP):
                    raise
                # the file system (or its configuration) has no O_DIRECT: buffered from now on
                self.direct_writes = False
                aligned = 0
                log.info(
                    "cache: %s refuses O_DIRECT writes (%s); writing through the page cache",
                    self._root_s,
                    os.strerror(exc.errno),
                )
        if aligned < len(view):  # the unaligned tail of an object, or no O_DIRECT
            self._write_buffered(oid, off + aligned, view[aligned:])
        return crcs if crcs is not None else self.crcs(data)

    def preallocate(self, oid: str, start: int, end: int) -> None:
        """File IO only (thread-safe): reserve [start, end) of the data file before writing it.

        Measured on the dev machine's ext4: writing 1 GiB of new data in 1 MiB pwrites costs
        0.3-1.0 s of system CPU, 0.16-0.5 s when 64 MiB runs are fallocate'd first."""
        if _FALLOCATE is None:
            return
        fd = self._open_data(oid)
        try:
            # mode 0, not KEEP_SIZE: ext4 cannot punch space reserved beyond the end of file,
            # and a failed fetch gives its reservation back with a punch (release_range)
            _FALLOCATE(fd, 0, start, end - start)
        finally:
            os.close(fd)

    def release_range(self, oid: str, start: int, end: int) -> None:
        """File IO only (thread-safe): punch [start, end) out (space reserved, never written)."""
        with contextlib.suppress(OSError):
            fd = os.open(self.data_path(oid), os.O_WRONLY)
            try:
                _punch_hole(fd, start, end - start)
            finally:
                os.close(fd)

    # -- accounting and records (trio thread) --------------------------------------------------
    def commit(
        self,
        oid: str,
        index: int,
        seg_first: int,
        crcs: array[int],
        length: int,
        *,
        pinned: bool,
        recorded: bool = False,
    ) -> None:
        """Record segments just written (and verified by construction), write the block's
        record (unless ``recorded``: a whole block, whose record ``write_whole_record`` wrote),
        then make room under the cap (LRU, unpinned blocks)."""
        have = self.present(oid)
        rec = have.get(index)
        if rec is None or rec.length != length:
            rec = _Rec(self.nseg)
            rec.length = length
            have[index] = rec
        for j, crc in enumerate(crcs):
            rec.crcs[seg_first + j] = crc
            rec.mask |= 1 << (seg_first + j)
        if not recorded:
            self._write_record(oid, index, rec)
        self._forget_block(oid, index)
        n = self._rec_bytes(rec)
        if pinned:
            self._pinned[(oid, index)] = n
            self.pinned_bytes += n
        else:
            self._lru[(oid, index)] = n
            self.unpinned_bytes += n
            self.evict_nowait(keep=(oid, index))

    def write_whole_record(self, oid: str, index: int, length: int, crcs: array[int]) -> None:
        """File IO only (thread-safe): the record of a whole block just written (every segment
        present), so that ``commit`` need not write it on the event loop."""
        rec = _Rec(self.nseg)
        rec.length = length
        for j, crc in enumerate(crcs):
            rec.crcs[j] = crc
            rec.mask |= 1 << j
        self._write_record(oid, index, rec)

    def _write_record(self, oid: str, index: int, rec: _Rec) -> None:
        raw = _HEAD.pack(_MAGIC, index, rec.length, rec.mask) + rec.crcs.tobytes()
        try:
            fd = os.open(self.table_path(oid), os.O_WRONLY | os.O_CREAT, 0o600)
        except FileNotFoundError:  # the object was dropped meanwhile
            os.makedirs(self._dir(oid), mode=0o700, exist_ok=True)
            fd = os.open(self.table_path(oid), os.O_WRONLY | os.O_CREAT, 0o600)
        try:
            os.pwrite(fd, raw, index * self._rec_size)
        finally:
            os.close(fd)

    def touch(self, oid: str, index: int) -> None:
        key = (oid, index)
        if key in self._lru:
            self._lru.move_to_end(key)

    def _forget_block(self, oid: str, index: int) -> None:
        """Remove a block from the accounting (not from disk)."""
        length = self._lru.pop((oid, index), None)
        if length is not None:
            self.unpinned_bytes -= length
        length = self._pinned.pop((oid, index), None)
        if length is not None:
            self.pinned_bytes -= length

    def _erase(self, oid: str, index: int) -> None:
        """Clear the record, then punch the data out of the file."""
        with contextlib.suppress(OSError):
            fd = os.open(self.table_path(oid), os.O_WRONLY)
            try:
                os.pwrite(fd, bytes(self._rec_size), index * self._rec_size)
            finally:
                os.close(fd)
        with contextlib.suppress(OSError):
            fd = os.open(self.data_path(oid), os.O_WRONLY)
            try:
                _punch_hole(fd, index * self.block_size, self.block_size)
            finally:
                os.close(fd)

    def drop_block(self, oid: str, index: int) -> None:
        self.present(oid).pop(index, None)
        self._forget_block(oid, index)
        self._erase(oid, index)

    def _disk_too_full(self, *, fresh: bool = False) -> bool:
        """Below ``min_free_ratio`` free. Asked at every commit, so the answer is kept until
        DISK_CHECK_BYTES more are cached or DISK_CHECK_SECONDS pass (one statvfs per small
        file was a system call on the event loop per file of a ``cp -r``)."""
        if self.min_free_ratio <= 0:
            return False
        added = self.unpinned_bytes + self.pinned_bytes
        now = time.monotonic()
        if (
            not fresh
            and abs(added - self._disk_checked_at[0]) < DISK_CHECK_BYTES
            and now - self._disk_checked_at[1] < DISK_CHECK_SECONDS
        ):
            return self._disk_full
        try:
            st = os.statvfs(self._root_s)
        except OSError:
            return False
        self._disk_checked_at = (added, now)
        self._disk_full = st.f_bavail < self.min_free_ratio * st.f_blocks
        return self._disk_full

    def evict_nowait(self, keep: BlockKey | None = None) -> int:
        """Trim unpinned blocks (least recently used first) to the cap; returns bytes freed."""
        freed = 0
        # while evicting for free space, every answer fresh: the punched holes count at once
        for_space = 0  # blocks evicted for free space (not for the cap)
        while self._lru and (
            self.unpinned_bytes > self.max_bytes or self._disk_too_full(fresh=for_space > 0)
        ):
            if self.unpinned_bytes <= self.max_bytes:
                for_space += 1
            (oid, index), size = self._lru.popitem(last=False)
            if (oid, index) == keep and not self._lru:
                self._lru[(oid, index)] = size
                break
            self.unpinned_bytes -= size
            freed += size
            self.evicted_blocks += 1
            have = self._present.get(oid)
            if have is not None:
                have.pop(index, None)
            self._erase(oid, index)
        return freed

    # -- reading -----------------------------------------------------------------------------
    def _fd(self, oid: str) -> int:
        fd = self._fds.get(oid)
        if fd is not None:
            self._fds.move_to_end(oid)
            return fd
        fd = _open_for_reads(self.data_path(oid))
        self._fds[oid] = fd
        while len(self._fds) > 64:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def _close_fd(self, oid: str) -> None:
        fd = self._fds.pop(oid, None)
        if fd is not None:
            os.close(fd)

    def read_plan(self, oid: str, index: int, start: int, end: int) -> tuple[int, int, int] | None:
        """What to read for bytes [start, end) of a block: (read start, read end, mask of the
        segments to check); None if a segment is missing. Every read checks every segment it
        touches: pages of the cache file can leave the page cache and come back from the disk
        (the kernel's readahead, ``WILLNEED``) without the daemon knowing, so a segment checked
        once is not known good later."""
        rec = self.present(oid).get(index)
        if rec is None or end > rec.length:
            return None
        want = self.seg_mask(rec.length, start, end)
        if rec.mask & want != want:
            return None
        unchecked = want
        # widen to whole segments where a check is needed (only those are read whole)
        first = (unchecked & -unchecked).bit_length() - 1
        last = unchecked.bit_length() - 1
        lo = min(start, first * self.seg)
        hi = max(end, min(rec.length, (last + 1) * self.seg))
        return lo, hi, unchecked

    def read_nowait(
        self, oid: str, index: int, start: int, end: int, plan: tuple[int, int, int]
    ) -> bytes | bytearray | memoryview | object | None:
        """Bytes [start, end) of a block (planned by ``read_plan``) from the page cache, without
        blocking the event loop: the bytes, ``CORRUPT`` (then dropped), or None when they are
        not all in the page cache (then ``read_blocking`` in a worker thread)."""
        if not _RWF_NOWAIT:
            return None
        lo, hi, unchecked = plan
        buf = bytearray(hi - lo)
        try:
            n = os.preadv(self._fd(oid), [buf], index * self.block_size + lo, _RWF_NOWAIT)
        except BlockingIOError:
            return None
        except OSError as exc:
            if exc.errno in (errno.EAGAIN, errno.EOPNOTSUPP, errno.EINVAL):
                return None
            self._close_fd(oid)
            self.drop_block(oid, index)
            self.corrupt_blocks += 1
            return CORRUPT
        if n != hi - lo:  # part of it is not in the page cache (or the file is short)
            return None
        return self.finish_read(oid, index, start, end, lo, buf, unchecked)

    def advise_willneed(self, oid: str, first: int, last: int) -> None:
        """File IO only (thread-safe): start reading blocks [first, last] into the page cache."""
        try:
            fd = os.open(self.data_path(oid), os.O_RDONLY)
        except OSError:
            return
        try:
            bs = self.block_size
            os.posix_fadvise(fd, first * bs, (last - first + 1) * bs, os.POSIX_FADV_WILLNEED)
        except OSError:
            pass
        finally:
            os.close(fd)

    def read_blocking(self, oid: str, index: int, plan: tuple[int, int, int]) -> bytes | None:
        """File IO only (thread-safe): the planned bytes, or None if the file is gone/short."""
        lo, hi, _ = plan
        try:
            fd = _open_for_reads(self.data_path(oid))
        except OSError:
            return None
        try:
            data = os.pread(fd, hi - lo, index * self.block_size + lo)
        finally:
            os.close(fd)
        return data if len(data) == hi - lo else None

    def record_snapshot(self, oid: str, index: int) -> tuple[int, array[int]] | None:
        """(length, CRCs) of a block, for ``read_checked`` in a worker thread."""
        rec = self.present(oid).get(index)
        return None if rec is None else (rec.length, array("I", rec.crcs))

    def first_bad(
        self, data: bytes | bytearray, lo: int, unchecked: int, length: int, crcs: array[int]
    ) -> int:
        """The first segment of ``unchecked`` whose CRC fails, or -1 (thread-safe: pure)."""
        seg = self.seg
        m = unchecked
        view = memoryview(data)
        while m:
            j = (m & -m).bit_length() - 1
            m &= m - 1
            a = j * seg - lo
            if zlib.crc32(view[a : a + min(seg, length - j * seg)]) != crcs[j]:
                return j
        return -1

    def read_checked(
        self, oid: str, index: int, plan: tuple[int, int, int], snap: tuple[int, array[int]]
    ) -> tuple[bytes | None, int]:
        """File IO + CRCs (worker thread): the planned bytes and the first bad segment (-1)."""
        data = self.read_blocking(oid, index, plan)
        if data is None:
            return None, -1
        return data, self.first_bad(data, plan[0], plan[2], *snap)

    def finish_read(
        self,
        oid: str,
        index: int,
        start: int,
        end: int,
        lo: int,
        data: bytes | bytearray | None,
        unchecked: int,
        bad: int | None = None,
    ) -> bytes | bytearray | memoryview | object:
        """Check the segments in ``unchecked`` (unless a thread did: ``bad``) and return bytes
        [start, end), or ``CORRUPT``."""
        rec = self.present(oid).get(index)
        if data is None or rec is None:
            self.drop_block(oid, index)
            self.corrupt_blocks += 1
            return CORRUPT
        self.disk_read_bytes += len(data)
        if bad is None:
            bad = self.first_bad(data, lo, unchecked, rec.length, rec.crcs)
        if bad >= 0:
            self.corrupt_blocks += 1
            log.warning(
                "cache block %d of %s failed its checksum (segment %d); dropped and refetched",
                index,
                self.data_path(oid),
                bad,
            )
            self.drop_block(oid, index)
            return CORRUPT
        self.touch(oid, index)
        if lo == start and len(data) == end - start:
            return data
        return memoryview(data)[start - lo : end - lo]

    # -- whole objects -----------------------------------------------------------------------
    def set_pinned(self, oid: str, pinned: bool) -> None:
        """Move an object's blocks in or out of the evictable LRU."""
        meta = self.meta(oid)
        if meta is None or meta.pinned == pinned:
            return
        meta.pinned = pinned
        self.save_meta(oid, meta)
        if meta.one_shot:
            return  # one-shot objects are never evictable
        for index, rec in self.present(oid).items():
            key = (oid, index)
            self._forget_block(oid, index)
            n = self._rec_bytes(rec)
            if pinned:
                self._pinned[key] = n
                self.pinned_bytes += n
            else:
                self._lru[key] = n
                self.unpinned_bytes += n
        self.evict_nowait()

    def drop_object(self, oid: str) -> int:
        """Delete every block of an object (pinned ones too); returns bytes freed."""
        have = self.present(oid)
        freed = 0
        for index, rec in list(have.items()):
            self._forget_block(oid, index)
            freed += self._rec_bytes(rec)
        self._present[oid] = {}
        self._close_fd(oid)
        for path in (self.data_path(oid), self.table_path(oid)):
            with contextlib.suppress(OSError):
                os.unlink(path)
        meta = self.meta(oid)
        if meta is not None and meta.complete and not meta.one_shot:
            meta.complete = False
            self.save_meta(oid, meta)
        return freed

    def clear_unpinned(self) -> int:
        freed = 0
        while self._lru:
            (oid, index), size = self._lru.popitem(last=False)
            self.present(oid).pop(index, None)
            self._erase(oid, index)
            freed += size
        self.unpinned_bytes = 0
        return freed

    # -- start-up and checks -------------------------------------------------------------------
    def _object_dirs(self) -> list[str]:
        out: list[str] = []
        with contextlib.suppress(OSError):
            for prefix in os.scandir(self._root_s):
                if prefix.is_dir():
                    out.extend(e.path for e in os.scandir(prefix.path) if e.is_dir())
        return out

    def scan(self) -> None:
        """Rebuild the index from the block tables (LRU order: data file mtime, oldest first)."""
        entries: list[tuple[float, str, int, int]] = []
        self.pinned_bytes = 0
        self._pinned.clear()
        self._present.clear()
        for d in self._object_dirs():
            oid = os.path.basename(d)
            for name in os.listdir(d):
                if name.endswith(".tmp"):  # a crash between writing and renaming meta.json
                    with contextlib.suppress(OSError):
                        os.unlink(os.path.join(d, name))
            meta = self.meta(oid)
            if meta is None and not os.path.exists(self.table_path(oid)):
                if not os.listdir(d):
                    shutil.rmtree(d, ignore_errors=True)
                continue
            have = self.present(oid)
            pinned = bool(meta and (meta.pinned or meta.one_shot))
            try:
                age = os.stat(self.data_path(oid)).st_mtime
            except OSError:
                have.clear()
                continue
            for index, rec in have.items():
                n = self._rec_bytes(rec)
                if pinned:
                    self._pinned[(oid, index)] = n
                    self.pinned_bytes += n
                else:
                    entries.append((age, oid, index, n))
        self._on_disk = {os.path.basename(d) for d in self._object_dirs()}
        entries.sort()
        self._lru = OrderedDict(((oid, index), n) for _, oid, index, n in entries)
        self.unpinned_bytes = sum(n for *_, n in entries)
        self.evict_nowait()

    def find_corrupt(self) -> tuple[int, list[BlockKey]]:
        """Read every block on disk and check each segment against its record (thread-safe:
        touches no in-memory state). Returns (blocks checked, corrupt blocks)."""
        checked = 0
        bad: list[BlockKey] = []
        seg = self.seg
        for d in self._object_dirs():
            oid = os.path.basename(d)
            table = self._read_table(oid)
            if not table:
                continue
            try:
                fd = os.open(self.data_path(oid), os.O_RDONLY)
            except OSError:
                bad.extend((oid, i) for i in table)
                continue
            try:
                for index, rec in sorted(table.items()):
                    checked += 1
                    data = os.pread(fd, rec.length, index * self.block_size)
                    for j in range(self.nseg):
                        if not rec.mask >> j & 1:
                            continue
                        piece = data[j * seg : min((j + 1) * seg, rec.length)]
                        if len(piece) != min(seg, rec.length - j * seg) or (
                            zlib.crc32(piece) != rec.crcs[j]
                        ):
                            bad.append((oid, index))
                            break
            finally:
                os.close(fd)
        return checked, bad

    def object_count(self) -> int:
        return len(self._object_dirs())

    def stats(self) -> dict[str, int]:
        return {
            "unpinned_bytes": self.unpinned_bytes,
            "pinned_bytes": self.pinned_bytes,
            "blocks": len(self._lru),
            "max_bytes": self.max_bytes,
            "corrupt_blocks": self.corrupt_blocks,
            "disk_reads": self.disk_reads,
            "disk_read_bytes": self.disk_read_bytes,
            "direct_write_bytes": self.direct_write_bytes,
            "evicted_blocks": self.evicted_blocks,
        }
