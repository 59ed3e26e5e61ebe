"""Provider quirks against the emulator: auth refresh, paging, presigned-link expiry, batching,
the IoTDA download window, ROMA one-shot, retries, unreachable services."""

from __future__ import annotations

import math
from typing import Any

import httpx
import pytest
import trio
import trio.testing

from fusefs.providers._http import RetryPolicy
from fusefs.providers.base import (
    EntryKind,
    ObjectRef,
    OneShotConsumed,
    RemoteEntry,
    TransientError,
    Unavailable,
)
from fusefs.providers.enos import EnosProvider
from fusefs.providers.koodrive import KoodriveProvider

from .conftest import EnvFactory, FakeClock, md5, read_all, ref_of, walk


def token_calls(stats: dict[str, int]) -> int:
    return stats.get("enos.token.get", 0) + stats.get("enos.token.refresh", 0)


# ---- EnOS auth ---------------------------------------------------------------------------------


async def test_enos_token_expiry_mid_session_one_refresh_for_many_callers(
    make_env: EnvFactory,
) -> None:
    clock = FakeClock()
    env = await make_env(emulator_clock=clock)
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    assets = await enos.list_dir(f"org/{org}")
    assert token_calls(await env.stats()) == 1
    clock.advance(3 * 3600)  # past the 2 h lifetime: every cached token is dead
    async with trio.open_nursery() as n:
        for a in assets:
            n.start_soon(enos.list_dir, f"files/{org}/{a.name}")
    assert token_calls(await env.stats()) == 2  # one new token for all the concurrent callers


async def test_enos_401_gets_a_fresh_token_and_retries_once(make_env: EnvFactory) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    await enos.list_dir(f"org/{org}")
    await env.faults({"rules": [{"route": "enos.asset.search", "kind": "error", "status": 401,
                                 "count": 1}]})  # fmt: skip
    assert await enos.list_dir(f"org/{org}")
    stats = await env.stats()
    assert stats["enos.token.get"] == 2


async def test_enos_refreshes_before_expiry(make_env: EnvFactory) -> None:
    clock = FakeClock()
    env = await make_env(emulator_clock=clock)
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    await enos.list_dir(f"org/{org}")
    clock.advance(7200 - 300)  # inside the last 10 minutes
    await enos.list_dir(f"org/{org}")
    stats = await env.stats()
    assert stats.get("enos.token.refresh", 0) == 1
    assert stats["enos.token.get"] == 1


async def test_enos_server_ignoring_range_is_tolerated(make_env: EnvFactory) -> None:
    env = await make_env(faults={"enos_range": False})
    enos = env.providers["enos"]
    files = [e for _, e in await walk(enos) if e.size and e.size > 100]
    whole = await read_all(enos, files[0])
    assert await read_all(enos, files[0], 50, 20) == whole[50:70]


async def test_enos_5xx_and_429_are_retried(make_env: EnvFactory) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    await env.faults({"rules": [
        {"route": "enos.asset.search", "kind": "error", "status": 503, "count": 2},
        {"route": "enos.device.search", "kind": "throttle", "retry_after": 0, "count": 1},
    ]})  # fmt: skip
    assert await enos.list_dir(f"org/{org}")
    stats = await env.stats()
    assert stats["enos.asset.search"] >= 3


async def test_enos_download_cut_midway_resumes(make_env: EnvFactory) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    big = max((e for _, e in await walk(enos)), key=lambda e: e.size or 0)
    want = await read_all(enos, big)
    await env.faults({"rules": [{"route": "enos.*download", "kind": "reset",
                                 "after_bytes": 1000, "count": 2}]})  # fmt: skip
    assert md5(await read_all(enos, big)) == md5(want)


async def test_persistent_5xx_gives_transient_error(make_env: EnvFactory) -> None:
    env = await make_env()
    enos = env.providers["enos"]
    org = env.world["enos"]["orgs"][0]["orgId"]
    await env.faults({"rules": [{"route": "enos.asset.search", "kind": "error", "status": 500}]})
    with pytest.raises(TransientError):
        await enos.list_dir(f"org/{org}")


