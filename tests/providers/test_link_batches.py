"""KooDrive link batching for read-ahead: joins calls in flight, full batches go at once,
``prepare_reads`` asks for the links of what comes next in calls of <= 100 ids."""

from __future__ import annotations

import httpx
import trio

from fusefs.providers.base import ObjectNotFound, ObjectRef, ProviderError
from fusefs.providers.koodrive import (
    MAX_LINKS_PER_CALL,
    ContainerSpec,
    KoodriveProvider,
    LinkBatcher,
    _Link,
)


async def test_a_request_for_an_id_in_flight_joins_that_call() -> None:
    calls: list[list[str]] = []

    async def fetch(cid: str, ids: list[str]) -> dict[str, _Link | ProviderError]:
        calls.append(ids)
        await trio.sleep(0.1)
        return {i: _Link(f"https://obs/{i}", 1e12) for i in ids}

    batcher = LinkBatcher(fetch, window=0.0)
    got: list[str] = []

    async def one(fid: str) -> None:
        got.append((await batcher.get("c", fid)).url)

    async with trio.open_nursery() as n:
        n.start_soon(one, "a")
        await trio.sleep(0.05)  # the call for "a" (and the hinted "b") is in flight
        batcher.hint("c", ["a", "b"])  # "a" is in it: only "b" is queued for the next call
        n.start_soon(one, "b")
        n.start_soon(one, "a")  # joins the call in flight
    assert sorted(got) == ["https://obs/a", "https://obs/a", "https://obs/b"]
    assert calls == [["a"], ["b"]]


async def test_a_full_queue_does_not_wait_for_the_window(autojump_clock: trio.abc.Clock) -> None:
    calls: list[float] = []

    async def fetch(cid: str, ids: list[str]) -> dict[str, _Link | ProviderError]:
        calls.append(trio.current_time())
        return {i: _Link(i, 1e12) for i in ids}

    batcher = LinkBatcher(fetch, window=10.0)
    t0 = trio.current_time()
    batcher.hint("c", [f"h{i}" for i in range(MAX_LINKS_PER_CALL)])
    await batcher.get("c", "h0")
    assert calls == [t0]  # 100 ids queued: the call went at once
    await batcher.get("c", "alone")
    assert calls[1] - t0 >= 10.0  # one id: waits for others to join


def provider(links_calls: list[list[str]], missing: set[str] | None = None) -> KoodriveProvider:
    p = KoodriveProvider(
        httpx.AsyncClient(), url="http://kd.invalid", containers=[ContainerSpec("c")], token="t"
    )

    async def fetch(cid: str, ids: list[str]) -> dict[str, _Link | ProviderError]:
        links_calls.append(ids)
        out: dict[str, _Link | ProviderError] = {}
        for i in ids:
            if missing and i in missing:
                out[i] = ObjectNotFound("gone")
                continue
            link = _Link(f"https://obs/{i}", 1e12)
            p._links[i] = link
            out[i] = link
        return out

    p.batcher = LinkBatcher(fetch, window=0.0)
    return p


async def test_prepare_reads_fetches_the_links_of_what_comes_next_in_hundreds() -> None:
    calls: list[list[str]] = []
    p = provider(calls, missing={"F7"})
    refs = [ObjectRef("koodrive", f"f/c/F{i}", "v", 10) for i in range(250)]
    refs.append(ObjectRef("koodrive", "d/c/folder", "v", 0))  # not a file: ignored
    await p.prepare_reads(refs)
    assert [len(c) for c in calls] == [100, 100, 50]
    assert [c[0] for c in calls] == ["F0", "F100", "F200"]  # in the order given
    # links known: only the file that is gone is asked for again; a read needs no call
    await p.prepare_reads(refs)
    assert calls[3:] == [["F7"]]
    assert await p.download_link("c", "F123") == "https://obs/F123"
    assert len(calls) == 4
