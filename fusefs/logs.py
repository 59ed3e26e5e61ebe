"""Log records are one line each, whatever a server put into them.

Server text (error bodies, names, messages) reaches the log through exception messages and
arguments. :func:`excerpt` makes such text safe to show: control characters (newlines included)
are escaped as ``\\n``, ``\\x1b``, ``\\u2028`` …, and it is cut to a length.
:class:`OneLineFormatter` applies the same escaping to every whole record (message and
traceback), so that no record spans lines and no server can forge a line that looks like ours.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from datetime import datetime
from pathlib import Path

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape_char(m: re.Match[str]) -> str:
    c = m.group(0)
    named = _NAMED.get(c)
    if named is not None:
        return named
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str) -> str:
    """``text`` with every control character (C0, C1, line/paragraph separators, bidi controls)
    written as an escape, and the backslash kept as it is."""
    if text.isprintable() and text.isascii():
        return text
    out = _CONTROL.sub(_escape_char, text)
    # other characters Python does not print (unassigned, surrogates): escaped too
    if not out.isprintable():
        out = "".join(
            c
            if c.isprintable() or c == " "
            else (f"\\u{ord(c):04x}" if ord(c) < 0x10000 else f"\\U{ord(c):08x}")
            for c in out
        )
    return out


def excerpt(text: str | bytes, limit: int = 300) -> str:
    """A loggable excerpt of server text: escaped (:func:`escape`), at most ``limit`` characters
    (escapes included), ``…`` when cut. Bytes are decoded as UTF-8 (invalid bytes as U+FFFD)."""
    if isinstance(text, bytes | bytearray):
        raw = bytes(text[: limit * 4 + 4])
        cut = len(text) > len(raw)
        s = raw.decode("utf-8", "replace")
    else:
        s = text
        cut = False
    if len(s) > limit:
        s, cut = s[:limit], True
    out = escape(s)
    if len(out) > limit:
        out, cut = out[:limit], True
    return out + ("…" if cut else "")


class OneLineFormatter(logging.Formatter):
    """A ``logging.Formatter`` whose every record is one line (control characters escaped),
    its ``asctime`` ISO 8601 with the time zone (``2026-12-04T03:20:38.123+00:00``)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        when = datetime.fromtimestamp(record.created).astimezone()
        return when.isoformat(timespec="milliseconds")


FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# journald stamps each line itself and reads the level from a "<N>" prefix (sd-daemon(3))
JOURNAL_FORMAT = "<%(priority)d>%(levelname)s %(name)s: %(message)s"
_PRIORITY = {"CRITICAL": 2, "ERROR": 3, "WARNING": 4, "INFO": 6, "DEBUG": 7}


class _JournalFormatter(OneLineFormatter):
    def format(self, record: logging.LogRecord) -> str:
        record.priority = _PRIORITY.get(record.levelname, 6)
        return super().format(record)


def under_journald() -> bool:
    """Run by systemd with stderr connected to the journal (systemd.exec(5), $JOURNAL_STREAM)."""
    stream = os.environ.get("JOURNAL_STREAM", "")
    dev, _, ino = stream.partition(":")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(stream) and f"{st.st_dev}" == dev and f"{st.st_ino}" == ino


def setup(level: str, log_file: Path | None = None) -> None:
    """Every record to ``log_file`` (appended), else to stderr; for journald, with its level
    prefix and without a date of ours."""
    handler: logging.Handler
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(log_file, encoding="utf-8")
        handler.setFormatter(OneLineFormatter(FORMAT))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(
            _JournalFormatter(JOURNAL_FORMAT) if under_journald() else (OneLineFormatter(FORMAT))
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)


def state_dir() -> Path:
    return Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "fusefs"


def default_log_file(mountpoint: Path) -> Path:
    """The background daemon's log when none is configured: named after the whole mountpoint,
    as systemd names its units (``/mnt/clouds`` → ``mnt-clouds.log``), so that two mounts
    never share one."""
    from fusefs.systemd import escape_path

    return state_dir() / f"{escape_path(mountpoint)}.log"
