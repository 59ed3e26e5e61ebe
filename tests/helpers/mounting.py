"""Real mounts for tests: the daemon in a subprocess, always unmounted (pyfuse3's test/util.py)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fusefs import daemon
from fusefs.daemon import Daemon, StartError, UnmountError
from fusefs.daemon import is_mounted as is_mounted  # the tests import it from here
from fusefs.testbed import demo_config

# Tests shorten IoTDA's 1-download-per-30-s rule (emulator and client alike) to keep runs short;
# the rule itself is tested with its own window.
FAST_IOTDA_WINDOW = 0.3

# Every mountpoint this test process handed to a daemon: the session's backstop unmounts only
# these, never a mount of another test run on the same machine.
SPAWNED_MOUNTS: set[Path] = set()


def fuse_available() -> bool:
    if not os.path.exists("/dev/fuse") or shutil.which("fusermount3") is None:
        return False
    try:
        fd = os.open("/dev/fuse", os.O_RDWR)
    except OSError:
        return False
    os.close(fd)
    return True


def unmount(proc: subprocess.Popen[bytes] | None, mnt: Path) -> int | None:
    """Unmount from outside (lazily if need be), then wait for the daemon (killed after 15 s):
    its exit status. Asserts that nothing is left mounted."""
    with contextlib.suppress(UnmountError):  # not mounted, or busy even lazily
        daemon.unmount(mnt, lazy=True)
    rc = None
    if proc is not None:
        try:
            rc = proc.wait(timeout=daemon.STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            rc = proc.wait()
    with contextlib.suppress(UnmountError):  # a killed daemon leaves its mount dead
        daemon.unmount(mnt, lazy=True)
    assert not is_mounted(mnt), f"{mnt} is still mounted"
    return rc


@dataclass
class Emulator:
    url: str

    def admin(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.url + path, data=data, method=method, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            raw = resp.read()
        return json.loads(raw) if raw else None

    def stats(self) -> dict[str, int]:
        """Per-route request counts."""
        raw = self.admin("GET", "/_admin/stats")
        counts = raw.get("requests", raw) if isinstance(raw, dict) else raw
        return {k: int(v) for k, v in counts.items()}

    def reset_stats(self) -> None:
        self.admin("POST", "/_admin/stats/reset")

    def set_faults(self, plan: dict[str, Any]) -> None:
        """Set the given fields of the fault plan and append its rules."""
        self.admin("PUT", "/_admin/faults?merge=1", plan)


@dataclass
class Mount:
    path: Path
    proc: subprocess.Popen[bytes]
    log: Path
    config: Path
    env: dict[str, str]

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def spawn_daemon(config: Path, mnt: Path, env: dict[str, str], log: Path, *extra: str) -> Daemon:
    """`fusefs mount --foreground` in a subprocess, logging to ``log`` (the caller unmounts)."""
    SPAWNED_MOUNTS.add(Path(mnt))
    return daemon.spawn(config, mnt, log, options=extra, env=env)


def wait_for_mount(
    proc: Daemon, mnt: Path | None = None, log: Path | None = None, timeout: float = 20
) -> None:
    """Until the daemon says the mount is up and it answers (``os.path.ismount`` asks it); else
    fail with the end of its log. (``mnt`` and ``log`` are those ``spawn_daemon`` was given:
    the daemon knows them.)"""
    deadline = time.monotonic() + timeout
    try:
        proc.wait_ready(timeout)
    except StartError as exc:
        raise AssertionError(f"{exc}\n{exc.log_tail}") from None
    while not os.path.ismount(proc.mountpoint):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{proc.mountpoint} does not answer:\n{proc.log_tail()}")
        time.sleep(0.02)


@contextlib.contextmanager
def mounted(
    world_dir: Path,
    emulator_url: str,
    workdir: Path,
    *,
    cache_dir: Path | None = None,
    mount_opts: dict[str, Any] | None = None,
    cache_opts: dict[str, Any] | None = None,
    iotda_opts: dict[str, Any] | None = None,
    name: str = "mnt",
    extra_toml: str = "",
) -> Iterator[Mount]:
    """A daemon mounting the world at ``workdir/name``; ``extra_toml`` is appended to its
    config (sections demo_config does not write, e.g. ``[fleet]``)."""
    mnt = workdir / name
    mnt.mkdir(parents=True, exist_ok=True)
    config = workdir / f"{name}.toml"
    env = {
        **os.environ,
        **demo_config(
            world_dir,
            emulator_url,
            cache_dir or workdir / "cache",
            config,
            mount={"request_timeout": 30.0, "log_level": "debug", **(mount_opts or {})},
            cache=cache_opts,
            # background downloads off unless a test asks: tests count the downloads they cause
            iotda={
                "download_interval": FAST_IOTDA_WINDOW,
                "background_fetch": False,
                **(iotda_opts or {}),
            },
        ),
    }
    if extra_toml:
        with config.open("a") as f:
            f.write("\n" + extra_toml + "\n")
    log = workdir / f"{name}.log"
    proc = spawn_daemon(config, mnt, env, log)
    try:
        wait_for_mount(proc, mnt, log)
        yield Mount(mnt, proc, log, config, env)
    finally:
        rc = unmount(proc, mnt)
    assert rc == 0, f"daemon exited with {rc}:\n{log.read_text(errors='replace')[-4000:]}"


def cache_stats(mnt: Path) -> dict[str, int]:
    """`fusefs cache stats MNT` as numbers (the daemon's own counters)."""
    out = subprocess.run(
        [sys.executable, "-m", "fusefs", "cache", "stats", str(mnt)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    stats: dict[str, int] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        try:
            stats[key] = int(value.strip())
        except ValueError:
            pass
    return stats
