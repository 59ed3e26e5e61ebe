"""The vendors' official Python clients against the real emulator (127.0.0.1, real HTTP).

Huawei Cloud SDKs (``huaweicloudsdkiotda``, ``huaweicloudsdkroma``, ``huaweicloudsdkcore``) sign
every request with AK/SK and parse answers into their model classes, so they are the referee for
field names, types, status codes and the ``X-Request-Id`` header. EnOS's ``enos-poseidon`` is a
plain HTTP helper; it is given an access token of the token service (see docs/providers/enos.md).
All of them are dev dependencies (pyproject ``[dev]``).
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import ssl
import time
import zipfile
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from huaweicloudsdkcore.auth.credentials import BasicCredentials
from huaweicloudsdkcore.exceptions.exceptions import ClientRequestException
from huaweicloudsdkcore.http.http_config import HttpConfig
from huaweicloudsdkcore.sdk_request import SdkRequest
from huaweicloudsdkcore.signer.signer import Signer
from huaweicloudsdkiotda.v5 import (
    AddExportTask,
    CreateExportTaskRequest,
    DeleteExportTaskRequest,
    ExportTask,
    IoTDAClient,
    ListExportTasksRequest,
    ShowExportTaskRequest,
)
from huaweicloudsdkroma.v2 import (
    AssetExportRequest,
    AssetExportRequestApps,
    AssetExportRequestTasks,
    AssetJobReason,
    CheckAssetJobStatusRequest,
    CheckAssetJobStatusResponse,
    DownloadAssetArchiveRequest,
    ExportAssetRequest,
    RomaClient,
)

from fusefs.emulator.app import create_app
from fusefs.emulator.faults import FaultPlan
from fusefs.testbed import running_emulator

from .conftest import (
    APP_KEY,
    APP_SECRET,
    IAM_AK,
    IAM_SK,
    IOT_PROJECT,
    ORG,
    ROMA_INSTANCE,
    ROMA_PROJECT,
    TEXT,
    TEXT_URI,
    FakeClock,
)

_https_context = ssl._create_default_https_context
import poseidon.poseidon as poseidon  # noqa: E402  (it turns TLS verification off on import)

ssl._create_default_https_context = _https_context  # ... for this process: put it back

HEX32 = re.compile(r"^[0-9a-f]{32}$")
ARCHIVE = "67298b29a0c828975724dc527465a138"
SUCCEEDED_JOB = "ff8080814dbd65d7014dbe0d84db0013"
FAILED_JOB = "ff8080814dbd65d7014dbe0d84db0014"


BASE_PLAN = {"roma_job_delay": 0.2, "iotda_task_delay": 0.2}


@pytest.fixture(scope="module")
def emulator(world_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """``python -m fusefs.emulator`` on 127.0.0.1 (port 0), one for this module."""
    tmp = tmp_path_factory.mktemp("sdk-emulator")
    faults = tmp / "faults.json"
    faults.write_text(json.dumps(BASE_PLAN))
    with running_emulator(world_dir, tmp, faults=faults) as url:
        yield url


@pytest.fixture
def server(emulator: str) -> str:
    """The module's emulator with the world reloaded and the base fault plan: each test starts
    with fresh tasks, jobs, archives and download window."""
    assert httpx.put(emulator + "/_admin/faults", json=BASE_PLAN).status_code == 200
    assert httpx.post(emulator + "/_admin/reset").status_code == 200
    return emulator


def put_faults(server: str, plan: dict[str, Any]) -> None:
    r = httpx.put(server + "/_admin/faults?merge=1", json=plan)
    assert r.status_code == 200, r.text


def http_config() -> HttpConfig:
    config = HttpConfig.get_default_config()
    config.timeout = (5, 10)
    return config


def iotda(server: str, sk: str = IAM_SK) -> IoTDAClient:
    creds = BasicCredentials(IAM_AK, sk, IOT_PROJECT)
    builder = IoTDAClient.new_builder().with_credentials(creds).with_endpoints([server])
    return builder.with_http_config(http_config()).build()


def roma(server: str) -> RomaClient:
    creds = BasicCredentials(IAM_AK, IAM_SK, ROMA_PROJECT)
    builder = RomaClient.new_builder().with_credentials(creds).with_endpoints([server])
    return builder.with_http_config(http_config()).build()


def task_blob(i: int) -> bytes:
    """The bytes of the world's export task ``5f33eb6c2cba6c33221e0c<i>`` (see conftest)."""
    return b"PK\x03\x04" + bytes([i]) * 100


