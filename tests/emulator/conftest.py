"""Fixtures for the emulator tests: a small hand-made world, a fake clock, auth helpers."""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from fusefs.emulator.app import create_app
from fusefs.emulator.faults import FaultPlan

ORG = "o15475466766371"
PK = "BXwU4kMk"
APP_KEY = "5acb82e7-a11e-4300-9164-c8b20b638e8b"
APP_SECRET = "1f2b3c4d-0000-4000-8000-123456789abc"
TEXT_URI = "enos-connect://2963ede9f0800000.txt"
BIG_URI = "enos-connect://aaaa000000000001.bin"
FW_URI = "enos-connect://233f7744ad002000.zip"
PERSONAL = "IAADfsBFCO6WtAtuA" + "b7e92cde625843cfb7f4ceba802e0b00"
TEAM = "IAADfsBFCO6WtAtuA" + "9add2fea594e4e75b8feb8474ef23600"
GROUP = "1505084218764547"
IOT_PROJECT = "aa2d97d7e62c4b7da3ffdfc11551f878"
ROMA_PROJECT = "bb2d97d7e62c4b7da3ffdfc11551f878"
ROMA_INSTANCE = "5f2bd5c4-1234-4a80-bb45-f4b9039f95a3"
KOO_TOKEN = "10f88aa00000000000000004791e9ff"
KOO_APP_ID = "appid-123"
KOO_APP_SECRET = "app-secret-xyz"
KOO_USER = "1505084218764547200"
IAM_AK = "EMUAKEXAMPLE00000001"
IAM_SK = "emu0sk0example00000000000000000000000001"
TEXT = b"hello world\n" * 100
FW_BYTES = bytes(range(256)) * 7  # 1792 bytes


class FakeClock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _blob(world: Path, name: str, data: bytes) -> dict[str, Any]:
    (world / "blobs").mkdir(exist_ok=True)
    (world / "blobs" / name).write_bytes(data)
    return {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "blob": f"blobs/{name}"}


def _generated(key: str, size: int) -> dict[str, Any]:
    from fusefs.emulator.content import md5_of_generated

    return {"size": size, "md5": md5_of_generated(key, size), "generated": key}


def koo_id(i: int) -> str:
    return "F" + hashlib.md5(f"koo{i}".encode()).hexdigest()


