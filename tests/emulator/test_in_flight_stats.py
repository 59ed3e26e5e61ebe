"""``/_admin/stats`` reports the most requests of a route answered at once (``max_in_flight``)."""

from __future__ import annotations

import httpx
import trio

from .conftest import KOO, PERSONAL, koo_id


async def obs_url(client: httpx.AsyncClient) -> str:
    r = await client.post(
        "/koodrive/ose/v1/files/download",
        headers=KOO,
        json={"containerId": PERSONAL, "fileIds": [koo_id(1002)]},  # big.bin, 2 MiB + 17
    )
    return str(r.json()["downloads"][0]["url"])


async def max_in_flight(client: httpx.AsyncClient, route: str) -> int:
    stats = (await client.get("/_admin/stats")).json()
    return int(stats["max_in_flight"].get(route, 0))


async def test_max_in_flight_counts_overlapping_requests(client: httpx.AsyncClient) -> None:
    url = await obs_url(client)
    r = await client.put(
        "/_admin/faults",
        json={"rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 0.2}]},
    )
    assert r.status_code == 200
    await client.post("/_admin/stats/reset")
    for _ in range(3):  # one after another: never more than one at once
        assert (await client.get(url, headers={"Range": "bytes=0-9"})).status_code == 206
    assert await max_in_flight(client, "koodrive.obs") == 1

    await client.post("/_admin/stats/reset")
    sizes: list[int] = []

    async def get() -> None:
        r = await client.get(url)
        sizes.append(len(r.content))

    async with trio.open_nursery() as nursery:
        for _ in range(4):
            nursery.start_soon(get)
    assert sizes == [2 * 1024 * 1024 + 17] * 4
    stats = (await client.get("/_admin/stats")).json()
    assert stats["requests"]["koodrive.obs"] == 4
    assert stats["max_in_flight"]["koodrive.obs"] == 4
    # all four finished: the next request alone makes one in flight, the maximum stays
    assert (await client.get(url, headers={"Range": "bytes=0-9"})).status_code == 206
    assert await max_in_flight(client, "koodrive.obs") == 4
    await client.post("/_admin/stats/reset")
    assert (await client.get(url, headers={"Range": "bytes=0-9"})).status_code == 206
    assert await max_in_flight(client, "koodrive.obs") == 1


async def test_injected_errors_leave_the_count_balanced(client: httpx.AsyncClient) -> None:
    url = await obs_url(client)
    await client.put(
        "/_admin/faults",
        json={"rules": [{"route": "koodrive.obs", "kind": "error", "status": 503, "count": 2}]},
    )
    await client.post("/_admin/stats/reset")
    statuses = [
        (await client.get(url, headers={"Range": "bytes=0-9"})).status_code for _ in range(3)
    ]
    assert statuses == [503, 503, 206]
    assert await max_in_flight(client, "koodrive.obs") == 1
