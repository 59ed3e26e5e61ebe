"""Secrets (issue 9): a mount at every log level, with faults, then every secret of the config
and every token and presigned-link signature the emulator handed out is searched for in the
log, the daemon's argv, every xattr of every file, every file of the cache dir and the CLI's
answers (error texts included): 0 hits."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.helpers.mounting import FAST_IOTDA_WINDOW, Emulator, mounted
from tests.mount.test_mount import manifest
from tests.reliability.common import scale, write_result
from tests.reliability.test_faults import mixed_faults

pytestmark = [pytest.mark.fuse, pytest.mark.slow]

SECRET_KEYS = ("key", "secret", "password", "token")


def secrets_of(emulator: Emulator) -> dict[str, str]:
    """name -> value of everything secret the emulator knows or issued."""
    got = emulator.admin("GET", "/_admin/secrets")
    out: dict[str, str] = {}

    def walk(prefix: str, obj: Any) -> None:
        if isinstance(obj, dict):
            for k, v in obj.items():
                walk(f"{prefix}.{k}", v)
        elif isinstance(obj, str) and any(s in prefix.lower() for s in SECRET_KEYS):
            out[prefix] = obj
            if obj.lower().startswith("bearer "):
                out[prefix + "(bare)"] = obj.split(" ", 1)[1]

    walk("credentials", got["credentials"])
    for i, t in enumerate(got["tokens"]):
        out[f"token[{i}]"] = t
    for i, s in enumerate(got["presign_signatures"]):
        out[f"presigned[{i}]"] = s
    return {k: v for k, v in out.items() if len(v) >= 8}


def places(m: Any, workdir: Path) -> dict[str, bytes]:
    """What may hold a leak: log, argv, xattrs, cache files, CLI answers."""
    out: dict[str, bytes] = {"log": m.log.read_bytes()}
    out["argv"] = Path(f"/proc/{m.proc.pid}/cmdline").read_bytes()
    xattrs = []
    for dirpath, _dirs, files in os.walk(m.path):
        for name in [*files, "."]:
            p = os.path.join(dirpath, name)
            try:
                for a in os.listxattr(p):
                    xattrs.append(a.encode() + b"=" + os.getxattr(p, a))
            except OSError as exc:
                xattrs.append(str(exc).encode())
    out["xattrs"] = b"\n".join(xattrs)
    for dirpath, _dirs, files in os.walk(workdir / "cache"):
        for name in files:
            p = Path(dirpath) / name
            try:
                out[f"cache:{p.relative_to(workdir)}"] = p.read_bytes()
            except OSError:
                pass
    cli = []
    some = [f["path"] for f in manifest(m.world)[::97]] + ["nope/missing"]
    for args in (
        ["cache", "stats", str(m.path)],
        ["cache", "verify", str(m.path)],
        ["info", *[str(m.path / p) for p in some]],
    ):
        r = subprocess.run(
            [sys.executable, "-m", "fusefs", *args], capture_output=True, timeout=120
        )
        cli.append(r.stdout + r.stderr)
    out["cli"] = b"\n".join(cli)
    return out


@pytest.mark.parametrize("level", ["debug", "info", "warning", "error"])
def test_no_secret_anywhere(
    world_tiny: Path, emulator: Emulator, workdir: Path, level: str
) -> None:
    files = [f for f in manifest(world_tiny) if f["in_expected"] and f["provider"] != "roma"]
    emulator.set_faults(
        {
            "seed": 3,
            "enos_token_lifetime": 2,
            "iam_token_lifetime": 2,
            "presign_expires": 2,
            "rules": mixed_faults(0.10, 0.5),
        }
    )
    with mounted(world_tiny, emulator.url, workdir, mount_opts={"log_level": level}) as m:
        m.world = world_tiny  # type: ignore[attr-defined]
        n = scale(60 if level in ("debug", "info") else 30, len(files))
        for f in files[:: max(1, len(files) // n)]:
            try:
                (m.path / f["path"]).read_bytes()
            except OSError:
                pass
        emulator.admin("PUT", "/_admin/faults", {"iotda_download_window": FAST_IOTDA_WINDOW})
        found = places(m, workdir)
        secrets = secrets_of(emulator)
        hits = [
            f"{name} in {where}"
            for where, data in found.items()
            for name, value in secrets.items()
            if value.encode() in data
        ]
    write_result(
        f"secrets_{level}",
        {
            "log_level": level,
            "secrets_searched": len(secrets),
            "places_searched": len(found),
            "bytes_searched": sum(len(v) for v in found.values()),
            "secrets_found": len(hits),
        },
    )
    assert len(secrets) >= 6
    assert not hits, hits[:20]
