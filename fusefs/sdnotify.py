"""systemd's readiness protocol (sd_notify(3)): one datagram to ``$NOTIFY_SOCKET``.

Written here rather than taken from a library: the protocol is one ``sendto``, the
``systemd-python`` binding needs libsystemd headers to build, and the ``sdnotify`` package is
unmaintained. Without ``NOTIFY_SOCKET`` (not run by systemd with ``Type=notify``) every call
is a no-op.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*fields: str) -> bool:
    """Send ``READY=1``, ``STATUS=…``, ``STOPPING=1`` … in one message; True if sent."""
    path = os.environ.get("NOTIFY_SOCKET")
    if not path:
        return False
    address = "\0" + path[1:] if path.startswith("@") else path  # "@": abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
            s.sendto("\n".join(fields).encode(), address)
    except OSError as exc:
        log.warning("could not notify systemd at %s: %s", path, exc)
        return False
    return True