async def test_connection_refused_is_unavailable() -> None:
    async with httpx.AsyncClient() as client:
        enos = EnosProvider(
            client,
            apigw_url="http://127.0.0.1:9",
            app_key="k",
            app_secret="s",
            orgs=["o1"],
            retry_policy=RetryPolicy(base_delay=0.001, max_delay=0.001),
        )
        with pytest.raises(Unavailable):
            await enos.list_dir("org/o1")


# ---- KooDrive ----------------------------------------------------------------------------------


async def test_koodrive_short_and_empty_pages(
    make_env: EnvFactory, manifest: list[dict[str, Any]]
) -> None:
    env = await make_env(faults={"koodrive_page_limit": 3, "koodrive_empty_every": 2})
    kd = env.providers["koodrive"]
    got = sorted(e.remote_id for _, e in await walk(kd))
    want = sorted(m["remote_id"] for m in manifest if m["provider"] == "koodrive")
    assert got == want


async def test_koodrive_link_expiry_and_cut_mid_stream_resume(make_env: EnvFactory) -> None:
    emu_clock = FakeClock()
    env = await make_env(emulator_clock=emu_clock, provider_clock=FakeClock())
    kd = env.providers["koodrive"]
    big = max((e for _, e in await walk(kd)), key=lambda e: e.size or 0)
    head = await read_all(kd, big, 0, 10)  # caches the link
    emu_clock.advance(2 * 3600)  # the server now sees the cached link as expired
    await env.faults({"rules": [{"route": "koodrive.obs", "kind": "reset",
                                 "after_bytes": 300_000, "count": 1}]})  # fmt: skip
    data = await read_all(kd, big)
    assert data[:10] == head and len(data) == big.size
    m = [
        x
        for c in env.world["koodrive"]["containers"]
        for x in c["entries"]
        if x["id"] == big.remote_id
    ]
    assert md5(data) == m[0]["content"]["md5"]
    statuses = await env.statuses("koodrive.obs")
    assert statuses.get("403", 0) >= 1
    assert (await env.stats())["koodrive.download_links"] == 2


async def test_koodrive_links_are_batched(make_env: EnvFactory) -> None:
    env = await make_env()
    kd = env.providers["koodrive"]
    assert isinstance(kd, KoodriveProvider)
    files = [e for _, e in await walk(kd) if e.kind is EntryKind.FILE]
    by_container: dict[str, int] = {}
    for e in files:
        cid = e.key.split("/")[1]
        by_container[cid] = by_container.get(cid, 0) + 1
    await env.reset_stats()
    async with trio.open_nursery() as n:  # every file opened at about the same time
        for e in files:
            n.start_soon(read_all, kd, e, 0, 1)
    calls = (await env.stats())["koodrive.download_links"]
    assert calls == sum(math.ceil(c / 100) for c in by_container.values())


async def test_koodrive_sequential_opens_after_listing_share_one_call(make_env: EnvFactory) -> None:
    env = await make_env()
    kd = env.providers["koodrive"]
    folders: dict[tuple[str, ...], list[RemoteEntry]] = {}
    for path, e in await walk(kd):
        folders.setdefault(path[:-1], []).append(e)
    # the folder with the most files, listed again just before the opens
    biggest = max(folders.values(), key=len)
    parent_key = await _folder_key(kd, biggest[0])
    top = [e for e in await kd.list_dir(parent_key) if e.kind is EntryKind.FILE]
    assert len(top) > 1
    await env.reset_stats()
    for e in top:
        await read_all(kd, e, 0, 1)
    assert (await env.stats())["koodrive.download_links"] == math.ceil(len(top) / 100)


async def _folder_key(kd: KoodriveProvider, entry: RemoteEntry) -> str:
    """The directory key whose listing holds ``entry`` (breadth-first search)."""
    queue = [""]
    while queue:
        key = queue.pop(0)
        children = await kd.list_dir(key)
        if any(c.key == entry.key for c in children):
            return key
        queue.extend(c.key for c in children if c.kind is EntryKind.DIR)
    raise AssertionError("not found")


