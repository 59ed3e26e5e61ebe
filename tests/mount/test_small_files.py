"""Folders of small files read in order (cp -r): read-ahead across files, through real mounts.

The emulator's request counts are the witness (never timings): link calls come in batches of
<= 100 files, the GETs of the next files overlap, each file is downloaded once, the copy is
byte-identical, faults during read-ahead never fail the copy, and files opened out of order
prefetch nothing.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import Emulator, Mount, mounted
from tests.mount.test_mount import manifest

pytestmark = pytest.mark.fuse

LINKS = "koodrive.download_links"
OBS = "koodrive.obs"
KOODRIVE_MAX_CONCURRENCY = 8  # KoodriveProvider.capabilities.max_concurrency


def raw_stats(emulator: Emulator) -> dict[str, Any]:
    out: dict[str, Any] = emulator.admin("GET", "/_admin/stats")
    return out


def personal_container(world: Path) -> str:
    paths = [f["path"] for f in manifest(world) if "/page-1000/" in f["path"]]
    return str(paths[0].split("/")[1])


def folder_files(world: Path, folder: str) -> list[dict[str, Any]]:
    out = [
        f
        for f in manifest(world)
        if f["path"].startswith("koodrive/") and f"/{folder}/" in f["path"]
    ]
    return sorted(out, key=lambda f: str(f["path"]))


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300)


def most_at_once(m: Mount) -> int:
    found = re.findall(r"read-ahead: (\d+) downloads at once", m.log_text())
    return max((int(n) for n in found), default=0)


def text_of(i: int) -> str:
    """Deterministic ASCII content of 1 B to ~3 KiB."""
    n = (i * 131) % 3000 + 1
    seed = hashlib.sha256(str(i).encode()).hexdigest()
    return (seed * (n // len(seed) + 1))[:n]


def make_folder(emulator: Emulator, cid: str, name: str, count: int) -> dict[str, str]:
    """A new KooDrive folder of ``count`` files: one empty, one of 5 MiB, the rest small.

    Returns {file name: md5}."""
    folder = emulator.admin(
        "POST", "/_admin/koodrive/entries", {"containerId": cid, "fileName": name, "folder": True}
    )
    expected: dict[str, str] = {}
    for i in range(count):
        fname = f"f{i:04d}.txt"
        if i == 7:
            content: dict[str, Any] = {"data": ""}
        elif i == count // 2:
            content = {"key": f"{name}-big", "size": 5 << 20}
        else:
            content = {"data": text_of(i)}
        out = emulator.admin(
            "POST",
            "/_admin/koodrive/entries",
            {"containerId": cid, "parentId": folder["id"], "fileName": fname, "content": content},
        )
        expected[fname] = out["md5"]
    return expected


def md5_tree(root: Path) -> dict[str, str]:
    return {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in root.iterdir()}


def test_cp_r_links_in_batches_gets_overlap_each_file_once(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cid = personal_container(world_tiny)
    expected = make_folder(emulator, cid, "small-200", 200)
    with mounted(world_tiny, emulator.url, workdir) as m:
        src = m.path / "koodrive" / cid / "small-200"
        assert len(list(src.iterdir())) == 200  # the listing, before the counts
        # every GET waits: the next files' downloads can only be seen to overlap
        emulator.set_faults({"rules": [{"route": OBS, "kind": "latency", "seconds": 0.05}]})
        emulator.reset_stats()
        r = run("cp", "-r", str(src), str(workdir / "copy"))
        assert r.returncode == 0, r.stderr
        stats = raw_stats(emulator)
        assert md5_tree(workdir / "copy") == expected
        requests = stats["requests"]
        assert requests.get(LINKS, 0) <= 3, requests
        # every small file fetched once (no second GET for a file the read-ahead had), the
        # empty one never, the 5 MiB one by its own handle's read-ahead in a few requests
        assert 199 <= requests[OBS] <= 198 + 4, requests
        assert set(stats["statuses"][OBS]) == {"206"}, stats["statuses"]
        # a copy file after file has at most 3 GETs at once (the 5 MiB file's own read-ahead);
        # the emulator may count a few more than the daemon had (an answer's last step runs
        # after the client got its bytes), so the upper bound is checked on the daemon's side
        assert stats["max_in_flight"][OBS] >= 6, stats["max_in_flight"]
        # the read-ahead keeps to the provider's limit (the copy's own read comes on top)
        assert 2 <= most_at_once(m) <= KOODRIVE_MAX_CONCURRENCY
        assert "read in order" in m.log_text()


def test_cp_r_with_faults_in_the_read_ahead_batches_is_exact(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """Small files are read ahead several per job, without retries: a GET of a batch that
    fails (an error status, a reset, a cut, a body of the wrong length) leaves that file to its
    own read, which fetches it with retries. Every byte still comes out exact, nothing fails."""
    cid = personal_container(world_tiny)
    expected = make_folder(emulator, cid, "faulty-200", 200)
    with mounted(world_tiny, emulator.url, workdir) as m:
        src = m.path / "koodrive" / cid / "faulty-200"
        assert len(list(src.iterdir())) == 200
        rules = [
            {"route": OBS, "kind": "error", "status": 503, "rate": 0.1},
            {"route": OBS, "kind": "reset", "after_bytes": 10, "rate": 0.05},
            {"route": OBS, "kind": "truncate", "after_bytes": 1, "rate": 0.05},
            {"route": OBS, "kind": "resize", "delta": -1, "rate": 0.05},
        ]
        emulator.set_faults({"rules": rules, "seed": 7})
        emulator.reset_stats()
        r = run("cp", "-r", str(src), str(workdir / "copy"))
        assert r.returncode == 0, r.stderr
        assert md5_tree(workdir / "copy") == expected
        stats = raw_stats(emulator)
        # some GETs failed (else this test shows nothing), and were made again by the reads
        failed = sum(n for code, n in stats["statuses"][OBS].items() if code != "206")
        assert failed >= 5, stats["statuses"]
        assert stats["requests"][OBS] > 199, stats["requests"]
        assert "read in order" in m.log_text()
    with mounted(world_tiny, emulator.url, workdir) as m:  # all of it was persisted, exact
        emulator.set_faults({"rules": []})
        emulator.reset_stats()
        src = m.path / "koodrive" / cid / "faulty-200"
        assert md5_tree(src) == expected
        assert raw_stats(emulator)["requests"].get(OBS, 0) == 0


def test_enos_files_sent_as_json_are_read_ahead_once(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """EnOS answers errors as JSON envelopes, so a batch sniffs JSON answers: one that is not
    an error envelope is the file's own bytes and is kept, not fetched a second time."""
    by_dir: dict[str, list[dict[str, Any]]] = {}
    for f in manifest(world_tiny):
        if f["provider"] == "enos":
            by_dir.setdefault(str(Path(f["path"]).parent), []).append(f)
    folder, files = max(by_dir.items(), key=lambda kv: len(kv[1]))
    assert len(files) >= 8, folder
    with mounted(world_tiny, emulator.url, workdir) as m:
        src = m.path / folder
        assert len(list(src.iterdir())) == len(files)
        rule = {"kind": "headers", "headers": {"Content-Type": "application/json"}}
        emulator.set_faults({"rules": [{"route": "enos.download", **rule}]})
        emulator.reset_stats()
        r = run("cp", "-r", str(src), str(workdir / "copy"))
        assert r.returncode == 0, r.stderr
        got = md5_tree(workdir / "copy")
        assert got == {Path(f["path"]).name: f["md5"] for f in files}
        gets = raw_stats(emulator)["requests"].get("enos.download", 0)
        assert gets == sum(1 for f in files if f["size"] > 0), gets  # each file once
        assert "read in order" in m.log_text()


