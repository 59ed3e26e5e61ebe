"""EnOS routes: token service, gateway auth, metadata envelopes and paging, downloads, Range."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx

from fusefs.emulator.content import generated_range

from .conftest import (
    APP_KEY,
    BIG_URI,
    FW_BYTES,
    FW_URI,
    ORG,
    PK,
    TEXT,
    TEXT_URI,
    FakeClock,
    enos_headers,
    enos_token_body,
)

TOKEN_GET = "/apim-token-service/v2.0/token/get"
TOKEN_REFRESH = "/apim-token-service/v2.0/token/refresh"
FILES = "/connect-service/v2.1/files"


def assert_ok_envelope(body: dict[str, Any]) -> None:
    assert body["code"] == 0 and body["msg"] == "OK"
    assert len(body["requestId"]) == 36
    assert "data" in body


async def test_token_get_number_and_string_timestamp(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    r = await client.post(TOKEN_GET, json=enos_token_body(clock))
    body = r.json()
    assert r.status_code == 200
    assert body["status"] == 0 and body["msg"] == "SUCCESS"
    assert body["business"] == "apim-token-service"
    assert body["data"]["expire"] == 7200
    clock.advance(100)
    r2 = await client.post(TOKEN_GET, json=enos_token_body(clock, as_string=True))
    # same token while not expired, with the remaining lifetime
    assert r2.json()["data"]["accessToken"] == body["data"]["accessToken"]
    assert r2.json()["data"]["expire"] == 7100


async def test_token_errors(client: httpx.AsyncClient, clock: FakeClock) -> None:
    good = enos_token_body(clock)
    cases = [
        ({**good, "appKey": "nope"}, 1002),
        ({**good, "encryption": "0" * 64}, 1003),
        ({**good, "timestamp": "abc"}, 1004),
        ({"appKey": APP_KEY}, 1202),
        ({**good, "timestamp": good["timestamp"] - 3_600_000}, 1004),
    ]
    for body, status in cases:
        r = await client.post(TOKEN_GET, json=body)
        assert r.status_code == 200
        assert r.json()["status"] == status, body
        assert r.json()["business"] == "apim-token-service"
        assert r.json()["data"] is None
    r = await client.post(TOKEN_GET, content=b"{not json")
    assert r.json()["status"] == 1004


async def test_token_refresh_and_expiry(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    old = h["apim-accesstoken"]
    r = await client.post(TOKEN_REFRESH, json={**enos_token_body(clock), "accessToken": old})
    new = r.json()["data"]["accessToken"]
    assert r.json()["status"] == 0 and new != old and r.json()["data"]["expire"] == 7200
    r = await client.post(TOKEN_REFRESH, json={**enos_token_body(clock), "accessToken": "bogus"})
    assert r.json()["status"] == 1204
    url = f"/asset-service/v2.1/assets?action=get&orgId={ORG}&assetId=DEV00000"
    assert (await client.get(url, headers={"apim-accesstoken": old})).status_code == 200
    clock.advance(7201)
    for tok in (old, new):
        r = await client.get(url, headers={"apim-accesstoken": tok})
        assert r.status_code == 401
        assert r.json() == {"message": "Invalid authentication credentials"}
    r = await client.post(TOKEN_REFRESH, json={**enos_token_body(clock), "accessToken": old})
    assert r.json()["status"] == 1203


async def test_gateway_401_missing_or_unknown(client: httpx.AsyncClient) -> None:
    url = f"/asset-service/v2.1/assets?action=get&orgId={ORG}&assetId=DEV00000"
    for headers in ({}, {"apim-accesstoken": "nope"}):
        r = await client.get(url, headers=headers)
        assert r.status_code == 401
        assert r.json() == {"message": "Invalid authentication credentials"}


async def test_common_errors(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    r = await client.get(f"/asset-service/v2.1/assets?orgId={ORG}", headers=h)
    assert r.status_code == 200
    assert r.json()["code"] == 99400
    assert r.json()["msg"] == "Invalid Argument action:action is missing"
    assert r.json()["data"] is None
    r = await client.get("/asset-service/v2.1/assets?action=get&assetId=x", headers=h)
    assert r.json()["code"] == 99400
    r = await client.get(
        "/asset-service/v2.1/assets?action=get&orgId=o1558000000000&assetId=x", headers=h
    )
    assert r.status_code == 200
    assert r.json()["code"] == 99403
    assert r.json()["msg"] == "Denied resource:  orgId o1558000000000"
    r = await client.get(
        f"/asset-service/v2.1/assets?action=get&orgId={ORG}&assetId=missing", headers=h
    )
    assert r.json()["code"] == 99404
    r = await client.get("/no/such/path", headers=h)
    assert r.status_code == 404


async def test_search_device_pages_to_end(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    url = f"/connect-service/v2.1/devices?action=search&orgId={ORG}"
    seen: list[str] = []
    page_no = 1
    while True:
        r = await client.post(
            url, headers=h, json={"pagination": {"pageNo": page_no, "pageSize": 5}}
        )
        body = r.json()
        assert_ok_envelope(body)
        assert body["pagination"] == {
            "sortedBy": None,
            "pageNo": page_no,
            "pageSize": 5,
            "totalSize": 12,
        }
        seen += [d["assetId"] for d in body["data"]]
        if page_no * 5 >= body["pagination"]["totalSize"]:
            break
        page_no += 1
    assert page_no == 3 and len(seen) == 12 == len(set(seen))
    # sorted by createTime desc; the logical asset is not a device
    assert seen[0] == "DEV00011" and "LOGIC001" not in seen
    dev = body["data"][-1]
    for key in (
        "orgId",
        "assetId",
        "modelId",
        "modelIdPath",
        "productKey",
        "productName",
        "productType",
        "dataFormat",
        "deviceKey",
        "deviceName",
        "deviceSecret",
        "timezone",
        "deviceAttributes",
        "deviceTags",
        "createTime",
        "status",
    ):
        assert key in dev
    # default page size 10, max 200
    r = await client.post(url, headers=h, json={})
    assert len(r.json()["data"]) == 10 and r.json()["pagination"]["pageSize"] == 10
    r = await client.post(url, headers=h, json={"pagination": {"pageNo": 1, "pageSize": 201}})
    assert r.json()["code"] == 99400
    r = await client.post(url, headers=h, json={"pagination": {"pageNo": 9, "pageSize": 5}})
    assert r.json()["data"] == [] and r.json()["pagination"]["totalSize"] == 12
    r = await client.post(url, headers=h, json={"expression": "deviceKey = 'dk003'"})
    assert [d["assetId"] for d in r.json()["data"]] == ["DEV00003"]


async def test_search_asset_node_get_asset_device(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    h = await enos_headers(client, clock)
    r = await client.post(
        f"/asset-tree-service/v2.1/asset-nodes?action=searchAsset&orgId={ORG}", headers=h, json={}
    )
    body = r.json()
    assert_ok_envelope(body)
    assert body["pagination"]["pageSize"] == 100 and body["pagination"]["totalSize"] == 13
    assert "LOGIC001" in [a["assetId"] for a in body["data"]]
    r = await client.post(
        f"/asset-tree-service/v2.1/asset-nodes?action=searchAsset&orgId={ORG}",
        headers=h,
        json={"pagination": {"pageNo": 1, "pageSize": 1001}},
    )
    assert r.json()["code"] == 99400
    r = await client.get(
        f"/asset-service/v2.1/assets?action=get&orgId={ORG}&assetId=DEV00000", headers=h
    )
    a = r.json()["data"]
    assert a["assetId"] == "DEV00000" and a["attributes"]["manual"] == TEXT_URI
    assert a["desc"] is None and a["modelIdPath"] == "/inverter" and a["tags"] == {}
    r = await client.get(
        f"/connect-service/v2.1/devices?action=get&orgId={ORG}&productKey={PK}&deviceKey=dk001",
        headers=h,
    )
    assert r.json()["data"]["assetId"] == "DEV00001"
    r = await client.get(
        f"/connect-service/v2.1/devices?action=get&orgId={ORG}&assetId=LOGIC001", headers=h
    )
    assert r.json()["code"] == 99404
    r = await client.get(f"/connect-service/v2.1/devices?action=get&orgId={ORG}", headers=h)
    assert r.json()["code"] == 99400


async def test_product_model_measurepoints(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    r = await client.post(
        f"/connect-service/v2.1/products?action=search&orgId={ORG}",
        headers=h,
        json={"expression": f"productKey='{PK}'"},
    )
    assert [p["productKey"] for p in r.json()["data"]] == [PK]
    assert r.json()["pagination"]["totalSize"] == 1
    r = await client.get(
        f"/connect-service/v2.1/products?action=get&orgId={ORG}&productKey=zz", headers=h
    )
    assert r.json()["code"] == 11611
    r = await client.get(
        f"/model-service/v2.1/thing-models?action=get&orgId={ORG}&modelId=inverter", headers=h
    )
    model = r.json()["data"]
    assert model["attributes"]["manual"]["dataType"] == "FILE"
    assert model["measurepoints"]["snapshot"]["dataType"] == "FILE"
    r = await client.post(
        f"/connect-service/v2.1/measurepoints?action=queryLatest&orgId={ORG}&assetId=DEV00000",
        headers=h,
        json={"measurepointIds": ["snapshot"]},
    )
    assert r.json()["data"] == [{"id": "snapshot", "time": "1600000000001", "value": BIG_URI}]


async def test_file_info_and_download(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    q = f"orgId={ORG}&category=feature&assetId=DEV00000"
    r = await client.get(f"{FILES}?action=getFileInfo&{q}&fileUri={TEXT_URI}", headers=h)
    meta = r.json()["data"]
    assert meta == {
        "orgId": ORG,
        "category": "feature",
        "fileUri": TEXT_URI,
        "originalFilename": "manual.txt",
        "fileSize": len(TEXT),
        "md5": hashlib.md5(TEXT).hexdigest(),
        "signMethod": "md5",
        "sign": hashlib.md5(TEXT).hexdigest(),
        "createTime": 1579580182824,
    }
    # raw (unencoded) and percent-encoded fileUri
    for url in (
        f"{FILES}?action=download&{q}&fileUri={TEXT_URI}",
        f"{FILES}?action=download&{q}&fileUri=enos-connect%3A%2F%2F2963ede9f0800000.txt",
    ):
        r = await client.get(url, headers=h)
        assert r.status_code == 200 and r.content == TEXT
        assert r.headers["content-length"] == str(len(TEXT))
        assert r.headers["accept-ranges"] == "bytes"
        assert r.headers["content-type"] == "application/octet-stream"
    url = f"{FILES}?action=download&{q}&fileUri={TEXT_URI}"
    for rng, first, last in (
        ("bytes=0-9", 0, 9),
        ("bytes=1195-", 1195, 1199),
        ("bytes=-4", 1196, 1199),
        ("bytes=10-99999", 10, 1199),
    ):
        r = await client.get(url, headers={**h, "Range": rng})
        assert r.status_code == 206, rng
        assert r.content == TEXT[first : last + 1]
        assert r.headers["content-range"] == f"bytes {first}-{last}/{len(TEXT)}"
    r = await client.get(url, headers={**h, "Range": "bytes=1200-"})
    assert r.status_code == 416 and r.headers["content-range"] == f"bytes */{len(TEXT)}"
    r = await client.get(url, headers={**h, "Range": "bytes=0-1,5-6"})
    assert r.status_code == 200 and r.content == TEXT


async def test_big_generated_download(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    url = f"{FILES}?action=download&orgId={ORG}&category=feature&assetId=DEV00000&fileUri={BIG_URI}"
    size = 3 * 1024 * 1024 + 5
    r = await client.get(url, headers=h)
    assert len(r.content) == size
    assert r.content == b"".join(generated_range("enos-big", 0, size))
    r = await client.get(url, headers={**h, "Range": "bytes=1048570-1048585"})
    assert r.content == b"".join(generated_range("enos-big", 1048570, 16))


async def test_download_errors_are_non_2xx_envelopes(
    client: httpx.AsyncClient, clock: FakeClock
) -> None:
    h = await enos_headers(client, clock)
    base = f"{FILES}?action=download&orgId={ORG}&category=feature"
    cases = [
        (f"{base}&assetId=DEV00000&fileUri=enos-connect://ffff000000000000.txt", 404, 99404),
        (f"{base}&assetId=DEV00001&fileUri={TEXT_URI}", 404, 99404),  # file of another asset
        (f"{base}&assetId=DEV00000", 400, 99400),
        (
            f"{FILES}?action=download&orgId={ORG}&category=bogus&assetId=DEV00000&fileUri={TEXT_URI}",
            400,
            99400,
        ),
        (
            f"{FILES}?action=download&orgId=o1&category=feature&assetId=DEV00000&fileUri={TEXT_URI}",
            403,
            99403,
        ),
    ]
    for url, status, code in cases:
        r = await client.get(url, headers=h)
        assert r.status_code == status, url
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["code"] == code and r.json()["data"] is None


async def test_firmware_search_get_download(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    url = f"/connect-service/v2.1/ota-firmwares?action=search&orgId={ORG}"
    for expr in (
        f"productKey='{PK}'",
        f'productKey = "{PK}"',
        f"productKey in ('{PK}', 'x')",
        f'isVerified = false AND productKey = "{PK}"',
    ):
        r = await client.post(
            url, headers=h, json={"expression": expr, "pagination": {"pageNo": 1, "pageSize": 2}}
        )
        body = r.json()
        assert body["code"] == 0, expr
        assert body["pagination"] == {"sortedBy": None, "pageNo": 1, "pageSize": 2, "totalSize": 3}
        assert [f["version"] for f in body["data"]] == ["2.2", "2.1"]  # createTime desc
    r = await client.post(url, headers=h, json={"expression": "productKey='nope'"})
    assert r.json()["data"] == [] and r.json()["pagination"]["totalSize"] == 0
    r = await client.post(url, headers=h, json={"expression": "name like 'x'"})
    assert r.json()["code"] == 99400
    r = await client.post(url, headers=h, json={"expression": "productKey = "})
    assert r.json()["code"] == 99400
    fw_id = "5ede13577072bf001f23de80"
    r = await client.get(
        f"/connect-service/v2.1/ota-firmwares?action=get&orgId={ORG}&firmwareId={fw_id}", headers=h
    )
    fw = r.json()["data"]
    assert fw["fileUrl"] == FW_URI and fw["fileSize"] == len(FW_BYTES) + 1
    assert fw["sign"] == hashlib.md5(FW_BYTES + b"\0").hexdigest() and fw["signMethod"] == "md5"
    r = await client.get(
        f"/connect-service/v2.1/ota-firmwares?action=get&orgId={ORG}&firmwareId=5ede13577072bf001f23deff",
        headers=h,
    )
    assert r.status_code == 200
    assert r.json()["code"] == 24404 and r.json()["msg"] == "Firmware not found"
    dl = f"/connect-service/v2.5/files?action=downloadFirmwareFile&orgId={ORG}&firmwareId={fw_id}"
    r = await client.get(dl, headers=h)
    assert r.status_code == 200 and r.content == FW_BYTES + b"\0"
    r = await client.get(dl, headers={**h, "Range": "bytes=0-3"})
    assert r.status_code == 206 and r.content == FW_BYTES[:4]
    r = await client.get(dl.replace(fw_id, "5ede13577072bf001f23deff"), headers=h)
    assert r.status_code == 404 and r.json()["code"] == 24404
    # the same bytes through Download File, category=ota, with a device of the product
    r = await client.get(
        f"{FILES}?action=download&orgId={ORG}&category=ota&assetId=DEV00003&fileUri={FW_URI}",
        headers=h,
    )
    assert r.status_code == 200 and r.content == FW_BYTES + b"\0"
