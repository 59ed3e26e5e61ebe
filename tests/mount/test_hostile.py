"""A hostile server through a real mount (issue 9): bad entries are skipped with one log line and
the rest is listed, a huge listed size costs nothing per entry, server text stays one line in the
log, and a first read that disagrees with the listing is EIO, not ESTALE. The mount stays up."""

from __future__ import annotations

import errno
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, mounted
from tests.mount.test_info import info
from tests.mount.test_mount import manifest
from tests.reliability.common import LOG_LINE

pytestmark = pytest.mark.fuse

HUGE = 10**14


def small_koodrive_folder(world: Path) -> tuple[str, list[dict[str, Any]], list[dict[str, Any]]]:
    """A KooDrive folder with 4..50 non-empty files: its path, all its files, the non-empty."""
    files = [f for f in manifest(world) if f["provider"] == "koodrive"]
    counts = Counter(f["path"].rsplit("/", 1)[0] for f in files if f["size"] > 0)
    folder = min((c, d) for d, c in counts.items() if 4 <= c <= 50 and "edge" not in d)[1]
    inside = sorted((f for f in files if f["path"].rsplit("/", 1)[0] == folder), key=str)
    return folder, inside, [f for f in inside if f["size"] > 0]


def patch(match: dict[str, Any], set_: dict[str, Any], route: str = "koodrive.list") -> Any:
    return {"route": route, "kind": "patch", "match": match, "set": set_}


def test_hostile_listing_through_the_mount(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    folder, files, non_empty = small_koodrive_folder(world_tiny)
    bad, huge, wrong, other = non_empty[:4]
    listing = [
        patch({"id": bad["remote_id"]}, {"size": "abc"}),
        patch({"id": huge["remote_id"]}, {"size": HUGE}),
        patch({"id": wrong["remote_id"]}, {"size": wrong["size"] + 1000}),
    ]
    emulator.set_faults({"rules": listing})
    with mounted(world_tiny, emulator.url, workdir) as m:
        d = m.path / folder
        names = set(os.listdir(d))
        expected = {f["path"].rsplit("/", 1)[1] for f in files}
        bad_name = bad["path"].rsplit("/", 1)[1]
        assert names == expected - {bad_name}  # the rest of the folder is listed
        with pytest.raises(FileNotFoundError):
            os.stat(d / bad_name)
        skipped = [
            ln for ln in m.log_text().splitlines() if bad["remote_id"] in ln and "skipped" in ln
        ]
        assert len(skipped) == 1, skipped

        # a size of 10^14: stat shows it, and nothing per entry scales with it
        huge_path = m.path / huge["path"]
        assert os.stat(huge_path).st_size == HUGE
        t0 = time.monotonic()
        state = info(huge_path)[0]
        assert state["cached_bytes"] == 0 and state["size"] == HUGE
        assert time.monotonic() - t0 < 5

        # the listing said another size than the object has: EIO, not ESTALE (nothing changed
        # while it was open)
        with pytest.raises(OSError) as exc:
            (m.path / wrong["path"]).read_bytes()
        assert exc.value.errno == errno.EIO

        # the object store answers an error body with newlines and a forged log line
        body = "<Error>\n2026-12-02 ERROR fusefs: FORGED line\r\n\x1b[2J</Error>"
        emulator.set_faults(
            {"rules": [{"route": "koodrive.obs", "kind": "body", "status": 400, "text": body}]}
        )
        with pytest.raises(OSError) as exc:
            (m.path / other["path"]).read_bytes()
        assert exc.value.errno == errno.EIO
        emulator.admin("PUT", "/_admin/faults", {"rules": listing})
        assert (m.path / other["path"]).read_bytes()  # the fault is gone: it reads now
        assert os.listdir(m.path)  # still up

        log = m.log_text().splitlines()
        forged = [ln for ln in log if "FORGED" in ln]
        assert forged, "the error body is not in the log"
        assert all(LOG_LINE.match(ln) for ln in forged), forged
        assert not any("\x1b" in ln for ln in log)
        assert any("listing is out of date" in ln for ln in log)


def test_estale_only_for_a_change_while_open(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """The other side of the rule: bytes of the opened version were read, then the object got
    another size; a read of a part not cached yet is ESTALE. New opens read the new version."""
    f = max(
        (g for g in manifest(world_tiny) if g["provider"] == "koodrive"), key=lambda g: g["size"]
    )
    assert f["size"] >= 8 << 20
    cid = f["path"].split("/")[1]
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"dir_ttl": 1.0}) as m:
        path = m.path / f["path"]
        fd = os.open(path, os.O_RDONLY)
        try:
            assert len(os.pread(fd, 4096, 0)) == 4096  # bytes of this version arrived
            emulator.admin(
                "POST",
                "/_admin/koodrive/entries",
                {"containerId": cid, "id": f["remote_id"], "content": {"key": "new", "size": 5000}},
            )
            with pytest.raises(OSError) as exc:
                os.pread(fd, 4096, f["size"] - 4096)  # not cached: the service has another size
            assert exc.value.errno == errno.ESTALE
        finally:
            os.close(fd)
        deadline = time.monotonic() + 10
        while os.stat(path).st_size != 5000:  # the next listing shows the new version
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert len(path.read_bytes()) == 5000
        assert any("changed while open" in ln for ln in m.log_text().splitlines())
