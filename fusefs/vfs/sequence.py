"""Read-ahead across the files of one folder: ``cp -r``, ``tar``, ``rsync``, ``grep -r``.

Tools that copy a tree open the files of a folder one after another, each once, in the order of
the folder's listing. Each small file then costs a download link and a GET in series (one round
trip each: 50-200 ms against a real cloud). This module sees such a sequence in the opens and
downloads the next small files of the folder before they are opened, several at a time:

- **Detection.** For every folder it keeps two orders of its files: the readdir order (names,
  as ``readdir`` returns them) and the inode order (the provider's listing order; GNU ``cp``
  sorts a folder by inode number before copying it). An open at the position right after the
  previous open, in either order, extends a *run*; anything else ends it. A run of ``MIN_RUN``
  opens starts the read-ahead; the first open that breaks it stops it (files queued but not yet
  started are dropped). Random access therefore never prefetches more than nothing: opens out
  of order never make a run.
- **Window.** It starts at the provider's concurrency and doubles with every open of the
  sequence, up to ``MAX_WINDOW`` files and ``max_bytes_ahead`` bytes beyond the file just opened,
  so prefetched blocks stay within the cache's memory budget until they are read.
- **What.** Only files of at most ``SMALL_FILE_BLOCKS`` cache blocks are fetched, whole, with
  ``BlockCache.prefetch`` (one ranged request each); bigger files are skipped (their own
  per-handle read-ahead serves them) and do not break the sequence. Whole-object and one-shot
  providers (IoTDA, ROMA) are left alone.
- **Batches.** Files small enough for ``BlockCache.batchable`` are fetched ``BATCH_FILES`` at a
  time in one job of their provider (``BlockCache.fetch_batch``): one task and one thread job
  per batch rather than per file. A batch starts when full, when its first file is near the
  reader, or at the end of the folder; when the sequence stops, its batches send no further
  GET (a refreshed listing keeps them going).
- **Concurrency.** At most ``Capabilities.max_concurrency`` read-ahead downloads per provider
  at once (a ``trio.CapacityLimiter`` per provider, FIFO, so files arrive in sequence order).
- **Links.** Providers with an optional ``prepare_reads(refs)`` (KooDrive: presigned links, ≤100
  per call) are told about the next ``PREPARE_AHEAD`` files of the sequence, so link calls run in
  batches ahead of the downloads instead of one per file.

A failed read-ahead is only logged: the file's own read fetches again when it comes (with the
provider's retries), so a fault during read-ahead never fails a read that would not have failed
anyway, and a byte is only ever served from a verified block.

Tasks run as trio system tasks (nothing to start in ``mount.py``); every one catches its errors.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import trio

from fusefs.providers.base import EntryKind, ObjectRef, ProviderError

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache, CachedObject
    from fusefs.providers.base import Provider
    from fusefs.vfs.tree import InodeNo, Node, VirtualTree

log = logging.getLogger(__name__)

MIN_RUN = 3  # consecutive opens (positions k, k+1, k+2) before any read-ahead
MAX_WINDOW = 256  # files ahead of the one just opened
SMALL_FILE_BLOCKS = 4  # bigger files keep the per-handle read-ahead only
MAX_BYTES_AHEAD = 32 << 20  # bytes of files queued beyond the one just opened
PREPARE_AHEAD = 200  # files whose links (or the like) are asked for ahead of the downloads
PREPARE_STEP = 100  # ... in groups of this many positions (KooDrive: links per call)
MAX_FOLDERS = 32  # folders whose orders are kept (LRU)
BATCH_FILES = 8  # small files read ahead in one job of their provider (BlockCache.fetch_batch)


class _Order:
    """One order of a folder's files and the run of opens that follows it."""

    __slots__ = ("inos", "kind", "last", "pos", "run")

    def __init__(self, kind: str, inos: list[InodeNo]) -> None:
        self.kind = kind  # "name" or "ino"
        self.inos = inos
        self.pos = {ino: i for i, ino in enumerate(inos)}
        self.last = -2  # position of the previous open
        self.run = 0  # consecutive opens ending at ``last``


@dataclass(eq=False)
class _Folder:
    ino: InodeNo
    listing: object  # identity of the parent's children dict the orders were built from
    orders: list[_Order]
    active: _Order | None = None
    generation: int = 0  # bumped when a sequence stops: its queued fetches give up
    window: int = 0
    ahead_to: int = -1  # last position queued (or skipped) in the active order
    queued: deque[tuple[int, int]] = field(default_factory=deque)  # (position, bytes) ahead
    bytes_ahead: int = 0
    prepared_to: int = -1
    preparing: bool = False
    # small files queued, not yet started: (position, object), fetched BATCH_FILES at a time
    batch: list[tuple[int, CachedObject]] = field(default_factory=list)
    # batches under way: set when the sequence stops (their GETs not sent yet are dropped)
    running: set[threading.Event] = field(default_factory=set)


