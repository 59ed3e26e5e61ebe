"""The read path through real mounts: everything a cold read fetches is persisted; random reads
fetch and read from disk only the 64 KiB segments they touch; faults mid-body never serve a
wrong byte. The emulator's request and byte counts, and the daemon's own disk counters, are the
witnesses (never timings)."""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, cache_stats, mounted
from tests.mount.test_cache_mount import downloads, sent_bytes
from tests.mount.test_mount import manifest

pytestmark = pytest.mark.fuse

SEG = 64 << 10


def big_koodrive(world: Path) -> dict[str, Any]:
    return max((f for f in manifest(world) if f["provider"] == "koodrive"), key=lambda f: f["size"])


def drop_page_cache() -> None:
    subprocess.run(["sync"], check=False)
    try:
        Path("/proc/sys/vm/drop_caches").write_text("3\n")
    except OSError:
        pass


def test_cold_read_is_fully_persisted(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    """A cold sequential read, a remount, a full re-read after drop_caches: zero requests."""
    cache = workdir / "cache"
    files = sorted(
        (f for f in manifest(world_tiny) if f["provider"] in ("koodrive", "enos") and f["size"]),
        key=lambda f: -f["size"],
    )[:20]
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        for f in files:
            assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]
        stats = cache_stats(m.path)
        assert stats["not_persisted"] == 0, stats
    drop_page_cache()
    emulator.reset_stats()
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache, name="again") as m:
        for f in files:
            assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]
        stats = cache_stats(m.path)
    assert downloads(emulator) == {}, downloads(emulator)
    assert stats["fetches"] == 0 and stats["hits"] > 0, stats
    # the cache holds names, ids and sizes of private files: nothing in it for other users
    assert cache.stat().st_mode & 0o777 == 0o700
    for p in cache.rglob("*"):
        mode = p.stat().st_mode & 0o777
        assert mode & 0o077 == 0, (p, oct(mode))


def test_random_reads_fetch_and_read_only_their_segments(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    big = big_koodrive(world_tiny)
    assert big["size"] >= 4 << 20, big
    src = (world_tiny / "expected" / big["path"]).read_bytes()
    # backwards, 1.3 MiB apart: every read jumps back further than the 1 MiB the sequential
    # detector tolerates, so none is taken for part of a sequential read
    step = (1 << 20) + (300 << 10)
    offsets = [(big["size"] - 4096 - i * step) & ~4095 for i in range(6)]
    cache = workdir / "cache"
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        os.stat(m.path / big["path"])
        emulator.reset_stats()
        fd = os.open(m.path / big["path"], os.O_RDONLY)
        try:
            # the first read at a non-zero offset is random: it fetches segments, not blocks
            for off in offsets:
                assert os.pread(fd, 4096, off) == src[off : off + 4096]
        finally:
            os.close(fd)
        sent = sent_bytes(emulator, "koodrive.obs")
        # each read costs at most the segments the kernel's request touches (<= 128 KiB + 1)
        assert sent <= len(offsets) * 3 * SEG, (sent, len(offsets))
        # then the whole file, so everything is on disk
        assert (m.path / big["path"]).read_bytes() == src
    drop_page_cache()
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache, name="again") as m:
        before = cache_stats(m.path)
        fd = os.open(m.path / big["path"], os.O_RDONLY | getattr(os, "O_DIRECT", 0))
        os.close(fd)
        fd = os.open(m.path / big["path"], os.O_RDONLY)
        try:
            for off in offsets:
                assert os.pread(fd, 4096, off) == src[off : off + 4096]
        finally:
            os.close(fd)
        after = cache_stats(m.path)
    read = after["disk_read_bytes"] - before["disk_read_bytes"]
    # a random 4 KiB read from the disk cache reads (and checks) its segments, not 1 MiB blocks
    assert 0 < read <= len(offsets) * 3 * SEG, (read, len(offsets))
    assert after["fetches"] == 0, after


def test_cuts_and_errors_mid_body_never_serve_a_wrong_byte(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """Resets, truncations and 503s on the object route: the read resumes, bytes are exact."""
    files = sorted(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive" and f["size"]),
        key=lambda f: -f["size"],
    )[:6]
    with mounted(world_tiny, emulator.url, workdir) as m:
        for f in files:
            os.stat(m.path / f["path"])
        emulator.set_faults(
            {
                "rules": [
                    {"route": "koodrive.obs", "kind": "truncate", "after_bytes": 70000, "count": 3},
                    {"route": "koodrive.obs", "kind": "reset", "after_bytes": 150000, "count": 2},
                    {"route": "koodrive.obs", "kind": "error", "status": 503, "count": 2},
                ],
            }
        )
        for f in files:
            got = (m.path / f["path"]).read_bytes()
            assert hashlib.md5(got).hexdigest() == f["md5"], f["path"]
        stats = cache_stats(m.path)
        assert stats["corrupt_blocks"] == 0, stats
        assert "resuming" in m.log_text() or "retry" in m.log_text()


def test_a_closed_handle_stops_its_read_ahead(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """Read the start of a file and close it while its read-ahead waits for the server: the
    read-ahead is cancelled (the file's later bytes are never sent), and a later full read
    fetches what is missing and gets every byte right."""
    f = big_koodrive(world_tiny)
    assert f["size"] >= 8 << 20, f  # room for a read-ahead past the first fetch
    with mounted(world_tiny, emulator.url, workdir) as m:
        path = m.path / f["path"]
        os.stat(path)
        emulator.reset_stats()
        emulator.set_faults(
            {"rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 1.5}]}
        )
        fd = os.open(path, os.O_RDONLY)
        # the kernel's own readahead off: it would ask for the whole file itself
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        try:
            for k in range(4):  # sequential: the window grows, read-ahead goes out
                assert len(os.pread(fd, 128 << 10, k * (128 << 10))) == 128 << 10
        finally:
            os.close(fd)
        # the read-ahead requests are still in their 1.5 s wait: time for them to finish
        subprocess.run(["sleep", "3"], check=True)
        stats = cache_stats(m.path)
        assert stats["abandoned"] >= 1, stats
        # what the daemon received (the server may have written more into the closed socket)
        assert stats["fetched_bytes"] <= f["size"] // 4, stats
        assert stats["inflight_budget_used"] == 0, stats
        emulator.set_faults({"rules": []})
        drop_page_cache()
        got = path.read_bytes()
        assert hashlib.md5(got).hexdigest() == f["md5"]
        assert cache_stats(m.path)["corrupt_blocks"] == 0