def build_world(world: Path) -> Path:
    """A small world: 1 org (12 devices + 1 logical asset), 2 KooDrive spaces, IoTDA, ROMA."""
    world.mkdir(parents=True, exist_ok=True)
    name = {"defaultValue": "Inverter", "i18nValue": {}}
    model = {
        "modelId": "inverter",
        "modelIdPath": "/inverter",
        "name": name,
        "attributes": {
            "manual": {"identifier": "manual", "name": name, "dataType": "FILE"},
            "serial": {"identifier": "serial", "name": name, "dataType": "STRING"},
        },
        "measurepoints": {
            "snapshot": {"identifier": "snapshot", "name": name, "dataType": "FILE"},
            "temp": {"identifier": "temp", "name": name, "dataType": "DOUBLE"},
        },
    }
    assets: list[dict[str, Any]] = []
    for i in range(12):
        assets.append(
            {
                "assetId": f"DEV{i:05d}",
                "name": {"defaultValue": f"dev {i}", "i18nValue": {}},
                "modelId": "inverter",
                "createTime": 1_600_000_000_000 + i,
                "timezone": "+08:00",
                "productKey": PK,
                "deviceKey": f"dk{i:03d}",
                "attributes": {"serial": f"SN{i}"},
                "measurepoints": {"temp": {"time": 1_600_000_000_000, "value": 20.5 + i}},
            }
        )
    assets[0]["attributes"]["manual"] = TEXT_URI
    assets[0]["measurepoints"]["snapshot"] = {"time": 1_600_000_000_001, "value": BIG_URI}
    assets.append(
        {
            "assetId": "LOGIC001",
            "name": {"defaultValue": "site", "i18nValue": {}},
            "modelId": "inverter",
            "createTime": 1_500_000_000_000,
            "timezone": "+00:00",
            "productKey": None,
            "deviceKey": None,
            "attributes": {},
            "measurepoints": {},
        }
    )
    firmwares = [
        {
            "firmwareId": f"5ede13577072bf001f23de8{i}",
            "productKey": PK,
            "name": {"defaultValue": "ota", "i18nValue": {}},
            "version": f"2.{i}",
            "desc": None,
            "signMethod": "md5",
            "fileUrl": FW_URI if i == 0 else f"enos-connect://233f7744ad00200{i}.zip",
            "createTime": 1_591_612_247_588 + i,
            "content": _blob(world, f"fw{i}.zip", FW_BYTES + bytes([i])),
        }
        for i in range(3)
    ]
    entries: list[dict[str, Any]] = [
        {
            "id": koo_id(1000),
            "parentId": "root",
            "fileName": "docs",
            "folder": True,
            "createdTime": "2023-12-11T09:17:25.529Z",
            "editedTime": "2023-12-11T09:17:25.529Z",
            "content": None,
        },
        {
            "id": koo_id(1001),
            "parentId": koo_id(1000),
            "fileName": "发票1.pdf",
            "folder": False,
            "createdTime": "2023-12-11T09:17:25.529Z",
            "editedTime": "2023-12-12T10:00:00.000Z",
            "content": _blob(world, "invoice.pdf", b"%PDF-1.4 invoice" * 64),
        },
        {
            "id": koo_id(1002),
            "parentId": koo_id(1000),
            "fileName": "big.bin",
            "folder": False,
            "createdTime": "2023-12-11T09:17:25.529Z",
            "editedTime": "2023-12-11T09:17:25.529Z",
            "content": _generated("koo-big", 2 * 1024 * 1024 + 17),
        },
    ]
    for i in range(250):
        entries.append(
            {
                "id": koo_id(i),
                "parentId": "root",
                "fileName": f"file{i:03d}.txt",
                "folder": False,
                "createdTime": "2023-12-11T09:17:25.529Z",
                "editedTime": "2023-12-11T09:17:25.529Z",
                "content": _blob(world, f"k{i}.txt", f"koo file {i}\n".encode()),
            }
        )
    tasks = []
    for i in range(15):
        tasks.append(
            {
                "export_task_id": f"5f33eb6c2cba6c33221e0c{i:02x}",
                "resource_type": "BatchTask",
                "resource_condition": {"task_id": f"d45972b55d97aae9f1fbd3{i:02x}"},
                "export_format": "xls",
                "status": "Success",
                "export_count": 10,
                "progress": 100,
                "create_time": "2020-08-12T12:12:12.333Z",
                "end_time": "2020-08-12T12:13:12.333Z",
                "app_type": "GLOBAL",
                "app_id": "JrE32n13hqGqYq29mLXpkZFyOAIx",
                "content": _blob(world, f"task{i}.zip", b"PK\x03\x04" + bytes([i]) * 100),
            }
        )
    tasks[13]["status"] = "Processing"
    tasks[13]["progress"] = 40
    tasks[13]["content"] = None
    tasks[14]["status"] = "Failed"
    tasks[14]["content"] = None
    jobs = [
        {
            "job_id": "ff8080814dbd65d7014dbe0d84db0013",
            "type": "exportAsset",
            "status": "SUCCEEDED",
            "archive_id": "67298b29a0c828975724dc527465a138",
            "progress_percent": 1.0,
            "begin_time": "2019-12-06T06:49:04Z",
            "end_time": "2019-12-06T06:50:04Z",
            "content": _blob(world, "archive.zip", b"PK\x03\x04roma" * 50),
        },
        {
            "job_id": "ff8080814dbd65d7014dbe0d84db0014",
            "type": "exportAsset",
            "status": "FAILED",
            "archive_id": None,
            "progress_percent": 0.3,
            "begin_time": "2019-12-06T06:49:04Z",
            "end_time": "2019-12-06T06:50:04Z",
            "content": None,
        },
    ]
    doc = {
        "format": 1,
        "seed": 0,
        "scale": "test",
        "credentials": {
            "enos": {"appKey": APP_KEY, "appSecret": APP_SECRET},
            "iam": {
                "user": "fusefs-demo",
                "password": "pw",
                "domain": "fusefs-domain",
                "project": "cn-north-4",
                "projectId": IOT_PROJECT,
                "accessKey": IAM_AK,
                "secretKey": IAM_SK,
            },
            "koodrive": {
                "token": "Bearer " + KOO_TOKEN,
                "appId": KOO_APP_ID,
                "appSecret": KOO_APP_SECRET,
                "userId": KOO_USER,
            },
        },
        "enos": {
            "orgs": [
                {
                    "orgId": ORG,
                    "models": {"inverter": model},
                    "products": [
                        {
                            "productKey": PK,
                            "productName": name,
                            "modelId": "inverter",
                            "createTime": 1_590_000_000_000,
                        }
                    ],
                    "assets": assets,
                    "files": {
                        TEXT_URI: {
                            "originalFilename": "manual.txt",
                            "category": "feature",
                            "createTime": 1_579_580_182_824,
                            "assetId": "DEV00000",
                            "content": _blob(world, "manual.txt", TEXT),
                        },
                        BIG_URI: {
                            "originalFilename": "snap.bin",
                            "category": "feature",
                            "createTime": 1_579_580_182_825,
                            "assetId": "DEV00000",
                            "content": _generated("enos-big", 3 * 1024 * 1024 + 5),
                        },
                    },
                    "firmwares": firmwares,
                }
            ]
        },
        "koodrive": {
            "containers": [
                {
                    "containerId": PERSONAL,
                    "groupId": None,
                    "type": "1",
                    "name": "me",
                    "entries": entries,
                },
                {
                    "containerId": TEAM,
                    "groupId": GROUP,
                    "type": "0",
                    "name": "team",
                    "entries": [
                        {
                            "id": koo_id(2000),
                            "parentId": "root",
                            "fileName": "team.txt",
                            "folder": False,
                            "createdTime": "2023-12-11T09:17:25.529Z",
                            "editedTime": "2023-12-11T09:17:25.529Z",
                            "content": _blob(world, "team.txt", b"team\n"),
                        }
                    ],
                },
            ]
        },
        "iotda": {"projectId": IOT_PROJECT, "instanceId": "inst-1", "tasks": tasks},
        "roma": {
            "projectId": ROMA_PROJECT,
            "instances": [{"instanceId": ROMA_INSTANCE, "jobs": jobs}],
        },
    }
    (world / "world.json").write_text(json.dumps(doc, ensure_ascii=False))
    return world


