"""BlockCache against a fake provider: single-flight, integrity, cap, read-ahead growth."""

from __future__ import annotations

import errno
import logging
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fusefs.cache.block_cache import BlockCache
from fusefs.cache.reader import FileReader
from fusefs.providers.base import Capabilities, OneShotConsumed, ProtocolError
from tests.helpers.fakes import FakeProvider, object_bytes

BS = 64 * 1024


@pytest.fixture
async def cache(tmp_path: Path) -> AsyncIterator[BlockCache]:
    c = BlockCache(
        tmp_path / "cache",
        block_size=BS,
        max_bytes=64 * BS,
        min_free_ratio=0,
        memory_budget=32 * BS,
        max_request=16 * BS,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run)
        yield c
        nursery.cancel_scope.cancel()


async def read_all(reader: FileReader, size: int, step: int = 32 * 1024) -> bytes:
    out = bytearray()
    for off in range(0, size, step):
        out += await reader.read(off, step)
    return bytes(out)


async def test_sequential_read_uses_few_growing_requests(cache: BlockCache) -> None:
    p = FakeProvider()
    size = 100 * BS + 17
    ref = p.add("big", size)
    data = await read_all(FileReader(cache, cache.object(p, ref), max_window=16 * BS), size)
    assert data == object_bytes("big", size)
    lengths = [n for _, _, n in p.requests]
    assert len(lengths) < 20, lengths
    assert lengths[0] is not None and max(n or 0 for n in lengths) >= 8 * BS
    # no byte downloaded twice
    assert sum(n or 0 for n in lengths) == size


async def test_random_read_fetches_one_block(cache: BlockCache) -> None:
    p = FakeProvider()
    ref = p.add("big", 200 * BS)
    reader = FileReader(cache, cache.object(p, ref))
    got = await reader.read(150 * BS + 100, 4096)
    assert bytes(got) == object_bytes("big", 200 * BS)[150 * BS + 100 : 150 * BS + 4196]
    assert p.requests == [("big", 150 * BS, BS)]


async def test_concurrent_readers_share_one_download(cache: BlockCache) -> None:
    p = FakeProvider(delay=0.05)
    size = 40 * BS
    ref = p.add("shared", size)
    results: list[bytes] = []

    async def one() -> None:
        results.append(await read_all(FileReader(cache, cache.object(p, ref)), size))

    async with trio.open_nursery() as n:
        for _ in range(4):
            n.start_soon(one)
    assert all(r == object_bytes("shared", size) for r in results)
    fetched = sum(n or 0 for _, _, n in p.requests)
    assert fetched == size, p.requests


def evict_page_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


