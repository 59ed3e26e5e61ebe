"""IAM tokens, KooDrive auth/listing/details/space/download links, and the OBS presigned store."""

from __future__ import annotations

import hashlib
import time
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx

from fusefs.emulator.auth import koodrive_canonical_request, koodrive_signature
from fusefs.emulator.content import generated_range

from .conftest import (
    GROUP,
    KOO,
    KOO_APP_ID,
    KOO_APP_SECRET,
    KOO_TOKEN,
    KOO_USER,
    PERSONAL,
    TEAM,
    FakeClock,
    iam_body,
    koo_id,
)

LIST = "/koodrive/ose/v1/files/0"


async def test_iam_token(client: httpx.AsyncClient, clock: FakeClock) -> None:
    r = await client.post("/v3/auth/tokens?nocatalog=true", json=iam_body())
    assert r.status_code == 201
    assert r.headers["X-Subject-Token"].startswith("MII")
    token = r.json()["token"]
    assert token["methods"] == ["password"]
    assert token["expires_at"].endswith("Z")
    assert token["project"]["name"] == "cn-north-4"
    assert token["user"]["name"] == "fusefs-demo"
    exp = time.strptime(token["expires_at"][:19], "%Y-%m-%dT%H:%M:%S")
    iss = time.strptime(token["issued_at"][:19], "%Y-%m-%dT%H:%M:%S")
    assert time.mktime(exp) - time.mktime(iss) == 86400
    r = await client.post("/v3/auth/tokens", json=iam_body("wrong"))
    assert r.status_code == 401
    assert r.json() == {
        "error": {
            "code": 401,
            "message": "The username or password is wrong.",
            "title": "Unauthorized",
        }
    }
    r = await client.post("/v3/auth/tokens", content=b"garbage")
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "The request body is invalid"


def app_auth_headers(
    method: str, path: str, body: bytes, when: float, secret: str = KOO_APP_SECRET
) -> dict[str, str]:
    x_date = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(when))
    headers = {"host": "emu.test", "x-date": x_date, "x-user-id": KOO_USER}
    signed = ["host", "x-date", "x-user-id"]
    canon = koodrive_canonical_request(method, path, [], headers, signed, body)
    sig = koodrive_signature(secret, canon)
    return {
        "Authorization": f"HMAC-SHA256 AppId={KOO_APP_ID},SignedHeaders=host;x-date;x-user-id,"
        f"Signature={sig}",
        "X-Date": x_date,
        "X-User-Id": KOO_USER,
        "Content-Type": "application/json",
    }


async def test_koodrive_auth_variants(client: httpx.AsyncClient, clock: FakeClock) -> None:
    body = b'{"containerId":"%s","parentFileId":"root"}' % PERSONAL.encode()
    for auth in ("Bearer " + KOO_TOKEN, "Bearer+" + KOO_TOKEN, KOO_TOKEN):
        r = await client.post(LIST, content=body, headers={"Authorization": auth})
        assert r.status_code == 200 and r.json()["code"] == 0, auth
    for headers in ({}, {"Authorization": "Bearer nope"}):
        r = await client.post(LIST, content=body, headers=headers)
        assert r.status_code == 401 and r.json() == {"code": 401, "msg": "Unauthorized"}
    r = await client.post(LIST, content=body, headers=app_auth_headers("POST", LIST, body, clock()))
    assert r.status_code == 200 and r.json()["code"] == 0
    bad = [
        app_auth_headers("POST", LIST, body, clock() - 16 * 60),  # stale X-Date
        app_auth_headers("POST", LIST, body, clock() + 120),  # in the future
        app_auth_headers("POST", LIST, body, clock(), secret="wrong"),
        app_auth_headers("POST", LIST, body + b" ", clock()),  # body changed after signing
    ]
    for headers in bad:
        r = await client.post(LIST, content=body, headers=headers)
        assert r.status_code == 401


