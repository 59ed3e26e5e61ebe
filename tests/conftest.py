from __future__ import annotations

import contextlib
import faulthandler
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from fusefs.daemon import UnmountError, unmount
from fusefs.testbed import running_emulator
from tests.helpers.mounting import FAST_IOTDA_WINDOW, SPAWNED_MOUNTS, Emulator, fuse_available

faulthandler.enable()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if fuse_available():
        return
    if os.environ.get("FUSEFS_REQUIRE_FUSE") == "1":  # CI: a machine without FUSE is a failure
        raise pytest.UsageError("FUSEFS_REQUIRE_FUSE=1 but /dev/fuse or fusermount3 is unusable")
    skip = pytest.mark.skip(reason="needs /dev/fuse and fusermount3")
    for item in items:
        if "fuse" in item.keywords:
            item.add_marker(skip)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Backstop: lazily unmount what a failed test of this run left mounted (only this run's)."""
    for mnt in SPAWNED_MOUNTS:
        with contextlib.suppress(UnmountError):  # not mounted (the usual case), or busy
            unmount(mnt, lazy=True)


@pytest.fixture(scope="session")
def world_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from fusefs.emulator.world import generate

    out = tmp_path_factory.mktemp("world") / "tiny"
    generate(out, 1, "tiny")
    return out


@pytest.fixture
def emulator(world_tiny: Path, tmp_path: Path) -> Iterator[Emulator]:
    faults = tmp_path / "faults.json"
    faults.write_text(json.dumps({"iotda_download_window": FAST_IOTDA_WINDOW}))
    with running_emulator(world_tiny, tmp_path, faults=faults) as url:
        yield Emulator(url)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    d = tmp_path / "work"
    d.mkdir()
    os.chmod(d, 0o700)
    return d
