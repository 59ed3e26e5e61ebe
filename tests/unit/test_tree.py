"""VirtualTree without a mount: listings, TTL, inode lifetime, degraded mode."""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from fusefs import errors
from fusefs.cache.block_cache import BlockCache
from fusefs.providers.base import EntryKind, RemoteEntry, TransientError
from fusefs.vfs.snapshots import ListingStore
from fusefs.vfs.tree import ROOT_INO, VirtualTree
from tests.helpers.fakes import FakeProvider


class ListingProvider(FakeProvider):
    def __init__(self) -> None:
        super().__init__(name="p")
        self.tree: dict[str, list[RemoteEntry]] = {}
        self.calls = 0
        self.fail = False
        self.hang = False
        self.error: Exception | None = None  # raised by every listing

    async def list_dir(self, key: str) -> list[RemoteEntry]:
        self.calls += 1
        if self.hang:
            await trio.sleep_forever()
        if self.error is not None:
            raise self.error
        if self.fail:
            raise TransientError("down", call="p.list")
        return list(self.tree.get(key, []))


def entry(name: str, rid: str, kind: EntryKind = EntryKind.FILE) -> RemoteEntry:
    return RemoteEntry(name, rid, kind, rid, 0 if kind is EntryKind.DIR else 10, 0, 0, "v1")


@pytest.fixture
def clock() -> list[float]:
    return [0.0]


def make_tree(tmp_path: Path, p: ListingProvider, clock: list[float]) -> VirtualTree:
    cache = BlockCache(tmp_path / "c", block_size=4096, max_bytes=1 << 20, min_free_ratio=0)
    return VirtualTree(
        [p],
        cache,
        dir_ttl=10,
        snapshots=ListingStore(tmp_path / "c"),
        list_timeout=0.5,
        clock=lambda: clock[0],
    )


async def test_listing_is_cached_for_its_ttl_and_answers_lookups(
    tmp_path: Path, clock: list[float]
) -> None:
    p = ListingProvider()
    p.tree[""] = [entry(f"f{i}", f"id{i}") for i in range(50)]
    tree = make_tree(tmp_path, p, clock)
    top = await tree.lookup(ROOT_INO, "p")
    for i in range(50):
        node = await tree.lookup(top.ino, f"f{i}")
        assert node.size == 10
    with pytest.raises(errors.NotFound):
        await tree.lookup(top.ino, "nope")
    assert p.calls == 1
    clock[0] = 11
    await tree.lookup(top.ino, "f1")
    assert p.calls == 2


async def test_replaced_and_removed_entries_are_forgotten(
    tmp_path: Path, clock: list[float]
) -> None:
    p = ListingProvider()
    p.tree[""] = [entry("d", "D1", EntryKind.DIR), entry("f", "F1")]
    p.tree["D1"] = [entry(f"x{i}", f"X{i}") for i in range(100)]
    tree = make_tree(tmp_path, p, clock)
    top = await tree.lookup(ROOT_INO, "p")
    d = await tree.lookup(top.ino, "d")
    await tree.readdir(d.ino)
    before = len(tree.nodes)
    p.tree[""] = [entry("f", "F2")]  # d is gone, f was replaced by another object
    clock[0] = 11
    await tree.readdir(top.ino)
    assert len(tree.nodes) == before - 100 - 1  # d's children, d, and the old f are gone
    new_f = await tree.lookup(top.ino, "f")
    assert new_f.entry is not None and new_f.entry.remote_id == "F2"


async def test_failed_or_hung_refresh_serves_the_old_listing(
    tmp_path: Path, clock: list[float]
) -> None:
    p = ListingProvider()
    p.tree[""] = [entry("a", "A")]
    tree = make_tree(tmp_path, p, clock)
    top = await tree.lookup(ROOT_INO, "p")
    assert [n for n, _ in await tree.readdir(top.ino)] == ["a"]
    clock[0] = 11
    p.fail = True
    assert [n for n, _ in await tree.readdir(top.ino)] == ["a"]
    clock[0] = 30
    p.fail, p.hang = False, True
    with trio.fail_after(5):
        assert [n for n, _ in await tree.readdir(top.ino)] == ["a"]
    # a new daemon with the service down starts from the saved listing
    p2 = ListingProvider()
    p2.fail = True
    tree2 = make_tree(tmp_path, p2, clock)
    top2 = await tree2.lookup(ROOT_INO, "p")
    assert [n for n, _ in await tree2.readdir(top2.ino)] == ["a"]
