"""IoTDA export tasks (paging, lifecycle, 30-s download rule) and ROMA one-shot archives."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import httpx

from fusefs.emulator.app import create_app
from fusefs.emulator.faults import FaultPlan

from .conftest import IOT_PROJECT, ROMA_INSTANCE, ROMA_PROJECT, FakeClock, iam_headers

TASKS = f"/v5/iot/{IOT_PROJECT}/export-tasks"
ROMA = f"/v2/{ROMA_PROJECT}/instances/{ROMA_INSTANCE}/assets"
ARCHIVE = "67298b29a0c828975724dc527465a138"


async def test_iam_token_required(client: httpx.AsyncClient, clock: FakeClock) -> None:
    for url in (TASKS, f"{ROMA}/jobs/ff8080814dbd65d7014dbe0d84db0013"):
        r = await client.get(url)
        assert r.status_code == 401
        assert r.json()["error_code"] == "APIG.0301"
        assert "x-auth-token not found" in r.json()["error_msg"]
        r = await client.get(url, headers={"X-Auth-Token": "MIIbogus"})
        assert r.status_code == 401 and "decrypt token fail" in r.json()["error_msg"]
    h = await iam_headers(client)
    assert (await client.get(TASKS, headers=h)).status_code == 200
    clock.advance(86401)
    r = await client.get(TASKS, headers=h)
    assert r.status_code == 401 and "token expires" in r.json()["error_msg"]


async def test_list_marker_offset_paging(client: httpx.AsyncClient) -> None:
    h = await iam_headers(client)
    r = await client.get(TASKS, headers=h)
    body = r.json()
    assert len(body["export_tasks"]) == 10 and body["page"]["count"] == 15
    ids = [t["export_task_id"] for t in body["export_tasks"]]
    assert ids == sorted(ids, reverse=True)
    assert body["page"]["marker"] == ids[-1]
    t = body["export_tasks"][0]
    assert set(t) == {
        "export_task_id",
        "resource_type",
        "resource_condition",
        "export_format",
        "status",
        "export_count",
        "progress",
        "create_time",
        "end_time",
        "app_type",
        "app_id",
    }
    seen: list[str] = []
    marker = None
    while True:
        params: dict[str, Any] = {"limit": 4}
        if marker:
            params["marker"] = marker
        page = (await client.get(TASKS, headers=h, params=params)).json()
        seen += [x["export_task_id"] for x in page["export_tasks"]]
        if len(page["export_tasks"]) < 4:
            break
        marker = page["page"]["marker"]
    assert len(seen) == 15 == len(set(seen)) and seen == sorted(seen, reverse=True)
    page = (await client.get(TASKS, headers=h, params={"limit": 3, "offset": 12})).json()
    assert [x["export_task_id"] for x in page["export_tasks"]] == seen[12:]
    for bad in ({"limit": 0}, {"limit": 51}, {"limit": "x"}, {"offset": 501}):
        r = await client.get(TASKS, headers=h, params=bad)
        assert r.status_code == 400 and r.json()["error_code"] == "IOTDA.000017", bad
        assert "out of range" in r.json()["error_msg"]
    r = await client.get(TASKS, headers=h, params={"marker": "xyz"})
    assert r.status_code == 400


async def test_download_rules(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await iam_headers(client)
    tid = "5f33eb6c2cba6c33221e0c00"
    r = await client.get(f"{TASKS}/{tid}/file", headers={**h, "Range": "bytes=0-3"})
    assert r.status_code == 200  # Range ignored
    assert r.content == b"PK\x03\x04" + b"\0" * 100
    assert r.headers["content-type"] == "application/octet-stream"
    assert r.headers["content-disposition"] == f'attachment; filename="{tid}.zip"'
    assert r.headers["content-length"] == "104" and "accept-ranges" not in r.headers
    r = await client.get(f"{TASKS}/{tid}/file", headers=h)
    assert r.status_code == 403
    assert r.json() == {
        "error_code": "IOTDA.014805",
        "error_msg": "Download export file too frequently.",
    }
    clock.advance(30)
    r = await client.get(f"{TASKS}/5f33eb6c2cba6c33221e0c01/file", headers=h)
    assert r.status_code == 200
    clock.advance(31)
    r = await client.get(f"{TASKS}/5f33eb6c2cba6c33221e0c0d/file", headers=h)  # Processing
    assert r.status_code == 400 and r.json()["error_code"] == "IOTDA.014800"
    r = await client.get(f"{TASKS}/5f33eb6c2cba6c33221e0c0e/file", headers=h)  # Failed
    assert r.status_code == 400
    r = await client.get(f"{TASKS}/5f33eb6c2cba6c33221e0cff/file", headers=h)
    assert r.status_code == 404 and r.json()["error_code"] == "IOTDA.014802"


async def test_window_configurable(world_dir: Path, clock: FakeClock) -> None:
    app = create_app(world_dir, FaultPlan(iotda_download_window=0), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emu.test"
    ) as c:
        h = await iam_headers(c)
        for _ in range(3):
            r = await c.get(f"{TASKS}/5f33eb6c2cba6c33221e0c00/file", headers=h)
            assert r.status_code == 200


async def test_create_delete_lifecycle(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await iam_headers(client)
    body = {
        "resource_type": "BatchTask",
        "resource_condition": {"task_id": "32822e5744a45ede319d2c50"},
    }
    r = await client.post(TASKS, headers=h, json=body)
    assert r.status_code == 201
    task = r.json()
    assert task["status"] == "Processing" and task["export_format"] == "xls"
    assert task["app_type"] == "GLOBAL" and len(task["export_task_id"]) == 24
    tid = task["export_task_id"]
    first = (await client.get(TASKS, headers=h, params={"limit": 1})).json()["export_tasks"][0]
    assert first["export_task_id"] == tid  # newest first
    r = await client.get(f"{TASKS}/{tid}/file", headers=h)
    assert r.status_code == 400
    clock.advance(1.5)
    listed = (await client.get(TASKS, headers=h, params={"limit": 1})).json()["export_tasks"][0]
    assert listed["status"] == "Success" and listed["progress"] == 100
    r = await client.get(f"{TASKS}/{tid}/file", headers=h)
    assert r.status_code == 200
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert zf.namelist() == [f"{tid}.xls"]
    r = await client.post(
        TASKS, headers=h, json={"resource_type": "Nope", "resource_condition": {}}
    )
    assert r.status_code == 400 and r.json()["error_code"] == "IOTDA.000006"
    r = await client.delete(f"{TASKS}/{tid}", headers=h)
    assert r.status_code == 204 and r.content == b""
    r = await client.delete(f"{TASKS}/{tid}", headers=h)
    assert r.status_code == 404 and r.json()["error_code"] == "IOTDA.014802"


async def test_roma_job_and_one_shot(client: httpx.AsyncClient) -> None:
    h = await iam_headers(client)
    r = await client.get(f"{ROMA}/jobs/ff8080814dbd65d7014dbe0d84db0013", headers=h)
    job = r.json()
    assert job["status"] == "SUCCEEDED" and job["archive_id"] == ARCHIVE
    assert job["type"] == "exportAsset" and job["reasons"] == [] and job["progress_percent"] == 1.0
    r = await client.get(f"{ROMA}/jobs/ff8080814dbd65d7014dbe0d84db0014", headers=h)
    assert r.json()["status"] == "FAILED" and "archive_id" not in r.json()
    assert r.json()["reasons"][0]["error_code"] == "ROMA.00000101" and "reason" not in r.json()
    r = await client.get(f"{ROMA}/archives/{ARCHIVE}", headers={**h, "Range": "bytes=0-1"})
    assert r.status_code == 200 and r.content == b"PK\x03\x04roma" * 50
    assert r.headers["content-length"] == "400" and "accept-ranges" not in r.headers
    assert r.headers["content-disposition"] == f'attachment; filename="{ARCHIVE}.zip"'
    r = await client.get(f"{ROMA}/archives/{ARCHIVE}", headers=h)
    assert r.status_code == 403
    err = r.json()
    assert set(err) == {"error_code", "error_msg", "error_details", "request_id"}
    assert err["error_code"] == "ROMA.00000101"
    r = await client.get(f"{ROMA}/jobs/ff8080814dbd65d7014dbe0d84db0013", headers=h)
    assert "archive_id" not in r.json()  # consumed
    r = await client.get(f"{ROMA}/jobs/nope", headers=h)
    assert r.status_code == 404 and r.json()["error_code"] == "ROMA.00000101"


async def test_roma_export_flow(client: httpx.AsyncClient, clock: FakeClock) -> None:
    h = await iam_headers(client)
    body = {
        "apps": [{"id": "b1e6b1e6-4f3f-4a80-bb45-f4b9039f95a3"}],
        "tasks": [{"id": "b2e6a456-1234-4a80-aa45-f4b8029f95a4"}],
    }
    r = await client.post(f"{ROMA}/export", headers=h, json=body)
    assert r.status_code == 200
    job_id = r.json()["job_id"]
    assert (await client.get(f"{ROMA}/jobs/{job_id}", headers=h)).json()["status"] == "RUNNING"
    r = await client.post(f"{ROMA}/export", headers=h, json=body)
    assert r.status_code == 403 and r.json()["error_code"] == "ROMA.00000101"
    r = await client.post(
        f"{ROMA}/export", headers=h, json={"apps": [{"id": "x"}] * 101, "tasks": []}
    )
    assert r.status_code == 400
    clock.advance(2)
    job = (await client.get(f"{ROMA}/jobs/{job_id}", headers=h)).json()
    assert job["status"] == "SUCCEEDED" and job["archive_id"]
    r = await client.get(f"{ROMA}/archives/{job['archive_id']}", headers=h)
    assert r.status_code == 200 and r.content.startswith(b"PK")
    assert (await client.get(f"{ROMA}/archives/{job['archive_id']}", headers=h)).status_code == 403


async def test_roma_one_shot_off(world_dir: Path, clock: FakeClock) -> None:
    app = create_app(world_dir, FaultPlan(one_shot=False), clock=clock)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emu.test"
    ) as c:
        h = await iam_headers(c)
        for _ in range(2):
            assert (await c.get(f"{ROMA}/archives/{ARCHIVE}", headers=h)).status_code == 200


async def test_request_id_header_and_iotda_throttle(client: httpx.AsyncClient) -> None:
    h = await iam_headers(client)
    r = await client.get(TASKS, headers=h)
    assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32
    r = await client.get(f"{ROMA}/jobs/nope", headers=h)
    assert r.status_code == 404 and r.json()["request_id"] == r.headers["x-request-id"]
    r = await client.get(f"{ROMA}/jobs/nope")  # gateway 401: same id in body and header
    assert r.status_code == 401 and r.json()["request_id"] == r.headers["x-request-id"]
    assert "x-request-id" not in (await client.post("/v3/auth/tokens", json={})).headers
    rules = [
        {"route": "iotda.list", "kind": "throttle", "retry_after": 5, "count": 1},
        {"route": "iotda.list", "kind": "error", "status": 429, "count": 1},
        {"route": "roma.job", "kind": "throttle", "retry_after": 5, "count": 1},
    ]
    assert (await client.put("/_admin/faults", json={"rules": rules})).status_code == 200
    for _ in range(2):  # IoTDA documents throttling as 403 IOTDA.021101
        r = await client.get(TASKS, headers=h)
        assert r.status_code == 403 and "retry-after" not in r.headers
        assert r.json() == {
            "error_code": "IOTDA.021101",
            "error_msg": "Request reached the maximum rate limit.",
        }
        assert len(r.headers["x-request-id"]) == 32
    r = await client.get(f"{ROMA}/jobs/ff8080814dbd65d7014dbe0d84db0013", headers=h)
    assert r.status_code == 429 and r.json()["error_code"] == "APIG.0308"
    assert r.headers["retry-after"] == "5" and r.json()["request_id"] == r.headers["x-request-id"]
