"""`ls -l` of a big folder through the mount: what it costs (counted by the emulator, never
timed) and what it leaves behind (the saved listing an offline restart serves)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, mounted, spawn_daemon, unmount, wait_for_mount
from tests.mount.test_mount import manifest

pytestmark = pytest.mark.fuse

PAGE = 100  # KooDrive's page size (fusefs asks for the maximum)


def wide_folder(world: Path) -> tuple[str, list[dict[str, Any]]]:
    files = [f for f in manifest(world) if "/page-1000/" in f["path"]]
    assert len(files) == 1000
    return files[0]["path"].rsplit("/", 1)[0], files


def ls_l(path: Path) -> dict[str, int]:
    out = subprocess.run(
        ["ls", "-l", "--time-style=+%s", str(path)], capture_output=True, text=True, check=True
    ).stdout
    sizes = {}
    for line in out.splitlines()[1:]:  # "total N" first
        fields = line.split(None, 6)
        assert fields[0] == "-r--r--r--", line
        sizes[fields[6]] = int(fields[4])
    return sizes


def requests(emulator: Emulator) -> dict[str, int]:
    return {k: v for k, v in emulator.stats().items() if v}


def test_ls_l_costs_the_listing_pages_and_nothing_per_entry(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    folder, files = wide_folder(world_tiny)
    expected = {f["path"].rsplit("/", 1)[1]: f["size"] for f in files}
    with mounted(world_tiny, emulator.url, workdir) as m:
        os.listdir(m.path / folder.rsplit("/", 1)[0])  # the parent's listing, not counted
        emulator.reset_stats()
        assert ls_l(m.path / folder) == expected  # cold
        assert requests(emulator) == {"koodrive.list": math.ceil(len(files) / PAGE)}
        emulator.reset_stats()
        for _ in range(3):  # warm: within dir_ttl, not one request
            assert ls_l(m.path / folder) == expected
        assert requests(emulator) == {}
        # stat of every entry, one by one, is answered from the listing too
        for name in expected:
            assert os.stat(m.path / folder / name).st_size == expected[name]
        assert requests(emulator) == {}


def test_refreshed_listing_is_saved_and_an_offline_restart_lists_it(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    folder, files = wide_folder(world_tiny)
    expected = {f["path"].rsplit("/", 1)[1]: f["size"] for f in files}
    cache = workdir / "cache"
    listings = cache / "v1" / "listings" / "koodrive"

    def saved_with(names: set[str]) -> Path | None:
        for p in listings.glob("*.json"):
            data = json.loads(p.read_text())
            if {e["name"] for e in data["entries"]} == names:
                return p
        return None

    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        assert ls_l(m.path / folder) == expected
        # the save runs in a worker thread after the refresh: wait for the file
        deadline = time.monotonic() + 20
        while (snapshot := saved_with(set(expected))) is None:
            assert time.monotonic() < deadline, sorted(listings.glob("*"))
            time.sleep(0.05)
        data = json.loads(snapshot.read_text())
        assert {e["name"]: e["size"] for e in data["entries"]} == expected
        assert not list(listings.glob("*.tmp"))
    # a new daemon with --offline never calls the service and lists the folder as it was
    mnt = workdir / "offline"
    mnt.mkdir()
    log = workdir / "offline.log"
    emulator.reset_stats()
    proc = spawn_daemon(m.config, mnt, m.env, log, "--offline")
    try:
        wait_for_mount(proc, mnt, log)
        assert ls_l(mnt / folder) == expected
    finally:
        rc = unmount(proc, mnt)
    assert rc == 0, log.read_text()
    assert requests(emulator) == {}
