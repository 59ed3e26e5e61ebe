"""Shared parts of the reliability suite (issue 9): scale, figures, timed syscalls, daemon state.

Every test writes its figures as JSON into ``results_dir()`` (env ``FUSEFS_RELIABILITY_OUT``,
default ``$TMPDIR/fusefs-reliability``); ``scripts/soak`` runs the long variants
(``FUSEFS_SOAK=1``) and prints a table of them.
"""

from __future__ import annotations

import errno
import json
import os
import platform
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

SOAK = os.environ.get("FUSEFS_SOAK", "") not in ("", "0")
# one record = one line, starting with its time (HH:MM:SS or ISO 8601) and level
LOG_LINE = re.compile(
    r"^(\d\d:\d\d:\d\d|\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:?\d\d)?)"
    r" (DEBUG|INFO|WARNING|ERROR|CRITICAL) "
)


def level_of(line: str) -> str | None:
    m = LOG_LINE.match(line)
    return m.group(4) if m else None


# errnos that name a problem of one entry or one read; the mount itself is fine
CLEAR_ERRNOS = frozenset(
    {
        errno.ENOENT,
        errno.EIO,
        errno.ESTALE,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.ENOTDIR,
        errno.EISDIR,
        errno.ENODATA,
        errno.ERANGE,
        errno.EACCES,
        errno.EPERM,
        errno.ENETDOWN,
        errno.EFBIG,
    }
)


def scale(short: T, soak: T) -> T:
    return soak if SOAK else short


def results_dir() -> Path:
    d = Path(
        os.environ.get("FUSEFS_RELIABILITY_OUT")
        or Path(tempfile.gettempdir()) / "fusefs-reliability"
    )
    d.mkdir(parents=True, exist_ok=True)
    return d


def write_result(name: str, figures: dict[str, Any]) -> Path:
    """``<results>/<name>.json``: the figures, with when, where and which variant."""
    out = results_dir() / f"{name}.json"
    record = {
        "test": name,
        "variant": "soak" if SOAK else "short",
        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "machine": f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})",
        "figures": figures,
    }
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(record, indent=1, sort_keys=True, default=str))
    tmp.rename(out)
    return out


@dataclass
class Outcome:
    value: Any = None
    error: OSError | None = None
    seconds: float = 0.0

    @property
    def errno(self) -> int | None:
        return None if self.error is None else self.error.errno


@dataclass
class Clock:
    """Times syscalls: every call through :meth:`call` is measured, the slowest kept."""

    slowest: float = 0.0
    slowest_what: str = ""
    calls: int = 0
    errnos: dict[str, int] = field(default_factory=dict)

    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def call(self, what: str, fn: Callable[..., Any], *args: Any) -> Outcome:
        """``fn(*args)`` timed (thread-safe): its value, or the OSError it raised."""
        t0 = time.monotonic()
        try:
            out = Outcome(fn(*args))
        except OSError as exc:
            out = Outcome(error=exc)
        out.seconds = time.monotonic() - t0
        with self.lock:
            self.calls += 1
            if out.error is not None:
                name = errno.errorcode.get(out.error.errno or 0, str(out.error.errno))
                self.errnos[name] = self.errnos.get(name, 0) + 1
            if out.seconds > self.slowest:
                self.slowest, self.slowest_what = out.seconds, what
        return out

    def figures(self) -> dict[str, Any]:
        return {
            "syscalls": self.calls,
            "slowest_syscall_s": round(self.slowest, 3),
            "slowest_syscall": self.slowest_what,
            "errnos": dict(sorted(self.errnos.items())),
        }


def read_file(path: Path, limit: int | None = None) -> bytes:
    """The file's bytes with plain read(2)s of 128 KiB, about one FUSE request each (at most
    ``limit``)."""
    with open(path, "rb", buffering=0) as f:
        parts = []
        left = limit if limit is not None else 1 << 62
        while left > 0:
            b = f.read(min(128 << 10, left))
            if not b:
                break
            parts.append(b)
            left -= len(b)
        return b"".join(parts)


def log_lines(log: Path, start: int = 0) -> tuple[list[str], int]:
    """The lines written to ``log`` from byte ``start`` on, and the new end."""
    with open(log, "rb") as f:
        f.seek(start)
        data = f.read()
    return data.decode("utf-8", "replace").splitlines(), start + len(data)


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def fd_kinds(pid: int, cache_dir: Path | None = None) -> dict[str, int]:
    """The daemon's fds by kind: ``socket``, ``cache`` (a file under ``cache_dir``), ``file``
    (another path), ``other`` (pipes, anon inodes)."""
    kinds = {"socket": 0, "cache": 0, "file": 0, "other": 0}
    cache = os.path.realpath(cache_dir) + "/" if cache_dir is not None else None
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:"):
            kind = "socket"
        elif cache is not None and target.startswith(cache):
            kind = "cache"
        elif target[:1] == "/":
            kind = "file"
        else:
            kind = "other"
        kinds[kind] += 1
    return kinds


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_files(pid: int) -> list[str]:
    """Targets of the daemon's open fds that are files (not sockets, pipes, anon inodes)."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("/"):
            out.append(target)
    return out


def tree_state(root: Path, skip: list[Path]) -> dict[str, tuple[int, int]]:
    """(size, mtime_ns) of every file under ``root`` except under ``skip`` (mounts not entered)."""
    state: dict[str, tuple[int, int]] = {}
    skipped = {os.path.realpath(s) for s in skip}
    for dirpath, dirs, files in os.walk(root):
        dirs[:] = [
            d
            for d in dirs
            if os.path.realpath(os.path.join(dirpath, d)) not in skipped
            and not os.path.ismount(os.path.join(dirpath, d))
        ]
        for f in files:
            p = os.path.join(dirpath, f)
            if os.path.realpath(p) in skipped:
                continue
            try:
                st = os.lstat(p)
            except OSError:
                continue
            state[p] = (st.st_size, st.st_mtime_ns)
    return state