@pytest.fixture(scope="session")
def world_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_world(tmp_path_factory.mktemp("emuworld"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


MakeClient = Callable[..., Any]


@pytest.fixture
async def client(world_dir: Path, clock: FakeClock) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(world_dir, FaultPlan(), clock=clock)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu.test") as c:
        yield c


# ---- auth helpers ------------------------------------------------------------------------------


def enos_token_body(clock: FakeClock, *, as_string: bool = False) -> dict[str, Any]:
    ts = int(clock() * 1000)
    enc = hashlib.sha256(f"{APP_KEY}{ts}{APP_SECRET}".encode()).hexdigest()
    return {"appKey": APP_KEY, "encryption": enc, "timestamp": str(ts) if as_string else ts}


async def enos_headers(client: httpx.AsyncClient, clock: FakeClock) -> dict[str, str]:
    r = await client.post("/apim-token-service/v2.0/token/get", json=enos_token_body(clock))
    assert r.status_code == 200, r.text
    return {"apim-accesstoken": r.json()["data"]["accessToken"]}


def iam_body(password: str = "pw") -> dict[str, Any]:
    return {
        "auth": {
            "identity": {
                "methods": ["password"],
                "password": {
                    "user": {
                        "name": "fusefs-demo",
                        "password": password,
                        "domain": {"name": "fusefs-domain"},
                    }
                },
            },
            "scope": {"project": {"name": "cn-north-4"}},
        }
    }


async def iam_headers(client: httpx.AsyncClient) -> dict[str, str]:
    r = await client.post("/v3/auth/tokens", json=iam_body())
    assert r.status_code == 201, r.text
    return {"X-Auth-Token": r.headers["X-Subject-Token"]}


KOO = {"Authorization": "Bearer+" + KOO_TOKEN}
