"""Log records are one line each, whatever a server put into them.

Server text (error bodies, names, messages) reaches the log through exception messages and
arguments. :func:`excerpt` makes such text safe to show: control characters (newlines included)
are escaped as ``\\n``, ``\\x1b``, ``\\u2028`` …, and it is cut to a length.
:class:`OneLineFormatter` applies the same escaping to every whole record (message and
traceback), so that no record spans lines and no server can forge a line that looks like ours.
"""

from __future__ import annotations

import logging
import re

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
    """A ``logging.Formatter`` whose every record is one line (control characters escaped)."""

    def format(self, record: logging.LogRecord) -> str:
        return escape(super().format(record))
