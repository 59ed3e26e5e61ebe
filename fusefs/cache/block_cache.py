"""Block cache: memory LRU over the on-disk BlockStore, single-flight fetches, whole-object fetches.

Concurrency rules (trio: code between two awaits runs atomically):
- A block is fetched by at most one task. ``_inflight[(oid, i)]`` holds the event its readers wait
  on; it is created, and the block marked in flight, without an await in between.
- Fetch tasks run in the cache's own nursery, not in the FUSE request that asked for them: a
  request that times out or is interrupted does not cancel a download others wait on.
- Bytes in flight are bounded by one global ``ByteBudget``; memory-resident blocks by ``_mem_cap``.
  Neither depends on the number of open files.
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from fusefs.cache.store import BlockKey, BlockStore, ObjectMeta, object_id
from fusefs.providers.base import ObjectRef, OneShotConsumed, ProtocolError, ProviderError

if TYPE_CHECKING:
    from fusefs.providers.base import Provider

log = logging.getLogger(__name__)

# Blocks are written to disk by this many worker threads, off the event loop. Measured on the
# 2-core dev machine (cold 1 GiB read over loopback): 1 writer 367 MB/s, 2 writers 299 MB/s, the
# writers' share of the GIL and of the CPU slowing the event loop more than they gain.
WRITERS = 1
WRITE_BATCH = 8  # blocks per thread hand-off; also the cap's overshoot bound


class _Assembler:
    """Cuts a stream of chunks into blocks with one copy per byte."""

    def __init__(self, block_size: int) -> None:
        self.block_size = block_size
        self.pieces: list[bytes | memoryview] = []
        self.have = 0

    def add(self, chunk: bytes) -> None:
        self.pieces.append(chunk)
        self.have += len(chunk)

    def take(self, n: int) -> bytes:
        """Remove and return the first ``n`` bytes (``n <= have``)."""
        out: list[bytes | memoryview] = []
        need = n
        while need:
            head = self.pieces[0]
            if len(head) <= need:
                out.append(head)
                need -= len(head)
                self.pieces.pop(0)
            else:
                mv = memoryview(head)
                out.append(mv[:need])
                self.pieces[0] = mv[need:]
                need = 0
        self.have -= n
        return b"".join(out)


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

    @property
    def whole_only(self) -> bool:
        return not self.provider.capabilities.ranged_reads


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
    not_persisted: int = 0  # blocks served but not written: the disk was behind


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
    ) -> None:
        self.block_size = block_size
        self.store = BlockStore(root, block_size, max_bytes, min_free_ratio)
        self.max_request_blocks = max(1, max_request // block_size)
        self._mem: OrderedDict[BlockKey, bytes] = OrderedDict()
        self._mem_bytes = 0
        self._mem_cap = max(memory_budget // 2, 4 * block_size)
        self.budget = ByteBudget(max(memory_budget // 2, 2 * block_size))
        self._inflight: dict[BlockKey, trio.Event] = {}
        self._failed: dict[BlockKey, BaseException] = {}
        self._whole: dict[str, _WholeFetch] = {}
        self._objects: dict[str, CachedObject] = {}
        # blocks already served from memory whose file is still being written, in a thread
        self._pending: dict[BlockKey, bytes] = {}
        self._discarded: set[str] = set()  # objects whose queued writes must be dropped
        self._written = trio.Event()  # set (and replaced) after every written batch
        self._write_send, self._write_recv = trio.open_memory_channel[
            tuple["CachedObject", int, bytes]
        ](32)
        self._nursery: trio.Nursery | None = None
        self.counters = CacheCounters()

    # -- lifecycle ---------------------------------------------------------------------------
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Scan the store, then host the fetch tasks until cancelled."""
        await trio.to_thread.run_sync(self.store.scan)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for i in range(WRITERS):
                    nursery.start_soon(self._writer, name=f"cache-writer-{i}")
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._drain_writes()

    def _drain_writes(self) -> None:
        """At shutdown: write what is still queued, so an unmount keeps every fetched block."""
        while True:
            try:
                obj, index, data = self._write_recv.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                return
            if obj.oid in self._discarded:
                continue
            try:
                self.store.store(obj.oid, index, data, pinned=obj.pinned)
            except OSError as exc:
                log.warning("could not write cache block %s/%d: %s", obj.ref.key, index, exc)

    async def _writer(self) -> None:
        """Writes queued blocks to disk in a worker thread (``WRITERS`` of these run at once).

        Blocks are taken in batches, one thread hand-off per batch: a hand-off costs about as
        much as writing a block. The channel is bounded: when the disk is slower than the
        network, fetches wait on it, which bounds the memory held by blocks not yet written.
        """
        while True:
            try:
                batch = [await self._write_recv.receive()]
            except (trio.EndOfChannel, trio.ClosedResourceError):
                return
            while len(batch) < WRITE_BATCH:
                try:
                    batch.append(self._write_recv.receive_nowait())
                except trio.WouldBlock:
                    break
            todo = [item for item in batch if item[0].oid not in self._discarded]
            try:
                results = await trio.to_thread.run_sync(self._write_batch, todo)
                for (obj, index, _data), result in zip(todo, results, strict=True):
                    if isinstance(result, OSError):
                        log.warning(
                            "could not write cache block %s/%d: %s", obj.ref.key, index, result
                        )
                    elif obj.oid not in self._discarded:
                        self.store.commit(obj.oid, index, *result, pinned=obj.pinned)
            except Exception:  # keep writing: a lost block is only a cache miss later
                log.exception("cache writer failed on a batch of %d blocks", len(batch))
            finally:
                for obj, index, data in batch:
                    key = (obj.oid, index)
                    if self._pending.get(key) is data:
                        del self._pending[key]
                written, self._written = self._written, trio.Event()
                written.set()

    def _write_batch(
        self, batch: list[tuple[CachedObject, int, bytes]]
    ) -> list[tuple[int, int] | OSError]:
        """In a worker thread: write each block, collecting errors instead of raising."""
        out: list[tuple[int, int] | OSError] = []
        for obj, index, data in batch:
            try:
                out.append(self.store.write_block(obj.oid, index, data))
            except OSError as exc:
                out.append(exc)
        return out

    async def flush(self, oid: str) -> None:
        """Wait until every queued block of an object is on disk."""
        while any(k[0] == oid for k in self._pending):
            await self._written.wait()

    def _spawn(self, fn: Callable[..., object], *args: object, name: str) -> None:
        assert self._nursery is not None, "BlockCache.run() is not running"
        self._nursery.start_soon(fn, *args, name=name)  # type: ignore[arg-type]

    # -- objects -----------------------------------------------------------------------------
    def object(self, provider: Provider, ref: ObjectRef) -> CachedObject:
        """The cache's view of one object version (in memory; nothing is written here)."""
        oid = object_id(ref.provider, ref.key, ref.version)
        obj = self._objects.get(oid)
        if obj is None:
            caps = provider.capabilities
            meta = self.store.meta(oid)
            size = ref.size if ref.size is not None else (meta.size if meta else None)
            pinned = caps.one_shot or bool(meta and meta.pinned)
            obj = CachedObject(provider, ref, oid, size, pinned, meta_saved=meta is not None)
            self._objects[oid] = obj
        return obj

    def _save_meta(self, obj: CachedObject, *, complete: bool = False) -> None:
        meta = ObjectMeta(
            obj.ref.provider,
            obj.ref.key,
            obj.ref.version,
            obj.size,
            obj.pinned,
            complete,
            obj.provider.capabilities.one_shot,
        )
        self.store.save_meta(obj.oid, meta)
        obj.meta_saved = True

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
        if obj.size is None:
            return 0
        n = self.nblocks(obj)
        have = sum(1 for i in range(n) if self._has(obj, i))
        if have == n:
            return obj.size
        return min(obj.size, have * self.block_size)

    def nblocks(self, obj: CachedObject) -> int:
        assert obj.size is not None
        return math.ceil(obj.size / self.block_size)

    # -- block access ------------------------------------------------------------------------
    def _has(self, obj: CachedObject, index: int) -> bool:
        key = (obj.oid, index)
        return key in self._mem or key in self._pending or self.store.has(obj.oid, index)

    def _remember(self, key: BlockKey, data: bytes) -> None:
        old = self._mem.pop(key, None)
        if old is not None:
            self._mem_bytes -= len(old)
        self._mem[key] = data
        self._mem_bytes += len(data)
        while self._mem_bytes > self._mem_cap and self._mem:
            _, dropped = self._mem.popitem(last=False)
            self._mem_bytes -= len(dropped)

    def _peek(self, obj: CachedObject, index: int) -> bytes | None:
        key = (obj.oid, index)
        data = self._mem.get(key)
        if data is not None:
            self._mem.move_to_end(key)
            return data
        data = self._pending.get(key)
        if data is not None:
            return data
        if not self.store.has(obj.oid, index):
            return None
        data = self.store.load(obj.oid, index)
        if data is None:
            return None
        self._remember(key, data)
        return data

    async def get_block(self, obj: CachedObject, index: int) -> bytes:
        """The verified bytes of one block, fetching it (alone) if no one else is."""
        key = (obj.oid, index)
        for _attempt in range(3):
            data = self._peek(obj, index)
            if data is not None:
                self.counters.hits += 1
                return data
            if obj.whole_only:  # no Range: a missing block means fetching the object again
                self.counters.misses += 1
                wf = self.start_whole(obj, refetch=True)
                await wf.done.wait()
                if wf.error is not None:
                    raise wf.error
                continue
            self.counters.misses += 1  # not in memory or on disk: wait for the network
            ev = self._inflight.get(key)
            if ev is None:
                self.prefetch(obj, index, index)
                ev = self._inflight[key]
            await ev.wait()
            data = self._mem.get(key)
            if data is not None:
                return data
            exc = self._failed.pop(key, None)
            if exc is not None:
                raise exc
        raise ProtocolError(f"block {index} of {obj.ref.key} vanished while being read")

    def prefetch(self, obj: CachedObject, first: int, last: int, *, persist: bool = False) -> None:
        """Start fetches so that blocks [first, last] become present. Never waits."""
        if obj.whole_only or obj.size is None:
            self.start_whole(obj)
            return
        last = min(last, self.nblocks(obj) - 1)
        i = first
        while i <= last:
            if (obj.oid, i) in self._inflight or self._has(obj, i):
                i += 1
                continue
            run_end = i
            while (
                run_end + 1 <= last
                and run_end + 1 - i < self.max_request_blocks
                and (obj.oid, run_end + 1) not in self._inflight
                and not self._has(obj, run_end + 1)
            ):
                run_end += 1
            for j in range(i, run_end + 1):
                self._inflight[(obj.oid, j)] = trio.Event()
                self._failed.pop((obj.oid, j), None)
            self._spawn(
                self._fetch_range,
                obj,
                i,
                run_end,
                persist,
                name=f"fetch {obj.ref.key}[{i}:{run_end}]",
            )
            i = run_end + 1

    def first_missing(self, obj: CachedObject, first: int, last: int) -> int | None:
        for i in range(first, last + 1):
            if (obj.oid, i) not in self._inflight and not self._has(obj, i):
                return i
        return None

    async def _finish_block(
        self, obj: CachedObject, index: int, data: bytes, *, persist: bool = True
    ) -> None:
        """Serve a downloaded block at once from memory; queue it for the disk.

        Reads never wait for the disk: when the write queue is full (the network outruns the
        disk or the CPU), a block of an ordinary read is served but not persisted. Pinned and
        one-shot objects, whole-object downloads and prefetches (``persist``) wait instead.
        """
        key = (obj.oid, index)
        if not obj.meta_saved:
            self._save_meta(obj)
        self._remember(key, data)
        self._pending[key] = data
        ev = self._inflight.pop(key, None)
        if ev is not None:
            ev.set()
        item = (obj, index, data)
        if persist or obj.pinned:
            await self._write_send.send(item)
            return
        try:
            self._write_send.send_nowait(item)
        except trio.WouldBlock:
            del self._pending[key]
            self.counters.not_persisted += 1

    def _fail_blocks(self, obj: CachedObject, first: int, last: int, exc: BaseException) -> None:
        for j in range(first, last + 1):
            key = (obj.oid, j)
            ev = self._inflight.pop(key, None)
            if ev is not None:
                self._failed[key] = exc
                ev.set()

    async def _fetch_range(self, obj: CachedObject, first: int, last: int, persist: bool) -> None:
        assert obj.size is not None
        bs = self.block_size
        offset = first * bs
        length = min(obj.size, (last + 1) * bs) - offset
        t_req = trio.current_time()
        reserved = await self.budget.acquire(length)
        t_got = trio.current_time()
        index = first
        try:
            self.counters.fetches += 1
            asm = _Assembler(bs)
            async with obj.provider.open_stream(obj.ref, offset, length) as stream:
                async for chunk in stream:
                    self.counters.fetched_bytes += len(chunk)
                    asm.add(chunk)
                    while index <= last:
                        want = min(bs, obj.size - index * bs)
                        if asm.have < want:
                            break
                        await self._finish_block(obj, index, asm.take(want), persist=persist)
                        index += 1
            if index <= last:
                raise ProtocolError(
                    f"short body: got {(index - first) * bs + asm.have} of {length} bytes",
                    call="download",
                )
            log.debug(
                "fetched %s [%d:%d] %d bytes: budget wait %.3fs, transfer %.3fs",
                obj.ref.key,
                first,
                last,
                length,
                t_got - t_req,
                trio.current_time() - t_got,
            )
        except Exception as exc:
            if isinstance(exc, ProviderError):
                log.warning("fetch of %s blocks %d-%d failed: %s", obj.ref.key, index, last, exc)
            else:  # a bug, not the network: keep the mount alive, fail the waiting reads
                log.exception(
                    "fetch of %s blocks %d-%d failed unexpectedly", obj.ref.key, index, last
                )
                exc = ProtocolError(f"fetch failed: {exc!r}", call="cache")
            self._fail_blocks(obj, index, last, exc.with_traceback(None))
        except BaseException:
            self._fail_blocks(obj, index, last, ProtocolError("fetch cancelled", call="cache"))
            raise
        finally:
            self.budget.release(reserved)

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
        self._spawn(self._fetch_whole, obj, wf, name=f"fetch-whole {obj.ref.key}")
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

    async def _fetch_whole(self, obj: CachedObject, wf: _WholeFetch) -> None:
        bs = self.block_size
        one_shot = obj.provider.capabilities.one_shot
        index = 0
        total = 0
        asm = _Assembler(bs)
        try:
            self.counters.fetches += 1
            async with obj.provider.open_stream(obj.ref) as stream:
                async for chunk in stream:
                    wf.consumed = one_shot
                    total += len(chunk)
                    self.counters.fetched_bytes += len(chunk)
                    asm.add(chunk)
                    while asm.have >= bs:
                        await self._finish_block(obj, index, asm.take(bs), persist=True)
                        index += 1
            if asm.have:
                await self._finish_block(obj, index, asm.take(asm.have), persist=True)
                index += 1
            if obj.ref.size is not None and total != obj.ref.size:
                raise ProtocolError(f"size {total} differs from listed {obj.ref.size}")
            obj.size = total
            await self.flush(obj.oid)
            self._save_meta(obj, complete=True)
            log.info("cached %s whole: %d bytes", obj.ref.key, total)
        except Exception as exc:
            if not isinstance(exc, ProviderError):
                log.exception("downloading %s failed unexpectedly", obj.ref.key)
                exc = ProtocolError(f"download failed: {exc!r}", call="cache")
            if isinstance(exc, OneShotConsumed):
                wf.consumed = True
            # never keep a partial whole object: it must not be served as if complete
            await self._discard_blocks(obj, range(index))
            wf.error = exc.with_traceback(None)
        except BaseException:
            wf.error = ProtocolError("download cancelled", call="cache")
            raise
        finally:
            wf.done.set()

    async def _discard_blocks(self, obj: CachedObject, indices: range) -> None:
        self._discarded.add(obj.oid)
        try:
            await self.flush(obj.oid)
        finally:
            self._discarded.discard(obj.oid)
        for i in indices:
            self.drop_block(obj.oid, i)

    # -- operator controls -------------------------------------------------------------------
    def set_pinned(self, obj: CachedObject, pinned: bool) -> None:
        if obj.provider.capabilities.one_shot:
            return  # always pinned
        if not obj.meta_saved:
            self._save_meta(obj)
        obj.pinned = pinned
        self.store.set_pinned(obj.oid, pinned)

    async def drop_object(self, obj: CachedObject) -> int:
        """Delete an object's blocks, after its queued writes (which are dropped)."""
        self._discarded.add(obj.oid)
        try:
            await self.flush(obj.oid)
            for key in [k for k in self._mem if k[0] == obj.oid]:
                self._mem_bytes -= len(self._mem.pop(key))
            return self.store.drop_object(obj.oid)
        finally:
            self._discarded.discard(obj.oid)

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
            self.prefetch(obj, first, last, persist=True)
            for i in range(first, last + 1):
                await self.get_block(obj, i)

    # -- stats -------------------------------------------------------------------------------
    def statistics(self) -> dict[str, int]:
        out = dict(self.store.stats())
        out.update(
            hits=self.counters.hits,
            misses=self.counters.misses,
            fetches=self.counters.fetches,
            fetched_bytes=self.counters.fetched_bytes,
            not_persisted=self.counters.not_persisted,
            memory_bytes=self._mem_bytes,
            inflight_budget_used=self.budget.used,
        )
        return out