# ---- IoTDA --------------------------------------------------------------------------------------


def test_iotda_list_export_tasks_with_marker_paging(server: str) -> None:
    client = iotda(server)
    seen: list[str] = []
    marker: str | None = None
    while True:
        resp = client.list_export_tasks(
            ListExportTasksRequest(resource_type="BatchTask", limit=4, marker=marker)
        )
        assert resp.status_code == 200 and resp.page.count == 15
        assert all(isinstance(t, ExportTask) for t in resp.export_tasks)
        seen += [t.export_task_id for t in resp.export_tasks]
        if len(resp.export_tasks) < 4:
            break
        assert resp.page.marker == resp.export_tasks[-1].export_task_id
        marker = resp.page.marker
    assert len(seen) == 15 == len(set(seen)) and seen == sorted(seen, reverse=True)
    task = resp.export_tasks[-1]
    assert task.export_task_id == "5f33eb6c2cba6c33221e0c00" and task.status == "Success"
    assert isinstance(task.export_count, int) and task.progress == 100
    assert task.resource_condition == {"task_id": "d45972b55d97aae9f1fbd300"}
    assert task.export_format == "xls" and task.app_type == "GLOBAL"
    assert task.create_time == "2020-08-12T12:12:12.333Z"
    offset = client.list_export_tasks(ListExportTasksRequest(limit=3, offset=12))
    assert [t.export_task_id for t in offset.export_tasks] == seen[12:]


def test_iotda_download_file_then_too_frequent(server: str) -> None:
    client = iotda(server)
    resp = client.show_export_task(ShowExportTaskRequest(export_task_id="5f33eb6c2cba6c33221e0c03"))
    assert resp.status_code == 200 and resp.raw_content == task_blob(3)
    with pytest.raises(ClientRequestException) as err:
        client.show_export_task(ShowExportTaskRequest(export_task_id="5f33eb6c2cba6c33221e0c04"))
    e = err.value
    assert (e.status_code, e.error_code) == (403, "IOTDA.014805")
    assert e.error_msg == "Download export file too frequently."
    assert HEX32.match(e.request_id)


def test_iotda_create_and_delete_export_task(server: str) -> None:
    client = iotda(server)
    body = AddExportTask(
        resource_type="BatchTask", resource_condition={"task_id": "32822e5744a45ede319d2c50"}
    )
    created = client.create_export_task(CreateExportTaskRequest(body=body))
    assert created.status_code == 201 and created.status == "Processing"
    assert re.match(r"^[0-9a-f]{24}$", created.export_task_id)
    assert isinstance(created.progress, int) and isinstance(created.export_count, int)
    deadline = time.monotonic() + 10
    while True:
        listed = client.list_export_tasks(ListExportTasksRequest(limit=1)).export_tasks[0]
        assert listed.export_task_id == created.export_task_id  # newest first
        if listed.status == "Success" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert listed.status == "Success" and listed.progress == 100
    file = client.show_export_task(ShowExportTaskRequest(export_task_id=listed.export_task_id))
    with zipfile.ZipFile(io.BytesIO(file.raw_content)) as zf:
        assert zf.namelist() == [f"{listed.export_task_id}.xls"]
    deleted = client.delete_export_task(
        DeleteExportTaskRequest(export_task_id=created.export_task_id)
    )
    assert deleted.status_code == 204
    with pytest.raises(ClientRequestException) as err:
        client.delete_export_task(DeleteExportTaskRequest(export_task_id=created.export_task_id))
    assert (err.value.status_code, err.value.error_code) == (404, "IOTDA.014802")


def test_iotda_throttling_reaches_the_sdk_as_403_with_request_id(server: str) -> None:
    client = iotda(server)
    put_faults(server, {"rules": [{"route": "iotda.list", "kind": "throttle", "count": 1}]})
    with pytest.raises(ClientRequestException) as err:
        client.list_export_tasks(ListExportTasksRequest())
    e = err.value
    assert (e.status_code, e.error_code) == (403, "IOTDA.021101")
    assert e.error_msg == "Request reached the maximum rate limit."
    assert HEX32.match(e.request_id)
    assert client.list_export_tasks(ListExportTasksRequest()).page.count == 15


