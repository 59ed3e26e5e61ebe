"""Block cache: single-flight fetches that land in the cache file as they arrive, reads served
from a small memory LRU of fresh blocks or straight from the data files.

Concurrency rules (trio: code between two awaits runs atomically):
- A segment is fetched by at most one task. ``_flights[(oid, i)]`` lists the fetches under way
  for block ``i`` (a mask of segments each, and the event their readers wait on); they are
  created, and the segments marked in flight, without an await in between.
- Fetch tasks run in the cache's own nursery, not in the FUSE request that asked for them: a
  request that times out or is interrupted does not cancel a download others wait on.
- The bytes of a ranged download are received by the provider in a worker thread, straight into
  a block buffer (``_Sink``); the same thread writes each finished piece to the data file and
  computes its CRCs, then hands it to the event loop (``_landed``), which records it and wakes
  its readers. Nothing is queued for a writer, so nothing is dropped: every fetched byte is
  persisted before it is served.
- Memory: fetches in flight are bounded by ``budget`` (one block buffer each), fresh blocks kept
  in memory by ``_mem_cap``; neither depends on the number of open files. Per-object state is
  an LRU of ``MAX_OBJECTS`` entries.
"""

from __future__ import annotations

import contextlib
import logging
import math
import queue
import threading
import weakref
from array import array
from collections import OrderedDict
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from fusefs.cache.store import CORRUPT, BlockKey, BlockStore, ObjectMeta, object_id
from fusefs.cache.tier import BlockId, BlockTier, WholeId
from fusefs.providers.base import (
    ObjectRef,
    OneShotConsumed,
    ProtocolError,
    ProviderError,
    Unavailable,
)

if TYPE_CHECKING:
    from fusefs.providers.base import Provider

log = logging.getLogger(__name__)

MAX_OBJECTS = 4096  # per-object state kept in memory (LRU); the rest is re-read from disk
# Received blocks waiting for the writer thread. When the disk is slower than the network the
# receivers wait for room: every block is persisted, and memory stays bounded.
WRITE_QUEUE = 32
# 1, 2 and 3 writer threads measured alike on the 2-core dev machine (1 and 4 cold readers,
# within the noise of a shared machine): one it is
WRITERS = 1
PREALLOCATE = 16 << 20  # fetches this large reserve file space this far ahead of their writes
BATCH_MAX_SIZE = 256 << 10  # files up to this size are read ahead in batches (fetch_batch)
# The most blocks one fetch leases in the fleet tier before downloading them in one request: the
# last must arrive before its lease expires (30 s: 16 MiB at 1 MiB blocks needs > 0.5 MB/s).
LEASE_RUN = 16
# Units written to disk but not yet accounted on the event loop (and so not yet evictable): a
# writer waits for the loop past this many, so the disk use stays within the cap plus this many
# units even when the loop lags behind the writer (seen on a loaded CI host: 6 MiB over).
UNCOMMITTED = 4


def _strong(version: str) -> bool:
    """A version that tells contents apart (hosts share blocks under it for days): not empty,
    not just a size (``edited:size`` with no edit time)."""
    head, _, tail = version.partition(":")
    return bool(version) and not (tail.isdigit() and not head)


class _Stopped(Exception):
    """The event loop is gone (shutdown): stop receiving."""


