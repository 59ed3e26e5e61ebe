"""FolderReadAhead without a mount: detection, window, limits, stop on a break, whole-object
providers left alone. The fake provider's request log is the witness."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from fusefs.cache.block_cache import BlockCache
from fusefs.cache.reader import FileReader
from fusefs.providers.base import Capabilities, EntryKind, ObjectRef, RemoteEntry
from fusefs.vfs.sequence import FolderReadAhead
from fusefs.vfs.tree import Node, VirtualTree
from tests.helpers.fakes import FakeProvider, object_bytes

BS = 4096


class FolderProvider(FakeProvider):
    """One folder (the provider's root) of files; counts streams open at once."""

    def __init__(self, caps: Capabilities | None = None, delay: float = 0.0) -> None:
        super().__init__(name="p", capabilities=caps or Capabilities(max_concurrency=3))
        self.delay = delay
        self.entries: list[RemoteEntry] = []
        self.open_now = 0
        self.most_open = 0
        self.prepared: list[list[str]] = []

    def add_file(self, name: str, size: int) -> None:
        self.objects[name] = object_bytes(name, size)
        known = size if self.capabilities.size_known else None
        self.entries.append(RemoteEntry(name, name, EntryKind.FILE, name, known, 0, 0, "v1"))

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        return list(self.entries) if key == "" else []

    @contextlib.asynccontextmanager
    async def open_stream(
        self, ref: ObjectRef, offset: int = 0, length: int | None = None
    ) -> AsyncIterator[AsyncIterator[bytes]]:
        self.open_now += 1
        self.most_open = max(self.most_open, self.open_now)
        try:
            async with super().open_stream(ref, offset, length) as stream:
                yield stream
        finally:
            self.open_now -= 1

    def fetched(self) -> list[str]:
        return [key for key, _offset, _length in self.requests]


class PreparingProvider(FolderProvider):
    async def prepare_reads(self, refs: list[ObjectRef]) -> None:
        self.prepared.append([r.key for r in refs])


async def setup(
    nursery: trio.Nursery, tmp_path: Path, p: FolderProvider
) -> tuple[VirtualTree, BlockCache, FolderReadAhead, dict[str, Node]]:
    cache = BlockCache(tmp_path / "c", block_size=BS, max_bytes=64 << 20, min_free_ratio=0)
    await nursery.start(cache.run)
    tree = VirtualTree([p], cache, dir_ttl=60)
    root = next(n for n in tree.nodes.values() if n.provider is p and n.key == "")
    nodes = dict(await tree.readdir(root.ino))
    return tree, cache, FolderReadAhead(tree, cache), nodes


async def read_file(tree: VirtualTree, cache: BlockCache, ra: FolderReadAhead, node: Node) -> bytes:
    """What Filesystem.open does, then a whole read (as cp does)."""
    assert node.provider is not None
    obj = cache.object(node.provider, tree.ref(node))
    if obj.size is None:
        obj.size = node.size
    ra.opened(node)
    size = node.size or 0
    if size == 0:
        return b""
    return bytes(await FileReader(cache, obj).read(0, size + BS))


def small_folder(p: FolderProvider, n: int = 40) -> list[str]:
    names = [f"f{i:03d}" for i in range(n)]
    for i, name in enumerate(names):
        size = 0 if i == 5 else (10 * BS if i == 20 else 100 + 97 * i)  # one empty, one large
        p.add_file(name, size)
    return names


async def test_a_folder_read_in_order_is_fetched_ahead_once_each(tmp_path: Path) -> None:
    p = FolderProvider(delay=0.01)
    names = small_folder(p)
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        for name in names:
            assert await read_file(tree, cache, ra, nodes[name]) == p.objects[name]
        nursery.cancel_scope.cancel()
    got = p.fetched()
    small = [n for i, n in enumerate(names) if i not in (5, 20)]
    # every small file exactly once: the read-ahead's fetch and the reader's never both
    assert sorted(k for k in got if k != "f020") == sorted(small)
    assert ra.counters.sequences == 1
    assert ra.counters.fetched >= len(small) // 2, ra.counters
    # the large file is left to its own handle's read-ahead, and does not break the sequence
    assert "f020" in got and ra.counters.sequences == 1
    # read-ahead within the provider's limit; the reader's own fetch may come on top
    assert ra.counters.max_active == 3
    assert p.most_open <= 3 + 1 + 1  # + the reader + the large file's own read-ahead


async def test_out_of_order_opens_fetch_only_what_is_read(tmp_path: Path) -> None:
    p = FolderProvider()
    names = small_folder(p)
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        picked = [names[(i * 7) % len(names)] for i in range(1, 25)]
        for name in picked:
            await read_file(tree, cache, ra, nodes[name])
        # two neighbours in a row are not yet a sequence
        for name in ("f030", "f031", "f010", "f011"):
            await read_file(tree, cache, ra, nodes[name])
        await trio.sleep(0.05)
        nursery.cancel_scope.cancel()
    expected = {n for n in [*picked, "f030", "f031", "f010", "f011"] if p.objects[n]}
    assert set(p.fetched()) == expected
    assert len(p.fetched()) == len(expected)
    assert ra.counters.sequences == 0 and ra.counters.queued == 0


async def test_a_break_stops_the_read_ahead(tmp_path: Path) -> None:
    p = FolderProvider(delay=0.2)
    for i in range(200):
        p.add_file(f"f{i:03d}", 50 + i)
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        for i in range(6):
            await read_file(tree, cache, ra, nodes[f"f{i:03d}"])
        queued = ra.counters.queued
        await read_file(tree, cache, ra, nodes["f150"])  # the break
        await trio.sleep(1.0)  # what had started ends; nothing else starts
        nursery.cancel_scope.cancel()
    assert queued > 20
    # 6 read + the break + what was in flight (3 at a time) when it came
    assert len(p.fetched()) <= 6 + 1 + 2 * 3 < queued
    assert ra.counters.skipped >= queued - 2 * 3 - 6


async def test_the_listing_order_counts_too(tmp_path: Path) -> None:
    """GNU cp sorts a folder by inode number: the provider's listing order, not the names'."""
    p = FolderProvider()
    for i in range(30):
        p.add_file(f"f{29 - i:03d}", 100 + i)  # listed in reverse name order
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        by_ino = sorted(nodes.values(), key=lambda n: n.ino)
        assert by_ino[0].name == "f029"
        for node in by_ino:
            await read_file(tree, cache, ra, node)
        nursery.cancel_scope.cancel()
    assert ra.counters.sequences == 1 and ra.counters.fetched > 0
    assert sorted(p.fetched()) == sorted(p.objects)


async def test_providers_are_told_what_comes_next_in_groups(tmp_path: Path) -> None:
    p = PreparingProvider()
    for i in range(450):
        p.add_file(f"f{i:03d}", 10)
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        for i in range(160):
            await read_file(tree, cache, ra, nodes[f"f{i:03d}"])
        await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    groups = [(g[0], g[-1]) for g in p.prepared]
    # from the third open on: the rest of the first hundred, then whole hundreds, up to a
    # hundred beyond the furthest file queued (159 + a window of 256): the end of the folder
    assert groups == [
        ("f003", "f099"),
        ("f100", "f199"),
        ("f200", "f299"),
        ("f300", "f399"),
        ("f400", "f449"),
    ]


@pytest.mark.parametrize(
    "caps",
    [
        Capabilities(ranged_reads=False, size_known=False, max_concurrency=1),  # IoTDA
        Capabilities(ranged_reads=False, size_known=False, one_shot=True, max_concurrency=1),
    ],
)
async def test_whole_object_providers_are_left_alone(tmp_path: Path, caps: Capabilities) -> None:
    p = FolderProvider(caps)
    for i in range(12):
        p.add_file(f"f{i:03d}", 100)
    async with trio.open_nursery() as nursery:
        tree, cache, ra, nodes = await setup(nursery, tmp_path, p)
        for i in range(12):
            node = nodes[f"f{i:03d}"]
            await tree.resolve_size(node)
            assert await read_file(tree, cache, ra, node) == p.objects[node.name]
        nursery.cancel_scope.cancel()
    assert ra.counters.sequences == 0 and ra.counters.queued == 0
    assert sorted(p.fetched()) == sorted(p.objects)


async def test_a_listing_refreshed_mid_copy_does_not_restart_the_detection(tmp_path: Path) -> None:
    p = FolderProvider()
    for i in range(60):
        p.add_file(f"f{i:03d}", 100 + i)
    now = [0.0]
    async with trio.open_nursery() as nursery:
        cache = BlockCache(tmp_path / "c", block_size=BS, max_bytes=64 << 20, min_free_ratio=0)
        await nursery.start(cache.run)
        tree = VirtualTree([p], cache, dir_ttl=60, clock=lambda: now[0])
        root = next(n for n in tree.nodes.values() if n.provider is p and n.key == "")
        ra = FolderReadAhead(tree, cache, max_window=4)
        nodes = dict(await tree.readdir(root.ino))
        for i in range(10):
            await read_file(tree, cache, ra, nodes[f"f{i:03d}"])
        now[0] += 61
        listing = root.children
        nodes = dict(await tree.readdir(root.ino))  # refreshed: a new listing
        assert root.children is not listing
        await read_file(tree, cache, ra, nodes["f010"])  # one open, and it goes on at once
        assert ra._folders[root.ino].active is not None
        assert ra._folders[root.ino].listing is root.children
        nursery.cancel_scope.cancel()