def test_iotda_wrong_secret_key_is_rejected(server: str) -> None:
    with pytest.raises(ClientRequestException) as err:
        iotda(server, sk="not-the-secret").list_export_tasks(ListExportTasksRequest())
    e = err.value
    assert (e.status_code, e.error_code) == (401, "APIG.0301")
    assert "verify aksk signature fail" in e.error_msg and HEX32.match(e.request_id)


async def test_aksk_signature_rules(world_dir: Path) -> None:
    """In-process: the SDK's own signer, an X-Sdk-Date outside 15 min, a request changed after
    signing, an unknown AK; IAM tokens still work beside AK/SK."""
    clock = FakeClock()
    app = create_app(world_dir, FaultPlan(), clock=clock)
    path = f"/v5/iot/{IOT_PROJECT}/export-tasks"

    def signed(when: datetime, ak: str = IAM_AK) -> tuple[str, dict[str, str]]:
        req = SdkRequest(
            method="GET",
            schema="http",
            host="emu.test",
            resource_path=path,
            query_params=[("limit", 2), ("resource_type", "BatchTask")],
            header_params={"X-Sdk-Date": when.strftime("%Y%m%dT%H%M%SZ")},
        )
        req = Signer(BasicCredentials(ak, IAM_SK, IOT_PROJECT)).sign(req)
        return req.uri, dict(req.header_params)

    now = datetime.fromtimestamp(clock(), tz=UTC)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emu.test"
    ) as c:
        uri, headers = signed(now)
        r = await c.get(uri, headers=headers)
        assert r.status_code == 200 and len(r.json()["export_tasks"]) == 2
        assert HEX32.match(r.headers["x-request-id"])
        r = await c.get(uri.replace("limit=2", "limit=3"), headers=headers)
        assert r.status_code == 401 and r.json()["error_code"] == "APIG.0301"
        for when in (now - timedelta(minutes=16), now + timedelta(minutes=16)):
            uri, headers = signed(when)
            assert (await c.get(uri, headers=headers)).status_code == 401
        uri, headers = signed(now, ak="UNKNOWNAK00000000000")
        assert (await c.get(uri, headers=headers)).status_code == 401
        uri, headers = signed(now - timedelta(minutes=14))
        assert (await c.get(uri, headers=headers)).status_code == 200


# ---- ROMA ---------------------------------------------------------------------------------------


def wait_job(client: RomaClient, job_id: str) -> CheckAssetJobStatusResponse:
    deadline = time.monotonic() + 10
    while True:
        job = client.check_asset_job_status(
            CheckAssetJobStatusRequest(instance_id=ROMA_INSTANCE, job_id=job_id)
        )
        if job.status != "RUNNING" or time.monotonic() > deadline:
            return job
        assert job.archive_id is None
        time.sleep(0.05)


def download(client: RomaClient, archive_id: str) -> bytes:
    resp = client.download_asset_archive(
        DownloadAssetArchiveRequest(instance_id=ROMA_INSTANCE, archive_id=archive_id)
    )
    out = io.BytesIO()
    resp.consume_download_stream(lambda raw: out.write(raw.content))
    return out.getvalue()


def export_request(app: str) -> ExportAssetRequest:
    body = AssetExportRequest(
        apps=[AssetExportRequestApps(id=app)],
        tasks=[AssetExportRequestTasks(id="b2e6a456-1234-4a80-aa45-f4b8029f95a4")],
    )
    return ExportAssetRequest(instance_id=ROMA_INSTANCE, body=body)


def test_roma_export_poll_download_once(server: str) -> None:
    client = roma(server)
    started = client.export_asset(export_request("b1e6b1e6-4f3f-4a80-bb45-f4b9039f95a3"))
    assert started.status_code == 200 and HEX32.match(started.job_id)
    job = wait_job(client, started.job_id)
    assert (job.id, job.type, job.status) == (started.job_id, "exportAsset", "SUCCEEDED")
    assert job.reasons == [] and job.progress_percent == 1 and job.archive_id
    assert job.begin_time and job.end_time and job.end_time >= job.begin_time
    data = download(client, job.archive_id)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert zf.testzip() is None
    with pytest.raises(ClientRequestException) as err:
        download(client, job.archive_id)
    e = err.value
    assert (e.status_code, e.error_code) == (403, "ROMA.00000101")
    assert HEX32.match(e.request_id)
    again = client.check_asset_job_status(
        CheckAssetJobStatusRequest(instance_id=ROMA_INSTANCE, job_id=started.job_id)
    )
    assert again.status == "SUCCEEDED" and again.archive_id is None  # consumed


