"""Kills (issue 9): ``kill -9`` of the daemon during heavy reads, restarted on the same cache
(short: 3, soak: 20): no wrong byte, ``fusefs cache verify`` clean, ROMA archives (one-shot,
served from the cache only) intact; SIGTERM / SIGINT with reads in flight: a clean unmount,
the readers get an error or their bytes, none hangs."""

from __future__ import annotations

import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from fusefs.testbed import demo_config
from tests.helpers.mounting import (
    FAST_IOTDA_WINDOW,
    Emulator,
    spawn_daemon,
    unmount,
    wait_for_mount,
)
from tests.mount.test_mount import manifest
from tests.reliability.common import scale, write_result

pytestmark = [pytest.mark.fuse, pytest.mark.slow]


class Daemon:
    """A daemon on a fixed config and cache, started again after each kill."""

    def __init__(self, world: Path, url: str, workdir: Path, **mount: Any) -> None:
        self.mnt = workdir / "mnt"
        self.mnt.mkdir(exist_ok=True)
        self.log = workdir / "mnt.log"
        config = workdir / "mnt.toml"
        self.config = config
        self.env = {
            **os.environ,
            **demo_config(
                world,
                url,
                workdir / "cache",
                config,
                mount={"request_timeout": 20.0, "log_level": "info", **mount},
                iotda={"download_interval": FAST_IOTDA_WINDOW, "background_fetch": False},
            ),
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = spawn_daemon(self.config, self.mnt, self.env, self.log)
        wait_for_mount(self.proc, self.mnt, self.log, timeout=60)

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)
        unmount(None, self.mnt)  # the dead mount (fusermount -u -z)
        self.proc = None

    def stop(self) -> int | None:
        rc = unmount(self.proc, self.mnt)
        self.proc = None
        return rc


def verify(mnt: Path) -> tuple[int, str]:
    r = subprocess.run(
        [sys.executable, "-m", "fusefs", "cache", "verify", str(mnt)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, r.stdout + r.stderr


def readers(
    root: Path, files: list[dict[str, Any]], expected: Path, n: int, stop: threading.Event
) -> tuple[list[threading.Thread], dict[str, int]]:
    counts = {"reads": 0, "bytes": 0, "wrong": 0, "errors": 0}
    lock = threading.Lock()

    def run(seed: int) -> None:
        rng = random.Random(seed)
        while not stop.is_set():
            f = rng.choice(files)
            try:
                got = (root / f["path"]).read_bytes()
            except OSError:
                with lock:
                    counts["errors"] += 1
                time.sleep(0.05)
                continue
            ok = got == (expected / f["path"]).read_bytes()
            with lock:
                counts["reads"] += 1
                counts["bytes"] += len(got)
                counts["wrong"] += not ok

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    return threads, counts


def test_kill9_during_reads_then_restart_on_the_same_cache(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    kills = scale(3, 20)
    files = [
        f
        for f in manifest(world_tiny)
        if f["in_expected"] and f["provider"] in ("koodrive", "enos") and f["size"] > 0
    ]
    big = sorted(files, key=lambda f: -f["size"])[:20] + random.Random(1).sample(files, 60)
    roma = [f for f in manifest(world_tiny) if f["provider"] == "roma"]
    expected = world_tiny / "expected"
    emulator.set_faults(
        {"rules": [{"route": "*", "kind": "latency", "seconds": 0.02, "rate": 0.5}]}
    )
    d = Daemon(world_tiny, emulator.url, workdir)
    d.start()
    for f in roma:  # downloaded once: from now on only the cache has them
        assert (d.mnt / f["path"]).read_bytes() == (expected / f["path"]).read_bytes()
    totals = {"reads": 0, "bytes": 0, "wrong": 0, "errors": 0}
    verified: list[str] = []
    try:
        for _ in range(kills):
            stop = threading.Event()
            threads, counts = readers(d.mnt, big, expected, 4, stop)
            time.sleep(random.uniform(1.0, 2.5))
            d.kill9()
            stop.set()
            for t in threads:
                t.join(timeout=60)
                assert not t.is_alive(), "a reader hangs after kill -9"
            for k in totals:
                totals[k] += counts[k]
            d.start()
            rc, out = verify(d.mnt)
            verified.append(out.strip())
            assert rc == 0, out
            assert re.search(r" 0 corrupt", out), out
            for f in roma:  # one-shot: intact, from the cache
                assert (d.mnt / f["path"]).read_bytes() == (expected / f["path"]).read_bytes()
        for f in big[:20]:
            assert (d.mnt / f["path"]).read_bytes() == (expected / f["path"]).read_bytes()
    finally:
        exit_status = d.stop()
    assert emulator.stats().get("roma.download", 0) == len(roma)
    write_result(
        "kills",
        {
            "kills_survived": kills,
            "reads": totals["reads"],
            "bytes_compared": totals["bytes"],
            "wrong_bytes_reads": totals["wrong"],
            "reader_errors_at_kills": totals["errors"],
            "cache_verify": verified[-1] if verified else "",
            "roma_archives_intact": len(roma),
        },
    )
    assert totals["wrong"] == 0
    assert exit_status == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_with_reads_in_flight(
    world_tiny: Path, emulator: Emulator, workdir: Path, sig: signal.Signals
) -> None:
    files = [f for f in manifest(world_tiny) if f["in_expected"] and f["provider"] == "koodrive"]
    expected = world_tiny / "expected"
    emulator.set_faults({"rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 2}]})
    d = Daemon(world_tiny, emulator.url, workdir)
    d.start()
    assert d.proc is not None
    stop = threading.Event()
    threads, counts = readers(d.mnt, files, expected, 6, stop)
    time.sleep(1.0)  # reads wait for the slow object store
    t0 = time.monotonic()
    d.proc.send_signal(sig)
    rc = d.proc.wait(timeout=30)
    stop.set()
    for t in threads:
        t.join(timeout=30)
        assert not t.is_alive(), "a reader hangs after the signal"
    took = time.monotonic() - t0
    mounted_still = os.path.ismount(d.mnt)
    d.proc = None
    d.stop()
    write_result(
        f"signal_{sig.name}",
        {
            "exit_status": rc,
            "seconds_to_exit": round(took, 2),
            "reader_errors": counts["errors"],
            "wrong_bytes_reads": counts["wrong"],
        },
    )
    assert rc == 0
    assert not mounted_still
    assert counts["wrong"] == 0
