"""Every object of a generated world (``world.generate(seed=1, scale="tiny")``) is served with its
declared size and md5 through the API a client would use."""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusefs.emulator.app import create_app

MAX = 8 << 20  # bigger objects are covered by Range tests; keep the suite fast


@pytest.fixture(scope="module")
def generated(tmp_path_factory: pytest.TempPathFactory) -> Path:
    world = pytest.importorskip("fusefs.emulator.world")
    out = tmp_path_factory.mktemp("gen") / "tiny"
    world.generate(out, seed=1, scale="tiny")
    return out


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


async def test_generated_world_served(generated: Path) -> None:
    w: dict[str, Any] = json.loads((generated / "world.json").read_text())
    cr = w["credentials"]
    app = create_app(generated)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emu.test"
    ) as c:
        ts = int(time.time() * 1000)
        e = cr["enos"]
        enc = hashlib.sha256(f"{e['appKey']}{ts}{e['appSecret']}".encode()).hexdigest()
        r = await c.post(
            "/apim-token-service/v2.0/token/get",
            json={"appKey": e["appKey"], "encryption": enc, "timestamp": ts},
        )
        h = {"apim-accesstoken": r.json()["data"]["accessToken"]}
        for org in w["enos"]["orgs"]:
            o = org["orgId"]
            for uri, f in org["files"].items():
                q = {"orgId": o, "fileUri": uri, "category": f["category"], "assetId": f["assetId"]}
                r = await c.get(
                    "/connect-service/v2.1/files", headers=h, params={**q, "action": "getFileInfo"}
                )
                meta = r.json()["data"]
                assert (meta["fileSize"], meta["md5"]) == (
                    f["content"]["size"],
                    f["content"]["md5"],
                )
                if f["content"]["size"] <= MAX:
                    r = await c.get(
                        "/connect-service/v2.1/files", headers=h, params={**q, "action": "download"}
                    )
                    assert md5(r.content) == f["content"]["md5"], uri
        koo = {"Authorization": cr["koodrive"]["token"]}
        for ct in w["koodrive"]["containers"]:
            url = (
                "/koodrive/ose/v1/files/0"
                if ct["type"] == "1"
                else f"/koodrive/ose/v1/files/{ct['groupId']}/0"
            )
            seen = 0
            todo = ["root"]
            while todo:
                parent, cursor = todo.pop(), ""
                while True:
                    page = (
                        await c.post(
                            url,
                            headers=koo,
                            json={
                                "containerId": ct["containerId"],
                                "parentFileId": parent,
                                "pageInfo": {"pageSize": 100, "pageCursor": cursor},
                            },
                        )
                    ).json()
                    assert page["code"] == 0, page
                    seen += len(page["files"])
                    todo += [f["id"] for f in page["files"] if f["fileType"] == "10"]
                    if "nextCursor" not in page:
                        break
                    cursor = page["nextCursor"]
            assert seen == len(ct["entries"])
            small = [x for x in ct["entries"] if not x["folder"] and x["content"]["size"] <= MAX]
            for i in range(0, len(small), 100):
                batch = small[i : i + 100]
                out = (
                    await c.post(
                        "/koodrive/ose/v1/files/download",
                        headers=koo,
                        json={
                            "containerId": ct["containerId"],
                            "fileIds": [x["id"] for x in batch],
                        },
                    )
                ).json()
                assert out["batchCode"] == 1
                for x, d in zip(batch, out["downloads"], strict=True):
                    assert md5((await c.get(d["url"])).content) == x["content"]["md5"]