@dataclass
class ReadAheadCounters:
    sequences: int = 0  # runs that started a read-ahead
    queued: int = 0  # files queued for read-ahead
    fetched: int = 0  # files whose prefetch this module started and saw complete
    skipped: int = 0  # queued files opened by the reader before their turn came
    failed: int = 0
    prepared: int = 0  # prepare_reads calls
    active: int = 0  # read-ahead downloads running now
    max_active: int = 0  # the most at once


class FolderReadAhead:
    """Cross-file read-ahead for folders read in order; see the module docstring."""

    def __init__(
        self,
        tree: VirtualTree,
        cache: BlockCache,
        *,
        max_bytes_ahead: int = MAX_BYTES_AHEAD,
        max_window: int = MAX_WINDOW,
        small_file_blocks: int = SMALL_FILE_BLOCKS,
    ) -> None:
        self.tree = tree
        self.cache = cache
        self.max_bytes_ahead = max_bytes_ahead
        self.max_window = max_window
        self.small_max = min(small_file_blocks * cache.block_size, max_bytes_ahead // 4)
        self._folders: OrderedDict[InodeNo, _Folder] = OrderedDict()
        self._limiters: dict[str, trio.CapacityLimiter] = {}
        self.counters = ReadAheadCounters()

    # -- the hook ----------------------------------------------------------------------------
    def opened(self, node: Node) -> None:
        """``open`` of a file: note it, start or stop read-ahead. Never raises, never waits."""
        try:
            self._opened(node)
        except Exception:  # read-ahead is an optimisation: it must never fail an open
            log.exception("folder read-ahead failed on open of inode %d", node.ino)

    def limiter(self, provider: Provider) -> trio.CapacityLimiter:
        """The provider's read-ahead download slots (``Capabilities.max_concurrency``).

        Held by a read-ahead task while the cache downloads its file. Not for use *inside* the
        cache's own fetch: a holder waits for that fetch, so sharing it there would deadlock.
        """
        lim = self._limiters.get(provider.name)
        if lim is None:
            lim = trio.CapacityLimiter(max(1, provider.capabilities.max_concurrency))
            self._limiters[provider.name] = lim
        return lim

    def statistics(self) -> dict[str, int]:
        c = self.counters
        return {
            "readahead_sequences": c.sequences,
            "readahead_queued": c.queued,
            "readahead_fetched": c.fetched,
            "readahead_skipped": c.skipped,
            "readahead_failed": c.failed,
            "readahead_prepared": c.prepared,
            "readahead_max_active": c.max_active,
        }

    # -- detection ---------------------------------------------------------------------------
    def _opened(self, node: Node) -> None:
        provider = node.provider
        if node.is_dir or provider is None or node.entry is None:
            return
        caps = provider.capabilities
        if not caps.ranged_reads or caps.one_shot:
            return
        parent = self.tree.nodes.get(node.parent)
        if parent is None or parent.children is None or parent.ino == node.ino:
            return
        folder = self._folder(parent)
        best: _Order | None = None
        for order in folder.orders:
            p = order.pos.get(node.ino)
            if p is None:
                order.last, order.run = -2, 0
                continue
            if p != order.last:  # the same file opened again changes nothing
                order.run = order.run + 1 if p == order.last + 1 else 1
                order.last = p
            if order.run >= MIN_RUN and (best is None or order is folder.active):
                best = order
        if best is None:
            if folder.active is not None:
                self._stop(folder)
            return
        if folder.active is not best:
            self._stop(folder)
            folder.active = best
            folder.window = max(2, caps.max_concurrency)
            folder.ahead_to = best.last
            self.counters.sequences += 1
            log.debug(
                "read-ahead: %s read in order from position %d",
                self.tree.describe(parent),
                best.last,
            )
        else:
            folder.window = min(folder.window * 2, self.max_window)
        self._advance(folder, provider)

    def _folder(self, parent: Node) -> _Folder:
        folder = self._folders.get(parent.ino)
        if folder is not None and folder.listing is parent.children:
            self._folders.move_to_end(parent.ino)
            return folder
        old = folder
        if old is not None:  # a new listing: positions changed; batches under way go on
            self._stop(old, batches=False)
        assert parent.children is not None
        nodes = self.tree.nodes
        by_name = [
            ino
            for name in parent.order
            if (ino := parent.children.get(name)) is not None
            and (child := nodes.get(ino)) is not None
            and child.kind is EntryKind.FILE
        ]
        by_ino = sorted(by_name)
        orders = [_Order("name", by_name)]
        if by_ino != by_name:
            orders.append(_Order("ino", by_ino))
        if old is not None:  # the listing was refreshed mid-copy: the run goes on
            for new in orders:
                prev = next((o for o in old.orders if o.kind == new.kind), None)
                if prev is not None and 0 <= prev.last < len(prev.inos):
                    at = new.pos.get(prev.inos[prev.last])
                    if at is not None:
                        new.last, new.run = at, prev.run
        folder = _Folder(parent.ino, parent.children, orders)
        if old is not None:
            folder.running = old.running  # shared: each batch leaves it when done
        self._folders[parent.ino] = folder
        while len(self._folders) > MAX_FOLDERS:
            _, old = self._folders.popitem(last=False)
            self._stop(old)
        return folder

    def _stop(self, folder: _Folder, *, batches: bool = True) -> None:
        if folder.active is not None:
            log.debug("read-ahead: sequence in inode %d ended", folder.ino)
        folder.active = None
        folder.generation += 1
        folder.window = 0
        folder.ahead_to = -1
        folder.queued.clear()
        folder.bytes_ahead = 0
        folder.prepared_to = -1
        folder.batch.clear()
        if batches:
            for stop in folder.running:  # a batch's files not requested yet: not wanted now
                stop.set()

    # -- scheduling --------------------------------------------------------------------------
    def _advance(self, folder: _Folder, provider: Provider) -> None:
        order = folder.active
        assert order is not None
        cursor = order.last
        while folder.queued and folder.queued[0][0] <= cursor:
            folder.bytes_ahead -= folder.queued.popleft()[1]
        folder.ahead_to = max(folder.ahead_to, cursor)
        horizon = min(cursor + folder.window, len(order.inos) - 1)
        nodes = self.tree.nodes
        while folder.ahead_to < horizon:
            position = folder.ahead_to + 1
            child = nodes.get(order.inos[position])
            size = child.size if child is not None else None
            if child is None or child.entry is None or size is None or size > self.small_max:
                folder.ahead_to = position  # not ours to prefetch: the sequence goes on
                continue
            if size and folder.bytes_ahead + size > self.max_bytes_ahead:
                break  # full: continue when the reader has caught up
            folder.ahead_to = position
            if size == 0:
                continue
            obj = self.cache.object(provider, self.tree.ref(child))
            if obj.size is None:
                obj.size = size
            if self.cache.cached_bytes(obj) >= size:
                continue  # on disk already: nothing to fetch, nothing to prepare
            folder.queued.append((position, size))
            folder.bytes_ahead += size
            self.counters.queued += 1
            if self.cache.batchable(obj):
                folder.batch.append((position, obj))
                if len(folder.batch) >= BATCH_FILES:
                    self._start_batch(folder)
                continue
            trio.lowlevel.spawn_system_task(
                self._fetch,
                folder,
                folder.generation,
                position,
                obj,
                name=f"read-ahead {obj.ref.key}",
            )
        if folder.batch and (
            folder.batch[0][0] - cursor <= BATCH_FILES or folder.ahead_to >= len(order.inos) - 1
        ):
            self._start_batch(folder)  # needed soon, or the folder's last files
        self._prepare(folder, provider)

    def _start_batch(self, folder: _Folder) -> None:
        batch, folder.batch = folder.batch, []
        trio.lowlevel.spawn_system_task(
            self._fetch_batch,
            folder,
            folder.generation,
            batch,
            name=f"read-ahead {len(batch)} files from {batch[0][1].ref.key}",
        )

    def _prepare(self, folder: _Folder, provider: Provider) -> None:
        """Tell the provider which files come next (links in batches), ahead of the fetches.

        In groups of ``PREPARE_STEP`` positions, each group once per sequence, up to
        ``PREPARE_AHEAD`` files beyond the one just opened: one KooDrive link call per group.
        """
        order = folder.active
        if order is None or folder.preparing or getattr(provider, "prepare_reads", None) is None:
            return
        if folder.prepared_to >= self._prepare_horizon(folder, order):
            return
        folder.preparing = True
        self.counters.prepared += 1
        trio.lowlevel.spawn_system_task(
            self._run_prepare, folder, folder.generation, provider, name="read-ahead prepare"
        )

    @staticmethod
    def _prepare_horizon(folder: _Folder, order: _Order) -> int:
        """Prepare ``PREPARE_AHEAD`` files ahead of the reader, and always a group beyond the
        furthest file queued: a download must never find its link missing (a call of its own)."""
        ahead = max(order.last + PREPARE_AHEAD, folder.ahead_to + PREPARE_STEP)
        return min(ahead, len(order.inos) - 1)

    def _next_group(self, folder: _Folder, provider: Provider) -> list[ObjectRef]:
        """The refs of the next group of positions to prepare ([] when nothing is due)."""
        order = folder.active
        if order is None:
            return []
        last = len(order.inos) - 1
        horizon = self._prepare_horizon(folder, order)
        refs: list[ObjectRef] = []
        while not refs and folder.prepared_to < horizon:
            start = max(folder.prepared_to + 1, order.last + 1)
            end = min((start // PREPARE_STEP + 1) * PREPARE_STEP - 1, last)
            folder.prepared_to = end
            for ino in order.inos[start : end + 1]:
                child = self.tree.nodes.get(ino)
                if child is None or child.entry is None or child.provider is not provider:
                    continue
                if not child.size:
                    continue  # empty: never read from the provider
                ref = self.tree.ref(child)
                if self.cache.cached_bytes(self.cache.object(provider, ref)) >= child.size:
                    continue  # on disk already: its read needs nothing from the provider
                refs.append(ref)
        return refs

    # -- tasks (system tasks: they must not raise) -------------------------------------------
    async def _run_prepare(self, folder: _Folder, generation: int, provider: Provider) -> None:
        prepare = getattr(provider, "prepare_reads", None)
        try:
            while prepare is not None and folder.generation == generation:
                refs = self._next_group(folder, provider)
                if not refs:
                    return
                await prepare(refs)
        except ProviderError as exc:
            log.debug("read-ahead: preparing reads failed: %s", exc)
        except Exception:
            log.exception("read-ahead: preparing reads failed unexpectedly")
        finally:
            folder.preparing = False

    def _started(self, c: ReadAheadCounters, provider: Provider) -> None:
        c.active += 1
        if c.active > c.max_active:
            c.max_active = c.active
            log.debug(
                "read-ahead: %d downloads at once (limit %d for %s)",
                c.active,
                self.limiter(provider).total_tokens,
                provider.name,
            )

    async def _fetch_batch(
        self, folder: _Folder, generation: int, batch: list[tuple[int, CachedObject]]
    ) -> None:
        """Small files ahead of the reader, in one job of their provider (``fetch_batch``)."""
        c = self.counters
        stop = threading.Event()  # set when the sequence stops (``_stop``)
        folder.running.add(stop)
        try:
            async with self.limiter(batch[0][1].provider):
                order = folder.active
                if folder.generation != generation or order is None:
                    c.skipped += len(batch)
                    return
                objs = [obj for position, obj in batch if position > order.last]
                c.skipped += len(batch) - len(objs)
                if not objs:
                    return
                self._started(c, objs[0].provider)  # a batch: one download at a time
                try:
                    got = await self.cache.fetch_batch(objs, stop)
                finally:
                    c.active -= 1
                c.fetched += got
                if stop.is_set():
                    c.skipped += len(objs) - got
                else:
                    c.failed += len(objs) - got
        except ProviderError as exc:
            c.failed += len(batch)
            log.debug("read-ahead of %d files failed: %s", len(batch), exc)
        except Exception:
            c.failed += len(batch)
            log.exception("read-ahead of %d files failed unexpectedly", len(batch))
        finally:
            folder.running.discard(stop)

    async def _fetch(
        self, folder: _Folder, generation: int, position: int, obj: CachedObject
    ) -> None:
        cache = self.cache
        c = self.counters
        try:
            limiter = self.limiter(obj.provider)
            async with limiter:
                order = folder.active
                if folder.generation != generation or order is None or order.last >= position:
                    c.skipped += 1  # the sequence ended, or the reader got here first
                    return
                self._started(c, obj.provider)
                try:
                    n = cache.nblocks(obj)
                    # starts what is neither present nor in flight; then wait for all of it
                    cache.prefetch(obj, 0, n - 1)
                    for index in range(n):
                        await cache.get_block(obj, index)
                finally:
                    c.active -= 1
                c.fetched += 1
        except ProviderError as exc:
            c.failed += 1
            log.debug("read-ahead of %s failed: %s", obj.ref.key, exc)
        except Exception:
            c.failed += 1
            log.exception("read-ahead of %s failed unexpectedly", obj.ref.key)


__all__ = ["FolderReadAhead"]
