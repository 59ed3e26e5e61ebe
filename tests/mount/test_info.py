"""Per-file state without xattrs: `fusefs info` over the control socket, and every control
command finding its mount through /proc/self/mountinfo (mount.xattrs is off by default)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, mounted
from tests.mount.test_mount import manifest, md5

pytestmark = pytest.mark.fuse

DOWNLOADS = ("koodrive.obs", "koodrive.download_links", "enos.download", "iotda.download")


def fusefs(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fusefs", *args], capture_output=True, text=True, timeout=120
    )


def info(*paths: Path) -> list[dict[str, Any]]:
    r = fusefs("info", "--json", *map(str, paths))
    assert r.returncode == 0, r.stderr
    return [json.loads(line) for line in r.stdout.splitlines()]


def koodrive_files(world: Path, folder: str) -> list[dict[str, Any]]:
    return [
        f
        for f in manifest(world)
        if f["provider"] == "koodrive" and f"/{folder}/" in f["path"] and f["size"] > 0
    ]


def test_info_and_control_commands_without_xattrs(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = max(koodrive_files(world_tiny, "sizes"), key=lambda f: f["size"])  # several blocks
    folder_rel = f["path"].rsplit("/", 1)[0]
    files = [g for g in koodrive_files(world_tiny, "sizes") if g["path"].startswith(folder_rel)]
    with mounted(world_tiny, emulator.url, workdir) as m:
        path = m.path / f["path"]
        emulator.reset_stats()
        (before,) = info(path)
        assert before["provider"] == "koodrive"
        assert before["remote_id"] == f["remote_id"]
        assert before["remote_name"] == path.name
        assert before["kind"] == "file" and before["size"] == f["size"]
        assert before["cached_bytes"] == 0 and before["cached_percent"] == 0
        assert before["pinned"] is False and before["size_known"] is True
        assert "link_expires_at" not in before
        # asking costs nothing remote: the listing was there, no download, no link
        assert not {k: v for k, v in emulator.stats().items() if k in DOWNLOADS and v}
        assert md5(path) == f["md5"]
        (after,) = info(path)
        assert after["cached_bytes"] == f["size"] and after["cached_percent"] == 100
        assert after["version"] == before["version"]
        assert "link_expires_at" in after  # the cached download link's expiry (KooDrive)

        # the text form prints the same fields, booleans as the xattrs show them
        text = fusefs("info", str(path))
        assert text.returncode == 0, text.stderr
        lines = [line.split() for line in text.stdout.splitlines()]
        assert lines[0] == [str(path)]
        assert ["cached_bytes", str(f["size"])] in lines and ["pinned", "0"] in lines, lines

        # the root names the control socket; a missing path is one line and exit status 1
        (root,) = info(m.path)
        assert root["kind"] == "dir" and Path(root["control"]).is_socket()
        missing = fusefs("info", str(m.path / "koodrive" / "no-such-file"))
        assert missing.returncode == 1
        assert "no-such-file" in missing.stderr and "Traceback" not in missing.stderr

        # getfattr with xattrs off: an empty listing, no "not supported" at all
        r = subprocess.run(["getfattr", "-d", str(path)], capture_output=True, text=True)
        assert r.returncode == 0
        assert "Operation not supported" not in r.stderr, r.stderr
        assert "user.fusefs" not in r.stdout

        # every control command finds the daemon without the xattr
        stats = fusefs("cache", "stats", str(m.path))
        assert stats.returncode == 0, stats.stderr
        values = dict(line.split(None, 1) for line in stats.stdout.splitlines())
        assert int(values["inodes"]) > 0
        folder = path.parent
        r = fusefs("pin", str(folder))
        assert r.returncode == 0, r.stderr
        assert f"pinned {len(list(folder.iterdir()))} files" in r.stdout
        pinned = info(*(m.path / g["path"] for g in files))
        assert all(p["pinned"] is True and p["cached_percent"] == 100 for p in pinned), pinned
        r = fusefs("unpin", str(folder))
        assert r.returncode == 0, r.stderr
        assert not any(p["pinned"] for p in info(*(m.path / g["path"] for g in files)))
        r = fusefs("cache", "clear", str(folder))
        assert r.returncode == 0, r.stderr
        assert info(path)[0]["cached_bytes"] < f["size"]
        emulator.reset_stats()
        r = fusefs("prefetch", str(path))
        assert r.returncode == 0, r.stderr
        assert info(path)[0]["cached_bytes"] == f["size"]
        assert emulator.stats().get("koodrive.obs", 0) >= 1


def test_info_matches_the_xattrs_when_they_are_on(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = max(koodrive_files(world_tiny, "sizes"), key=lambda f: f["size"])
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"xattrs": True}) as m:
        path = m.path / f["path"]
        with open(path, "rb") as fh:  # a part of the file
            fh.read(1 << 20)
        (state,) = info(path)
        r = subprocess.run(
            ["getfattr", "-d", "-m", "user.fusefs", str(path)], capture_output=True, text=True
        )
        assert r.returncode == 0, r.stderr
        xattrs = {}
        for line in r.stdout.splitlines():
            if line.startswith("user.fusefs."):
                key, _, value = line.partition("=")
                xattrs[key.removeprefix("user.fusefs.")] = json.loads(value)
        fields = {k: v for k, v in state.items() if k not in ("path", "kind", "size")}
        as_text = {
            k: ("1" if v else "0") if isinstance(v, bool) else str(v) for k, v in fields.items()
        }
        assert xattrs == as_text
        assert int(xattrs["cached_bytes"]) > 0
        # the root still publishes the control socket as an xattr
        root = subprocess.run(
            ["getfattr", "--only-values", "-n", "user.fusefs.control", str(m.path)],
            capture_output=True,
            text=True,
        )
        assert root.stdout == info(m.path)[0]["control"]


def test_commands_outside_a_mount_say_so(workdir: Path) -> None:
    for argv in (("info", str(workdir)), ("cache", "stats", str(workdir)), ("pin", str(workdir))):
        r = fusefs(*argv)
        assert r.returncode != 0
        lines = [line for line in r.stderr.splitlines() if line.strip()]
        assert lines == [f"fusefs: error: {workdir} is not inside a fusefs mount"], r.stderr
