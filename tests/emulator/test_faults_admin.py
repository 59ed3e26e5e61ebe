"""Fault plan kinds, admin routes (stats, faults, mutations, reset) and the index lag."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusefs.emulator.faults import FaultEngine, FaultPlan, FaultPlanError, Rule

from .conftest import KOO, KOO_TOKEN, ORG, PERSONAL, TEXT, TEXT_URI, FakeClock, enos_headers, koo_id

DL = (
    f"/connect-service/v2.1/files?action=download&orgId={ORG}&category=feature"
    f"&assetId=DEV00000&fileUri={TEXT_URI}"
)
INFO = DL.replace("action=download", "action=getFileInfo")
LIST = "/koodrive/ose/v1/files/0"


async def put_faults(client: httpx.AsyncClient, plan: dict[str, Any], merge: bool = False) -> Any:
    r = await client.put("/_admin/faults" + ("?merge=1" if merge else ""), json=plan)
    assert r.status_code == 200, r.text
    return r.json()


async def test_error_count_and_stats(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    await client.post("/_admin/stats/reset")
    await put_faults(
        client, {"rules": [{"route": "enos.download", "kind": "error", "status": 503, "count": 2}]}
    )
    statuses = [(await client.get(DL, headers=h)).status_code for _ in range(3)]
    assert statuses == [503, 503, 200]
    await client.get(DL, headers=h)
    stats = (await client.get("/_admin/stats")).json()
    assert stats["requests"]["enos.download"] == 4
    assert stats["statuses"]["enos.download"] == {"503": 2, "200": 2}
    assert stats["bytes"]["enos.download"] >= 2 * len(TEXT)
    plan = (await client.get("/_admin/faults")).json()
    assert plan["rules"][0]["count"] == 0
    await client.post("/_admin/stats/reset")
    assert (await client.get("/_admin/stats")).json()["requests"] == {}


async def test_error_bodies_per_family(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await put_faults(client, {"rules": [{"route": "*", "kind": "error", "status": 500}]})
    r = await client.post("/apim-token-service/v2.0/token/get", json={})
    assert r.status_code == 500 and r.json() == {"message": "An unexpected error occurred"}
    r = await client.post(LIST, headers=KOO, json={})
    assert r.status_code == 500 and r.json()["code"] == 500
    r = await client.get("/v5/iot/x/export-tasks")
    assert r.status_code == 500 and "error_code" in r.json()
    r = await client.get("/obs/b/k")
    assert r.status_code == 500 and b"<Error>" in r.content
    # admin routes are never faulted
    assert (await client.get("/_admin/stats")).status_code == 200


async def test_throttle_retry_after(client: httpx.AsyncClient) -> None:
    await put_faults(
        client,
        {"rules": [{"route": "koodrive.*", "kind": "throttle", "retry_after": 3, "count": 1}]},
    )
    body = {"containerId": PERSONAL, "parentFileId": "root"}
    r = await client.post(LIST, headers=KOO, json=body)
    assert r.status_code == 429 and r.headers["retry-after"] == "3"
    assert (await client.post(LIST, headers=KOO, json=body)).status_code == 200


async def test_probabilistic_errors_are_seeded() -> None:
    def run() -> list[int | None]:
        eng = FaultEngine(FaultPlan(seed=7, rules=[Rule(route="x", kind="error", rate=0.5)]))
        return [eng.decide("x").status for _ in range(40)]

    a, b = run(), run()
    assert a == b and 5 < a.count(503) < 35
    eng = FaultEngine(FaultPlan(rules=[Rule(route="x", kind="error")]))
    assert eng.decide("y").status is None


async def test_latency(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    await put_faults(
        client, {"rules": [{"route": "enos.download", "kind": "latency", "seconds": 0.2}]}
    )
    t0 = time.monotonic()
    r = await client.get(DL, headers=h)
    assert r.status_code == 200 and time.monotonic() - t0 >= 0.19


async def test_reset_and_truncate(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    await put_faults(
        client,
        {"rules": [{"route": "enos.download", "kind": "truncate", "after_bytes": 100, "count": 1}]},
    )
    r = await client.get(DL, headers=h)
    assert r.headers["content-length"] == str(len(TEXT)) and r.content == TEXT[:100]
    await put_faults(
        client,
        {"rules": [{"route": "enos.download", "kind": "reset", "after_bytes": 10, "count": 1}]},
    )
    with pytest.raises(Exception, match="injected reset"):
        await client.get(DL, headers=h)
    assert (await client.get(DL, headers=h)).content == TEXT
    stats = (await client.get("/_admin/stats")).json()
    assert stats["bytes"]["enos.download"] == 100 + 10 + len(TEXT)


async def test_faults_put_merge_and_validation(client: httpx.AsyncClient) -> None:
    plan = await put_faults(client, {"presign_expires": 5, "rules": [{"route": "a"}]})
    assert plan["presign_expires"] == 5 and len(plan["rules"]) == 1
    plan = await put_faults(client, {"index_lag": 2, "rules": [{"route": "b"}]}, merge=True)
    assert plan["presign_expires"] == 5 and plan["index_lag"] == 2
    assert [r["route"] for r in plan["rules"]] == ["a", "b"]
    plan = await put_faults(client, {"enos_range": False})
    assert plan["presign_expires"] == 3600 and plan["rules"] == []
    for bad in ({"nope": 1}, {"rules": [{"kind": "explode"}]}, {"rules": [{"rate": 2}]}, [1]):
        r = await client.put("/_admin/faults", json=bad)
        assert r.status_code == 400


async def test_range_off(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    await put_faults(client, {"enos_range": False})
    r = await client.get(DL, headers={**h, "Range": "bytes=0-9"})
    assert r.status_code == 200 and r.content == TEXT and "accept-ranges" not in r.headers


async def test_short_and_empty_koodrive_pages(client: httpx.AsyncClient) -> None:
    await put_faults(client, {"koodrive_page_limit": 30, "koodrive_empty_every": 3})
    cursor = ""
    sizes = []
    ids: list[str] = []
    while True:
        r = await client.post(
            LIST,
            headers=KOO,
            json={
                "containerId": PERSONAL,
                "parentFileId": "root",
                "pageInfo": {"pageSize": 100, "pageCursor": cursor},
            },
        )
        page = r.json()
        sizes.append(len(page["files"]))
        ids += [f["id"] for f in page["files"]]
        if "nextCursor" not in page:
            break
        cursor = page["nextCursor"]
    assert len(ids) == 251 == len(set(ids))
    assert 0 in sizes[:-1] and max(sizes) == 30


async def test_enos_tokens_lifetime_from_plan(client: httpx.AsyncClient, clock: FakeClock) -> None:
    await put_faults(client, {"enos_token_lifetime": 5, "iam_token_lifetime": 5})
    h = await enos_headers(client, clock)
    assert (await client.get(DL, headers=h)).status_code == 200
    clock.advance(6)
    assert (await client.get(DL, headers=h)).status_code == 401


async def test_admin_enos_file_change_and_index_lag(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    h = await enos_headers(client, clock)
    await put_faults(client, {"index_lag": 10})
    old = (await client.get(INFO, headers=h)).json()["data"]
    changed_at = int(clock() * 1000)
    r = await client.post(
        "/_admin/enos/files",
        json={"orgId": ORG, "fileUri": TEXT_URI, "content": {"data": "version 2\n"}},
    )
    assert r.status_code == 200
    new_md5 = hashlib.md5(b"version 2\n").hexdigest()
    assert r.json()["md5"] == new_md5
    assert (await client.get(DL, headers=h)).content == b"version 2\n"  # downloads are fresh
    assert (await client.get(INFO, headers=h)).json()["data"] == old  # metadata lags
    clock.advance(11)
    info = (await client.get(INFO, headers=h)).json()["data"]
    assert info["md5"] == new_md5 and info["fileSize"] == 10
    assert info["createTime"] == changed_at
    # generated content from a key
    r = await client.post(
        "/_admin/enos/files",
        json={"orgId": ORG, "fileUri": TEXT_URI, "content": {"key": "k2", "size": 5000}},
    )
    assert r.json()["fileSize"] == 5000
    assert len((await client.get(DL, headers=h)).content) == 5000
    # a new file attached to an attribute of an asset
    uri = "enos-connect://bbbb000000000002.txt"
    r = await client.post(
        "/_admin/enos/files",
        json={
            "orgId": ORG,
            "fileUri": uri,
            "assetId": "DEV00001",
            "attribute": "manual",
            "originalFilename": "new.txt",
            "content": {"data": "new"},
        },
    )
    assert r.status_code == 200
    a = (
        await client.get(
            f"/asset-service/v2.1/assets?action=get&orgId={ORG}&assetId=DEV00001", headers=h
        )
    ).json()["data"]
    assert a["attributes"]["manual"] == uri
    # reset reloads the world
    assert (await client.post("/_admin/reset")).status_code == 200
    h = await enos_headers(client, clock)
    assert (await client.get(DL, headers=h)).content == TEXT


async def test_admin_koodrive_entries_and_index_lag(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    await put_faults(client, {"index_lag": 5})

    async def names(parent: str = "root") -> set[str]:
        r = await client.post(
            LIST, headers=KOO, json={"containerId": PERSONAL, "parentFileId": parent}
        )
        out = {f["fileName"] for f in r.json()["files"]}
        assert "nextCursor" not in r.json() or parent == "root"
        return out

    r = await client.post(
        "/_admin/koodrive/entries",
        json={
            "containerId": PERSONAL,
            "parentId": koo_id(1000),
            "fileName": "added.txt",
            "content": {"data": "added"},
        },
    )
    assert r.status_code == 200
    new_id = r.json()["id"]
    assert "added.txt" not in await names(koo_id(1000))  # listing lags
    r = await client.post(
        f"/koodrive/ose/v1/files/{new_id}/detail", headers=KOO, json={"containerId": PERSONAL}
    )
    assert r.json()["size"] == 5  # details are fresh
    clock.advance(6)
    assert "added.txt" in await names(koo_id(1000))
    # modify content: old presigned URL stops working (NoSuchKey), new one serves new bytes
    links = await client.post(
        "/koodrive/ose/v1/files/download",
        headers=KOO,
        json={"containerId": PERSONAL, "fileIds": [new_id]},
    )
    old_url = links.json()["downloads"][0]["url"]
    r = await client.post(
        "/_admin/koodrive/entries",
        json={"containerId": PERSONAL, "id": new_id, "content": {"data": "changed!"}},
    )
    assert r.json()["size"] == 8 and r.json()["editedTime"].endswith("Z")
    assert (await client.get(old_url)).status_code == 404
    links = await client.post(
        "/koodrive/ose/v1/files/download",
        headers=KOO,
        json={"containerId": PERSONAL, "fileIds": [new_id]},
    )
    assert (await client.get(links.json()["downloads"][0]["url"])).content == b"changed!"
    r = await client.post(
        "/_admin/koodrive/entries",
        json={"containerId": PERSONAL, "id": koo_id(1000), "delete": True},
    )
    assert len(r.json()["deleted"]) == 4
    clock.advance(6)
    assert "docs" not in await names()


def test_plan_load_json_and_toml(tmp_path: Path) -> None:
    j = tmp_path / "f.json"
    j.write_text(
        json.dumps(
            {
                "presign_expires": 10,
                "rules": [{"route": "koodrive.obs", "kind": "reset", "after_bytes": 5, "count": 1}],
            }
        )
    )
    plan = FaultPlan.load(j)
    assert plan.presign_expires == 10 and plan.rules[0].kind == "reset"
    t = tmp_path / "f.toml"
    t.write_text(
        'index_lag = 2.5\none_shot = false\n[[rules]]\nroute = "*"\nkind = "latency"\n'
        "seconds = 0.1\n"
    )
    plan = FaultPlan.load(t)
    assert plan.index_lag == 2.5 and plan.one_shot is False and plan.rules[0].seconds == 0.1
    t.write_text("bogus = 1\n")
    with pytest.raises(FaultPlanError):
        FaultPlan.load(t)


async def test_resize_and_headers(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """``resize``: a body longer or shorter than the real one, its lengths telling the same;
    ``headers``: lying headers, a ``Content-Length`` cutting the body to it."""
    h = await enos_headers(client, clock)
    rule = {"route": "enos.download", "kind": "resize", "count": 1}
    await put_faults(client, {"rules": [{**rule, "delta": 7, "fill": "ab"}]})
    r = await client.get(DL, headers=h)
    assert r.content == TEXT + b"abababa" and r.headers["content-length"] == str(len(TEXT) + 7)
    await put_faults(client, {"rules": [{**rule, "delta": -1000}]})
    r = await client.get(DL, headers={**h, "Range": "bytes=100-"})
    assert r.status_code == 206 and r.content == TEXT[100:200]
    assert r.headers["content-range"] == f"bytes 100-199/{len(TEXT)}"
    lie = {"Content-Length": "10", "Content-Range": "bytes 0-9/999999999"}
    await put_faults(
        client, {"rules": [{"route": "enos.download", "kind": "headers", "headers": lie}]}
    )
    r = await client.get(DL, headers={**h, "Range": "bytes=0-99"})
    assert r.content == TEXT[:10] and r.headers["content-range"] == "bytes 0-9/999999999"
    r = await client.put(
        "/_admin/faults", json={"rules": [{"kind": "resize", "delta": 1, "fill": ""}]}
    )
    assert r.status_code == 400


async def test_grow_a_page(client: httpx.AsyncClient) -> None:
    """``patch`` with ``grow``: a 100,000-entry page, copies made distinct by ``unique``."""
    grow = {"route": "koodrive.list", "kind": "patch", "match": {}, "grow": {"files": 100_000}}
    await put_faults(client, {"rules": [{**grow, "unique": ["id", "fileName"]}]})
    body = {"containerId": PERSONAL, "parentFileId": "root"}
    files = (await client.post(LIST, headers=KOO, json=body)).json()["files"]
    assert len(files) == 100_000 == len({f["id"] for f in files})
    await put_faults(client, {"rules": [{**grow, "grow": {"files": 300}}]})
    files = (await client.post(LIST, headers=KOO, json=body)).json()["files"]
    assert len(files) == 300 and len({f["id"] for f in files}) == 100  # duplicates


async def test_recorded_answers_and_secrets(client: httpx.AsyncClient, clock: FakeClock) -> None:
    """``record_answers`` keeps the handler's JSON answers (before patches) for a hostile test
    to mutate; ``/_admin/secrets`` names what a leak test greps for."""
    await put_faults(
        client,
        {
            "record_answers": 2,
            "rules": [{"route": "koodrive.list", "kind": "patch", "set": {"msg": "patched"}}],
        },
    )
    body = {"containerId": PERSONAL, "parentFileId": "root"}
    for _ in range(3):
        assert (await client.post(LIST, headers=KOO, json=body)).json()["msg"] == "patched"
    h = await enos_headers(client, clock)
    got = (await client.get("/_admin/answers?route=koodrive.*")).json()["answers"]
    assert len(got) == 2 and got[0]["route"] == "koodrive.list" and got[0]["status"] == 200
    assert got[0]["json"]["msg"] == "success" and got[0]["path"] == LIST
    assert (await client.get("/_admin/answers?route=enos.token.get")).json()["answers"]
    secrets = (await client.get("/_admin/secrets")).json()
    assert h["apim-accesstoken"] in secrets["tokens"]
    assert secrets["credentials"]["koodrive"]["token"].endswith(KOO_TOKEN)
    assert (await client.delete("/_admin/answers")).status_code == 200
    assert (await client.get("/_admin/answers")).json()["answers"] == []