# ---- IoTDA -------------------------------------------------------------------------------------


async def test_iotda_download_window_is_respected(
    make_env: EnvFactory, autojump_clock: trio.testing.MockClock
) -> None:
    env = await make_env(emulator_clock=lambda: 1_700_000_000 + trio.current_time(),
                         iotda_interval=30.0)  # fmt: skip
    iot = env.providers["iotda"]
    files = [e for _, e in await walk(iot)][:3]
    start = trio.current_time()
    for e in files:
        assert await read_all(iot, e)
    assert trio.current_time() - start >= 60.0
    assert "403" not in await env.statuses("iotda.download")


async def test_iotda_server_window_longer_than_ours_waits_and_retries(
    make_env: EnvFactory, autojump_clock: trio.testing.MockClock
) -> None:
    env = await make_env(emulator_clock=lambda: 1_700_000_000 + trio.current_time(),
                         iotda_interval=30.0)  # fmt: skip
    iot = env.providers["iotda"]
    iot.turns.interval = 5.0  # we believe 5 s, the server: 30 s
    files = [e for _, e in await walk(iot)][:2]
    for e in files:
        assert await read_all(iot, e)
    assert (await env.statuses("iotda.download")).get("403", 0) >= 1


async def test_iotda_throttling_403_is_retried(make_env: EnvFactory) -> None:
    """IoTDA throttles with HTTP 403 IOTDA.021101 (not 429): listing and download retry it."""
    env = await make_env()
    iot = env.providers["iotda"]
    await env.faults({"rules": [
        {"route": "iotda.list", "kind": "throttle", "count": 1},
        {"route": "iotda.download", "kind": "throttle", "count": 1},
    ]})  # fmt: skip
    files = [e for _, e in await walk(iot)]
    assert files and await read_all(iot, files[0])
    assert (await env.statuses("iotda.list")).get("403") == 1
    assert (await env.statuses("iotda.download")).get("403") == 1


async def test_iotda_rejects_ranges(make_env: EnvFactory) -> None:
    env = await make_env()
    iot = env.providers["iotda"]
    e = (await walk(iot))[0][1]
    with pytest.raises(ValueError):
        iot.open_stream(ObjectRef("iotda", e.key, e.version, None), 10, None)


# ---- ROMA --------------------------------------------------------------------------------------


async def test_roma_second_download_is_one_shot_consumed(make_env: EnvFactory) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    e = (await walk(roma))[0][1]
    assert await read_all(roma, e)
    with pytest.raises(OneShotConsumed):
        await read_all(roma, e)


async def test_roma_cut_midway_is_one_shot_consumed_and_never_retried(make_env: EnvFactory) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    e = (await walk(roma))[0][1]
    await env.faults({"rules": [{"route": "roma.download", "kind": "truncate",
                                 "after_bytes": 100, "count": 1}]})  # fmt: skip
    with pytest.raises(OneShotConsumed, match="can no longer be fetched"):
        await read_all(roma, e)
    assert (await env.stats())["roma.download"] == 1


async def test_roma_reset_midway_is_one_shot_consumed(make_env: EnvFactory) -> None:
    env = await make_env()
    roma = env.providers["roma"]
    e = (await walk(roma))[0][1]
    await env.faults({"rules": [{"route": "roma.download", "kind": "reset",
                                 "after_bytes": 100, "count": 1}]})  # fmt: skip
    with pytest.raises(OneShotConsumed):
        await read_all(roma, e)
    assert (await env.stats())["roma.download"] == 1


async def test_iam_token_shared_by_iotda_and_roma(make_env: EnvFactory) -> None:
    env = await make_env()
    await walk(env.providers["iotda"])
    await walk(env.providers["roma"])
    assert (await env.stats())["iam.token"] == 1


async def test_ref_of_unknown_key_is_not_found(make_env: EnvFactory) -> None:
    env = await make_env()
    from fusefs.providers.base import ObjectNotFound

    for p in env.providers.values():
        with pytest.raises(ObjectNotFound):
            await p.list_dir("nope/nope")
    _ = ref_of