async def list_all(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> tuple[list[dict[str, Any]], list[int]]:
    files: list[dict[str, Any]] = []
    sizes: list[int] = []
    cursor = ""
    for _ in range(100):
        r = await client.post(
            url,
            headers=KOO,
            json={**body, "pageInfo": {**body.get("pageInfo", {}), "pageCursor": cursor}},
        )
        page = r.json()
        assert r.status_code == 200 and page["code"] == 0, page
        assert page["category"] == "drive#fileList"
        files += page["files"]
        sizes.append(len(page["files"]))
        if "nextCursor" not in page:
            assert page["searchCompleted"] is True
            return files, sizes
        assert page["searchCompleted"] is False and page["nextCursor"]
        cursor = page["nextCursor"]
    raise AssertionError("no end")


async def test_list_pages_to_end(client: httpx.AsyncClient) -> None:
    body = {
        "containerId": PERSONAL,
        "parentFileId": "root",
        "pageInfo": {"pageSize": "100"},
        "sortInfo": {"sortType": "", "sortDirection": ""},
        "fileType": "",
    }
    files, sizes = await list_all(client, LIST, body)
    assert sizes == [100, 100, 51]
    assert len({f["id"] for f in files}) == 251
    folder = next(f for f in files if f["fileName"] == "docs")
    assert folder["fileType"] == "10" and folder["mimeType"] == "application/vnd.huawei-apps.folder"
    assert folder["fileSuffix"] == "" and "size" not in folder
    f = next(f for f in files if f["fileName"] == "file007.txt")
    assert f["size"] == len(b"koo file 7\n") and f["fileSuffix"] == "txt"
    assert f["parentFolder"] == ["DEUI7pa0C24Aroot" + PERSONAL]
    assert f["containers"] == [PERSONAL] and f["createdTime"] == "2023-12-11T09:17:25.529Z"
    for key in (
        "id",
        "fileName",
        "fileType",
        "mimeType",
        "recycled",
        "owners",
        "lastEditor",
        "editedTime",
        "favorite",
        "properties",
        "category",
    ):
        assert key in f
    # a folder by id, int page size, the root id form
    sub, _ = await list_all(
        client,
        LIST,
        {"containerId": PERSONAL, "parentFileId": koo_id(1000), "pageInfo": {"pageSize": 1}},
    )
    assert sorted(x["fileName"] for x in sub) == ["big.bin", "发票1.pdf"]
    root2, _ = await list_all(
        client, LIST, {"containerId": PERSONAL, "parentFileId": "DEUI7pa0C24Aroot" + PERSONAL}
    )
    assert len(root2) == 251
    # recycle bin is empty; team space via groupId
    r = await client.post(
        "/koodrive/ose/v1/files/1",
        headers=KOO,
        json={"containerId": PERSONAL, "parentFileId": "root"},
    )
    assert r.json()["files"] == [] and "nextCursor" not in r.json()
    team, _ = await list_all(
        client, f"/koodrive/ose/v1/files/{GROUP}/0", {"containerId": TEAM, "parentFileId": "root"}
    )
    assert [x["fileName"] for x in team] == ["team.txt"]


async def test_list_errors(client: httpx.AsyncClient) -> None:
    cases = [
        (
            LIST,
            {"containerId": PERSONAL, "parentFileId": "root", "pageInfo": {"pageSize": 101}},
            13000102,
        ),
        (LIST, {"parentFileId": "root"}, 13000102),
        (LIST, {"containerId": "IAADfsBFCO6WtAtuAffff", "parentFileId": "root"}, 13000301),
        (LIST, {"containerId": PERSONAL, "parentFileId": "Fnope"}, 13000309),
        (
            LIST,
            {
                "containerId": PERSONAL,
                "parentFileId": "root",
                "pageInfo": {"pageCursor": "garbage"},
            },
            13000102,
        ),
        ("/koodrive/ose/v1/files/999/0", {"containerId": TEAM, "parentFileId": "root"}, 13000301),
    ]
    for url, body, code in cases:
        r = await client.post(url, headers=KOO, json=body)
        assert r.status_code == 400, body
        assert r.json()["code"] == code and isinstance(r.json()["msg"], str)
    r = await client.post(LIST, headers=KOO, json={"containerId": PERSONAL, "parentFileId": "x"})
    assert r.json() == {"code": 13000309, "msg": "Resource not found."}


async def test_detail_and_space(client: httpx.AsyncClient) -> None:
    r = await client.post(
        f"/koodrive/ose/v1/files/{koo_id(1001)}/detail", headers=KOO, json={"containerId": PERSONAL}
    )
    d = r.json()
    assert d["code"] == 0 and d["id"] == koo_id(1001) and d["fileName"] == "发票1.pdf"
    assert d["fileType"] == "45" or d["fileType"] == "26" or d["mimeType"] == "application/pdf"
    assert d["parentFolder"] == [koo_id(1000)]
    r = await client.post(
        "/koodrive/ose/v1/files/Fnope/detail", headers=KOO, json={"containerId": PERSONAL}
    )
    assert r.status_code == 400 and r.json()["code"] == 13000309
    r = await client.post(
        f"/koodrive/ose/v1/files/{koo_id(2000)}/detail", headers=KOO, json={"containerId": PERSONAL}
    )
    assert r.json()["code"] == 13000302
    r = await client.get(f"/koodrive/ose/v1/space/container/{TEAM}", headers=KOO)
    data = r.json()["data"]
    assert r.json()["code"] == 0 and data["containerId"] == TEAM and data["type"] == "0"
    assert data["bizRootFileId"] == "DEUI7pa0C24Aroot" + TEAM and data["spaceUsed"] == 5
    r = await client.get("/koodrive/ose/v1/space/container/nope", headers=KOO)
    assert r.json()["code"] == 13000301


async def links(client: httpx.AsyncClient, ids: list[str], cid: str = PERSONAL) -> dict[str, Any]:
    r = await client.post(
        "/koodrive/ose/v1/files/download", headers=KOO, json={"containerId": cid, "fileIds": ids}
    )
    return r.json()  # type: ignore[no-any-return]


async def test_download_links_and_obs(client: httpx.AsyncClient, clock: FakeClock) -> None:
    out = await links(client, [koo_id(1001)])
    assert out["code"] == 0 and out["batchCode"] == 1
    item = out["downloads"][0]
    assert item["code"] == "0" and item["msg"] == "success" and item["fileName"] == "发票1.pdf"
    url = item["url"]
    parts = urlsplit(url)
    assert parts.netloc == "emu.test" and parts.path.startswith("/obs/")
    q = parse_qs(parts.query)
    assert q["X-Amz-Algorithm"] == ["AWS4-HMAC-SHA256"] and q["X-Amz-Expires"] == ["3600"]
    assert q["X-Amz-SignedHeaders"] == ["host"] and len(q["X-Amz-Signature"][0]) == 64
    assert q["X-Amz-Credential"][0].endswith("/s3/aws4_request")
    data = b"%PDF-1.4 invoice" * 64
    r = await client.get(url)
    assert r.status_code == 200 and r.content == data
    assert r.headers["etag"] == f'"{hashlib.md5(data).hexdigest()}"'
    assert r.headers["accept-ranges"] == "bytes" and r.headers["content-length"] == str(len(data))
    assert "last-modified" in r.headers
    assert r.headers["content-disposition"].startswith("attachment; filename=")
    r = await client.get(url, headers={"Range": "bytes=16-31"})
    assert r.status_code == 206 and r.content == data[16:32]
    assert r.headers["content-range"] == f"bytes 16-31/{len(data)}"
    for bad in ("bytes=99999-", "bytes=5-2", "chars=0-1"):  # OBS: invalid range -> whole object
        r = await client.get(url, headers={"Range": bad})
        assert r.status_code == 200 and r.content == data, bad
    # tampered
    r = await client.get(url.replace("X-Amz-Expires=3600", "X-Amz-Expires=9999"))
    assert r.status_code == 403 and b"<Code>SignatureDoesNotMatch</Code>" in r.content
    r = await client.get(url[:-1] + ("0" if url[-1] != "0" else "1"))
    assert r.status_code == 403 and b"SignatureDoesNotMatch" in r.content
    # expired
    clock.advance(3601)
    r = await client.get(url)
    assert r.status_code == 403
    assert b"<Code>AccessDenied</Code>" in r.content and b"Request has expired" in r.content


async def test_download_links_batch_codes(client: httpx.AsyncClient) -> None:
    out = await links(client, [koo_id(1), "Fnope"])
    assert out["batchCode"] == 0
    assert [d["code"] for d in out["downloads"]] == ["0", "13000309"]
    out = await links(client, ["Fnope", koo_id(1000)])  # missing + folder
    assert out["batchCode"] == 2 and out["downloads"][1]["code"] == "13000406"
    r = await client.post(
        "/koodrive/ose/v1/files/download",
        headers=KOO,
        json={"containerId": PERSONAL, "fileIds": [koo_id(i) for i in range(101)]},
    )
    assert r.status_code == 400 and r.json()["code"] == 13000102
    big = await links(client, [koo_id(1002)])
    r = await client.get(big["downloads"][0]["url"], headers={"Range": "bytes=1048575-1048576"})
    assert r.content == b"".join(generated_range("koo-big", 1048575, 2))
