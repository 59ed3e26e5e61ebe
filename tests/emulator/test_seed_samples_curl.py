"""The sample requests of the five seed pages (/work/shared/seeds/*.txt), sent with curl to a real
emulator process (``python -m fusefs.emulator``) serving ``world.generate(seed=1, scale="tiny")``.

000 EnOS Download File, 001 EnOS V2.1 Get Firmware File, 002 ROMA "Downloading an Asset Package",
003 IoTDA "Download an Exported File", 004 KooDrive "Obtaining Download Links".
Tokens are obtained with curl too; every id comes from the generated world.json / manifest.json.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from fusefs.emulator.world import generate
from fusefs.testbed import running_emulator

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")

JSON = dict[str, Any]


@dataclass(frozen=True)
class Reply:
    status: int
    headers: dict[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def curl(*args: str) -> Reply:
    """``curl -sS -i --max-time 10 ARGS``, parsed into status, headers and body."""
    out = subprocess.run(
        ["curl", "-sS", "-i", "--max-time", "10", *args], capture_output=True, check=False
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    raw = out.stdout
    while True:
        head, _, raw = raw.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        if status != 100:
            break
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return Reply(status, headers, raw)


def post_json(url: str, body: Any, *headers: str) -> Reply:
    args = ["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", json.dumps(body)]
    for h in headers:
        args += ["-H", h]
    return curl(*args, url)


@dataclass(frozen=True)
class Env:
    base: str
    dir: Path
    world: JSON
    manifest: list[JSON]

    def manifest_entry(self, provider: str, **match: str) -> JSON:
        for e in self.manifest:
            if e["provider"] == provider and all(e[k] == v for k, v in match.items()):
                return e
        raise AssertionError(f"no {provider} entry {match} in manifest.json")

    def expected(self, entry: JSON) -> bytes:
        path: str = entry["path"]
        return (self.dir / "expected" / path).read_bytes()


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    root = tmp_path_factory.mktemp("seed-curl")
    world_dir = root / "world"
    generate(world_dir, 1, "tiny")
    with running_emulator(world_dir, root) as base:
        yield Env(
            base=base,
            dir=world_dir,
            world=json.loads((world_dir / "world.json").read_text()),
            manifest=json.loads((world_dir / "manifest.json").read_text()),
        )


def enos_token(env: Env) -> str:
    creds = env.world["credentials"]["enos"]
    ts = int(time.time() * 1000)
    enc = hashlib.sha256(f"{creds['appKey']}{ts}{creds['appSecret']}".encode()).hexdigest()
    r = post_json(
        env.base + "/apim-token-service/v2.0/token/get",
        {"appKey": creds["appKey"], "encryption": enc, "timestamp": ts},
    )
    assert r.status == 200
    body = r.json()
    assert body["status"] == 0 and body["msg"] == "SUCCESS", body
    return str(body["data"]["accessToken"])


def iam_token(env: Env) -> str:
    creds = env.world["credentials"]["iam"]
    body = {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": creds["user"],
                        "password": creds["password"],
                        "domain": {"name": creds["domain"]},
                    }
                },
            },
            "scope": {"project": {"name": creds["project"]}},
        }
    }
    r = post_json(env.base + "/v3/auth/tokens", body)
    assert r.status == 201, r.body
    assert r.json()["token"]["project"]["id"] == creds["projectId"]
    return r.headers["x-subject-token"]


# ---- 000 EnOS Download File ----------------------------------------------------------------------


def test_seed_000_download_file(env: Env) -> None:
    entry = env.manifest_entry("enos", remote_name="发票1.pdf")
    _, org_id, asset_id, _, _ = entry["path"].split("/")
    file_uri = entry["remote_id"]
    org = next(o for o in env.world["enos"]["orgs"] if o["orgId"] == org_id)
    assert org["files"][file_uri]["assetId"] == asset_id
    expected = env.expected(entry)
    assert len(expected) == entry["size"] > 16
    token = enos_token(env)
    # url: .../connect-service/v2.1/files?action=download&orgId=yourOrgId&fileUri=yourFileUri
    #      &assetId=yourAssetId&category=feature ; requestHeader {"apim-accesstoken": ...}
    url = (
        f"{env.base}/connect-service/v2.1/files?action=download&orgId={org_id}"
        f"&fileUri={file_uri}&assetId={asset_id}&category=feature"
    )
    r = curl("-H", f"apim-accesstoken: {token}", url)
    assert r.status == 200
    assert r.body == expected  # "the binary data stream of the file"
    assert hashlib.md5(r.body).hexdigest() == entry["md5"]
    assert r.headers["content-length"] == str(len(expected))
    assert r.headers["accept-ranges"] == "bytes"
    assert r.headers["content-disposition"] == "attachment; filename*=UTF-8''" + quote("发票1.pdf")

    # fileUri percent-encoded works the same
    enc_url = url.replace(f"fileUri={file_uri}", f"fileUri={quote(file_uri, safe='')}")
    assert curl("-H", f"apim-accesstoken: {token}", enc_url).body == expected

    r = curl("-H", f"apim-accesstoken: {token}", "-H", "Range: bytes=5-14", url)
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes 5-14/{len(expected)}"
    assert r.body == expected[5:15]

    r = curl(url)  # no apim-accesstoken
    assert r.status == 401
    assert r.json() == {"message": "Invalid authentication credentials"}
    r = curl("-H", "apim-accesstoken: not-a-token", url)
    assert r.status == 401


# ---- 001 EnOS V2.1 Get Firmware File -------------------------------------------------------------


def test_seed_001_get_firmware_file(env: Env) -> None:
    org = env.world["enos"]["orgs"][0]
    fw = org["firmwares"][0]
    token = enos_token(env)
    # url: .../connect-service/v2.1/ota-firmwares?action=get&orgId=yourOrgId&firmwareId=...
    url = (
        f"{env.base}/connect-service/v2.1/ota-firmwares?action=get&orgId={org['orgId']}"
        f"&firmwareId={fw['firmwareId']}"
    )
    r = curl("-H", f"apim-accesstoken: {token}", url)
    assert r.status == 200
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"code", "msg", "requestId", "data"}
    assert body["code"] == 0 and body["msg"] == "OK"
    assert isinstance(body["requestId"], str) and body["requestId"]
    data = body["data"]
    # every field of the seed's Return Sample, with the sample's types
    assert set(data) == {
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
    assert data["orgId"] == org["orgId"]
    assert data["firmwareId"] == fw["firmwareId"]
    assert data["productKey"] == fw["productKey"]
    assert data["name"] == fw["name"]
    assert set(data["name"]) == {"defaultValue", "i18nValue"}
    assert isinstance(data["name"]["i18nValue"], dict)
    assert data["version"] == fw["version"]
    assert data["desc"] is None
    assert data["signMethod"] == "md5"
    assert data["sign"] == fw["content"]["md5"]
    assert data["fileUrl"] == fw["fileUrl"] and data["fileUrl"].startswith("enos-connect://")
    assert data["fileSize"] == fw["content"]["size"]
    assert data["isVerified"] is False and data["enableVerification"] is False
    assert data["createTime"] == fw["createTime"] and isinstance(data["createTime"], int)
    assert isinstance(data["firmwareTags"], dict)
    assert isinstance(data["maxAllowedForVerification"], int)
    assert isinstance(data["minSuccessForVerified"], int)

    # Error Codes: 24404 Firmware not found
    bad = url.replace(fw["firmwareId"], "0" * 24)
    r = curl("-H", f"apim-accesstoken: {token}", bad)
    assert r.status == 200  # metadata API: business error inside the envelope
    body = r.json()
    assert body["code"] == 24404 and body["msg"] == "Firmware not found"
    assert body["data"] is None and body["requestId"]

    assert curl(url).status == 401


# ---- 002 ROMA Downloading an Asset Package -------------------------------------------------------


def test_seed_002_roma_download_asset_package(env: Env) -> None:
    roma = env.world["roma"]
    inst = roma["instances"][0]
    job = next(j for j in inst["jobs"] if j["status"] == "SUCCEEDED")
    archive_id = job["archive_id"]
    entry = env.manifest_entry("roma", remote_id=archive_id)
    token = iam_token(env)
    # GET /v2/{project_id}/instances/{instance_id}/assets/archives/{archive_id}, X-Auth-Token
    prefix = f"{env.base}/v2/{roma['projectId']}/instances/{inst['instanceId']}"
    url = f"{prefix}/assets/archives/{archive_id}"
    r = curl("-H", f"X-Auth-Token: {token}", url)
    assert r.status == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(job["content"]["size"])
    assert r.headers["content-disposition"] == f'attachment; filename="{archive_id}.zip"'
    assert r.body == env.expected(entry)
    assert hashlib.md5(r.body).hexdigest() == job["content"]["md5"]
    assert zipfile.is_zipfile(io.BytesIO(r.body))

    # "The asset package can be downloaded only once": 403 in the documented shape
    r = curl("-H", f"X-Auth-Token: {token}", url)
    assert r.status == 403
    body = r.json()
    assert set(body) == {"error_code", "error_msg", "error_details", "request_id"}
    assert body["error_code"] == "ROMA.00000101"
    assert all(isinstance(v, str) and 1 <= len(v) <= 128 for v in body.values())

    r = curl(url)  # no X-Auth-Token
    assert r.status == 401
    assert r.json()["error_code"] == "APIG.0301"


# ---- 003 IoTDA Download an Exported File ---------------------------------------------------------


def test_seed_003_iotda_download_exported_file(env: Env) -> None:
    iotda = env.world["iotda"]
    task = next(t for t in iotda["tasks"] if t["status"] == "Success")
    task_id = task["export_task_id"]
    entry = env.manifest_entry("iotda", remote_id=task_id)
    token = iam_token(env)
    # GET https://{endpoint}/v5/iot/{project_id}/export-tasks/{export_task_id}/file
    url = f"{env.base}/v5/iot/{iotda['projectId']}/export-tasks/{task_id}/file"
    r = curl("-H", f"X-Auth-Token: {token}", "-H", f"Instance-Id: {iotda['instanceId']}", url)
    assert r.status == 200
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-length"] == str(task["content"]["size"])
    assert r.headers["content-disposition"] == f'attachment; filename="{task_id}.zip"'
    assert "accept-ranges" not in r.headers
    assert r.body == env.expected(entry)
    with zipfile.ZipFile(io.BytesIO(r.body)) as zf:
        names = zf.namelist()
        assert len(names) == 1 and names[0].endswith(".xls")
        assert zf.read(names[0])

    # a second download within the window (30 s) is refused
    r = curl("-H", f"X-Auth-Token: {token}", url)
    assert r.status == 403
    assert r.json() == {
        "error_code": "IOTDA.014805",
        "error_msg": "Download export file too frequently.",
    }

    r = curl(url)  # no X-Auth-Token
    assert r.status == 401


# ---- 004 KooDrive Obtaining Download Links -------------------------------------------------------


def test_seed_004_koodrive_download_links(env: Env) -> None:
    # the seed's sample: a team space (IAADfsBFCO6WtAtuA9add…) and 发票1.pdf ("Invoice 1.pdf")
    team = next(c for c in env.world["koodrive"]["containers"] if c["type"] == "0")
    cid = team["containerId"]
    entry = next(
        e
        for e in env.manifest
        if e["provider"] == "koodrive"
        and e["remote_name"] == "发票1.pdf"
        and e["path"].startswith(f"koodrive/{cid}/")
    )
    file_id = entry["remote_id"]
    expected = env.expected(entry)
    token = env.world["credentials"]["koodrive"]["token"].removeprefix("Bearer ")
    # POST /koodrive/ose/v1/files/download Authorization:Bearer+<token>
    #   { "containerId": "...", "fileIds": [ "..." ] }
    r = post_json(
        env.base + "/koodrive/ose/v1/files/download",
        {"containerId": cid, "fileIds": [file_id]},
        f"Authorization: Bearer+{token}",
    )
    assert r.status == 200
    body = r.json()
    assert set(body) == {"downloads", "batchCode", "code", "msg"}
    assert body["batchCode"] == 1 and body["code"] == 0 and isinstance(body["msg"], str)
    assert len(body["downloads"]) == 1
    item = body["downloads"][0]
    assert set(item) == {"fileId", "url", "fileName", "code", "msg"}
    assert item["fileId"] == file_id and item["fileName"] == "发票1.pdf"
    assert item["code"] == "0" and isinstance(item["msg"], str)
    url = item["url"]
    assert url.startswith(env.base + "/")
    for key in (
        "response-content-disposition=",
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Date=",
        "X-Amz-SignedHeaders=host",
        "X-Amz-Expires=",
        "X-Amz-Credential=",
        "X-Amz-Signature=",
    ):
        assert key in url

    # the link is fetchable without auth
    r = curl(url)
    assert r.status == 200
    assert r.body == expected
    assert r.headers["content-length"] == str(len(expected))
    assert r.headers["etag"] == f'"{entry["md5"]}"'
    assert r.headers["accept-ranges"] == "bytes"
    assert "attachment" in r.headers["content-disposition"]
    r = curl("-H", "Range: bytes=10-99", url)
    assert r.status == 206
    assert r.headers["content-range"] == f"bytes 10-99/{len(expected)}"
    assert r.body == expected[10:100]

    # the Authorization header is mandatory
    r = post_json(
        env.base + "/koodrive/ose/v1/files/download", {"containerId": cid, "fileIds": [file_id]}
    )
    assert r.status == 401
