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

from tests.helpers.mounting import unmount

pytestmark = pytest.mark.fuse


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_demo_mounts_and_a_signal_stops_everything(tmp_path: Path, sig: signal.Signals) -> None:
    """Ctrl-C (SIGINT), SIGTERM, and SIGHUP (its terminal closed) stop the demo alike."""
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
    try:
        deadline = time.monotonic() + 60
        while not os.path.ismount(mnt):
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline, "the demo did not mount within 60 s"
            time.sleep(0.1)
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


def processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""