def test_roma_world_jobs_and_archive(server: str) -> None:
    client = roma(server)
    job = wait_job(client, SUCCEEDED_JOB)
    assert job.archive_id == ARCHIVE and job.begin_time == "2019-12-06T06:49:04Z"
    assert download(client, ARCHIVE) == b"PK\x03\x04roma" * 50
    with pytest.raises(ClientRequestException) as err:
        download(client, ARCHIVE)
    assert err.value.status_code == 403
    failed = wait_job(client, FAILED_JOB)
    assert failed.status == "FAILED" and failed.archive_id is None
    assert [type(r) for r in failed.reasons] == [AssetJobReason]
    assert failed.reasons[0].error_code == "ROMA.00000101"


def test_roma_failed_export_job_reasons(server: str) -> None:
    client = roma(server)
    put_faults(server, {"roma_export_fails": True})
    started = client.export_asset(export_request("my-app"))
    with pytest.raises(ClientRequestException) as err:  # one running export job per user
        client.export_asset(export_request("other"))
    assert (err.value.status_code, err.value.error_code) == (403, "ROMA.00000101")
    job = wait_job(client, started.job_id)
    assert job.status == "FAILED" and job.archive_id is None
    assert len(job.reasons) == 1 and isinstance(job.reasons[0], AssetJobReason)
    reason = job.reasons[0]
    assert (reason.resource_type, reason.resource_name) == ("application", "my-app")
    assert (reason.error_code, reason.error_msg) == ("ROMA.00000101", "export failed")


# ---- EnOS (enos-poseidon) -----------------------------------------------------------------------


def enos_token(server: str) -> str:
    ts = int(time.time() * 1000)
    enc = hashlib.sha256(f"{APP_KEY}{ts}{APP_SECRET}".encode()).hexdigest()
    r = httpx.post(
        server + "/apim-token-service/v2.0/token/get",
        json={"appKey": APP_KEY, "encryption": enc, "timestamp": ts},
    )
    token: str = r.json()["data"]["accessToken"]
    return token


def test_enos_poseidon_with_a_token_service_token(server: str) -> None:
    headers = {"apim-accesstoken": enos_token(server)}  # replaces Poseidon's own token

    def call(path: str, query: dict[str, str], body: dict[str, Any] | None = None) -> Any:
        url = f"{server}{path}?{urlencode(query)}"
        method = "POST" if body is not None else "GET"
        return poseidon.urlopen(APP_KEY, APP_SECRET, url, body, headers=headers, method=method)

    seen: list[str] = []
    for page in (1, 2, 3):
        out = call(
            "/connect-service/v2.1/devices",
            {"action": "search", "orgId": ORG},
            {"pagination": {"pageNo": page, "pageSize": 5}},
        )
        assert out["code"] == 0 and out["pagination"]["totalSize"] == 12
        seen += [d["assetId"] for d in out["data"]]
    assert len(set(seen)) == 12
    asset = call(
        "/asset-service/v2.1/assets", {"action": "get", "orgId": ORG, "assetId": "DEV00000"}
    )
    assert asset["code"] == 0 and asset["data"]["attributes"]["manual"] == TEXT_URI
    info = call(
        "/connect-service/v2.1/files",
        {
            "action": "getFileInfo",
            "orgId": ORG,
            "category": "feature",
            "assetId": "DEV00000",
            "fileUri": TEXT_URI,
        },
    )
    assert info["code"] == 0 and info["data"]["originalFilename"] == "manual.txt"
    text = call(
        "/connect-service/v2.1/files",
        {
            "action": "download",
            "orgId": ORG,
            "category": "feature",
            "assetId": "DEV00000",
            "fileUri": TEXT_URI,
        },
    )
    assert text == TEXT.decode()


def test_enos_poseidon_own_token_cannot_be_verified(server: str) -> None:
    """Poseidon's self-made token is RSA-encrypted for EnOS's private key: the emulator cannot
    check it and answers 401, which Poseidon prints and turns into None."""
    url = f"{server}/asset-service/v2.1/assets?" + urlencode(
        {"action": "get", "orgId": ORG, "assetId": "DEV00000"}
    )
    assert poseidon.urlopen(APP_KEY, APP_SECRET, url, method="GET") is None