async def test_corrupt_segment_is_checked_after_a_restart(tmp_path: Path) -> None:
    """A new daemon checks every segment the first time it reads it, page cache or not."""
    p = FakeProvider()
    size = 4 * BS
    ref = p.add("obj", size)
    root = tmp_path / "cache"
    for run in range(2):
        c = BlockCache(root, block_size=BS, max_bytes=64 * BS, min_free_ratio=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(c.run)
            obj = c.object(p, ref)
            if run == 0:
                assert await read_all(FileReader(c, obj), size) == object_bytes("obj", size)
                await c.flush(obj.oid)
                path = Path(c.store.data_path(obj.oid))
                raw = bytearray(path.read_bytes())
                raw[BS + 5] ^= 0x01  # in the page cache, not only on disk
                path.write_bytes(bytes(raw))
            else:
                p.requests.clear()
                assert await read_all(FileReader(c, obj), size) == object_bytes("obj", size)
                assert c.store.corrupt_blocks == 1
                assert p.requests == [("obj", BS, BS)]
            nursery.cancel_scope.cancel()


async def test_corrupt_block_is_refetched_never_served(cache: BlockCache, tmp_path: Path) -> None:
    p = FakeProvider()
    ref = p.add("obj", 4 * BS)
    obj = cache.object(p, ref)
    await read_all(FileReader(cache, obj), 4 * BS)
    await cache.flush(obj.oid)
    path = Path(cache.store.data_path(obj.oid))
    raw = bytearray(path.read_bytes())
    raw[2 * BS + 10] ^= 0xFF  # one bit of block 2 on disk
    path.write_bytes(bytes(raw))
    evict_page_cache(path)  # the corruption is at rest: the next read comes from the disk
    cache._mem.clear()  # force the next read to come from the file
    cache._mem_bytes = 0
    p.requests.clear()
    got = await FileReader(cache, obj).read(2 * BS, BS)
    assert bytes(got) == object_bytes("obj", 4 * BS)[2 * BS : 3 * BS]
    assert p.requests == [("obj", 2 * BS, BS)]
    assert cache.store.corrupt_blocks == 1


async def test_cap_holds_and_pinned_objects_are_exempt(cache: BlockCache) -> None:
    p = FakeProvider()
    one = FakeProvider(
        name="oneshot",
        capabilities=Capabilities(ranged_reads=False, size_known=False, one_shot=True),
    )
    pinned_ref = one.add("archive", 20 * BS)
    pobj = cache.object(one, pinned_ref)
    assert await cache.wait_whole(pobj) == 20 * BS
    for i in range(10):
        ref = p.add(f"f{i}", 30 * BS)
        await read_all(FileReader(cache, cache.object(p, ref)), 30 * BS, step=BS)
        assert cache.store.unpinned_bytes <= 64 * BS
    # the one-shot archive survived every eviction
    for i in range(20):
        assert cache.store.has(pobj.oid, i)
    assert cache.store.pinned_bytes >= 20 * BS


async def test_whole_object_cut_midway_leaves_nothing(cache: BlockCache) -> None:
    one = FakeProvider(
        name="oneshot",
        capabilities=Capabilities(ranged_reads=False, size_known=False, one_shot=True),
        fail_after=3 * BS,
    )
    ref = one.add("archive", 10 * BS)
    obj = cache.object(one, ref)
    with pytest.raises(ProtocolError):
        await cache.wait_whole(obj)
    assert obj.size is None
    assert not any(cache.store.has(obj.oid, i) for i in range(10))


async def test_restart_serves_from_disk(tmp_path: Path) -> None:
    p = FakeProvider()
    ref = p.add("persist", 10 * BS + 5)
    for round_ in range(2):
        c = BlockCache(tmp_path / "c", block_size=BS, max_bytes=1 << 30, min_free_ratio=0)
        async with trio.open_nursery() as nursery:
            await nursery.start(c.run)
            data = await read_all(FileReader(c, c.object(p, ref)), 10 * BS + 5)
            assert data == object_bytes("persist", 10 * BS + 5)
            nursery.cancel_scope.cancel()
        if round_ == 0:
            n_first = len(p.requests)
    assert len(p.requests) == n_first  # the second daemon made no request
    # leftover temp files are removed at start
    some = next((tmp_path / "c").rglob("meta.json"))
    (some.parent / "meta.json.tmp").write_bytes(b"junk")
    c = BlockCache(tmp_path / "c", block_size=BS, max_bytes=1 << 30, min_free_ratio=0)
    await trio.to_thread.run_sync(c.store.scan)
    assert not (some.parent / "meta.json.tmp").exists()
    assert c.store.unpinned_bytes == 10 * BS + 5
    # a different block size does not break anything
    c2 = BlockCache(tmp_path / "c", block_size=BS * 2, max_bytes=1 << 30, min_free_ratio=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(c2.run)
        data = await read_all(FileReader(c2, c2.object(p, ref)), 10 * BS + 5)
        assert data == object_bytes("persist", 10 * BS + 5)
        nursery.cancel_scope.cancel()
    assert os.path.isdir(tmp_path / "c")


async def test_whole_object_refetched_when_a_block_goes_missing(cache: BlockCache) -> None:
    p = FakeProvider(capabilities=Capabilities(ranged_reads=False, size_known=False))
    ref = p.add("export", 5 * BS + 7)
    obj = cache.object(p, ref)
    assert await cache.wait_whole(obj) == 5 * BS + 7
    await cache.flush(obj.oid)
    cache.drop_block(obj.oid, 3)  # evicted, cleared or found corrupt
    got = await FileReader(cache, obj).read(3 * BS, BS)
    assert bytes(got) == object_bytes("export", 5 * BS + 7)[3 * BS : 4 * BS]
    assert len(p.requests) == 2  # fetched whole a second time


async def test_one_shot_failure_is_final_only_once_bytes_arrived(cache: BlockCache) -> None:
    caps = Capabilities(ranged_reads=False, size_known=False, one_shot=True)
    p = FakeProvider(name="oneshot", capabilities=caps, fail_after=0)
    ref = p.add("a1", 3 * BS)
    obj = cache.object(p, ref)
    with pytest.raises(ProtocolError):  # failed before any byte: may be tried again
        await cache.wait_whole(obj)
    p.fail_after = None
    assert await cache.wait_whole(obj) == 3 * BS
    await cache.flush(obj.oid)
    cache.drop_block(obj.oid, 1)
    with pytest.raises(OneShotConsumed):  # cannot be downloaded a second time
        await FileReader(cache, obj).read(BS, 10)
    assert len(p.requests) == 2


async def test_a_bug_in_a_provider_does_not_kill_the_cache(cache: BlockCache) -> None:
    p = FakeProvider()
    ref = p.add("x", 4 * BS)
    real = p.objects.pop("x")  # open_stream now raises KeyError: a bug, not a network error
    with pytest.raises(ProtocolError):
        await FileReader(cache, cache.object(p, ref)).read(0, 10)
    p.objects["x"] = real
    got = await FileReader(cache, cache.object(p, ref)).read(0, 10)
    assert bytes(got) == real[:10]


async def test_failed_large_fetch_gives_back_its_reserved_space(tmp_path: Path) -> None:
    """Large fetches reserve file space ahead of their writes; a cut gives the rest back."""
    mib = 1 << 20
    c = BlockCache(
        tmp_path / "c", block_size=mib, max_bytes=1 << 30, min_free_ratio=0, max_request=64 * mib
    )
    p = FakeProvider(chunk=mib, fail_after=3 * mib)
    ref = p.add("big", 40 * mib)
    async with trio.open_nursery() as nursery:
        await nursery.start(c.run)
        obj = c.object(p, ref)
        c.prefetch(obj, 0, 39)
        with pytest.raises(ProtocolError):
            await c.read(obj, 10 * mib, 10 * mib + 10)
        await c.flush(obj.oid)
        await trio.to_thread.run_sync(c._wq.join)  # the writer handled the release too
        allocated = os.stat(c.store.data_path(obj.oid)).st_blocks * 512
        assert allocated <= 4 * mib, allocated
        assert c.cached_bytes(obj) == 3 * mib
        nursery.cancel_scope.cancel()


async def _cold_read_then_restart(root: Path, p: FakeProvider, name: str, size: int) -> BlockCache:
    """Read ``name`` cold, stop the cache, then read it again from a new cache on the same dir
    (returns the first cache, whose counters say how it wrote)."""
    ref = p.add(name, size)
    first = BlockCache(root, block_size=BS, max_bytes=1 << 30, min_free_ratio=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(first.run)
        assert await read_all(FileReader(first, first.object(p, ref)), size) == object_bytes(
            name, size
        )
        nursery.cancel_scope.cancel()
    n_requests = len(p.requests)
    again = BlockCache(root, block_size=BS, max_bytes=1 << 30, min_free_ratio=0)
    async with trio.open_nursery() as nursery:
        await nursery.start(again.run)
        assert await read_all(FileReader(again, again.object(p, ref)), size) == object_bytes(
            name, size
        )
        nursery.cancel_scope.cancel()
    assert len(p.requests) == n_requests  # every byte came from the cache file
    return first


def _o_direct_works(d: Path) -> bool:
    if not hasattr(os, "O_DIRECT"):
        return False
    try:
        fd = os.open(d / "probe", os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)
    except OSError:
        return False
    os.close(fd)
    os.unlink(d / "probe")
    return True


async def test_blocks_are_written_with_o_direct_and_the_tail_buffered(tmp_path: Path) -> None:
    if not _o_direct_works(tmp_path):
        pytest.skip("this file system refuses O_DIRECT (the fallback has its own test)")
    size = 20 * BS + 4096 + 17  # an aligned part and an unaligned tail in the last block
    first = await _cold_read_then_restart(tmp_path / "c", FakeProvider(), "direct", size)
    assert first.store.direct_writes
    assert first.store.stats()["direct_write_bytes"] == size - 17


async def test_a_file_system_without_o_direct_falls_back_to_buffered_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if not hasattr(os, "O_DIRECT"):
        pytest.skip("no O_DIRECT on this platform")
    real_open = os.open

    def no_direct(path: str, flags: int, mode: int = 0o777, **kw: object) -> int:
        if flags & os.O_DIRECT:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), path)
        return real_open(path, flags, mode)

    monkeypatch.setattr(os, "open", no_direct)
    size = 12 * BS + 100
    with caplog.at_level(logging.INFO, logger="fusefs.cache.store"):
        first = await _cold_read_then_restart(tmp_path / "c", FakeProvider(), "buffered", size)
    assert not first.store.direct_writes
    assert first.store.stats()["direct_write_bytes"] == 0
    refusals = [r for r in caplog.records if "refuses O_DIRECT" in r.getMessage()]
    assert len(refusals) == 1  # said once, not once per block


async def test_blocks_read_to_their_end_leave_the_memory_lru_first(cache: BlockCache) -> None:
    """The LRU of fresh blocks (4 blocks here) gives up a block its reader has read to the end
    before the read-ahead not read yet: parallel streams otherwise read much of their own
    read-ahead back from the cache file (a thread, a disk read and CRC checks per block)."""
    p = FakeProvider()
    ref = p.add("lru", 8 * BS)
    obj = cache.object(p, ref)
    want = object_bytes("lru", 8 * BS)
    with trio.fail_after(10):
        cache.prefetch(obj, 0, 3)
        await cache._flights[(obj.oid, 3)][0].event.wait()  # blocks 0-3 arrived
        await cache.flush(obj.oid)
        assert [i for _, i in cache._mem] == [0, 1, 2, 3]
        assert await cache.read_block(obj, 2, 0, 100) == want[2 * BS : 2 * BS + 100]
        assert await cache.read_block(obj, 0, 0, BS) == want[:BS]  # read to its end
        cache.prefetch(obj, 4, 4)  # the read-ahead goes on: one block to make room for
        await cache._flights[(obj.oid, 4)][0].event.wait()
        await cache.flush(obj.oid)
    # block 0 (read) went first, not block 1, the least recently used one not read
    assert [i for _, i in cache._mem] == [1, 3, 2, 4]
    assert len(p.requests) == 2


async def test_sequential_streams_share_what_the_memory_lru_holds(tmp_path: Path) -> None:
    """The read-ahead of all sequential streams together is at most what the LRU of fresh
    blocks holds (an eighth of the memory budget: 32 MiB here), never less than 4 MiB each, so
    it is still in memory when its reader comes (not read back from the cache file)."""
    from fusefs.providers.base import ObjectRef

    mib = 1 << 20
    c = BlockCache(tmp_path / "c", block_size=mib, memory_budget=256 * mib, min_free_ratio=0)
    assert c.read_ahead_total == 32 * mib
    p = FakeProvider()
    readers = [
        FileReader(c, c.object(p, ObjectRef(p.name, f"s{i}", "v1", 1 << 40))) for i in range(16)
    ]

    def advance(r: FileReader, times: int) -> None:
        for _ in range(times):
            r._note_access(r.next_offset, r.next_offset + mib)

    advance(readers[0], 10)
    assert readers[0].window * mib == 32 * mib  # alone: the whole LRU, not its 64 MiB cap
    advance(readers[1], 10)
    advance(readers[0], 1)
    assert [r.window * mib for r in readers[:2]] == [16 * mib, 16 * mib]  # 32 MiB for two
    for r in readers[2:8]:
        advance(r, 10)
    for r in readers[:8]:
        advance(r, 1)
    assert {r.window * mib for r in readers[:8]} == {4 * mib}  # 32 MiB / 8
    for r in readers[8:]:
        advance(r, 10)
    for r in readers:
        advance(r, 1)
    assert {r.window * mib for r in readers} == {4 * mib}  # 32 MiB / 16 < 4 MiB: the floor
    readers[0].close()
    for r in readers[1:8]:
        r.close()
    advance(readers[8], 1)
    assert readers[8].window * mib == 4 * mib  # 8 left: 32 MiB / 8


async def test_a_huge_listed_size_costs_nothing_per_query(cache: BlockCache) -> None:
    """Issue 9: cached_bytes (fusefs info, getxattr, read-ahead checks) is O(blocks cached),
    never O(listed size): 10^15 bytes = 15 billion blocks of 64 KiB here."""
    from fusefs.providers.base import ObjectRef

    p = FakeProvider()
    obj = cache.object(p, ObjectRef(p.name, "huge", "v1", 10**15))
    t0 = trio.current_time()
    for _ in range(100):
        assert cache.cached_bytes(obj) == 0
    assert not cache.had_bytes(obj)
    assert trio.current_time() - t0 < 1.0
    # the same with some of it cached: the count is of what is there
    p.objects["huge"] = object_bytes("huge", 4 * BS)  # the server holds the first 4 blocks
    got = await FileReader(cache, obj).read(2 * BS + 100, 4096)
    assert got == object_bytes("huge", 4 * BS)[2 * BS + 100 : 2 * BS + 100 + 4096]
    with trio.fail_after(10):  # counted once the writer has put it on disk
        await cache.flush(obj.oid)
    t0 = trio.current_time()
    for _ in range(100):
        assert 4096 <= cache.cached_bytes(obj) <= BS
    assert trio.current_time() - t0 < 1.0


async def test_had_bytes_after_a_fetch(cache: BlockCache, tmp_path: Path) -> None:
    """What decides ESTALE (changed while open) against EIO/ENOENT (the first answer already
    disagrees with the listing): bytes of the version were received before."""
    p = FakeProvider()
    ref = p.add("obj", 3 * BS)
    obj = cache.object(p, ref)
    assert not cache.had_bytes(obj)
    await FileReader(cache, obj).read(0, 10)
    assert cache.had_bytes(obj)
    await cache.flush(obj.oid)
    await trio.to_thread.run_sync(cache._wq.join)
    again = BlockCache(tmp_path / "cache", block_size=BS, max_bytes=64 * BS, min_free_ratio=0)
    assert again.had_bytes(again.object(p, ref))  # on disk from an earlier run
