"""A systemd service unit for one mount (``fusefs systemd-unit``).

The daemon runs in the foreground under systemd (``Type=notify``): it sends ``READY=1`` once the
mount answers, ``STATUS=`` lines while it runs and ``STOPPING=1`` on shutdown (fusefs.sdnotify).
Secrets come from an ``EnvironmentFile`` (0600, root), never from the unit itself.
"""

from __future__ import annotations

import shlex
import string
from pathlib import Path

_KEEP = set(string.ascii_letters + string.digits + ":_.")


def escape_path(path: Path) -> str:
    """``systemd-escape --path``: the unit-name form of an absolute path."""
    text = str(path).strip("/")
    if not text:
        return "-"
    out = []
    for i, ch in enumerate(text):
        if ch == "/":
            out.append("-")
        elif ch in _KEEP and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.extend(f"\\x{b:02x}" for b in ch.encode())
    return "".join(out)


def unit_name(mountpoint: Path) -> str:
    return f"fusefs-{escape_path(mountpoint)}.service"


def unit_text(
    *, executable: Path, config: Path, mountpoint: Path, env_file: Path, fusermount: str
) -> str:
    """The unit: ``Restart=on-failure``, a dead mount left by a crash cleared before each
    start, secrets from ``env_file`` (its ``-`` prefix: the file may be absent)."""
    q = shlex.quote
    mnt = q(str(mountpoint))
    return f"""\
[Unit]
Description=fusefs: IoT cloud files at {mountpoint}
# written by `fusefs systemd-unit`; see fusefs's docs/operations.md
Wants=network-online.target
After=network-online.target

[Service]
Type=notify
NotifyAccess=main
EnvironmentFile=-{env_file}
# a mount left dead by a crash (ENOTCONN) is cleared before each start
ExecStartPre=-{fusermount} -uz {mnt}
ExecStart={q(str(executable))} mount --foreground --config {q(str(config))} {mnt}
# SIGHUP: the daemon reopens its log file and rereads the reloadable keys, it stays mounted
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
RestartSec=5s
TimeoutStartSec=120s
TimeoutStopSec=60s
KillMode=mixed

[Install]
WantedBy=multi-user.target
"""
