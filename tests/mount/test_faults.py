"""Server faults become errnos and log lines; the mount stays up and recovers."""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest

from tests.helpers.mounting import Emulator, mounted
from tests.mount.test_mount import manifest

pytestmark = pytest.mark.fuse


def test_server_errors_map_to_eio_and_recover(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = next(f for f in manifest(world_tiny) if "/files/" in f["path"] and f["size"] > 0)
    with mounted(world_tiny, emulator.url, workdir) as m:
        os.stat(m.path / f["path"])  # listing done before the fault
        emulator.set_faults({"rules": [{"route": "enos.download", "kind": "error", "status": 500}]})
        with pytest.raises(OSError) as info:
            (m.path / f["path"]).read_bytes()
        assert info.value.errno == errno.EIO
        assert "enos" in m.log_text().lower()
        emulator.admin("PUT", "/_admin/faults", {"rules": []})
        assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]


def test_transient_errors_are_retried(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    f = next(f for f in manifest(world_tiny) if f["provider"] == "koodrive" and f["size"] > 0)
    emulator.set_faults(
        {
            "rules": [
                {"route": "koodrive.obs", "kind": "error", "status": 503, "count": 2},
                {"route": "koodrive.list", "kind": "throttle", "retry_after": 1, "count": 1},
            ]
        }
    )
    with mounted(world_tiny, emulator.url, workdir) as m:
        assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]


def test_slow_server_is_bounded_by_request_timeout(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = next(f for f in manifest(world_tiny) if "/files/" in f["path"] and f["size"] > 0)
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"request_timeout": 2.0}) as m:
        os.stat(m.path / f["path"])
        emulator.set_faults(
            {"rules": [{"route": "enos.download", "kind": "latency", "seconds": 20}]}
        )
        t0 = time.monotonic()
        with pytest.raises(OSError) as info:
            (m.path / f["path"]).read_bytes()
        assert info.value.errno == errno.EIO
        assert time.monotonic() - t0 < 10
        assert "request_timeout" in m.log_text()
        assert os.listdir(m.path / "enos")  # still up
