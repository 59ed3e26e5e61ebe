"""Defects the hostile corpus found in code outside the emulator and the suite: one focused
test each, marked xfail(strict) until fixed (the fix removes the mark). See docs/reliability.md."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, mounted
from tests.mount.test_mount import manifest
from tests.reliability.common import read_file

pytestmark = pytest.mark.fuse


def _folder_of(world: Path, provider: str, part: str) -> tuple[str, set[str]]:
    """The folder of the first ``provider`` file with ``part`` in its path, and its entries."""
    f = next(f for f in manifest(world) if f["provider"] == provider and part in f["path"])
    folder = f["path"].rsplit("/", 1)[0]
    return folder, {p.name for p in (world / "expected" / folder).iterdir()}


@pytest.mark.parametrize("how", ["null", "missing"])
def test_koodrive_page_without_files_is_not_an_empty_folder(
    world_tiny: Path, emulator: Emulator, workdir: Path, how: str
) -> None:
    folder, names = _folder_of(world_tiny, "koodrive", "/")
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 0.2}) as m:
        assert set(os.listdir(m.path / folder)) >= names
        rule: dict[str, Any] = {"route": "koodrive.list", "kind": "patch"}
        rule.update({"set": {"files": None}} if how == "null" else {"unset": ["files"]})
        emulator.set_faults({"rules": [rule]})
        time.sleep(0.3)
        assert set(os.listdir(m.path / folder)) >= names  # the last good listing, or EIO


def test_enos_firmware_search_data_null_is_not_an_empty_folder(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    folder, names = _folder_of(world_tiny, "enos", "/firmware/")
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 0.2}) as m:
        assert set(os.listdir(m.path / folder)) >= names
        emulator.set_faults(
            {"rules": [{"route": "enos.firmware.search", "kind": "patch", "set": {"data": None}}]}
        )
        time.sleep(0.3)
        assert set(os.listdir(m.path / folder)) >= names


def test_short_body_fails_within_timeout(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    f = next(
        g for g in manifest(world_tiny) if g["provider"] == "koodrive" and 1000 < g["size"] < 1e5
    )
    timeout = 3.0
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"request_timeout": timeout}) as m:
        os.stat(m.path / f["path"])
        emulator.set_faults({"rules": [{"route": "koodrive.obs", "kind": "resize", "delta": -1}]})
        t0 = time.monotonic()
        with pytest.raises(OSError):
            read_file(m.path / f["path"])
        assert time.monotonic() - t0 < timeout + 0.5


def test_huge_enos_asset_page_within_timeout(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    org = next(f for f in manifest(world_tiny) if f["provider"] == "enos")["path"].split("/")[1]
    timeout = 2.0
    opts = {"request_timeout": timeout, "dir_ttl": 0.2}
    with mounted(world_tiny, emulator.url, workdir, mount_opts=opts) as m:
        os.listdir(m.path / "enos" / org)
        grow = {"data": 100_000}
        emulator.set_faults(
            {
                "rules": [
                    {
                        "route": "enos.asset.search",
                        "kind": "patch",
                        "grow": grow,
                        "unique": ["assetId"],
                    }
                ]
            }
        )
        time.sleep(0.3)
        t0 = time.monotonic()
        try:
            os.listdir(m.path / "enos" / org)
        except OSError:
            pass  # EIO within the time is fine
        assert time.monotonic() - t0 < timeout + 1.0