def test_cp_r_of_the_worlds_folder_is_identical_with_one_get_per_file(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cid = personal_container(world_tiny)
    files = folder_files(world_tiny, "page-1000")
    assert len(files) == 1000
    with mounted(world_tiny, emulator.url, workdir) as m:
        src = m.path / "koodrive" / cid / "page-1000"
        emulator.reset_stats()
        r = run("cp", "-r", str(src), str(workdir / "copy"))
        assert r.returncode == 0, r.stderr
        requests = emulator.stats()
        r = run(
            "diff",
            "-r",
            str(world_tiny / "expected" / "koodrive" / cid / "page-1000"),
            str(workdir / "copy"),
        )
        assert r.returncode == 0, r.stdout[-2000:]
        # one listing of 10 pages at most, links in batches of 100, one GET per non-empty file
        assert requests.get(LINKS, 0) <= 1000 // 100 + 2, requests
        assert requests[OBS] == sum(1 for f in files if f["size"] > 0), requests
        assert "read in order" in m.log_text()


def test_faults_during_read_ahead_never_fail_the_copy(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cid = personal_container(world_tiny)
    with mounted(world_tiny, emulator.url, workdir) as m:
        src = m.path / "koodrive" / cid / "page-1000"
        src.stat()
        emulator.reset_stats()
        emulator.set_faults(
            {
                "seed": 7,
                "rules": [
                    {"route": OBS, "kind": "error", "status": 503, "rate": 0.1, "count": 40},
                    {"route": OBS, "kind": "reset", "after_bytes": 10, "rate": 0.05, "count": 20},
                    {"route": OBS, "kind": "truncate", "after_bytes": 5, "rate": 0.05, "count": 10},
                    {"route": LINKS, "kind": "error", "status": 503, "count": 2},
                ],
            }
        )
        r = run("cp", "-r", str(src), str(workdir / "copy"))
        assert r.returncode == 0, r.stderr
        stats = raw_stats(emulator)
        r = run(
            "diff",
            "-r",
            str(world_tiny / "expected" / "koodrive" / cid / "page-1000"),
            str(workdir / "copy"),
        )
        assert r.returncode == 0, r.stdout[-2000:]
        # the faults did fire, during a read-ahead
        assert stats["statuses"][OBS].get("503", 0) >= 10, stats["statuses"]
        assert stats["statuses"][LINKS].get("503", 0) == 2, stats["statuses"]
        assert "read in order" in m.log_text()


def test_out_of_order_opens_prefetch_nothing_and_a_break_stops_read_ahead(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    cid = personal_container(world_tiny)
    files = folder_files(world_tiny, "page-1000")
    with mounted(world_tiny, emulator.url, workdir) as m:
        folder = m.path / "koodrive" / cid / "page-1000"
        names = sorted(p.name for p in folder.iterdir())
        by_name = {Path(f["path"]).name: f for f in files}
        # out of order: a stride through the folder, never two neighbours in a row
        picked = [names[(i * 37) % len(names)] for i in range(1, 41)]
        emulator.reset_stats()
        for name in picked:
            assert hashlib.md5((folder / name).read_bytes()).hexdigest() == by_name[name]["md5"]
        nonempty = sum(1 for n in picked if by_name[n]["size"] > 0)
        assert emulator.stats().get(OBS, 0) == nonempty
        assert "read in order" not in m.log_text()
        # in order for a while (read-ahead starts), then out of order: it stops there. Every
        # GET waits 0.3 s, so the read-ahead is still going when the order breaks.
        emulator.set_faults({"rules": [{"route": OBS, "kind": "latency", "seconds": 0.3}]})
        emulator.reset_stats()
        for name in names[500:506]:
            assert hashlib.md5((folder / name).read_bytes()).hexdigest() == by_name[name]["md5"]
        assert "read in order" in m.log_text()
        (folder / names[100]).read_bytes()  # the break
        settle_until_quiet(emulator)  # what had started finishes; nothing else starts
        queued = names[503:570]  # what the window had queued by the 6th open: 8+16+32+64 ahead
        gets = emulator.stats().get(OBS, 0)
        assert gets <= 3 + 1 + 4 * KOODRIVE_MAX_CONCURRENCY < len(queued), gets
        assert "sequence in inode" in m.log_text()
        emulator.reset_stats()
        later = [names[(i * 53) % 400] for i in range(1, 21)]
        for name in later:
            assert hashlib.md5((folder / name).read_bytes()).hexdigest() == by_name[name]["md5"]
        assert emulator.stats().get(OBS, 0) == sum(1 for n in later if by_name[n]["size"] > 0)


def settle_until_quiet(emulator: Emulator, quiet: float = 0.5, limit: float = 20.0) -> None:
    """Wait until the emulator saw no new GET for ``quiet`` seconds."""
    import time

    deadline = time.monotonic() + limit
    last = -1
    time.sleep(quiet)
    while time.monotonic() < deadline:
        now = emulator.stats().get(OBS, 0)
        if now == last:
            return
        last = now
        time.sleep(quiet)
