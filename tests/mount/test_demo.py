"""`fusefs demo` as a user runs it: mounts, shows all four trees; Ctrl-C, SIGTERM or SIGHUP leave
nothing behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.mounting import is_mounted, unmount

pytestmark = pytest.mark.fuse


def start_demo(tmp_path: Path) -> subprocess.Popen[str]:
    """`fusefs demo` of the tiny world at tmp_path/mnt, once it is mounted."""
    mnt = tmp_path / "mnt"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "fusefs",
            "demo",
            str(mnt),
            "--workdir",
            str(tmp_path / "demo"),
            "--scale",
            "tiny",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 60
    while not os.path.ismount(mnt):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, _ = proc.communicate()
            raise AssertionError(f"the demo did not mount within 60 s:\n{out}")
        time.sleep(0.1)
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_demo_mounts_and_a_signal_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT), SIGTERM, and SIGHUP (its terminal closed) stop the demo alike."""
    mnt = tmp_path / "mnt"
    proc = start_demo(tmp_path)
    try:
        for sub in ("enos", "koodrive", "iotda/exports", "roma"):
            assert os.listdir(mnt / sub), sub
        proc.send_signal(sig)  # maybe before the banner is out
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert "nothing left mounted" in out
        assert not os.path.ismount(mnt)
    finally:
        if proc.poll() is None:
            proc.kill()
        unmount(None, mnt)
    # no emulator or daemon left running
    assert not [pid for pid in processes() if str(tmp_path / "demo") in cmdline(pid)]


def test_demo_killed_by_sigkill_takes_its_children_along(tmp_path: Path) -> None:
    """`kill -9` of the demo: its daemon and emulator get SIGTERM from the kernel
    (PR_SET_PDEATHSIG); the daemon unmounts on it as on any SIGTERM."""
    mnt = tmp_path / "mnt"
    proc = start_demo(tmp_path)
    try:
        proc.kill()
        proc.communicate(timeout=10)
        deadline = time.monotonic() + 20
        while left := [pid for pid in processes() if str(tmp_path / "demo") in cmdline(pid)]:
            assert time.monotonic() < deadline, [cmdline(pid) for pid in left]
            time.sleep(0.1)
        assert not is_mounted(mnt)
    finally:
        unmount(None, mnt)


def processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