class ByteBudget:
    """A global byte budget; ``acquire`` is all-or-nothing, so holders never deadlock."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0
        self._changed = trio.Event()

    async def acquire(self, n: int) -> int:
        n = min(n, self.total)
        while self.used + n > self.total:
            await self._changed.wait()
        self.used += n
        return n

    def release(self, n: int) -> None:
        self.used -= n
        ev, self._changed = self._changed, trio.Event()
        ev.set()


@dataclass(eq=False)
class CachedObject:
    """One immutable object version as the cache sees it."""

    provider: Provider
    ref: ObjectRef
    oid: str
    size: int | None
    pinned: bool
    meta_saved: bool = False
    fetched: bool = False  # bytes of this version came from the provider in this run

    @property
    def whole_only(self) -> bool:
        return not self.provider.capabilities.ranged_reads


_WriteItem = tuple["_Sink", int, bytearray | None, "array[int] | None"]


@dataclass(eq=False, slots=True)
class _Flight:
    """Segments of one block being fetched, and the event their readers wait on."""

    mask: int
    event: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    waiters: int = 0  # reads waiting on it now: a fetch they wait for is never abandoned


@dataclass(eq=False)
class _Fetch:
    """One ranged fetch in flight, started for ``owner`` (a file handle's reader, or None)."""

    obj: CachedObject
    start: int
    end: int
    flights: list[tuple[int, _Flight]]
    scope: trio.CancelScope = field(default_factory=trio.CancelScope)


@dataclass
class _WholeFetch:
    done: trio.Event = field(default_factory=trio.Event)
    error: BaseException | None = None
    consumed: bool = False  # a one-shot source whose bytes started to arrive: never again


@dataclass
class CacheCounters:
    hits: int = 0
    misses: int = 0
    fetches: int = 0
    fetched_bytes: int = 0
    tier_blocks: int = 0  # blocks taken from the fleet tier instead of the cloud
    tier_waits: int = 0  # of those, blocks another host was downloading (waited for)
    not_persisted: int = 0  # pieces served but not written: the disk refused them


class _Sink:
    """Receives one fetch's bytes into block buffers (a ``RangeSink``).

    The fetch covers [start, end) (``end`` None: to the end of a whole-object stream); a *unit* is
    the part of one block inside it. In thread mode (``fetch_range``) a finished unit is written
    and handed to the event loop from the receiving thread; in async mode (``open_stream``) it is
    queued in ``ready`` for the fetch task to write through ``trio.to_thread``.
    """

    def __init__(
        self,
        cache: BlockCache,
        obj: CachedObject,
        start: int,
        end: int | None,
        *,
        in_thread: bool,
        meta: ObjectMeta | None,
    ) -> None:
        self.cache = cache
        self.obj = obj
        self.end = end
        self.in_thread = in_thread
        self.meta = meta  # written (once) before the first data, in the writing thread
        self.publish = cache.tier is not None  # share full blocks (not those from the tier)
        self.ready: list[tuple[int, bytearray]] = []
        self.received_bytes = 0
        self.fetch_start = start
        self.allocated = start  # file space reserved up to here (writer thread)
        self._open_unit(start)

    def _open_unit(self, start: int) -> None:
        bs = self.cache.block_size
        stop = (start // bs + 1) * bs
        if self.end is not None:
            stop = min(stop, self.end)
        self.unit_start = start
        self.buf = bytearray(stop - start)
        self.filled = 0

    @property
    def pos(self) -> int:
        return self.unit_start + self.filled

    def buffer(self, pos: int) -> memoryview:
        if pos != self.pos:
            raise ProtocolError(f"download resumed at byte {pos}, expected {self.pos}")
        return memoryview(self.buf)[self.filled :]

    def received(self, pos: int, n: int) -> None:
        self.filled += n
        self.received_bytes += n
        self.obj.fetched = True
        if self.filled < len(self.buf):
            return
        unit = (self.unit_start, self.buf)
        if self.end is None or self.pos < self.end:
            self._open_unit(self.pos)
        else:  # the fetch is complete
            self.unit_start, self.buf, self.filled = self.end, bytearray(), 0
        if self.in_thread:
            self.cache._hand_off(self, *unit)
        else:
            self.ready.append(unit)

    def finish(self) -> tuple[int, bytearray] | None:
        """At the end of a stream of unknown length: the partial last unit, if any."""
        if not self.filled:
            return None
        unit = (self.unit_start, self.buf[: self.filled])
        self.buf, self.filled = bytearray(), 0
        return unit

    def write(
        self,
        start: int,
        data: bytearray,
        crcs: array[int] | None = None,
        *,
        record: bool = False,
    ) -> array[int] | None:
        """File IO only (worker thread): the unit's segments, after meta.json the first time;
        ``record``: the unit is a whole block, whose record is written here too (after its
        data). Large fetches reserve their file space ahead of the writes, PREALLOCATE at a
        time."""
        store = self.cache.store
        try:
            if self.meta is not None:
                store.write_meta_file(self.obj.oid, self.meta)
            end = self.end
            if (
                end is not None
                and end - self.fetch_start >= PREALLOCATE
                and start >= self.allocated
            ):
                self.allocated = min(end, start + PREALLOCATE)
                store.preallocate(self.obj.oid, start, self.allocated)
            index = start // self.cache.block_size
            seg_first = (start % self.cache.block_size) // store.seg
            crcs = store.write_unit(self.obj.oid, index, seg_first, data, crcs)
            if record:
                store.write_whole_record(self.obj.oid, index, len(data), crcs)
            return crcs
        except OSError as exc:
            log.warning("could not write cache data of %s: %s", self.obj.ref.key, exc)
            return None

    def commit(
        self, start: int, data: bytearray, crcs: array[int] | None, *, recorded: bool = False
    ) -> None:
        """On the event loop, after the writer thread wrote a unit (``crcs`` None: it could not;
        ``recorded``: the thread wrote the block's record too)."""
        if self.meta is not None:
            if crcs is not None:
                self.cache.store.remember_meta(self.obj.oid, self.meta)
                self.meta = None
            else:  # not written (meta.json maybe neither): the next fetch writes it
                self.obj.meta_saved = False
        self.cache._committed(self.obj, start, data, crcs, recorded=recorded)


class BlockCache:
    def __init__(
        self,
        root: Path,
        *,
        block_size: int = 1 << 20,
        max_bytes: int = 10 << 30,
        min_free_ratio: float = 0.05,
        memory_budget: int = 256 << 20,
        max_request: int = 64 << 20,
        max_read_ahead: int = 128 << 20,
        tier: BlockTier | None = None,
    ) -> None:
        self.block_size = block_size
        self.tier = tier  # the fleet's shared level, asked before the cloud (None: one host)
        self.store = BlockStore(root, block_size, max_bytes, min_free_ratio)
        self.seg = self.store.seg
        self.nseg = self.store.nseg
        self.max_request_blocks = max(1, max_request // block_size)
        self._mem: OrderedDict[BlockKey, bytes | bytearray] = OrderedDict()
        self._mem_bytes = 0
        self._mem_cap = max(memory_budget // 8, 4 * block_size)
        # one block buffer per fetch in flight (the rest of a fetch is on disk, not in memory)
        self.budget = ByteBudget(max(memory_budget // 4, 2 * block_size))
        self._flights: dict[BlockKey, list[_Flight]] = {}
        # read-ahead fetches by the reader that started them: abandoned when it closes
        self._owned: dict[Hashable, set[_Fetch]] = {}
        self.abandoned = 0  # fetches cancelled because their reader went away
        # the sequential readers now (FileReader), sharing ``read_ahead_total``: at most what
        # the memory LRU holds, so that read-ahead is still in memory when its reader comes
        # (read-ahead that left the LRU is read back from the cache file: a worker thread, a
        # disk read and CRC checks per block; with 4 streams sharing 128 MiB about half the
        # bytes were, with one stream's 64 MiB window a third)
        self.streams: weakref.WeakSet[object] = weakref.WeakSet()
        self.read_ahead_total = min(max_read_ahead, self._mem_cap)
        self._whole: dict[str, _WholeFetch] = {}
        self._objects: OrderedDict[str, CachedObject] = OrderedDict()
        # every view still referenced (an open file, a fetch): one view per object, always
        self._live: weakref.WeakValueDictionary[str, CachedObject] = weakref.WeakValueDictionary()
        self._nursery: trio.Nursery | None = None
        self.counters = CacheCounters()
        # full blocks received but not yet on disk: served from here until the writer commits
        self._pending: dict[BlockKey, bytes | bytearray] = {}
        # (sink, start, data or None: a punch, CRCs if computed by the receiving thread)
        self._wq: queue.Queue[_WriteItem | None] = queue.Queue(WRITE_QUEUE)
        self._writers: list[threading.Thread] = []
        self._queued: dict[str, int] = {}  # units of an object received, not yet committed
        self._written = trio.Event()  # set (and replaced) after every commit
        self._uncommitted = threading.BoundedSemaphore(UNCOMMITTED)
        self._token: trio.lowlevel.TrioToken | None = None

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan the store, start the writer thread, then host the fetch tasks until cancelled.
        At the end the writer finishes what is queued, so an unmount keeps every fetched byte."""
        await trio.to_thread.run_sync(self.store.scan)
        self._token = trio.lowlevel.current_trio_token()
        self._writers = [
            threading.Thread(target=self._write_loop, name=f"cache-writer-{i}", daemon=True)
            for i in range(WRITERS)
        ]
        for w in self._writers:
            w.start()
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                for _ in self._writers:  # never a blocking put here: the writer may be
                    # waiting for a commit only this loop can run (_wait_for_commits)
                    await trio.to_thread.run_sync(self._wq.put, None)
                for w in self._writers:
                    await trio.to_thread.run_sync(w.join)
                await trio.lowlevel.checkpoint()  # run the commits the writer posted

    def _write_loop(self) -> None:
        """The writer thread: CRC + pwrite of each received unit, then commit on the loop."""
        assert self._token is not None
        while True:
            item = self._wq.get()
            try:
                if item is None:
                    return
                sink, start, data, crcs = item
                if data is None:  # a failed fetch: give back the space it reserved, unwritten
                    if sink.allocated > start:
                        self.store.release_range(sink.obj.oid, start, sink.allocated)
                    continue
                self._wait_for_commits()
                crcs = sink.write(start, data, crcs)
            except _Stopped:
                return
            finally:
                self._wq.task_done()
            try:
                self._token.run_sync_soon(self._commit_safely, sink, start, data, crcs)
            except trio.RunFinishedError:
                return

    def _wait_for_commits(self) -> None:
        """In a writing thread, before a write: wait while UNCOMMITTED units are on disk and not
        yet accounted (the event loop commits them, and evicts past the cap)."""
        assert self._token is not None
        while not self._uncommitted.acquire(timeout=1.0):
            try:
                self._token.run_sync_soon(lambda: None)  # is the loop still there?
            except trio.RunFinishedError:
                raise _Stopped from None

    def _commit_safely(
        self,
        sink: _Sink,
        start: int,
        data: bytearray,
        crcs: array[int] | None,
        recorded: bool = False,
    ) -> None:
        try:
            sink.commit(start, data, crcs, recorded=recorded)
        except Exception:  # a bug: never let it reach trio's run_sync_soon (it would crash)
            log.exception("recording a fetched block of %s failed", sink.obj.ref.key)
        finally:
            self._uncommitted.release()

    def _hand_off(self, sink: _Sink, start: int, data: bytearray) -> None:
        """In a receiving thread: serve the unit now, queue it for the writer (waiting when the
        disk is behind: backpressure, never a dropped block)."""
        assert self._token is not None
        obj = sink.obj
        try:
            self._token.run_sync_soon(self._arrived_safely, obj, start, data)
            if not self._is_full_block(obj, start, len(data)):
                # a part of a block (a random read) is served only once it is on disk: write it
                # here rather than behind the writer's queue, a reader is waiting for it
                self._wait_for_commits()
                crcs = sink.write(start, data)
                self._token.run_sync_soon(self._commit_safely, sink, start, data, crcs)
                return
            if start == 0 and obj.size == len(data):
                # a small file, whole (``cp -r`` of a folder: thousands of them): written here,
                # record included, so the files of a folder are written by the receiving
                # threads in parallel, not one after another by the writer (its system calls,
                # each waiting for the GIL again, made it the bottleneck of read-ahead)
                if sink.publish:
                    self._publish(obj, start, data)
                self._wait_for_commits()
                crcs = sink.write(start, data, record=True)
                self._token.run_sync_soon(self._commit_safely, sink, start, data, crcs, True)
                return
        except trio.RunFinishedError:
            raise _Stopped from None
        if sink.publish:
            self._publish(obj, start, data)
        # the CRCs here, in the receiving threads (in parallel), not in the one writer
        self._wq.put((sink, start, data, self.store.crcs(data)))

    def _is_full_block(self, obj: CachedObject, start: int, length: int) -> bool:
        bs = self.block_size
        return start % bs == 0 and (
            length == bs or (obj.size is not None and start + length == obj.size)
        )

    def _arrived_safely(self, obj: CachedObject, start: int, data: bytearray) -> None:
        try:
            self._arrived(obj, start, data)
        except Exception:
            log.exception("serving a fetched block of %s failed", obj.ref.key)

    async def _queue_write(self, sink: _Sink, start: int, data: bytearray) -> None:
        """Async mode: serve the unit now, queue it for the writer."""
        self._arrived(sink.obj, start, data)
        if sink.publish and self._is_full_block(sink.obj, start, len(data)):
            self._publish(sink.obj, start, data)
        try:
            self._wq.put_nowait((sink, start, data, None))
        except queue.Full:
            await trio.to_thread.run_sync(self._wq.put, (sink, start, data, None))

    async def flush(self, oid: str) -> None:
        """Wait until every received block of an object is on disk."""
        while self._queued.get(oid):
            await self._written.wait()

    def _spawn(self, fn: Callable[..., object], *args: object, name: str) -> None:
        """Start a task in the cache's nursery; Unavailable once the mount is shutting down (a
        read or background fetch that asks then gets an error, not a crash of the daemon)."""
        assert self._nursery is not None, "BlockCache.run() is not running"
        try:
            self._nursery.start_soon(fn, *args, name=name)  # type: ignore[arg-type]
        except RuntimeError:  # "Nursery is closed to new arrivals": unmounting
            raise Unavailable("the mount is shutting down", call="cache") from None

    # -- objects -----------------------------------------------------------------------------
    def object(self, provider: Provider, ref: ObjectRef, *, remember: bool = True) -> CachedObject:
        """The cache's view of one object version (in memory; nothing is written here).

        ``remember=False`` (state queries such as ``fusefs info``): a view not yet known is not
        added to the LRU, so a query over many files does not push out the ones being read."""
        oid = object_id(ref.provider, ref.key, ref.version)
        obj = self._objects.get(oid)
        if obj is None:
            obj = self._live.get(oid)  # evicted from the LRU but still held by a reader/fetch
            if obj is not None:
                self._objects[oid] = obj
        if obj is None:
            caps = provider.capabilities
            meta = self.store.meta(oid)
            size = ref.size if ref.size is not None else (meta.size if meta else None)
            pinned = caps.one_shot or bool(meta and meta.pinned)
            obj = CachedObject(provider, ref, oid, size, pinned, meta_saved=meta is not None)
            if not remember:
                return obj
            self._objects[oid] = obj
            self._live[oid] = obj
            while len(self._objects) > MAX_OBJECTS:
                self._objects.popitem(last=False)
        else:
            self._objects.move_to_end(oid)
        return obj

    def _meta_for(self, obj: CachedObject, *, complete: bool = False) -> ObjectMeta:
        return ObjectMeta(
            obj.ref.provider,
            obj.ref.key,
            obj.ref.version,
            obj.size,
            obj.pinned,
            complete,
            obj.provider.capabilities.one_shot,
        )

    def _save_meta(self, obj: CachedObject, *, complete: bool = False) -> None:
        self.store.save_meta(obj.oid, self._meta_for(obj, complete=complete))
        obj.meta_saved = True

    def _take_meta(self, obj: CachedObject) -> ObjectMeta | None:
        """The metadata a fetch must write before its first bytes (once per object)."""
        if obj.meta_saved:
            return None
        obj.meta_saved = True
        return self._meta_for(obj)

    def known_size(self, provider: Provider, ref: ObjectRef) -> int | None:
        """Size of an object learnt from an earlier whole fetch (also across restarts)."""
        obj = self._objects.get(object_id(ref.provider, ref.key, ref.version))
        if obj is not None:
            return obj.size
        meta = self.store.meta(object_id(ref.provider, ref.key, ref.version))
        return meta.size if meta is not None and meta.complete else None

    def is_complete(self, obj: CachedObject) -> bool:
        meta = self.store.meta(obj.oid)
        return bool(meta and meta.complete)

    def cached_bytes(self, obj: CachedObject) -> int:
        """Bytes of the object on disk: O(blocks cached), never O(listed size)."""
        if obj.size is None:
            return 0
        return min(obj.size, self.store.object_bytes(obj.oid))

    def had_bytes(self, obj: CachedObject) -> bool:
        """Bytes of this version were received before (in this run, or are on disk from an
        earlier one): the service did serve it as listed, so a later answer with another size,
        or none, means it changed (ESTALE for the handles that have it open)."""
        return obj.fetched or self.cached_bytes(obj) > 0

    def nblocks(self, obj: CachedObject) -> int:
        assert obj.size is not None
        return math.ceil(obj.size / self.block_size)

    def _block_len(self, obj: CachedObject, index: int) -> int:
        assert obj.size is not None
        return min(self.block_size, obj.size - index * self.block_size)

    # -- presence ----------------------------------------------------------------------------
    def _have_mask(self, obj: CachedObject, index: int) -> int:
        if (obj.oid, index) in self._mem or (obj.oid, index) in self._pending:
            return (1 << self.nseg) - 1
        rec = self.store.present(obj.oid).get(index)
        return rec.mask if rec is not None else 0

    def _flying_mask(self, key: BlockKey) -> int:
        m = 0
        for f in self._flights.get(key, ()):
            m |= f.mask
        return m

    def _full_mask(self, obj: CachedObject, index: int) -> int:
        return (1 << ((self._block_len(obj, index) + self.seg - 1) // self.seg)) - 1

    def _needs(self, obj: CachedObject, index: int, want: int | None = None) -> int:
        """Segments of block ``index`` (of ``want``; default all) neither present nor in flight."""
        key = (obj.oid, index)
        if key in self._mem or key in self._pending:
            return 0
        if want is None:
            want = self._full_mask(obj, index)
        missing = want & ~self._have_mask(obj, index)
        if missing and key in self._flights:
            missing &= ~self._flying_mask(key)
        return missing

    def _has(self, obj: CachedObject, index: int) -> bool:
        key = (obj.oid, index)
        return key in self._mem or key in self._pending or self.store.has(obj.oid, index)

    def first_missing(self, obj: CachedObject, first: int, last: int) -> int | None:
        for i in range(first, last + 1):
            if self._needs(obj, i):
                return i
        return None

    def on_disk_only(self, obj: CachedObject, index: int) -> bool:
        """Block ``index`` is in the cache file but not in memory."""
        key = (obj.oid, index)
        if key in self._mem or key in self._pending or obj.size is None:
            return False
        return index < self.nblocks(obj) and self.store.has(obj.oid, index)

    def disk_ahead(self, obj: CachedObject, first: int, last: int) -> None:
        """Have the kernel read blocks [first, last] of the cache file into the page cache, in a
        worker thread, so that the reads that follow find them there (no disk wait in line)."""
        with contextlib.suppress(Unavailable):  # a hint only
            self._spawn(
                trio.to_thread.run_sync,
                self.store.advise_willneed,
                obj.oid,
                first,
                last,
                name=f"disk-ahead {obj.ref.key}[{first}:{last}]",
            )

    # -- memory LRU of fresh blocks ----------------------------------------------------------
    def _remember(self, key: BlockKey, data: bytes | bytearray) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_bytes -= len(old)
        self._mem[key] = data
        self._mem_bytes += len(data)
        while self._mem_bytes > self._mem_cap and self._mem:
            _, dropped = self._mem.popitem(last=False)
            self._mem_bytes -= len(dropped)

    # -- reading -----------------------------------------------------------------------------
    async def read(self, obj: CachedObject, offset: int, end: int) -> bytes | memoryview:
        """Bytes [offset, end) of a ranged or completed object (``end`` <= size)."""
        bs = self.block_size
        first, last = offset // bs, (end - 1) // bs
        if first == last:
            return await self.read_block(obj, first, offset - first * bs, end - first * bs)
        parts: list[bytes | memoryview] = []
        for index in range(first, last + 1):
            lo = max(offset, index * bs) - index * bs
            hi = min(end, (index + 1) * bs) - index * bs
            parts.append(await self.read_block(obj, index, lo, hi))
        return b"".join(parts)

    async def read_block(
        self, obj: CachedObject, index: int, lo: int, hi: int, *, reader: bool = True
    ) -> memoryview:
        """Bytes [lo, hi) of block ``index``, verified, fetching what is missing. ``reader``:
        a read for a file's reader (a block it reads to its end leaves the LRU first), not
        read-ahead waiting for its block."""
        key = (obj.oid, index)
        store = self.store
        waited = False
        for _attempt in range(4):
            data = self._mem.get(key)
            if data is not None:
                # read to its end: its reader is done with it (a re-read comes from the kernel's
                # page cache of the mount), so it leaves the LRU first, before the read-ahead
                # nobody has read yet (else parallel streams read much of theirs back from disk)
                self._mem.move_to_end(key, last=not reader or hi < len(data))
            else:
                data = self._pending.get(key)
            if data is not None:
                store.touch(obj.oid, index)
                self.counters.hits += not waited
                return memoryview(data)[lo:hi]
            plan = store.read_plan(obj.oid, index, lo, hi)
            if plan is not None:
                got = None
                if plan[2] & (plan[2] - 1) == 0:  # at most one segment to check: on the loop
                    got = store.read_nowait(obj.oid, index, lo, hi, plan)
                if got is None:  # from the disk, or many checks: read and check in a thread
                    store.disk_reads += 1
                    snap = store.record_snapshot(obj.oid, index)
                    assert snap is not None
                    raw, bad = await trio.to_thread.run_sync(
                        store.read_checked, obj.oid, index, plan, snap
                    )
                    got = store.finish_read(obj.oid, index, lo, hi, plan[0], raw, plan[2], bad)
                if got is not CORRUPT:
                    self.counters.hits += not waited
                    assert isinstance(got, bytes | bytearray | memoryview)
                    return memoryview(got)
                continue  # dropped as corrupt: fetch it again
            if not waited:
                self.counters.misses += 1
                waited = True
            if obj.whole_only:  # no Range: a missing block means fetching the object again
                wf = self.start_whole(obj, refetch=True)
                await wf.done.wait()
                if wf.error is not None:
                    raise wf.error
                continue
            await self._wait_fetched(obj, index, lo, hi)
        raise ProtocolError(f"block {index} of {obj.ref.key} vanished while being read")

    async def _wait_fetched(self, obj: CachedObject, index: int, lo: int, hi: int) -> None:
        """Start what no one fetches of [lo, hi) of the block, then wait for one flight."""
        key = (obj.oid, index)
        want = store_mask = self.store.seg_mask(self._block_len(obj, index), lo, hi)
        if self._needs(obj, index, want):
            g0 = index * self.nseg + lo // self.seg
            g1 = index * self.nseg + (hi - 1) // self.seg
            self._start_segments(obj, g0, g1)
        missing = store_mask & ~self._have_mask(obj, index)
        for flight in self._flights.get(key, ()):
            if flight.mask & missing:
                flight.waiters += 1
                try:
                    await flight.event.wait()
                finally:
                    flight.waiters -= 1
                if (
                    flight.error is not None
                    and self.store.read_plan(obj.oid, index, lo, hi) is None
                    and key not in self._mem
                ):
                    raise flight.error
                return
        await trio.lowlevel.checkpoint()

    async def get_block(self, obj: CachedObject, index: int) -> bytes:
        """The verified bytes of one whole block (fetching it if needed)."""
        if obj.size is None:
            await self.wait_whole(obj)
        return bytes(
            await self.read_block(obj, index, 0, self._block_len(obj, index), reader=False)
        )

    # -- fetching ----------------------------------------------------------------------------
    def prefetch(
        self, obj: CachedObject, first: int, last: int, *, owner: Hashable | None = None
    ) -> None:
        """Start fetches so that blocks [first, last] become present. Never waits. Fetches
        started for an ``owner`` are cancelled by :meth:`abandon` unless a read waits on them."""
        if obj.whole_only or obj.size is None:
            self.start_whole(obj)
            return
        last = min(last, self.nblocks(obj) - 1)
        if last < first:
            return
        g_last = last * self.nseg + (self._block_len(obj, last) - 1) // self.seg
        self._start_segments(obj, first * self.nseg, g_last, owner)

    def batchable(self, obj: CachedObject) -> bool:
        """Whether :meth:`fetch_batch` can read ``obj`` ahead: a small file (at most
        BATCH_MAX_SIZE), of known size, of a provider with ``fetch_batch``, on a single host
        (the fleet tier's leases are taken block by block, through ``prefetch``)."""
        return (
            self.tier is None
            and not obj.whole_only
            and obj.size is not None
            and 0 < obj.size <= min(BATCH_MAX_SIZE, self.block_size)
            and getattr(obj.provider, "fetch_batch", None) is not None
        )

    async def fetch_batch(
        self, objs: Sequence[CachedObject], stop: threading.Event | None = None
    ) -> int:
        """Read small files ahead, whole, with one request each, all in one worker-thread job of
        their provider (``cp -r`` of a folder: the per-file tasks, thread jobs and hand-offs of
        :meth:`prefetch` cost more of the event loop than the bytes). Each file is then served
        and persisted as any fetched block. Best effort: a file that fails is left to its own
        read (which fetches it with retries); a read already waiting for it looks again.
        Returns how many files arrived. Every ``obj`` must be :meth:`batchable`, of one
        provider. ``stop`` set (the reader left the sequence): the GETs not started yet are not
        sent, the one under way finishes."""
        items: list[tuple[CachedObject, list[tuple[int, _Flight]], _Sink]] = []
        for obj in objs:
            assert obj.size is not None
            mask = self._full_mask(obj, 0)
            if self._needs(obj, 0, mask) != mask:
                continue  # present, in part or whole, or in flight: not ours to fetch
            f = _Flight(mask)
            self._flights.setdefault((obj.oid, 0), []).append(f)
            sink = _Sink(self, obj, 0, obj.size, in_thread=True, meta=self._take_meta(obj))
            items.append((obj, [(0, f)], sink))
        if not items:
            return 0
        total = sum(sink.end or 0 for _, _, sink in items)
        reserved = 0
        try:
            reserved = await self.budget.acquire(total)
            self.counters.fetches += len(items)
            provider = items[0][0].provider
            # what arrived is what the sinks got whole
            await provider.fetch_batch(  # type: ignore[attr-defined]
                [(obj.ref, sink) for obj, _, sink in items], stop
            )
        except Exception as exc:
            log.debug("read-ahead batch of %d files failed: %s", len(items), exc)
        finally:
            self.budget.release(reserved)
            arrived = 0
            for obj, flights, sink in items:
                if sink.received_bytes == sink.end:  # handed over whole: served and written
                    arrived += 1
                    continue
                self._fail(obj, flights, None)  # a waiting read fetches it itself
                if sink.meta is not None:  # never written: the next fetch writes it
                    obj.meta_saved = False
        return arrived

    def abandon(self, owner: Hashable) -> None:
        """``owner`` (a closed file handle) needs nothing more: cancel its fetches that no read
        waits on. What they received so far stays (whole segments are kept); the rest of their
        ranges is fetched again by whoever asks for it."""
        for fetch in self._owned.pop(owner, ()):
            if not any(f.waiters for _, f in fetch.flights):
                self.abandoned += 1
                log.debug(
                    "read-ahead of %s [%d:%d] abandoned: its reader closed",
                    fetch.obj.ref.key,
                    fetch.start,
                    fetch.end,
                )
                fetch.scope.cancel()
                # from now on nobody waits on its flights: a read that comes meanwhile starts
                # its own fetch of what is still missing
                self._fail(fetch.obj, fetch.flights, None)

    def prefetch_bytes(self, obj: CachedObject, offset: int, end: int) -> None:
        """Start fetches of just the segments covering [offset, end) (random reads)."""
        if obj.whole_only or obj.size is None:
            self.start_whole(obj)
            return
        end = min(end, obj.size)
        if end <= offset:
            return
        self._start_segments(obj, offset // self.seg, (end - 1) // self.seg)

    def _start_segments(
        self, obj: CachedObject, g0: int, g1: int, owner: Hashable | None = None
    ) -> None:
        """Fetch every segment in [g0, g1] neither present nor in flight, in runs of at most
        ``max_request`` bytes, one flight per block covered."""
        nseg = self.nseg
        limit = self.max_request_blocks * nseg
        g = g0
        while g <= g1:
            index, j = divmod(g, nseg)
            if not self._needs(obj, index, 1 << j):
                g += 1
                continue
            run_end = g
            while run_end + 1 <= g1 and run_end + 1 - g < limit:
                i2, j2 = divmod(run_end + 1, nseg)
                if not self._needs(obj, i2, 1 << j2):
                    break
                run_end += 1
            self._launch(obj, g, run_end, owner)
            g = run_end + 1

    def _launch(self, obj: CachedObject, g0: int, g1: int, owner: Hashable | None = None) -> None:
        """Mark segments [g0, g1] in flight (one flight per block) and spawn their fetch."""
        nseg = self.nseg
        flights: list[tuple[int, _Flight]] = []
        for index in range(g0 // nseg, g1 // nseg + 1):
            a = max(g0, index * nseg) - index * nseg
            b = min(g1, index * nseg + nseg - 1) - index * nseg
            f = _Flight(((1 << (b - a + 1)) - 1) << a)
            self._flights.setdefault((obj.oid, index), []).append(f)
            flights.append((index, f))
        start = g0 * self.seg
        assert obj.size is not None
        end = min(obj.size, (g1 + 1) * self.seg)
        fetch = _Fetch(obj, start, end, flights)
        if owner is not None:
            self._owned.setdefault(owner, set()).add(fetch)
        try:
            self._spawn(
                self._fetch_owned,
                obj,
                start,
                end,
                fetch,
                owner,
                name=f"fetch {obj.ref.key}[{start}:{end}]",
            )
        except Unavailable as exc:
            self._fail(obj, flights, exc)
            if owner is not None:
                self._owned.get(owner, set()).discard(fetch)
            raise

    async def _fetch_owned(
        self, obj: CachedObject, start: int, end: int, fetch: _Fetch, owner: Hashable | None
    ) -> None:
        try:
            with fetch.scope:
                await self._fetch_range(obj, start, end, fetch.flights)
        finally:
            owned = self._owned.get(owner) if owner is not None else None
            if owned is not None:
                owned.discard(fetch)
                if not owned:
                    del self._owned[owner]

    def _unit_mask(self, start: int, length: int) -> tuple[int, int]:
        j0 = (start % self.block_size) // self.seg
        n = (length + self.seg - 1) // self.seg
        return start // self.block_size, ((1 << n) - 1) << j0

    def _arrived(self, obj: CachedObject, start: int, data: bytearray) -> None:
        """A unit was received: a whole block is served from memory at once."""
        bs = self.block_size
        self.counters.fetched_bytes += len(data)
        self._queued[obj.oid] = self._queued.get(obj.oid, 0) + 1
        if not self._is_full_block(obj, start, len(data)):
            return  # a part of a block is served once it is on disk
        key = (obj.oid, start // bs)
        self._pending[key] = data
        self._remember(key, data)
        self._wake(obj, *self._unit_mask(start, len(data)))

    def _committed(
        self,
        obj: CachedObject,
        start: int,
        data: bytearray,
        crcs: array[int] | None,
        *,
        recorded: bool = False,
    ) -> None:
        """A unit is on disk (``crcs``), or could not be written (None): record it, wake.
        ``recorded``: a whole block whose record the writing thread wrote already."""
        bs = self.block_size
        index, mask = self._unit_mask(start, len(data))
        key = (obj.oid, index)
        if crcs is not None:
            meta = self.store.meta(obj.oid)
            pinned = obj.pinned or bool(meta and (meta.pinned or meta.one_shot))
            if obj.size is None:  # whole-object stream: this unit ends the block or the object
                block_len = (start % bs) + len(data)
            else:
                block_len = min(bs, obj.size - index * bs)
            self.store.commit(
                obj.oid,
                index,
                (start % bs) // self.seg,
                crcs,
                block_len,
                pinned=pinned,
                recorded=recorded and start % bs == 0 and len(data) == block_len,
            )
        else:
            self.counters.not_persisted += 1
        if self._pending.get(key) is data:
            del self._pending[key]
        left = self._queued.get(obj.oid, 1) - 1
        if left > 0:
            self._queued[obj.oid] = left
        else:
            self._queued.pop(obj.oid, None)
        written, self._written = self._written, trio.Event()
        written.set()
        self._wake(obj, index, mask)

    def _wake(self, obj: CachedObject, index: int, mask: int) -> None:
        key = (obj.oid, index)
        flights = self._flights.get(key)
        if not flights:
            return
        for f in [f for f in flights if f.mask & mask]:
            f.mask &= ~mask
            if not f.mask:
                flights.remove(f)
                f.event.set()
        if not flights:
            del self._flights[key]

    def _fail(
        self, obj: CachedObject, flights: list[tuple[int, _Flight]], exc: BaseException | None
    ) -> None:
        """End ``flights`` (``exc`` None: abandoned, their waiters look again)."""
        for index, f in flights:
            key = (obj.oid, index)
            lst = self._flights.get(key)
            if lst is not None and f in lst:
                lst.remove(f)
                if not lst:
                    del self._flights[key]
            if not f.event.is_set():
                f.error = exc
                f.event.set()

    # -- the fleet tier ------------------------------------------------------------------------
    def _bid(self, obj: CachedObject, index: int) -> BlockId:
        r = obj.ref
        return BlockId(r.provider, r.key, r.version, index, self.block_size)

    def _publish(self, obj: CachedObject, start: int, data: bytearray) -> None:
        """Any thread: share a full block just downloaded (ends this host's lease on it)."""
        assert self.tier is not None
        self.tier.publish(self._bid(obj, start // self.block_size), data)

    def _block_span(self, obj: CachedObject, index: int) -> tuple[int, int]:
        assert obj.size is not None
        bs = self.block_size
        return index * bs, min((index + 1) * bs, obj.size)

    async def _from_tier(self, obj: CachedObject, pos: int, end: int) -> tuple[int, bool]:
        """Serve [pos, end) from the tier, block by block, while it has the blocks (or another
        host is downloading them). Returns where the cloud must take over, and whether this
        host holds the lease of that block."""
        tier = self.tier
        assert tier is not None
        while pos < end and tier.usable():
            index = pos // self.block_size
            b0, b1 = self._block_span(obj, index)
            bid = self._bid(obj, index)
            data = await tier.get(bid, b1 - b0)
            if data is None:
                if pos != b0 or end < b1:
                    return pos, False  # a part of a block (a random read): the cloud, alone
                if await tier.lease(bid):
                    return pos, True
                self.counters.tier_waits += 1
                data = await tier.wait(bid, b1 - b0)
                if data is None:  # the other host did not publish in time: fetch it here
                    return pos, False
            self.counters.tier_blocks += 1
            sink = _Sink(self, obj, b0, b1, in_thread=False, meta=self._take_meta(obj))
            sink.publish = False
            await self._feed(sink, data)
            pos = b1
        return pos, False

    async def _lease_run(self, obj: CachedObject, pos: int, end: int, leased: list[int]) -> int:
        """After this host won the lease of the block at ``pos``: lease the blocks after it
        while no other host has them (each appended to ``leased`` as won: the caller releases
        them if anything fails); returns the end of the run to download. A run is at most
        LEASE_RUN blocks: its leases must not expire before its last block arrives."""
        assert self.tier is not None
        bs = self.block_size
        _, stop = self._block_span(obj, pos // bs)
        while stop < end and len(leased) < LEASE_RUN and self.tier.usable():
            index = stop // bs
            _, b1 = self._block_span(obj, index)
            if end < b1 or not await self.tier.lease(self._bid(obj, index)):
                break
            leased.append(index)
            stop = b1
        return stop

    async def _fetch_range(
        self, obj: CachedObject, start: int, end: int, flights: list[tuple[int, _Flight]]
    ) -> None:
        """Fetch [start, end): through the fleet tier when there is one, else the cloud."""
        tier = self.tier
        if tier is None or obj.size is None or not _strong(obj.ref.version):
            await self._fetch_cloud(obj, start, end, flights)
            return
        pos = start
        while pos < end:
            indexes: list[int] = []
            try:
                pos, leased = await self._from_tier(obj, pos, end)
                if pos >= end:
                    return
                if leased:
                    indexes.append(pos // self.block_size)
                    stop = await self._lease_run(obj, pos, end, indexes)
                elif tier.usable():  # this block from the cloud, then ask the tier again
                    stop = min(end, self._block_span(obj, pos // self.block_size)[1])
                else:
                    stop = end
            except BaseException as exc:
                for index in indexes:  # leases won before the failure: others may take them
                    tier.release(self._bid(obj, index))
                if not isinstance(exc, Exception):
                    raise
                # a bug in the tier's path: the cloud serves the rest
                log.exception("fleet tier: serving %s failed; reading from the cloud", obj.ref.key)
                await self._fetch_cloud(obj, pos, end, flights)
                return
            ok = False
            try:
                ok = await self._fetch_cloud(obj, pos, stop, flights)
            finally:
                if not ok:  # failed or cancelled: let another host try these blocks
                    for index in indexes:
                        tier.release(self._bid(obj, index))
            if not ok:
                return  # the waiting reads have their error
            pos = stop

    async def _fetch_cloud(
        self, obj: CachedObject, start: int, end: int, flights: list[tuple[int, _Flight]]
    ) -> bool:
        """Download [start, end) from the provider; False: it failed (``flights`` failed)."""
        t_req = trio.current_time()
        reserved = await self.budget.acquire(self.block_size)
        t_got = trio.current_time()
        fetch_range = getattr(obj.provider, "fetch_range", None)
        sink = _Sink(
            self, obj, start, end, in_thread=fetch_range is not None, meta=self._take_meta(obj)
        )
        try:
            self.counters.fetches += 1
            if fetch_range is not None:
                await fetch_range(obj.ref, start, end - start, sink)
            else:
                async with obj.provider.open_stream(obj.ref, start, end - start) as stream:
                    async for chunk in stream:
                        await self._feed(sink, chunk)
            if sink.received_bytes < end - start:
                raise ProtocolError(
                    f"short body: got {sink.received_bytes} of {end - start} bytes",
                    call="download",
                )
            log.debug(
                "fetched %s [%d:%d]: budget wait %.3fs, transfer %.3fs",
                obj.ref.key,
                start,
                end,
                t_got - t_req,
                trio.current_time() - t_got,
            )
            return True
        except Exception as exc:
            if isinstance(exc, ProviderError):
                log.warning("fetch of %s bytes %d-%d failed: %s", obj.ref.key, sink.pos, end, exc)
            else:  # a bug, not the network: keep the mount alive, fail the waiting reads
                log.exception(
                    "fetch of %s bytes %d-%d failed unexpectedly", obj.ref.key, start, end
                )
                exc = ProtocolError(f"fetch failed: {exc!r}", call="cache")
            self._fail(obj, flights, exc.with_traceback(None))
            with trio.CancelScope(shield=True):  # a cancel here must not keep the space
                await self._release_reserved(sink)
            return False
        except BaseException:
            self._fail(obj, flights, ProtocolError("fetch cancelled", call="cache"))
            with trio.CancelScope(shield=True):
                await self._release_reserved(sink)
            raise
        finally:
            self.budget.release(reserved)
            if sink.meta is not None and not sink.received_bytes:  # nothing to write it with
                obj.meta_saved = False

    async def _release_reserved(self, sink: _Sink) -> None:
        """After a failed fetch: the writer punches out what it reserved and never wrote (from
        the next block on: the current block's units before the cut are valid)."""
        if sink.end is None or sink.end - sink.fetch_start < PREALLOCATE:
            return
        bs = self.block_size
        start = -(-sink.pos // bs) * bs
        try:
            self._wq.put_nowait((sink, start, None, None))
        except queue.Full:
            await trio.to_thread.run_sync(self._wq.put, (sink, start, None, None))

    async def _feed(self, sink: _Sink, chunk: bytes) -> None:
        """Async mode: copy a chunk into the sink, writing finished units in a worker thread."""
        view = memoryview(chunk)
        while view:
            if sink.end is not None and sink.pos >= sink.end:
                raise ProtocolError("the server sent more bytes than asked for", call="download")
            buf = sink.buffer(sink.pos)
            n = min(len(buf), len(view))
            buf[:n] = view[:n]
            sink.received(sink.pos, n)
            view = view[n:]
            await self._write_ready(sink)

    async def _write_ready(self, sink: _Sink) -> None:
        while sink.ready:
            start, data = sink.ready.pop(0)
            await self._queue_write(sink, start, data)

    # -- whole-object sources ----------------------------------------------------------------
    def start_whole(self, obj: CachedObject, *, refetch: bool = False) -> _WholeFetch:
        """The download of the whole object: running, finished, or started now.

        ``refetch``: a finished successful download is started again (a block went missing:
        evicted, cleared, or dropped as corrupt). A one-shot object is never fetched again once
        its bytes started to arrive: then its failure is final.
        """
        wf = self._whole.get(obj.oid)
        if wf is not None and not wf.done.is_set():
            return wf  # running: join it
        if wf is not None and wf.error is None and not refetch:
            return wf
        if wf is not None and obj.provider.capabilities.one_shot:
            if wf.error is None:  # done, but a block is gone: the source cannot give it again
                wf = _WholeFetch(consumed=True)
                wf.error = OneShotConsumed(
                    f"{obj.ref.key}: part of it is no longer cached, and it can be downloaded "
                    "only once",
                    call="cache",
                )
                wf.done.set()
                self._whole[obj.oid] = wf
                return wf
            if wf.consumed:
                return wf
        wf = _WholeFetch()
        self._whole[obj.oid] = wf
        try:
            self._spawn(self._fetch_whole, obj, wf, name=f"fetch-whole {obj.ref.key}")
        except Unavailable as exc:
            del self._whole[obj.oid]
            wf.error = exc
            wf.done.set()
            raise
        return wf

    async def wait_whole(self, obj: CachedObject) -> int:
        """Make sure the whole object is cached; returns its size."""
        if obj.size is not None and self.is_complete(obj):
            n = self.nblocks(obj)
            if all(self._has(obj, i) for i in range(n)):
                return obj.size
        wf = self.start_whole(obj)
        await wf.done.wait()
        if wf.error is not None:
            raise wf.error
        assert obj.size is not None
        return obj.size

    async def _whole_from_tier(self, obj: CachedObject) -> tuple[bytes | None, bool]:
        """Before a whole download: the bytes another host published (None: download here),
        and whether this host holds the fleet's claim on the download."""
        tier = self.tier
        if tier is None or not tier.usable() or not _strong(obj.ref.version):
            return None, False
        one_shot = obj.provider.capabilities.one_shot
        wid = WholeId(obj.ref.provider, obj.ref.key, obj.ref.version)
        data = await tier.get_whole(wid)
        if data is not None:
            return data, False
        if await tier.claim_whole(wid, one_shot=one_shot):
            return None, True
        self.counters.tier_waits += 1
        data = await tier.wait_whole(wid)
        if data is None and one_shot:
            raise OneShotConsumed(
                f"{obj.ref.key}: another host of the fleet downloaded it (it can be downloaded "
                "only once) and did not share it",
                call="fleet",
            )
        # None: the other host gave up; if this host took its claim over, it shares the result
        return data, data is None and tier.holds_whole(wid)

    async def _publish_whole(self, obj: CachedObject, claimed: bool, ok: bool) -> None:
        """After a whole download this host claimed: share it complete, or end the claim."""
        tier = self.tier
        if tier is None or not claimed:
            return
        wid = WholeId(obj.ref.provider, obj.ref.key, obj.ref.version)
        try:
            if ok and obj.size is not None and obj.size <= tier.max_whole_bytes:
                data = await self._read_object(obj.oid, obj.size)
                if data is not None:
                    await tier.publish_whole(wid, data)
                    return
            await tier.release_whole(wid)
        except Exception:  # the tier's own errors never reach a reader
            log.exception("fleet tier: sharing %s failed", obj.ref.key)

    async def _read_object(self, oid: str, size: int) -> bytes | None:
        """A complete object's bytes from the store, every segment checked (None: a block is
        missing or bad). The records are read here, the data in a worker thread."""
        store, bs = self.store, self.block_size
        parts = []
        for index in range(math.ceil(size / bs)):
            plan = store.read_plan(oid, index, 0, min(bs, size - index * bs))
            snap = store.record_snapshot(oid, index)
            if plan is None or snap is None:
                return None
            parts.append((index, plan, snap))

        def read() -> bytes | None:
            out = bytearray()
            for index, plan, snap in parts:
                data, bad = store.read_checked(oid, index, plan, snap)
                if data is None or bad >= 0:
                    return None
                out += data
            return bytes(out) if len(out) == size else None

        return await trio.to_thread.run_sync(read)

    async def _fetch_whole(self, obj: CachedObject, wf: _WholeFetch) -> None:
        one_shot = obj.provider.capabilities.one_shot
        sink = _Sink(self, obj, 0, None, in_thread=False, meta=self._take_meta(obj))
        total = 0
        claimed = ok = False
        try:
            shared, claimed = await self._whole_from_tier(obj)
            if shared is not None:
                self.counters.tier_blocks += 1
                sink.publish = False
                for pos in range(0, len(shared), self.block_size):
                    chunk = shared[pos : pos + self.block_size]
                    total += len(chunk)
                    await self._feed(sink, chunk)
            else:
                self.counters.fetches += 1
                async with obj.provider.open_stream(obj.ref) as stream:
                    async for chunk in stream:
                        wf.consumed = one_shot
                        total += len(chunk)
                        await self._feed(sink, chunk)
            tail = sink.finish()
            if tail is not None:
                sink.ready.append(tail)
                await self._write_ready(sink)
            if obj.ref.size is not None and total != obj.ref.size:
                raise ProtocolError(f"size {total} differs from listed {obj.ref.size}")
            obj.size = total
            await self.flush(obj.oid)  # complete only once every block is on disk
            self._save_meta(obj, complete=True)
            ok = True
            log.info("cached %s whole: %d bytes", obj.ref.key, total)
        except Exception as exc:
            if not isinstance(exc, ProviderError):
                log.exception("downloading %s failed unexpectedly", obj.ref.key)
                exc = ProtocolError(f"download failed: {exc!r}", call="cache")
            if isinstance(exc, OneShotConsumed):
                wf.consumed = True
            # never keep a partial whole object: it must not be served as if complete
            with trio.CancelScope(shield=True):
                await self.flush(obj.oid)
            for i in range(math.ceil(total / self.block_size) + 1):
                self.drop_block(obj.oid, i)
            wf.error = exc.with_traceback(None)
        except BaseException:
            wf.error = ProtocolError("download cancelled", call="cache")
            raise
        finally:
            if sink.meta is not None and not sink.received_bytes:
                obj.meta_saved = False
            wf.done.set()
            with trio.CancelScope(shield=True):
                with trio.move_on_after(30):  # bounded: the tier's calls are
                    await self._publish_whole(obj, claimed, ok)

    # -- operator controls -------------------------------------------------------------------
    def set_pinned(self, obj: CachedObject, pinned: bool) -> None:
        if obj.provider.capabilities.one_shot:
            return  # always pinned
        if not obj.meta_saved:
            self._save_meta(obj)
        obj.pinned = pinned
        self.store.set_pinned(obj.oid, pinned)

    async def drop_object(self, obj: CachedObject) -> int:
        """Delete an object's blocks (fetches in flight may still land theirs afterwards)."""
        await trio.lowlevel.checkpoint()
        for key in [k for k in self._mem if k[0] == obj.oid]:
            self._mem_bytes -= len(self._mem.pop(key))
        return self.store.drop_object(obj.oid)

    def drop_block(self, oid: str, index: int) -> None:
        key = (oid, index)
        dropped = self._mem.pop(key, None)
        if dropped is not None:
            self._mem_bytes -= len(dropped)
        self.store.drop_block(oid, index)

    def forget_memory(self) -> None:
        self._mem.clear()
        self._mem_bytes = 0

    async def fetch_all(self, obj: CachedObject) -> None:
        """Make every block of the object present (prefetch / pin)."""
        if obj.whole_only or obj.size is None:
            await self.wait_whole(obj)
            return
        n = self.nblocks(obj)
        step = self.max_request_blocks
        for first in range(0, n, step):
            last = min(n, first + step) - 1
            self.prefetch(obj, first, last)
            for i in range(first, last + 1):
                await self.read_block(obj, i, 0, self._block_len(obj, i))

    # -- stats -------------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        out = dict(self.store.stats())
        out.update(
            hits=self.counters.hits,
            misses=self.counters.misses,
            fetches=self.counters.fetches,
            fetched_bytes=self.counters.fetched_bytes,
            not_persisted=self.counters.not_persisted,
            abandoned=self.abandoned,
            memory_bytes=self._mem_bytes,
            inflight_budget_used=self.budget.used,
        )
        return out
