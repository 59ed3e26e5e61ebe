"""Fleet-wide quotas: the IoTDA download window, ROMA one-shot archives published whole."""

from __future__ import annotations

import itertools
import json
import os
from typing import cast

import pytest
import redis
import trio
import trio.lowlevel

from fusefs.fleet import FleetTier, NotPublished, pack, unpack
from tests.fleet.conftest import RedisServer, make_tier

INTERVAL = 0.5
SLACK = 0.03  # a host resumes a few ms after its turn's instant in Redis' clock


async def test_window_turns_are_an_interval_apart(redis_server: RedisServer) -> None:
    tiers = [make_tier(redis_server, host_id=f"h{i}") for i in range(4)]
    starts: list[float] = []
    waits: list[float] = []

    async def host(t: FleetTier) -> None:
        for _ in range(2):
            waited = await t.acquire_window("iotda:user-1", INTERVAL)
            assert waited is not None
            waits.append(waited)
            starts.append(trio.current_time())

    t0 = trio.current_time()
    async with trio.open_nursery() as n:
        for t in tiers:
            n.start_soon(host, t)
    starts.sort()
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 8
    assert min(gaps) >= INTERVAL - SLACK, gaps
    assert starts[0] - t0 < 0.2  # the first goes at once
    assert starts[-1] - t0 < 7 * INTERVAL + 0.5  # and no turn is wasted
    assert min(waits) < 0.2
    # another window (another user) is independent
    assert (await tiers[0].acquire_window("iotda:user-2", INTERVAL) or 9) < 0.2


async def test_window_turn_given_back_on_cancel(redis_server: RedisServer) -> None:
    a, b = make_tier(redis_server), make_tier(redis_server)
    assert (await a.acquire_window("w", 1.0) or 9) < 0.2
    with trio.move_on_after(0.1):
        await b.acquire_window("w", 1.0)  # would go at +1.0; gives it back
    waited = await a.acquire_window("w", 1.0)
    assert waited is not None and waited < 1.0  # the given-back turn, not the one after it


