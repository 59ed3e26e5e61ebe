"""Faults through a real mount (issue 9): 10 % mixed faults on every route for a copy of the
whole tree, the token services down for a while, the emulator killed and restarted mid-read.
(Presigned links expiring mid-read and a ROMA download cut midway are in tests/mount/.)"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from fusefs.testbed import running_emulator
from tests.helpers.mounting import FAST_IOTDA_WINDOW, Emulator, mounted
from tests.mount.test_mount import manifest
from tests.reliability.common import CLEAR_ERRNOS, Clock, scale, write_result

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

MANY = 10**9  # a rule's count: what is left of it says how often it fired
# ROMA archives are one-shot: a cut download is final by design (tests/mount/test_whole_objects)
ROUTES = ["enos.*", "koodrive.*", "iotda.*", "iam.*", "roma.job"]


def mixed_faults(rate: float, stall: float) -> list[dict[str, Any]]:
    """``rate`` of the requests of every route get a fault, of six kinds in turn."""
    kinds: list[dict[str, Any]] = [
        {"kind": "error", "status": 503},
        {"kind": "error", "status": 500},
        {"kind": "throttle", "retry_after": 1},
        {"kind": "reset", "after_bytes": 100},
        {"kind": "truncate", "after_bytes": 100},
        {"kind": "latency", "seconds": stall},
    ]
    return [
        {"route": r, "rate": rate / len(kinds), "count": MANY, **k} for r in ROUTES for k in kinds
    ]


def fired(emulator: Emulator) -> int:
    plan = emulator.admin("GET", "/_admin/faults")
    return sum(MANY - r["count"] for r in plan["rules"] if r["count"] is not None)


def clear_cache(mnt: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "fusefs", "cache", "clear", str(mnt)],
        capture_output=True,
        check=False,
        timeout=60,
    )


def copy_tree(root: Path, files: list[dict[str, Any]], clock: Clock) -> tuple[int, list[str]]:
    """Read every file with timed 128 KiB reads; (bytes, paths whose md5 differs or failed)."""
    total = 0
    bad = []
    for f in files:
        h = hashlib.md5()
        try:
            with open(root / f["path"], "rb", buffering=0) as fh:
                while True:
                    out = clock.call(f"read {f['path']}", fh.read, 128 << 10)
                    if out.error is not None:
                        raise out.error
                    if not out.value:
                        break
                    h.update(out.value)
                    total += len(out.value)
        except OSError as exc:
            bad.append(f"{f['path']}: {exc}")
            continue
        if h.hexdigest() != f["md5"]:
            bad.append(f"{f['path']}: md5 differs")
    return total, bad


def test_whole_tree_under_mixed_faults(world_tiny: Path, emulator: Emulator, workdir: Path) -> None:
    timeout = 20.0
    files = [f for f in manifest(world_tiny) if f["in_expected"] and f["provider"] != "roma"]
    emulator.set_faults({"seed": 9, "rules": mixed_faults(0.10, 4.0)})
    clock = Clock()
    t0 = time.monotonic()
    with mounted(
        world_tiny,
        emulator.url,
        workdir,
        mount_opts={"request_timeout": timeout, "log_level": "info"},
    ) as m:
        rounds = scale(1, 3)
        total, bad = 0, []
        for _ in range(rounds):
            # 4 copies at once, as `cp -r` of 4 subtrees would be
            parts: list[tuple[int, list[str]]] = []
            threads = [
                threading.Thread(
                    target=lambda part=files[i::4], into=parts: into.append(
                        copy_tree(m.path, part, clock)
                    )
                )
                for i in range(4)
            ]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            total += sum(n for n, _ in parts)
            bad += [x for _, b in parts for x in b]
            if rounds > 1:  # again, from the server
                clear_cache(m.path)
        injected = fired(emulator)
        emulator.admin("PUT", "/_admin/faults", {"iotda_download_window": FAST_IOTDA_WINDOW})
    statuses = emulator.admin("GET", "/_admin/stats")["statuses"]
    requests = sum(sum(v.values()) for v in statuses.values())
    write_result(
        "faults_whole_tree",
        {
            "files": len(files) * rounds,
            "bytes_compared": total,
            "mismatches": len(bad),
            "requests": requests,
            "faults_injected": injected,
            "request_timeout_s": timeout,
            "seconds": round(time.monotonic() - t0, 1),
            **clock.figures(),
        },
    )
    assert not bad, bad[:10]
    assert injected > 0
    assert clock.slowest < timeout + 1.0, clock.figures()


def test_token_services_down_for_a_while(
    world_tiny: Path, emulator: Emulator, workdir: Path
) -> None:
    """Tokens live 2 s and the token routes answer 503 for 6 s: reads fail with a clear errno
    within request_timeout, or succeed; once the routes are back every byte is right."""
    timeout = 5.0
    files = [
        f for f in manifest(world_tiny) if f["in_expected"] and f["provider"] in ("enos", "iotda")
    ]
    emulator.set_faults({"enos_token_lifetime": 2, "iam_token_lifetime": 2})
    clock = Clock()
    with mounted(
        world_tiny, emulator.url, workdir, mount_opts={"request_timeout": timeout, "dir_ttl": 1.0}
    ) as m:
        os.listdir(m.path / "iotda" / "exports")
        down = {"route": "*token*", "kind": "error", "status": 503}
        emulator.set_faults({"rules": [down, {**down, "route": "iam.token"}]})
        time.sleep(2.5)  # every token has expired
        t_end = time.monotonic() + scale(6, 30)
        errors: dict[int | None, int] = {}
        i = 0
        while time.monotonic() < t_end:
            f = files[i % len(files)]
            i += 1
            out = clock.call(f"read {f['path']}", (m.path / f["path"]).read_bytes)
            if out.error is not None:
                errors[out.errno] = errors.get(out.errno, 0) + 1
                assert out.errno in CLEAR_ERRNOS, out.error
            else:
                assert hashlib.md5(out.value).hexdigest() == f["md5"]
            clear_cache(m.path)
        back = {"enos_token_lifetime": 2, "iam_token_lifetime": 2}
        emulator.admin(
            "PUT", "/_admin/faults", {**back, "iotda_download_window": FAST_IOTDA_WINDOW}
        )
        time.sleep(1)
        for f in files:
            assert hashlib.md5((m.path / f["path"]).read_bytes()).hexdigest() == f["md5"]
        assert os.listdir(m.path / "koodrive")
    write_result(
        "faults_token_down",
        {
            "tries": i,
            "errors": {errno.errorcode.get(k or 0, str(k)): v for k, v in errors.items()},
            "request_timeout_s": timeout,
            **clock.figures(),
        },
    )
    assert clock.slowest < timeout + 1.0, clock.figures()


def test_emulator_killed_and_restarted_mid_read(world_tiny: Path, tmp_path: Path) -> None:
    """The service goes away while a big file is being read, and comes back on the same port:
    the reader gets the right bytes or a clear error, the next read gets the right bytes."""
    big = max(
        (f for f in manifest(world_tiny) if f["provider"] == "koodrive"), key=lambda f: f["size"]
    )
    src = (world_tiny / "expected" / big["path"]).read_bytes()
    plan = tmp_path / "faults.json"
    # slow enough that the kill lands mid-read
    plan.write_text(
        json.dumps(
            {
                "iotda_download_window": FAST_IOTDA_WINDOW,
                "rules": [{"route": "koodrive.obs", "kind": "latency", "seconds": 0.3}],
            }
        )
    )
    workdir = tmp_path / "work"
    workdir.mkdir(mode=0o700)
    emu_dir = tmp_path / "emu"
    emu_dir.mkdir()
    timeout = 10.0
    kills = scale(1, 5)
    results: list[str] = []
    with ExitStack() as outer:
        first = ExitStack()
        url = first.enter_context(running_emulator(world_tiny, emu_dir, faults=plan))
        port = urlsplit(url).port
        assert port
        m = outer.enter_context(
            mounted(
                world_tiny,
                url,
                workdir,
                mount_opts={"request_timeout": timeout},
                cache_opts={"block_size": "256KiB"},
            )
        )
        current = first
        clock = Clock()
        for _ in range(kills):
            got: dict[str, Any] = {}

            def reader(got: dict[str, Any] = got) -> None:
                got["out"] = clock.call("read big", (m.path / big["path"]).read_bytes)

            t = threading.Thread(target=reader)
            t.start()
            time.sleep(0.8)
            current.close()  # the emulator is gone
            time.sleep(1.0)
            current = ExitStack()
            current.enter_context(running_emulator(world_tiny, emu_dir, faults=plan, port=port))
            t.join(timeout=3 * timeout)
            assert not t.is_alive(), "a reader hangs"
            out = got["out"]
            if out.error is None:
                assert out.value == src
                results.append("ok")
            else:
                assert out.errno in CLEAR_ERRNOS, out.error
                results.append(errno.errorcode.get(out.errno or 0, "?"))
            assert (m.path / big["path"]).read_bytes() == src  # served again, right
            clear_cache(m.path)
        current.close()
        outer.close()
    write_result(
        "faults_emulator_restart",
        {
            "restarts": kills,
            "reader_outcomes": results,
            "bytes_compared": 2 * kills * len(src),
            "request_timeout_s": timeout,
            **clock.figures(),
        },
    )
