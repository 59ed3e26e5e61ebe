"""IoTDA exports (no size, no Range, 1 download per window) and ROMA archives (one-shot)."""

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


def test_iotda_exports_download_once_and_show_true_size(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    exports = [f for f in manifest(world_tiny) if f["provider"] == "iotda"]
    assert len(exports) >= 3
    emulator.set_faults({"iotda_download_window": 1.0})
    with mounted(world_tiny, emulator.url, workdir, iotda_opts={"download_interval": 1.0}) as m:
        emulator.reset_stats()
        names = os.listdir(m.path / "iotda" / "exports")
        assert sorted(names) == sorted(os.path.basename(f["path"]) for f in exports)
        picked = exports[:3]
        # stat does not wait for a window: size 0 until downloaded (docs/semantics.md)
        assert all(os.stat(m.path / f["path"]).st_size == 0 for f in picked)
        assert emulator.stats().get("iotda.download", 0) == 0, "stat must not download"
        t0 = time.monotonic()
        for f in picked:
            p = m.path / f["path"]
            assert hashlib.md5(p.read_bytes()).hexdigest() == f["md5"]  # never truncated
            assert os.stat(p).st_size == f["size"]  # the true size once known
        # the rate rule was honoured: at least one window between consecutive downloads
        assert time.monotonic() - t0 >= 1.0 * (len(picked) - 1) * 0.9
        # read again: from the cache
        for f in picked:
            assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]
        calls = emulator.stats()
        assert calls.get("iotda.download", 0) == len(picked), calls


def test_roma_archive_is_fetched_once_and_survives_restart(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    archives = [f for f in manifest(world_tiny) if f["provider"] == "roma"]
    assert archives
    cache = workdir / "cache"
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache) as m:
        for f in archives:
            data = (m.path / f["path"]).read_bytes()
            assert hashlib.md5(data).hexdigest() == f["md5"]
    assert emulator.stats().get("roma.download", 0) == len(archives)
    emulator.reset_stats()
    # a new daemon on the same cache: the consumed archives are still there, byte for byte
    with mounted(world_tiny, emulator.url, workdir, cache_dir=cache, name="mnt2") as m:
        for f in archives:
            p = m.path / f["path"]
            assert os.stat(p).st_size == f["size"]
            assert hashlib.md5(p.read_bytes()).hexdigest() == f["md5"]
    assert emulator.stats().get("roma.download", 0) == 0


def test_roma_download_cut_midway_is_eio_never_partial(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    archives = [f for f in manifest(world_tiny) if f["provider"] == "roma" and f["size"] > 200]
    assert archives
    f = archives[0]
    emulator.set_faults(
        {"rules": [{"route": "roma.download", "kind": "reset", "after_bytes": 100, "count": 1}]}
    )
    with mounted(world_tiny, emulator.url, workdir) as m:
        p = m.path / f["path"]
        for _ in range(2):  # the second attempt must not serve a partial archive either
            with pytest.raises(OSError) as info:
                p.read_bytes()
            assert info.value.errno == errno.EIO
        assert "can no longer be fetched" in m.log_text()
        # the mount is still up and serves everything else
        assert os.listdir(m.path / "koodrive")
    assert emulator.stats().get("roma.download", 0) == 1
