"""The cache through real mounts: persistence, kill -9, integrity, cap, single-flight, read-ahead,
offline mode, operator controls. The emulator's request counts are the witness."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from fusefs.testbed import demo_config, running_emulator
from tests.helpers.mounting import (
    Emulator,
    cache_stats,
    mounted,
    spawn_daemon,
    unmount,
    wait_for_mount,
)
from tests.mount.test_mount import manifest

pytestmark = pytest.mark.fuse

DOWNLOADS = (
    "enos.download",
    "enos.firmware.download",
    "koodrive.obs",
    "koodrive.download_links",
    "iotda.download",
    "roma.download",
)


def md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def downloads(emulator: Emulator) -> dict[str, int]:
    return {k: v for k, v in emulator.stats().items() if k in DOWNLOADS and v}


def sent_bytes(emulator: Emulator, route: str) -> int:
    raw = emulator.admin("GET", "/_admin/stats")
    return int(raw.get("bytes", {}).get(route, 0))


def ranged(world: Path) -> list[dict[str, Any]]:
    return [f for f in manifest(world) if f["provider"] in ("koodrive", "enos") and f["size"] > 0]


def test_cache_survives_restart_and_kill9_and_catches_corruption(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cache = workdir / "cache"
    files = [f for f in ranged(world_tiny) if f["size"] < (4 << 20)][:60]
    big = max(ranged(world_tiny), key=lambda f: f["size"])
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        for f in files:
            assert md5(m.path / f["path"]) == f["md5"]
    # a second daemon is killed with SIGKILL in the middle of a read
    mnt = workdir / "killed"
    mnt.mkdir()
    cfg = workdir / "killed.toml"
    env = {**os.environ, **demo_config(world_tiny, emulator.url, cache, cfg)}
    log = workdir / "killed.log"
    proc = spawn_daemon(cfg, mnt, env, log)
    try:
        wait_for_mount(proc, mnt, log)
        reader = subprocess.Popen(
            ["cat", str(mnt / big["path"])], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        reader.wait(timeout=30)
    finally:
        unmount(None, mnt)
        if proc.poll() is None:
            proc.kill()
    # a third daemon re-reads everything cached: not a single download call
    emulator.reset_stats()
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache, name="again") as m:
        for f in files:
            assert md5(m.path / f["path"]) == f["md5"]
    assert downloads(emulator) == {}, downloads(emulator)
    # a block corrupted on disk is detected, fetched again, and never returned
    victim = max(files, key=lambda f: f["size"])
    data_files = sorted(cache.rglob("data-b*"), key=lambda p: p.stat().st_size)
    target = next(p for p in reversed(data_files) if p.stat().st_size == victim["size"])
    raw = bytearray(target.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    target.write_bytes(bytes(raw))
    emulator.reset_stats()
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache, name="fixed") as m:
        assert md5(m.path / victim["path"]) == victim["md5"]
        assert "failed its checksum" in m.log_text()
    got = downloads(emulator)
    assert sum(got.values()) >= 1, got


def test_cap_holds_and_pinned_one_shot_survive(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cap = 2 << 20
    files = ranged(world_tiny)
    archives = [f for f in manifest(world_tiny) if f["provider"] == "roma"]
    objects = workdir / "cache" / "v2" / "objects"

    def cached_bytes() -> int:
        return sum(
            p.stat().st_blocks * 512 for p in objects.rglob("data-b*") if "roma" not in p.parts
        )

    with mounted(
        world_tiny, emulator.url, workdir, cache_opts={"max_size": cap, "block_size": "256KiB"}
    ) as m:
        for a in archives:
            assert md5(m.path / a["path"]) == a["md5"]
        pinned_before = sum(p.stat().st_blocks * 512 for p in objects.rglob("data-b*"))
        total = 0
        for f in sorted(files, key=lambda f: -f["size"])[:40]:
            assert md5(m.path / f["path"]) == f["md5"]
            total += f["size"]
            # unpinned blocks on disk: never above the cap by more than the blocks in flight
            # (one block per fetch under way: written, not yet accounted; md5 runs <= 4)
            in_flight = 4 * (256 << 10)
            assert cached_bytes() - pinned_before <= cap + in_flight
        assert total > 4 * cap
        emulator.reset_stats()
        for a in archives:  # one-shot archives were never evicted
            assert md5(m.path / a["path"]) == a["md5"]
        assert "roma.download" not in downloads(emulator)


def test_two_readers_share_one_download(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    big = max(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive"), key=lambda f: f["size"]
    )
    with mounted(world_tiny, emulator.url, workdir) as m:
        os.stat(m.path / big["path"])
        emulator.reset_stats()
        emulator.set_faults(
            {"rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 0.2}]}
        )
        readers = [
            subprocess.Popen(
                ["md5sum", str(m.path / big["path"])], stdout=subprocess.PIPE, text=True
            )
            for _ in range(2)
        ]
        outs = [r.communicate(timeout=60)[0] for r in readers]
    assert all(o.split()[0] == big["md5"] for o in outs)
    assert sent_bytes(emulator, "koodrive.obs") == big["size"]


def test_sequential_reads_grow_and_random_reads_stay_small(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    big = max(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive"), key=lambda f: f["size"]
    )
    block = 256 << 10
    nblocks = big["size"] // block
    with mounted(world_tiny, emulator.url, workdir, cache_opts={"block_size": block}) as m:
        os.stat(m.path / big["path"])
        emulator.reset_stats()
        assert md5(m.path / big["path"]) == big["md5"]
        requests = emulator.stats().get("koodrive.obs", 0)
        assert requests <= nblocks // 4, f"{requests} requests for {nblocks} blocks"
        assert sent_bytes(emulator, "koodrive.obs") == big["size"]
    # a fresh cache: one random 4 KiB read of a cold big file
    with mounted(
        world_tiny,
        emulator.url,
        workdir,
        cache_dir=workdir / "cold",
        cache_opts={"block_size": block},
        name="random",
    ) as m:
        os.stat(m.path / big["path"])
        emulator.reset_stats()
        fd = os.open(m.path / big["path"], os.O_RDONLY)
        try:
            off = big["size"] // 2 + 12345
            src = (world_tiny / "expected" / big["path"]).read_bytes()
            assert os.pread(fd, 4096, off) == src[off : off + 4096]
        finally:
            os.close(fd)
        assert sent_bytes(emulator, "koodrive.obs") <= 2 * block


def test_offline_start_serves_cache_and_fails_fast(world_tiny: Path, workdir: Path) -> None:
    cache = workdir / "cache"
    files = [f for f in ranged(world_tiny) if "sizes" in f["path"] or "/files/" in f["path"]]
    cached, uncached = files[: len(files) // 2], files[len(files) // 2 :]
    emu_dir = workdir / "emu"
    emu_dir.mkdir()
    with running_emulator(world_tiny, emu_dir) as url:
        port = int(url.rsplit(":", 1)[1])
        with mounted(world_tiny, url, workdir, cache_dir=cache) as m:
            # out of order, so that the read-ahead across files leaves the others uncached
            for f in reversed(cached):
                assert md5(m.path / f["path"]) == f["md5"]
            for f in uncached:  # listed, not read
                os.stat(m.path / f["path"])
    # the service is gone: the mount still starts and serves what it has
    with mounted(
        world_tiny, url, workdir, cache_dir=cache, name="offline", mount_opts={"dir_ttl": 2.0}
    ) as m:
        for f in cached:
            assert md5(m.path / f["path"]) == f["md5"]
        f = uncached[0]
        assert os.stat(m.path / f["path"]).st_size == f["size"]
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (m.path / f["path"]).read_bytes()
        assert info.value.errno in (errno.ENETDOWN, errno.EIO)
        assert time.monotonic() - t0 < 5
        assert (
            "not cached" in m.log_text()
            or "unreachable" in m.log_text().lower()
            or "connect" in m.log_text().lower()
        )
        # the service comes back on the same address: the mount recovers by itself
        with running_emulator(world_tiny, emu_dir, port=port):
            time.sleep(2.5)
            assert md5(m.path / f["path"]) == f["md5"]


def test_offline_flag_and_operator_controls(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    folder = (
        "koodrive/"
        + next(p for p in (f["path"] for f in manifest(world_tiny)) if "/sizes/" in p).split("/")[1]
        + "/sizes"
    )
    inside = [f for f in manifest(world_tiny) if f["path"].startswith(folder + "/")]
    cache = workdir / "cache"

    def fusefs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fusefs", *args], capture_output=True, text=True, timeout=120
        )

    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        r = fusefs("pin", str(m.path / folder))
        assert r.returncode == 0, r.stderr
        assert f"pinned {len(inside)} files" in r.stdout
        f = max(inside, key=lambda f: f["size"])
        # per-file state through the control socket (mount.xattrs is off by default)
        r = fusefs("info", "--json", str(m.path / f["path"]))
        assert r.returncode == 0, r.stderr
        state = json.loads(r.stdout)
        assert state["pinned"] is True, state
        assert state["cached_percent"] == 100
        assert state["remote_id"] == f["remote_id"]
        assert "link_expires_at" in state
        stats = fusefs("cache", "stats", str(m.path))
        assert "pinned_bytes" in stats.stdout and "hit_rate" in stats.stdout
        r = fusefs("cache", "clear", str(m.path))
        assert r.returncode == 0, r.stderr
        # corrupt one pinned block: verify finds it and drops it
        target = max(cache.rglob("data-b*"), key=lambda p: p.stat().st_size)
        raw = bytearray(target.read_bytes())
        raw[100] ^= 0xFF
        target.write_bytes(bytes(raw))
        r = fusefs("cache", "verify", str(m.path))
        assert "1 corrupt" in r.stdout, r.stdout + r.stderr
        r = fusefs("prefetch", str(m.path / folder))
        assert r.returncode == 0, r.stderr
    # --offline: pinned content reads with no network at all
    mnt = workdir / "off"
    mnt.mkdir()
    cfg = workdir / "off.toml"
    env = {**os.environ, **demo_config(world_tiny, emulator.url, cache, cfg)}
    log = workdir / "off.log"
    emulator.reset_stats()
    proc = spawn_daemon(cfg, mnt, env, log, "--offline")
    try:
        wait_for_mount(proc, mnt, log)
        for f in inside:
            assert md5(mnt / f["path"]) == f["md5"]
    finally:
        rc = unmount(proc, mnt)
    assert rc == 0
    assert sum(emulator.stats().values()) == 0


def test_unchanged_file_rereads_from_the_page_cache(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    big = max(ranged(world_tiny), key=lambda f: f["size"])

    def daemon_reads(mnt: Path) -> int:
        stats = cache_stats(mnt)
        return stats["hits"] + stats["misses"]

    with mounted(world_tiny, emulator.url, workdir) as m:
        path = m.path / big["path"]
        assert md5(path) == big["md5"]
        # Reopened unchanged: keep_cache, so the kernel answers alone. (Rarely the kernel still
        # drops the pages after the first pass; a broken keep_cache drops them every time.)
        costs = []
        for _ in range(3):
            before = daemon_reads(m.path)
            assert md5(path) == big["md5"]
            costs.append(daemon_reads(m.path) - before)
        assert 0 in costs, costs


def test_changed_file_is_read_anew_never_mixed(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = next(f for f in manifest(world_tiny) if f["path"].endswith("sizes/1MiB+1.bin"))
    container = f["path"].split("/")[1]

    def version(path: Path) -> str:
        out = subprocess.run(
            [sys.executable, "-m", "fusefs", "info", "--json", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        return str(json.loads(out)["version"])

    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 1.0}) as m:
        path = m.path / f["path"]
        assert md5(path) == f["md5"]  # cached, and in the page cache
        old_version = version(path)
        changed = emulator.admin(
            "POST",
            "/_admin/koodrive/entries",
            {
                "containerId": container,
                "id": f["remote_id"],
                "content": {"key": "changed-content", "size": f["size"]},
            },
        )
        time.sleep(1.5)  # past dir_ttl: the next access sees the new version
        assert md5(path) == changed["md5"] != f["md5"]
        assert version(path) != old_version
