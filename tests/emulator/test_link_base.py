"""``link_base``: KooDrive links of blob objects point at an external static server holding the
world dir (the benchmark's nginx), with the presigned-looking query kept; the default is
unchanged. Also ``world.generate_from_files``, the world such a server and the emulator share."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

import httpx
import pytest

from fusefs.emulator.app import create_app
from fusefs.emulator.faults import FaultPlan
from fusefs.emulator.world import generate_from_files

from .conftest import KOO, PERSONAL, FakeClock, koo_id

LINKS = "/koodrive/ose/v1/files/download"
BASE = "http://static.test:8080/prefix/"


async def _links(client: httpx.AsyncClient, cid: str, ids: list[str]) -> list[dict[str, str]]:
    r = await client.post(LINKS, headers=KOO, json={"containerId": cid, "fileIds": ids})
    assert r.status_code == 200, r.text
    return list(r.json()["downloads"])


async def test_links_point_at_the_static_server(world_dir: Path, clock: FakeClock) -> None:
    app = create_app(world_dir, FaultPlan(), clock=clock, link_base=BASE)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://emu.test") as client:
        blob_id, generated_id = koo_id(1001), koo_id(1002)  # 发票1.pdf (blob), big.bin
        blob, generated = await _links(client, PERSONAL, [blob_id, generated_id])
        parts = urlsplit(blob["url"])
        assert (parts.scheme, parts.netloc) == ("http", "static.test:8080")
        assert parts.path == "/prefix/blobs/invoice.pdf"  # <link_base>/<path of the bytes>
        query = parse_qs(parts.query)
        for name in ("X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Signature"):
            assert query[name], name
        assert query["response-content-disposition"] == [
            'attachment; filename="%E5%8F%91%E7%A5%A81.pdf"'
        ]
        # the static server answers from the world dir: the same bytes as the emulator lists
        data = (world_dir / unquote(parts.path).removeprefix("/prefix/")).read_bytes()
        assert data == b"%PDF-1.4 invoice" * 64
        # generated content has no file to serve: its link stays the emulator's own
        own = urlsplit(generated["url"])
        assert own.netloc == "emu.test" and own.path.startswith("/obs/")
        r = await client.get(generated["url"], headers={"Range": "bytes=0-9"})
        assert r.status_code == 206 and len(r.content) == 10
        stats = (await client.get("/_admin/stats")).json()
        assert stats["requests"]["koodrive.download_links"] == 1


async def test_default_links_are_the_emulators_own(client: httpx.AsyncClient) -> None:
    (item,) = await _links(client, PERSONAL, [koo_id(1001)])
    parts = urlsplit(item["url"])
    assert parts.netloc == "emu.test" and parts.path.startswith("/obs/")
    r = await client.get(item["url"])
    assert r.status_code == 200 and r.content == b"%PDF-1.4 invoice" * 64


@pytest.mark.parametrize("bad", ["ftp://x/", "http://", "http://h/p?q=1", "static.test"])
def test_link_base_must_be_an_http_url(world_dir: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        create_app(world_dir, link_base=bad)


def _build_files_world(root: Path) -> dict[str, bytes]:
    contents = {
        "files/big.bin": hashlib.sha256(b"x").digest() * 1000,
        "files/mid.bin": b"m" * 5000,
        "files/small/f0.bin": b"0" * 1024,
        "files/small/f1.bin": b"1" * 1024,
    }
    for rel, data in contents.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return contents


async def test_files_world_listing_and_links(tmp_path: Path) -> None:
    contents = _build_files_world(tmp_path)
    world = generate_from_files(
        tmp_path, md5s={"files/mid.bin": hashlib.md5(b"m" * 5000).hexdigest()}
    )
    assert not (tmp_path / "blobs").exists()
    (container,) = world["koodrive"]["containers"]
    cid = container["containerId"]
    by_name = {e["fileName"]: e for e in container["entries"]}
    assert by_name["small"]["folder"] and by_name["small"]["parentId"] == "root"
    assert by_name["f1.bin"]["parentId"] == by_name["small"]["id"]
    for rel, data in contents.items():
        content = by_name[rel.rsplit("/", 1)[1]]["content"]
        assert content == {"size": len(data), "md5": hashlib.md5(data).hexdigest(), "blob": rel}
    assert generate_from_files(tmp_path) == world  # deterministic

    app = create_app(tmp_path, link_base="https://127.0.0.1:8443")
    transport = httpx.ASGITransport(app=app)
    token = world["credentials"]["koodrive"]["token"]
    async with httpx.AsyncClient(transport=transport, base_url="http://emu.test") as client:
        r = await client.post(
            "/koodrive/ose/v1/files/0",
            headers={"Authorization": token},
            json={"containerId": cid, "parentFileId": by_name["small"]["id"]},
        )
        assert [f["fileName"] for f in r.json()["files"]] == ["f0.bin", "f1.bin"]
        assert [f["size"] for f in r.json()["files"]] == [1024, 1024]
        r = await client.post(
            LINKS,
            headers={"Authorization": token},
            json={"containerId": cid, "fileIds": [by_name["big.bin"]["id"]]},
        )
        url = r.json()["downloads"][0]["url"]
        parts = urlsplit(url)
        assert (parts.scheme, parts.netloc, parts.path) == (
            "https",
            "127.0.0.1:8443",
            "/files/big.bin",
        )
        assert "X-Amz-Signature" in parse_qs(parts.query)


def test_cli_flag(tmp_path: Path) -> None:
    """``python -m fusefs.emulator --link-base URL`` on a real socket."""
    _build_files_world(tmp_path)
    subprocess.run(
        [sys.executable, "-m", "fusefs.emulator.world", "from-files", str(tmp_path)], check=True
    )
    world = json.loads((tmp_path / "world.json").read_text())
    port_file = tmp_path / "port"
    argv = [sys.executable, "-m", "fusefs.emulator", "--world", str(tmp_path)]
    bad = subprocess.run([*argv, "--link-base", "ftp://x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "link base" in bad.stderr
    proc = subprocess.Popen(
        [*argv, "--port-file", str(port_file), "--link-base", "http://127.0.0.1:9/static"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while not port_file.exists():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.02)
        (container,) = world["koodrive"]["containers"]
        mid = next(e for e in container["entries"] if e["fileName"] == "mid.bin")
        r = httpx.post(
            f"http://127.0.0.1:{int(port_file.read_text())}{LINKS}",
            headers={"Authorization": world["credentials"]["koodrive"]["token"]},
            json={"containerId": container["containerId"], "fileIds": [mid["id"]]},
        )
        url = r.json()["downloads"][0]["url"]
        assert urlsplit(url).path == "/static/files/mid.bin", url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
