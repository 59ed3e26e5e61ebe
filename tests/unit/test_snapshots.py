"""ListingStore: saves run in a worker thread, and an older listing never overwrites a newer."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
import trio

from fusefs.providers.base import EntryKind, RemoteEntry
from fusefs.vfs.snapshots import ListingStore


def listing(tag: str, n: int = 600) -> list[RemoteEntry]:
    return [
        RemoteEntry(f"{tag}-{i}", f"id{i}", EntryKind.FILE, f"k{i}", i, 1, 2, tag, None, {"x": "y"})
        for i in range(n)
    ]


async def test_saves_in_a_thread_newest_wins(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ListingStore(tmp_path)
    started, release = threading.Event(), threading.Event()
    loop_threads: set[int] = set()
    write = store._write

    def slow_write(*args: object) -> None:
        loop_threads.add(threading.get_ident())
        started.set()
        assert release.wait(10)
        write(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(store, "_write", slow_write)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        store.save_soon("p", "dir", listing("one"))
        await trio.to_thread.run_sync(started.wait)
        # "one" is being written; two newer listings arrive meanwhile
        store.save_soon("p", "dir", listing("two"))
        store.save_soon("p", "dir", listing("three"))
        saved = store.load("p", "dir")
        assert saved is not None and saved[1] == listing("three")  # pending ones are seen
        release.set()
        with trio.fail_after(10):
            while store._pending:  # noqa: ASYNC110 (the store has no event to wait for)
                await trio.sleep(0.01)
        nursery.cancel_scope.cancel()
    assert threading.get_ident() not in loop_threads  # never on the event loop's thread
    fresh = ListingStore(tmp_path)  # from disk
    saved = fresh.load("p", "dir")
    assert saved is not None and saved[1] == listing("three")
    assert list(tmp_path.rglob("*.tmp")) == []


async def test_pending_saves_are_written_at_shutdown(tmp_path: Path) -> None:
    store = ListingStore(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(store.run)
        store.save_soon("p", "a", listing("a", 3))
        store.save_soon("p", "b", listing("b", 3))
        nursery.cancel_scope.cancel()  # before the saver ran
    fresh = ListingStore(tmp_path)
    assert [fresh.load("p", k) is not None for k in ("a", "b")] == [True, True]