async def test_window_holds_against_a_late_start(
    redis_server: RedisServer, raw: redis.Redis
) -> None:
    """A host that resumed late and just started: the next one waits a whole interval from
    that start, though its reserved turn has come."""
    t = make_tier(redis_server)
    seconds, micros = raw.time()
    raw.set(t._window_key("late") + ":last", seconds * 1000 + micros // 1000, px=5000)
    waited = await t.acquire_window("late", INTERVAL)
    assert waited is not None and INTERVAL - SLACK <= waited < INTERVAL + 0.3


async def test_claim_once_exactly_one_host(redis_server: RedisServer, raw: redis.Redis) -> None:
    tiers = [make_tier(redis_server, host_id=f"h{i}") for i in range(3)]
    results: dict[str, bool | None] = {}

    async def claim(t: FleetTier) -> None:
        results[t.config.host_id] = await t.claim_once("roma:app/archive-42")

    async with trio.open_nursery() as n:
        for t in tiers:
            n.start_soon(claim, t)
    assert sorted(results.values(), key=str) == [False, False, True]
    # the claim stays ("consumed" does not expire) and says who
    ck = [k for k in cast(list[bytes], raw.keys("fusefs:once:*")) if not k.endswith(b":busy")]
    assert len(ck) == 1 and raw.pttl(ck[0]) == -1
    winner = next(h for h, won in results.items() if won)
    assert raw.get(ck[0]).decode().startswith(winner + " ")  # type: ignore[union-attr]
    assert not await tiers[0].claim_once("roma:app/archive-42")


async def test_losers_get_the_published_archive(redis_server: RedisServer) -> None:
    tiers = [make_tier(redis_server, part_bytes=1000, host_id=f"h{i}") for i in range(3)]
    archive = os.urandom(10_500)
    got: list[bytes | None] = []
    downloads = 0

    async def host(t: FleetTier) -> None:
        nonlocal downloads
        if await t.claim_once("roma:a"):
            downloads += 1
            await trio.sleep(0.3)  # the one download
            assert await t.publish_whole("roma:a", archive)
            got.append(archive)
        else:
            got.append(await t.wait_whole("roma:a"))

    async with trio.open_nursery() as n:
        for t in tiers:
            n.start_soon(host, t)
    assert downloads == 1 and got == [archive] * 3
    assert await tiers[2].read_whole("roma:a") == archive


async def test_half_written_archive_is_never_readable(
    redis_server: RedisServer, raw: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = make_tier(redis_server, part_bytes=100, lease_seconds=0.4)
    reader = make_tier(redis_server)
    archive = os.urandom(5_000)
    assert await writer.claim_once("roma:b")

    # the writer dies after its parts, before the manifest: nothing is readable
    class Died(Exception):
        pass

    real_run = writer._run
    calls = 0

    async def dying_run(fn, nbytes=0):  # type: ignore[no-untyped-def]
        nonlocal calls
        calls += 1
        if calls == 51:  # 50 parts written; this is the flip
            raise Died
        return await real_run(fn, nbytes)

    monkeypatch.setattr(writer, "_run", dying_run)
    with pytest.raises(Died):
        await writer.publish_whole("roma:b", archive)
    assert len(raw.keys("fusefs:whole:*")) == 50  # the parts are there ...
    assert all(raw.pttl(k) > 0 for k in raw.keys("fusefs:whole:*"))  # ... and will expire
    assert await reader.read_whole("roma:b") is None  # ... but not readable
    # the winner's "in progress" mark expires: the waiter hears a clear answer, soon
    with pytest.raises(NotPublished, match="downloaded by another host that did not publish it"):
        await reader.wait_whole("roma:b", timeout=5)


async def test_readers_during_publish_see_all_or_nothing(redis_server: RedisServer) -> None:
    writer = make_tier(redis_server, part_bytes=4096)
    reader = make_tier(redis_server)
    archive = os.urandom(400_000)  # 98 parts
    seen: list[bytes | None] = []
    done = False

    async def read_loop() -> None:
        while not done:
            seen.append(await reader.read_whole("iotda:export-1"))
            await trio.lowlevel.checkpoint()
        seen.append(await reader.read_whole("iotda:export-1"))

    async with trio.open_nursery() as n:
        n.start_soon(read_loop)
        await trio.sleep(0.01)
        assert await writer.publish_whole("iotda:export-1", archive)
        done = True
    assert seen[0] is None and seen[-1] == archive
    assert all(s is None or s == archive for s in seen)
    assert len(seen) > 3


async def test_damaged_archives_are_dropped(redis_server: RedisServer, raw: redis.Redis) -> None:
    t = make_tier(redis_server, part_bytes=1000)
    archive = os.urandom(3_500)
    for damage in ("part missing", "part corrupt", "manifest corrupt", "crc"):
        raw.flushall()
        assert await t.publish_whole("k", archive)
        keys = sorted(raw.keys("fusefs:whole:*"), key=len)
        manifest, parts = keys[0], keys[1:]
        assert len(parts) == 4
        if damage == "part missing":
            raw.delete(parts[2])
        elif damage == "part corrupt":
            raw.setrange(parts[1], 40, b"\xff\xfe")
        elif damage == "manifest corrupt":
            raw.set(manifest, b"junk")
        else:  # every part valid, the whole not what the manifest says
            m = json.loads(unpack(raw.get(manifest))[0])  # type: ignore[arg-type]
            m["crc32"] ^= 1
            raw.set(manifest, pack(json.dumps(m).encode()))
        assert await t.read_whole("k") is None, damage
        assert not raw.exists(manifest), damage
    # publishing again after damage works
    assert await t.publish_whole("k", archive)
    assert await t.read_whole("k") == archive


async def test_first_publish_wins_and_empty_archives(redis_server: RedisServer) -> None:
    a, b = make_tier(redis_server), make_tier(redis_server)
    assert await a.publish_whole("x", b"first")
    assert await b.publish_whole("x", b"second")  # published (by a): True, but a's copy stays
    assert await b.read_whole("x") == b"first"
    assert await a.publish_whole("empty", b"")
    assert await b.read_whole("empty") == b""
    assert await a.read_whole("never") is None


async def test_wait_whole_bounded_and_released_claims(redis_server: RedisServer) -> None:
    a, b = make_tier(redis_server, lease_seconds=5.0), make_tier(redis_server)
    assert await a.claim_once("slow")
    t0 = trio.current_time()
    with pytest.raises(NotPublished, match="has not published it within"):
        await b.wait_whole("slow", timeout=0.3)
    assert trio.current_time() - t0 < 0.8
    assert await a.refresh_claim("slow")
    # the cloud refused before sending anything: the claim is given back, another may claim
    assert await a.release_claim("slow")
    assert await b.wait_whole("slow", timeout=0.3) is None
    assert await b.claim_once("slow")
