"""The real server: ``python -m fusefs.emulator`` on 127.0.0.1 port 0 with --port-file, and curl."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from fusefs.testbed import running_emulator

from .conftest import APP_KEY, APP_SECRET, ORG, TEXT, TEXT_URI

pytestmark = pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")


@pytest.fixture
def server(world_dir: Path, tmp_path: Path) -> Iterator[str]:
    faults = tmp_path / "faults.toml"
    faults.write_text("enos_token_lifetime = 100\n")
    with running_emulator(world_dir, tmp_path, faults=faults) as url:
        yield url
    assert not (tmp_path / "emulator.port").exists()  # the server removes it as it stops


def curl(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["curl", "-sS", "--max-time", "10", *args], capture_output=True, check=False
    )


def test_real_server_with_curl(server: str) -> None:
    ts = int(time.time() * 1000)
    enc = hashlib.sha256(f"{APP_KEY}{ts}{APP_SECRET}".encode()).hexdigest()
    r = httpx.post(
        server + "/apim-token-service/v2.0/token/get",
        json={"appKey": APP_KEY, "encryption": enc, "timestamp": ts},
    )
    data = r.json()["data"]
    assert data["expire"] == 100  # from the --faults file
    token = data["accessToken"]
    url = (
        f"{server}/connect-service/v2.1/files?action=download&orgId={ORG}&category=feature"
        f"&assetId=DEV00000&fileUri={TEXT_URI}"
    )
    out = curl("-H", f"apim-accesstoken: {token}", url)
    assert out.returncode == 0 and out.stdout == TEXT
    out = curl("-i", "-H", f"apim-accesstoken: {token}", "-H", "Range: bytes=6-10", url)
    head, _, body = out.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 206") and body == b"world"
    assert b"content-range: bytes 6-10/1200" in head.lower()
    out = curl("-o", os.devnull, "-w", "%{http_code}", url)
    assert out.stdout == b"401"

    # faults through the admin route: truncated body and reset both break the transfer
    for kind in ("truncate", "reset"):
        plan = {"rules": [{"route": "enos.download", "kind": kind, "after_bytes": 100, "count": 1}]}
        assert httpx.put(server + "/_admin/faults", json=plan).status_code == 200
        out = curl("-H", f"apim-accesstoken: {token}", "-o", os.devnull, url)
        assert out.returncode in (18, 52, 56), (kind, out)
    stats = httpx.get(server + "/_admin/stats").json()
    assert stats["requests"]["enos.download"] == 5
    assert stats["requests"]["enos.token.get"] == 1
    assert json.loads(curl(server + "/_admin/faults").stdout)["rules"][0]["count"] == 0
