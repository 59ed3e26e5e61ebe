"""Blocks through the tier: round trip, verification, single flight across hosts."""

from __future__ import annotations

import logging
import os
import zlib
from typing import cast

import pytest
import redis
import trio

from fusefs.fleet import HEADER_SIZE, Fetch, FleetTier, pack, unpack
from tests.fleet.conftest import RedisServer, make_tier

BS = 1 << 16


async def test_round_trip(redis_server: RedisServer, raw: redis.Redis) -> None:
    tier = make_tier(redis_server)
    data = os.urandom(BS)
    assert await tier.get_block("enos", "/plant/a.bin", "v1", 0) is None
    assert await tier.put_block("enos", "/plant/a.bin", "v1", 0, data)
    assert await tier.put_block("enos", "/plant/a.bin", "v1", 1, b"tail")
    assert await tier.get_block("enos", "/plant/a.bin", "v1", 0) == data
    assert await tier.get_block("enos", "/plant/a.bin", "v1", 1) == b"tail"
    # another version, object, provider or block size is another block
    assert await tier.get_block("enos", "/plant/a.bin", "v2", 0) is None
    assert await tier.get_block("koodrive", "/plant/a.bin", "v1", 0) is None
    other = make_tier(redis_server, block_size=2 * BS)
    assert await other.get_block("enos", "/plant/a.bin", "v1", 0) is None
    # a second host reads what the first published
    assert await make_tier(redis_server).get_block("enos", "/plant/a.bin", "v1", 0) == data
    # too large for a block: not published
    assert not await tier.put_block("enos", "/plant/a.bin", "v1", 2, b"x" * (BS + 1))
    assert tier.stats.hits == 2 and tier.stats.published == 2
    # keys are short, carry no object names, and expire (evictable under volatile-lru)
    keys = [k.decode() for k in cast(list[bytes], raw.keys("*"))]
    assert len(keys) == 2
    for k in keys:
        assert "plant" not in k and len(k) < 80
        assert k.startswith("fusefs:blk:enos:")
        assert 0 < raw.pttl(k) <= tier.config.block_ttl * 1000
    await tier.aclose()


def test_value_format() -> None:
    v = pack(b"hello")
    assert len(v) == HEADER_SIZE + 5
    assert unpack(v) == (b"hello", "")
    assert unpack(pack(b"")) == (b"", "")
    assert unpack(v[:-1])[0] is None
    assert unpack(v + b"x")[0] is None
    assert unpack(v[:5])[0] is None


def _garbage(good: bytes) -> list[tuple[str, bytes]]:
    flipped = bytearray(good)
    flipped[-1] ^= 1
    wrong_format = bytearray(good)
    wrong_format[3] = 99
    return [
        ("random bytes", os.urandom(len(good))),
        ("truncated", good[: len(good) // 2]),
        ("header only", good[:HEADER_SIZE]),
        ("shorter than a header", good[:7]),
        ("one bit flipped", bytes(flipped)),
        ("other format", bytes(wrong_format)),
        ("data without header", good[HEADER_SIZE:]),
        ("empty", b""),
        ("longer", good + b"\0"),
    ]


async def test_corrupt_values_are_deleted_and_never_served(
    redis_server: RedisServer, raw: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    tier = make_tier(redis_server)
    data = os.urandom(BS)
    k = tier.block_key("enos", "obj", "v1", 3)
    for why, bad in _garbage(pack(data)):
        caplog.clear()
        raw.set(k, bad)
        with caplog.at_level(logging.WARNING, logger="fusefs.fleet"):
            assert await tier.get_block("enos", "obj", "v1", 3) is None, why
        assert not raw.exists(k), why
        assert any("corrupt block" in r.getMessage() for r in caplog.records), why
        # through the single-flight path too: never served, and the lease is given instead
        raw.set(k, bad)
        got = await tier.fetch_block("enos", "obj", "v1", 3)
        assert got.data is None and got.lease is not None, why
        assert not raw.exists(k), why
        await got.lease.release()
    assert tier.stats.corrupt == 2 * len(_garbage(pack(b"x")))
    # a good value is served again
    await tier.put_block("enos", "obj", "v1", 3, data)
    assert await tier.get_block("enos", "obj", "v1", 3) == data


async def _host(tier: FleetTier, cloud: list[str], out: list[bytes | None], delay: float) -> None:
    """What a host's block cache will do: the tier, else download (under the lease) + publish."""
    got = await tier.fetch_block("iotda", "export-7", "etag1", 0)
    if got.data is not None:
        out.append(got.data)
        return
    cloud.append(tier.config.host_id)
    await trio.sleep(delay)  # the download
    data = zlib.compress(b"block" * 1000)
    if got.lease is not None:
        assert await got.lease.publish(data)
    out.append(data)


async def test_lease_race_one_download(redis_server: RedisServer) -> None:
    for hosts in (2, 3):
        tiers = [make_tier(redis_server, host_id=f"h{i}") for i in range(hosts)]
        cloud: list[str] = []
        out: list[bytes | None] = []
        async with trio.open_nursery() as n:
            for t in tiers:
                n.start_soon(_host, t, cloud, out, 0.3)
        assert len(cloud) == 1, cloud
        assert len(out) == hosts and len(set(out)) == 1
        # a later reader is a plain hit
        assert (await tiers[0].fetch_block("iotda", "export-7", "etag1", 0)).data == out[0]
        await make_tier(redis_server).aclose()
        redis_server.client().flushall()


async def test_lease_expires_when_the_holder_dies(redis_server: RedisServer) -> None:
    a = make_tier(redis_server, lease_seconds=0.5, host_id="a")
    b = make_tier(redis_server, lease_seconds=0.5, host_id="b", lease_wait=5.0)
    first = await a.fetch_block("enos", "o", "v", 0)
    assert first.lease is not None
    # "a" dies holding the lease (never publishes, never releases)
    t0 = trio.current_time()
    second = await b.fetch_block("enos", "o", "v", 0)
    took = trio.current_time() - t0
    assert second.lease is not None and second.data is None
    assert 0.3 < took < 1.5, took
    # the dead holder's late release does not drop the new holder's lease
    await first.lease.release()
    assert await a.lease_block("enos", "o", "v", 0) is None
    assert await second.lease.publish(b"payload")
    assert await a.get_block("enos", "o", "v", 0) == b"payload"


async def test_lease_holder_fails_then_another_takes_over(redis_server: RedisServer) -> None:
    a, b = make_tier(redis_server), make_tier(redis_server)
    first = await a.fetch_block("enos", "o", "v", 0)
    assert first.lease is not None

    async def fail_later() -> None:
        await trio.sleep(0.2)
        assert first.lease is not None
        await first.lease.release()  # the download failed: give the lease back at once

    async with trio.open_nursery() as n:
        n.start_soon(fail_later)
        t0 = trio.current_time()
        got = await b.fetch_block("enos", "o", "v", 0)
    assert got.lease is not None and trio.current_time() - t0 < 1.0


async def test_waiting_is_bounded(redis_server: RedisServer) -> None:
    a, b = make_tier(redis_server, lease_seconds=10.0), make_tier(redis_server)
    held = await a.lease_block("enos", "o", "v", 0)
    assert held is not None
    t0 = trio.current_time()
    got = await b.fetch_block("enos", "o", "v", 0, wait=0.3)
    assert got == Fetch(waited=got.waited)  # neither data nor lease: go to the cloud
    assert 0.3 <= trio.current_time() - t0 < 1.0
    assert await b.lease_block("enos", "o", "v", 0) is None
    async with held:
        pass
    assert await b.lease_block("enos", "o", "v", 0) is not None
