"""The block cache with a fleet tier (an in-memory stand-in shared by several caches, each
with its own directory and provider): blocks fetched once per fleet, leases, fallbacks."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import pytest
import trio

from fusefs.cache.block_cache import BlockCache
from fusefs.cache.reader import FileReader
from fusefs.cache.tier import BlockId, WholeId
from fusefs.providers.base import Capabilities, OneShotConsumed, ProtocolError, RemoteEntry
from tests.helpers.fakes import FakeProvider, object_bytes

BS = 64 * 1024


class MemoryTier:
    """What fusefs.fleet does with Redis, in one process: values, leases, waits."""

    def __init__(self, wait_timeout: float = 2.0) -> None:
        self.blocks: dict[BlockId, bytes] = {}
        self.leases: set[BlockId] = set()
        self.up = True
        self.wait_timeout = wait_timeout
        self.gets = 0
        self.published = 0
        self._lock = threading.Lock()
        self.wholes: dict[WholeId, bytes] = {}
        self.claims: dict[WholeId, str] = {}
        self.released: list[WholeId] = []
        self.entries: dict[tuple[str, str], dict[str, RemoteEntry]] = {}
        self.host = "a"  # who asks (the tests switch it between the hosts' reads)

    def usable(self) -> bool:
        return self.up

    async def get(self, block: BlockId, length: int) -> bytes | None:
        self.gets += 1
        data = self.blocks.get(block) if self.up else None
        return data if data is not None and len(data) == length else None

    async def lease(self, block: BlockId) -> bool:
        with self._lock:
            if not self.up:
                return True
            if block in self.blocks or block in self.leases:
                return False
            self.leases.add(block)
            return True

    async def wait(self, block: BlockId, length: int) -> bytes | None:
        with trio.move_on_after(self.wait_timeout):
            while self.up:
                got = await self.get(block, length)
                if got is not None:
                    return got
                await trio.sleep(0.005)
        return None

    def publish(self, block: BlockId, data: bytes | bytearray) -> None:
        with self._lock:
            self.blocks[block] = bytes(data)
            self.leases.discard(block)
            self.published += 1

    def release(self, block: BlockId) -> None:
        with self._lock:
            self.leases.discard(block)

    async def get_whole(self, obj: WholeId) -> bytes | None:
        return self.wholes.get(obj) if self.up else None

    async def claim_whole(self, obj: WholeId, *, one_shot: bool) -> bool:
        # one process stands for all hosts here: a claim is "ours" by the host name set
        owner = self.claims.get(obj)
        if owner is None:
            self.claims[obj] = self.host
            return True
        return owner == self.host

    async def wait_whole(self, obj: WholeId) -> bytes | None:
        with trio.move_on_after(self.wait_timeout):
            while obj not in self.wholes:  # noqa: ASYNC110 (a stand-in for Redis polling)
                await trio.sleep(0.005)
            return self.wholes[obj]
        return None

    async def publish_whole(self, obj: WholeId, data: bytes) -> None:
        self.wholes[obj] = data  # claims stay: enough for these tests (one-shot semantics)

    async def release_whole(self, obj: WholeId) -> None:
        self.released.append(obj)

    def holds_whole(self, obj: WholeId) -> bool:
        return self.claims.get(obj) == self.host

    @property
    def max_whole_bytes(self) -> int:
        return 1 << 30

    async def has_whole(self, obj: WholeId) -> bool:
        return obj in self.wholes

    async def share_entries(self, provider: str, folder: str, entries: list[RemoteEntry]) -> None:
        self.entries.setdefault((provider, folder), {}).update({e.remote_id: e for e in entries})

    async def shared_entries(self, provider: str, folder: str) -> list[RemoteEntry]:
        return list(self.entries.get((provider, folder), {}).values())


@asynccontextmanager
async def hosts(
    tmp_path: Path, tier: MemoryTier, n: int, make: Callable[[], FakeProvider] = FakeProvider
) -> AsyncIterator[list[tuple[BlockCache, FakeProvider]]]:
    out: list[tuple[BlockCache, FakeProvider]] = []
    async with AsyncExitStack() as stack, trio.open_nursery() as nursery:
        for i in range(n):
            c = BlockCache(
                tmp_path / f"host{i}",
                block_size=BS,
                max_bytes=256 * BS,
                min_free_ratio=0,
                memory_budget=32 * BS,
                max_request=16 * BS,
                tier=tier,
            )
            await nursery.start(c.run)
            out.append((c, make()))
        del stack
        yield out
        nursery.cancel_scope.cancel()


async def read_all(cache: BlockCache, p: FakeProvider, key: str, size: int) -> bytes:
    ref = p.add(key, size)
    reader = FileReader(cache, cache.object(p, ref), max_window=16 * BS)
    out = bytearray()
    for off in range(0, size, 128 * 1024):
        out += await reader.read(off, 128 * 1024)
    return bytes(out)


def fetched(p: FakeProvider) -> int:
    return sum(n or 0 for _, _, n in p.requests)


async def test_a_second_host_reads_from_the_tier_not_the_cloud(tmp_path: Path) -> None:
    tier = MemoryTier()
    size = 40 * BS + 123
    async with hosts(tmp_path, tier, 2) as ((a, pa), (b, pb)):
        assert await read_all(a, pa, "f", size) == object_bytes("f", size)
        assert fetched(pa) == size
        await a.flush(a.object(pa, pa.add("f", size)).oid)
        assert tier.published == 41 and not tier.leases
        assert await read_all(b, pb, "f", size) == object_bytes("f", size)
        assert pb.requests == []
        assert b.counters.tier_blocks == 41


async def test_concurrent_cold_readers_download_each_block_once(tmp_path: Path) -> None:
    tier = MemoryTier()
    size = 64 * BS

    def slow() -> FakeProvider:
        return FakeProvider(delay=0.02)

    async with hosts(tmp_path, tier, 3, slow) as group:
        results: list[bytes] = []

        async def one(c: BlockCache, p: FakeProvider) -> None:
            results.append(await read_all(c, p, "cold", size))

        async with trio.open_nursery() as n:
            for c, p in group:
                n.start_soon(one, c, p)
    assert results == [object_bytes("cold", size)] * 3
    assert sum(fetched(p) for _, p in group) == size  # each block from the cloud once
    assert sum(c.counters.tier_waits for c, _ in group) > 0


async def test_a_tier_that_is_down_changes_nothing(tmp_path: Path) -> None:
    tier = MemoryTier()
    tier.up = False
    size = 10 * BS
    async with hosts(tmp_path, tier, 2) as ((a, pa), (b, pb)):
        assert await read_all(a, pa, "f", size) == object_bytes("f", size)
        assert await read_all(b, pb, "f", size) == object_bytes("f", size)
        assert fetched(pa) == fetched(pb) == size
        assert tier.gets == 0


async def test_a_failed_download_gives_its_leases_back(tmp_path: Path) -> None:
    tier = MemoryTier(wait_timeout=5.0)
    size = 16 * BS

    def cut() -> FakeProvider:
        return FakeProvider(fail_after=2 * BS)

    async with hosts(tmp_path, tier, 1, cut) as [(a, pa)]:
        ref = pa.add("f", size)
        reader = FileReader(a, a.object(pa, ref), max_window=16 * BS)
        try:
            await reader.read(4 * BS, 4096)
        except Exception:
            pass
        await trio.sleep(0.1)
        assert not tier.leases  # nothing left for others to wait on
    async with hosts(tmp_path / "later", tier, 1) as [(b, pb)]:
        with trio.fail_after(3):  # no wait on a lease nobody holds
            assert await read_all(b, pb, "f", size) == object_bytes("f", size)


async def test_a_lease_whose_holder_died_is_waited_for_only_so_long(tmp_path: Path) -> None:
    tier = MemoryTier(wait_timeout=0.3)
    size = 4 * BS
    async with hosts(tmp_path, tier, 1) as [(b, pb)]:
        ref = pb.add("f", size)
        tier.leases.add(BlockId(ref.provider, ref.key, ref.version, 0, BS))  # a dead host's
        with trio.fail_after(3):
            assert await read_all(b, pb, "f", size) == object_bytes("f", size)
        assert fetched(pb) == size


async def test_a_random_read_takes_a_tier_block_and_leases_nothing(tmp_path: Path) -> None:
    tier = MemoryTier()
    size = 32 * BS
    async with hosts(tmp_path, tier, 2) as ((a, pa), (b, pb)):
        ref = pa.add("f", size)
        got = await FileReader(a, a.object(pa, ref)).read(20 * BS + 10, 4096)
        assert bytes(got) == object_bytes("f", size)[20 * BS + 10 : 20 * BS + 4106]
        assert pa.requests == [("f", 20 * BS, BS)] and not tier.leases
        assert tier.published == 1  # a whole block was fetched: shared
        ref_b = pb.add("f", size)
        got = await FileReader(b, b.object(pb, ref_b)).read(20 * BS + 500, 100)
        assert bytes(got) == object_bytes("f", size)[20 * BS + 500 : 20 * BS + 600]
        assert pb.requests == []


EXPORT = Capabilities(ranged_reads=False, size_known=False)
ARCHIVE = Capabilities(ranged_reads=False, size_known=False, one_shot=True)


async def test_a_whole_object_is_downloaded_once_per_fleet(tmp_path: Path) -> None:
    tier = MemoryTier()
    size = 5 * BS + 7
    async with hosts(tmp_path, tier, 2, lambda: FakeProvider(capabilities=EXPORT)) as group:
        (a, pa), (b, pb) = group
        ra = pa.add("export", size)
        assert await a.wait_whole(a.object(pa, ra)) == size
        wid = WholeId(ra.provider, ra.key, ra.version)
        with trio.fail_after(2):  # shared just after the reader got its answer
            while wid not in tier.wholes:  # noqa: ASYNC110
                await trio.sleep(0.01)
        assert tier.wholes[wid] == object_bytes("export", size)
        tier.host = "b"
        obj_b = b.object(pb, pb.add("export", size))
        assert await b.wait_whole(obj_b) == size
        got = await FileReader(b, obj_b).read(2 * BS, 3 * BS + 7)
        assert bytes(got) == object_bytes("export", size)[2 * BS :]
        assert pb.requests == []


async def test_a_one_shot_archive_claimed_elsewhere_is_read_from_the_tier(
    tmp_path: Path,
) -> None:
    tier = MemoryTier()
    size = 3 * BS
    slow = lambda: FakeProvider(name="roma", capabilities=ARCHIVE, delay=0.2)  # noqa: E731
    async with hosts(tmp_path, tier, 2, slow) as ((a, pa), (b, pb)):
        oa = a.object(pa, pa.add("a1", size))
        ob = b.object(pb, pb.add("a1", size))
        sizes: list[int] = []

        async def on(host: str, c: BlockCache, obj: object) -> None:
            sizes.append(await c.wait_whole(obj))  # type: ignore[arg-type]

        async with trio.open_nursery() as n:
            tier.host = "a"
            n.start_soon(on, "a", a, oa)
            await trio.sleep(0.05)  # a claims first
            tier.host = "b"
            n.start_soon(on, "b", b, ob)
        assert sizes == [size, size]
        assert len(pa.requests) + len(pb.requests) == 1  # downloaded by exactly one host


async def test_a_one_shot_archive_its_claimer_lost_is_a_clear_error(tmp_path: Path) -> None:
    tier = MemoryTier(wait_timeout=0.3)
    size = 3 * BS
    make = lambda: FakeProvider(name="roma", capabilities=ARCHIVE)  # noqa: E731
    async with hosts(tmp_path, tier, 1, make) as [(b, pb)]:
        ref = pb.add("a1", size)
        tier.claims[WholeId(ref.provider, ref.key, ref.version)] = "a"  # a host that died
        tier.host = "b"
        with pytest.raises(OneShotConsumed, match="another host of the fleet"):
            await b.wait_whole(b.object(pb, ref))
        assert pb.requests == []  # never a second download of a one-shot archive


async def test_a_failed_whole_download_ends_its_claim_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    tier = MemoryTier()
    make = lambda: FakeProvider(capabilities=EXPORT, fail_after=BS)  # noqa: E731
    async with hosts(tmp_path, tier, 1, make) as [(a, pa)]:
        ref = pa.add("export", 4 * BS)
        with pytest.raises(ProtocolError):
            await a.wait_whole(a.object(pa, ref))
        await trio.sleep(0.05)
        wid = WholeId(ref.provider, ref.key, ref.version)
        assert wid not in tier.wholes and tier.released == [wid]
