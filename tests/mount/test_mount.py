"""The mount through the kernel: daemon in a subprocess, emulator over HTTP on 127.0.0.1."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import random
import subprocess
import tarfile
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, mounted

pytestmark = pytest.mark.fuse


def manifest(world: Path) -> list[dict[str, Any]]:
    data = json.loads((world / "manifest.json").read_text())
    files: list[dict[str, Any]] = data["files"] if isinstance(data, dict) else data
    return files


def md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def run(*argv: str, **kw: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, **kw)


def test_diff_against_expected_view(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    with mounted(world_tiny, emulator.url, workdir) as m:
        r = run("diff", "-r", str(world_tiny / "expected"), str(m.path))
        assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
        # every edge case of the world is there: sizes and names
        files = manifest(world_tiny)
        sizes = {f["size"] for f in files}
        assert {0, 1, 1 << 20, (1 << 20) - 1, (1 << 20) + 1} <= sizes
        for f in files:
            st = os.stat(m.path / f["path"])
            assert st.st_size == f["size"], f["path"]


def test_tools_read_the_worlds_bytes(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    files = manifest(world_tiny)
    with mounted(world_tiny, emulator.url, workdir) as m:
        # md5sum over every file
        for f in files:
            assert md5(m.path / f["path"]) == f["md5"], f["path"]
        # cp -r of the koodrive tree, then compare
        dest = workdir / "copy"
        r: subprocess.CompletedProcess[Any] = run("cp", "-r", str(m.path / "koodrive"), str(dest))
        assert r.returncode == 0, r.stderr
        r = run("diff", "-r", str(world_tiny / "expected" / "koodrive"), str(dest))
        assert r.returncode == 0, r.stdout[-2000:]
        # tar of the enos tree lists every file with its size
        tar_path = workdir / "enos.tar"
        r = run("tar", "cf", str(tar_path), "-C", str(m.path), "enos")
        assert r.returncode == 0, r.stderr
        with tarfile.open(tar_path) as tf:
            members = {t.name: t.size for t in tf.getmembers() if t.isfile()}
        for f in files:
            if f["path"].startswith("enos/"):
                assert members[f["path"]] == f["size"]
        # du -sb agrees with the sum of the file sizes (directories have size 0 on the mount)
        r = run("du", "-sb", str(m.path / "koodrive"))
        total = sum(f["size"] for f in files if f["path"].startswith("koodrive/"))
        assert int(r.stdout.split()[0]) == total
        # tail -c and dd skip= on the biggest file
        big = max(files, key=lambda f: f["size"])
        src = (world_tiny / "expected" / big["path"]).read_bytes()
        r = subprocess.run(["tail", "-c", "5000", str(m.path / big["path"])], capture_output=True)
        assert r.stdout == src[-5000:]
        skip = len(src) // 4096 // 2
        r = subprocess.run(
            [
                "dd",
                f"if={m.path / big['path']}",
                "bs=4096",
                f"skip={skip}",
                "count=3",
                "status=none",
            ],
            capture_output=True,
        )
        assert r.stdout == src[skip * 4096 : skip * 4096 + 3 * 4096]
        # unzip -t on every IoTDA export
        zips = sorted((m.path / "iotda" / "exports").iterdir())
        assert zips
        for z in zips:
            r = run("unzip", "-t", str(z))
            assert r.returncode == 0, r.stdout
            with zipfile.ZipFile(z) as zf:
                assert any(n.endswith(".xls") for n in zf.namelist())


def test_random_preads(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    files = [f for f in manifest(world_tiny) if f["size"] > 0]
    rng = random.Random(7)
    with mounted(world_tiny, emulator.url, workdir) as m:
        for f in rng.sample(files, min(12, len(files))):
            src = (world_tiny / "expected" / f["path"]).read_bytes()
            fd = os.open(m.path / f["path"], os.O_RDONLY)
            try:
                for _ in range(20):
                    off = rng.randrange(0, f["size"])
                    n = rng.choice([1, 100, 4096, 65536, 300_000])
                    assert os.pread(fd, n, off) == src[off : off + n]
                assert os.pread(fd, 10, f["size"]) == b""
            finally:
                os.close(fd)


def test_read_only(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    with mounted(world_tiny, emulator.url, workdir) as m:
        some = next(p for p in (m.path / "iotda" / "exports").iterdir())
        cases: list[Callable[[], object]] = [
            lambda: open(m.path / "koodrive" / "new.txt", "w"),
            lambda: open(some, "r+b"),
            lambda: os.mkdir(m.path / "koodrive" / "d"),
            lambda: os.unlink(some),
            lambda: os.rename(some, some.with_name("x.zip")),
            lambda: os.truncate(some, 0),
        ]
        for case in cases:
            with pytest.raises(OSError) as info:
                case()
            assert info.value.errno == errno.EROFS
        with pytest.raises(FileNotFoundError):
            os.stat(m.path / "koodrive" / "no-such-container")
        with pytest.raises(NotADirectoryError):
            os.listdir(some)


def test_listing_costs_only_listing_calls(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    files = manifest(world_tiny)
    # the koodrive folder with the most entries
    by_dir: dict[str, int] = {}
    for f in files:
        if f["provider"] == "koodrive":
            d = os.path.dirname(f["path"])
            by_dir[d] = by_dir.get(d, 0) + 1
    folder = max(by_dir, key=lambda d: by_dir[d])
    assert by_dir[folder] >= 1000
    with mounted(world_tiny, emulator.url, workdir) as m:
        run("ls", str(m.path / "koodrive"))
        emulator.reset_stats()
        r = run("ls", "-l", str(m.path / folder))
        assert r.returncode == 0
        assert len(r.stdout.splitlines()) >= by_dir[folder]
        calls = emulator.stats()
        assert calls, "ls -l made no remote call at all: listing not from the API?"
        assert set(calls) <= {"koodrive.list"}, calls
        # a second ls -l within the TTL makes no call at all
        emulator.reset_stats()
        r2 = run("ls", "-l", str(m.path / folder))
        assert r2.stdout == r.stdout
        assert sum(emulator.stats().values()) == 0


def test_token_expiry_is_invisible(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    emulator.set_faults({"enos_token_lifetime": 2, "iam_token_lifetime": 2})
    enos = [f for f in manifest(world_tiny) if f["provider"] == "enos"]
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 1.0}) as m:
        for f in enos[:3]:
            assert md5(m.path / f["path"]) == f["md5"]
        time.sleep(3)  # every token is now expired
        for f in enos[3:8]:
            assert md5(m.path / f["path"]) == f["md5"]
        assert len(os.listdir(m.path / "iotda" / "exports")) > 0
    calls = emulator.stats()
    assert calls.get("enos.token.get", 0) + calls.get("enos.token.refresh", 0) >= 2, calls


def test_presigned_url_expiry_mid_read(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    big = max(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive"), key=lambda f: f["size"]
    )
    assert big["size"] >= 4 << 20
    src = (world_tiny / "expected" / big["path"]).read_bytes()
    # links live 1 s; the reader pauses longer than that in the middle of the file
    emulator.set_faults({"presign_expires": 1})
    with mounted(world_tiny, emulator.url, workdir, cache_opts={"block_size": "256KiB"}) as m:
        with open(m.path / big["path"], "rb", buffering=0) as f:
            head = f.read(512 * 1024)
            time.sleep(2.5)  # every link handed out so far has expired
            f.seek(len(src) // 2)
            tail = f.read()
    assert head == src[: 512 * 1024]
    assert tail == src[len(src) // 2 :]
    calls = emulator.stats()
    assert calls.get("koodrive.download_links", 0) >= 2, calls
    statuses = emulator.admin("GET", "/_admin/stats").get("statuses", {})
    assert statuses, "the emulator reports statuses per route"


def test_remote_changes_show_up_and_readdir_stays_consistent(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    files = manifest(world_tiny)
    page = next(f for f in files if "/page-1000/" in f["path"])
    folder = os.path.dirname(page["path"])
    container = folder.split("/")[1]
    world = json.loads((world_tiny / "world.json").read_text())
    cont = next(c for c in world["koodrive"]["containers"] if c["containerId"] == container)
    parent = next(e["id"] for e in cont["entries"] if e["folder"] and e["fileName"] == "page-1000")
    victim = next(
        e for e in cont["entries"] if e["parentId"] == parent and e["fileName"].endswith(".txt")
    )
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 1.0}) as m:
        d = m.path / folder
        before = sorted(os.listdir(d))
        # a listing read in small steps while the folder changes remotely under it
        it = os.scandir(d)
        seen = [next(it).name for _ in range(10)]
        emulator.admin(
            "POST",
            "/_admin/koodrive/entries",
            {
                "containerId": container,
                "parentId": parent,
                "fileName": "new-file.txt",
                "content": {"data": "fresh bytes\n"},
            },
        )
        emulator.admin(
            "POST",
            "/_admin/koodrive/entries",
            {"containerId": container, "id": victim["id"], "delete": True},
        )
        time.sleep(1.5)  # the listing's TTL has passed
        seen += [e.name for e in it]
        it.close()
        assert len(seen) == len(set(seen)), "an entry came twice"
        assert sorted(seen) == before  # one pass, one consistent snapshot
        # a new pass shows the change, and the new file reads
        after = set(os.listdir(d))
        assert "new-file.txt" in after and victim["fileName"] not in after
        assert (d / "new-file.txt").read_bytes() == b"fresh bytes\n"
        with pytest.raises(FileNotFoundError):
            os.stat(d / victim["fileName"])
