"""Per-handle reads: sequential detection, a growing read-ahead window, block assembly."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fusefs.cache.block_cache import BlockCache, CachedObject

# The kernel reorders and splits its readahead; jumps within this slack still count as
# sequential: 1 MiB back, and forward 2 MiB or twice the current window (the kernel's own
# readahead grows with ours, so its requests run ahead by about as much).
_BACK_SLACK = 1 << 20
_FORWARD_SLACK = 2 << 20
# the least read-ahead a sequential reader keeps, however many share the total
_MIN_SHARE = 4 << 20


class FileReader:
    """Reads one object version for one open file handle."""

    def __init__(self, cache: BlockCache, obj: CachedObject, *, max_window: int = 64 << 20) -> None:
        self.cache = cache
        self.obj = obj
        self.max_window_blocks = max(1, max_window // cache.block_size)
        self.window = 0  # read-ahead, in blocks
        self.next_offset = 0
        self.reads = 0
        self.random_reads = 0
        self.advised = -1  # last block the kernel was asked to read ahead from the cache file

    def _note_access(self, offset: int, end: int) -> None:
        expected = self.next_offset
        if self.reads == 0:  # a first read at a non-zero offset is taken as random (gcsfuse)
            sequential = offset == 0
        else:
            ahead = max(_FORWARD_SLACK, 2 * self.window * self.cache.block_size)
            sequential = expected - _BACK_SLACK <= offset <= expected + ahead
        self.reads += 1
        streams = self.cache.streams
        if sequential:
            streams.add(self)
            # readers share the read-ahead: 8 readers with a full window each would keep
            # 512 MiB in flight, their next blocks behind everyone's far read-ahead; they share
            # what the memory LRU holds (BlockCache.read_ahead_total)
            share = max(_MIN_SHARE, self.cache.read_ahead_total // len(streams))
            cap = min(self.max_window_blocks, share // self.cache.block_size)
            self.window = min(max(self.window * 2, 1), max(1, cap))
        else:
            streams.discard(self)
            self.random_reads += 1
            self.window = 0
        self.next_offset = max(end, self.next_offset) if sequential else end

    def _schedule(self, offset: int, end: int, first: int, last: int) -> None:
        cache = self.cache
        obj = self.obj
        if self.window == 0:
            # a random read: fetch only the segments it touches (64 KiB each), not whole blocks
            cache.prefetch_bytes(obj, offset, end)
            return
        nblocks = cache.nblocks(obj)
        horizon = min(last + self.window, nblocks - 1)
        if horizon > self.advised and cache.on_disk_only(obj, max(last + 1, self.advised + 1)):
            # the window ahead is in the cache file: have the kernel read it in meanwhile
            cache.disk_ahead(obj, max(last + 1, self.advised + 1), horizon)
            self.advised = horizon
        # blocks the caller needs now: fetch them together with the read-ahead run that follows
        missing = cache.first_missing(obj, first, last)
        if missing is not None:
            cache.prefetch(obj, missing, max(last, min(horizon, missing + self.window)), owner=self)
            return
        if horizon <= last:
            return
        ahead = cache.first_missing(obj, last + 1, horizon)
        if ahead is None:
            return
        # only issue a read-ahead request once it is worth a round trip: half a window, or EOF
        if horizon - ahead + 1 >= max(1, self.window // 2) or horizon == nblocks - 1:
            cache.prefetch(obj, ahead, min(ahead + self.window - 1, nblocks - 1), owner=self)

    def close(self) -> None:
        """The handle is released: its read-ahead that no other read waits for stops."""
        self.cache.streams.discard(self)
        self.cache.abandon(self)

    async def read(self, offset: int, size: int) -> bytes | memoryview:
        obj = self.obj
        if obj.size is None:
            await self.cache.wait_whole(obj)
        assert obj.size is not None
        end = min(offset + size, obj.size)
        if offset >= end:
            return b""
        bs = self.cache.block_size
        first, last = offset // bs, (end - 1) // bs
        self._note_access(offset, end)
        if not obj.whole_only:
            self._schedule(offset, end, first, last)
        return await self.cache.read(obj, offset, end)
