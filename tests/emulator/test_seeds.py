"""The sample requests of the five seed doc pages (/work/shared/seeds), answered in the documented
shapes."""

from __future__ import annotations

import httpx

from .conftest import (
    IOT_PROJECT,
    KOO,
    PERSONAL,
    ROMA_INSTANCE,
    ROMA_PROJECT,
    TEXT,
    TEXT_URI,
    FakeClock,
    enos_headers,
    iam_headers,
    koo_id,
)
from .conftest import ORG as YOUR_ORG_ID


async def test_seed_000_download_file(client: httpx.AsyncClient, clock: FakeClock) -> None:
    # url: https://{apigw-address}/connect-service/v2.1/files?action=download&orgId=yourOrgId
    #      &fileUri=yourFileUri&assetId=yourAssetId&category=feature ; header apim-accesstoken
    h = await enos_headers(client, clock)
    url = (
        f"/connect-service/v2.1/files?action=download&orgId={YOUR_ORG_ID}&fileUri={TEXT_URI}"
        "&assetId=DEV00000&category=feature"
    )
    r = await client.get(url, headers={"apim-accesstoken": h["apim-accesstoken"]})
    assert r.status_code == 200 and r.content == TEXT  # "output stream" of the file


async def test_seed_001_get_firmware_file(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await enos_headers(client, clock)
    url = (
        f"/connect-service/v2.1/ota-firmwares?action=get&orgId={YOUR_ORG_ID}"
        "&firmwareId=5ede13577072bf001f23de81"
    )
    body = (await client.get(url, headers=h)).json()
    assert set(body) == {"code", "msg", "requestId", "data"}
    assert body["code"] == 0 and body["msg"] == "OK"
    assert set(body["data"]) == {
        "orgId",
        "firmwareId",
        "productKey",
        "name",
        "version",
        "desc",
        "signMethod",
        "sign",
        "fileUrl",
        "fileSize",
        "isVerified",
        "enableVerification",
        "createTime",
        "firmwareTags",
        "maxAllowedForVerification",
        "minSuccessForVerified",
    }
    assert set(body["data"]["name"]) == {"defaultValue", "i18nValue"}
    assert isinstance(body["data"]["createTime"], int) and body["data"]["desc"] is None
    url = url.replace("de81", "dead")
    body = (await client.get(url, headers=h)).json()
    assert (body["code"], body["msg"]) == (24404, "Firmware not found")


async def test_seed_002_roma_download_archive(client: httpx.AsyncClient) -> None:
    h = await iam_headers(client)
    url = (
        f"/v2/{ROMA_PROJECT}/instances/{ROMA_INSTANCE}/assets/archives/"
        "67298b29a0c828975724dc527465a138"
    )
    r = await client.get(url, headers=h)
    assert r.status_code == 200  # "asset file", once only
    r = await client.get(url, headers=h)
    assert r.status_code == 403
    body = r.json()
    assert set(body) == {"error_code", "error_msg", "error_details", "request_id"}
    assert body["error_code"] == "ROMA.00000101"
    assert all(1 <= len(v) <= 128 for v in body.values())


async def test_seed_003_iotda_download_export_file(client: httpx.AsyncClient) -> None:
    h = await iam_headers(client)
    url = f"/v5/iot/{IOT_PROJECT}/export-tasks/5f33eb6c2cba6c33221e0c02/file"
    r = await client.get(url, headers={**h, "Instance-Id": "inst-1"})
    assert r.status_code == 200 and r.content.startswith(b"PK")
    assert (await client.get(url, headers=h)).status_code == 403  # FORBIDDEN (30-s rule)
    r = await client.get(url.replace("0c02", "0cff"), headers=h)
    assert r.status_code == 404  # Not Found


async def test_seed_004_obtaining_download_links(client: httpx.AsyncClient) -> None:
    r = await client.post(
        "/koodrive/ose/v1/files/download",
        headers=KOO,
        json={"containerId": PERSONAL, "fileIds": [koo_id(3)]},
    )
    assert r.status_code == 200
    body = r.json()
    assert set(body) == {"downloads", "batchCode", "code", "msg"}
    assert body["batchCode"] == 1 and body["code"] == 0
    (d,) = body["downloads"]
    assert set(d) == {"fileId", "url", "fileName", "code", "msg"}
    assert d["fileId"] == koo_id(3) and d["code"] == "0" and d["fileName"] == "file003.txt"
    assert "response-content-disposition=attachment%3B%20filename%3D%22" in d["url"]
    for part in (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Date=",
        "X-Amz-SignedHeaders=host",
        "X-Amz-Expires=3600",
        "X-Amz-Credential=",
        "%2Fs3%2Faws4_request",
        "X-Amz-Signature=",
    ):
        assert part in d["url"]
    r = await client.get(d["url"])
    assert r.status_code == 200 and r.content == b"koo file 3\n"
