"""Load (issue 9): 16 readers over the same and different files with faults and cache clears,
for a bounded time (short: ~20 s, soak: 3 min): 0 unexpected errors, 0 wrong bytes, the
daemon's fds and RSS flat at the end (the figures are reported)."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.mounting import Emulator, mounted
from tests.mount.test_mount import manifest
from tests.reliability.common import Clock, fd_count, fd_kinds, rss_kib, scale, write_result
from tests.reliability.test_faults import mixed_faults

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

READERS = 16


def test_sixteen_readers_with_faults(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    seconds = scale(20.0, 180.0)
    timeout = 20.0
    files = [
        f
        for f in manifest(world_tiny)
        if f["in_expected"] and f["provider"] in ("koodrive", "enos") and f["size"] > 0
    ]
    rng = random.Random(16)
    hot = sorted(files, key=lambda f: -f["size"])[:4]  # everyone reads these too
    pool = rng.sample(files, min(200, len(files)))
    expected = {f["path"]: (world_tiny / "expected" / f["path"]).read_bytes() for f in hot + pool}
    emulator.set_faults({"seed": 16, "rules": mixed_faults(0.10, 1.0)})
    with mounted(
        world_tiny,
        emulator.url,
        workdir,
        mount_opts={"request_timeout": timeout, "log_level": "info"},
    ) as m:
        pid = m.proc.pid
        for f in hot + pool[:20]:  # warm up: the daemon's steady state
            (m.path / f["path"]).read_bytes()
        time.sleep(1)
        fds_before, rss_before = fd_count(pid), rss_kib(pid)
        kinds_before = fd_kinds(pid, workdir / "cache")
        stop = threading.Event()
        lock = threading.Lock()
        counts = {"reads": 0, "bytes": 0, "errors": 0, "wrong": 0}
        clock = Clock()
        failures: list[str] = []

        def reader(i: int) -> None:
            r = random.Random(i)
            while not stop.is_set():
                f = r.choice(hot) if r.random() < 0.3 else r.choice(pool)
                out = clock.call(f"read {f['path']}", (m.path / f["path"]).read_bytes)
                with lock:
                    if out.error is not None:
                        counts["errors"] += 1
                        failures.append(f"{f['path']}: {out.error}")
                    else:
                        counts["reads"] += 1
                        counts["bytes"] += len(out.value)
                        counts["wrong"] += out.value != expected[f["path"]]

        threads = [threading.Thread(target=reader, args=(i,), daemon=True) for i in range(READERS)]
        t0 = time.monotonic()
        for t in threads:
            t.start()
        clears = 0
        while time.monotonic() - t0 < seconds:
            time.sleep(5)
            subprocess.run(
                [sys.executable, "-m", "fusefs", "cache", "clear", str(m.path)],
                capture_output=True,
                check=False,
                timeout=60,
            )
            clears += 1
        stop.set()
        for t in threads:
            t.join(timeout=3 * timeout)
            assert not t.is_alive(), "a reader hangs"
        elapsed = time.monotonic() - t0
        time.sleep(2)  # in-flight work settles
        fds_after, rss_after = fd_count(pid), rss_kib(pid)
        kinds_after = fd_kinds(pid, workdir / "cache")
        plan = emulator.admin("GET", "/_admin/faults")
        injected = sum(10**9 - r["count"] for r in plan["rules"])
        emulator.admin("PUT", "/_admin/faults", {"iotda_download_window": 0.3})
    write_result(
        "load",
        {
            "readers": READERS,
            "seconds": round(elapsed, 1),
            "reads": counts["reads"],
            "bytes_compared": counts["bytes"],
            "unexpected_errors": counts["errors"],
            "wrong_bytes_reads": counts["wrong"],
            "faults_injected": injected,
            "cache_clears": clears,
            "fds_before": fds_before,
            "fds_after": fds_after,
            "fds_by_kind_before": kinds_before,
            "fds_by_kind_after": kinds_after,
            "rss_kib_before": rss_before,
            "rss_kib_after": rss_after,
            **clock.figures(),
        },
    )
    assert counts["wrong"] == 0
    assert counts["errors"] == 0, failures[:10]
    assert counts["reads"] > READERS
    # open files and pipes flat; cache data files are kept open in an LRU of at most 64
    # (fusefs/cache/store.py); sockets are the HTTP pools' connections (bounded, they vary)
    assert kinds_after["file"] + kinds_after["other"] <= (
        kinds_before["file"] + kinds_before["other"] + 2
    ), (kinds_before, kinds_after)
    assert kinds_after["cache"] <= 64 + 4, (kinds_before, kinds_after)
    assert kinds_after["socket"] <= kinds_before["socket"] + 24, (kinds_before, kinds_after)
    assert rss_after <= rss_before + 64 * 1024, (rss_before, rss_after)  # KiB
    assert clock.slowest < timeout + 1.0, clock.figures()
