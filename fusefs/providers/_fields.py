"""Typed parsing of the fields of an API answer, shared by every provider.

An answer is untrusted input: each field is checked for its type and range before it becomes part
of a ``RemoteEntry``. A field that fails raises :class:`BadField`; the provider then skips that one
entry with one log line (:func:`skip`) and lists the rest — it never guesses a value and never
fails the whole folder for one entry. Fields the API may legitimately leave out have ``opt_``
variants that answer ``None``.

Also here: the bounds of one listing (:class:`ListingBudget`), so that no server can make a listing
grow without end, and :func:`cursor`, the check of a paging cursor's type.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from datetime import UTC, datetime

from fusefs.logs import excerpt
from fusefs.providers.base import ProtocolError

#: The largest size a file can have (``off_t`` is a signed 64-bit integer).
MAX_SIZE = (1 << 63) - 1
#: Times are nanoseconds since the epoch in a signed 64-bit ``st_mtime_ns``/``st_ctime_ns``.
MAX_TIME_NS = (1 << 63) - 1

#: At most this many entries in one directory listing (docs/semantics.md, "Listings").
MAX_LISTING_ENTRIES = 200_000
#: At most this many pages (requests) for one directory listing.
MAX_LISTING_PAGES = 5_000
#: A paging cursor longer than this is not sent back.
MAX_CURSOR = 4096


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def has_control(value: str) -> bool:
    """``value`` holds a C0 control character or DEL (not allowed in ids, keys, URIs)."""
    return _CONTROL.search(value) is not None


class BadField(ValueError):
    """A field of an answer is missing or not what the API allows."""


def _show(value: object) -> str:
    return excerpt(repr(value), 60)


def size(obj: Mapping[str, object], key: str) -> int:
    """A byte count: an integer (or a string of decimal digits) within ``0..MAX_SIZE``.

    Refused: missing, ``null``, booleans, floats (also ``1.0``), negative, above ``MAX_SIZE``,
    other strings."""
    if key not in obj:
        raise BadField(f"no {key}")
    value = obj[key]
    if isinstance(value, bool) or value is None:
        raise BadField(f"{key} {_show(value)} is not a size")
    if isinstance(value, str):
        text = value.strip()
        if not text.isascii() or not text.isdigit() or len(text) > 19:
            raise BadField(f"{key} {_show(value)} is not a size")
        value = int(text)
    if not isinstance(value, int):
        raise BadField(f"{key} {_show(value)} is not an integer size")
    if not 0 <= value <= MAX_SIZE:
        raise BadField(f"{key} {_show(value)} is out of range")
    return value


def opt_size(obj: Mapping[str, object], key: str) -> int | None:
    """:func:`size`, or ``None`` when the field is absent or ``null`` (the size is unknown)."""
    if obj.get(key) is None:
        return None
    return size(obj, key)


def text(obj: Mapping[str, object], key: str, *, empty: bool = False) -> str:
    """A string (non-empty unless ``empty``); anything else raises ``BadField``."""
    value = obj.get(key)
    if not isinstance(value, str):
        raise BadField(f"no {key}" if value is None else f"{key} {_show(value)} is not a string")
    if not value and not empty:
        raise BadField(f"{key} is empty")
    return value


def opt_text(obj: Mapping[str, object], key: str) -> str | None:
    """A non-empty string, or ``None`` when absent, ``null``, empty or not a string."""
    value = obj.get(key)
    return value if isinstance(value, str) and value else None


def ident(obj: Mapping[str, object], key: str) -> str:
    """An id: a non-empty string without control characters (ids go into keys and URLs)."""
    value = text(obj, key)
    if _CONTROL.search(value) is not None:
        raise BadField(f"{key} {_show(value)} holds control characters")
    return value


def _ns_in_range(ns: int) -> int | None:
    return ns if 0 <= ns <= MAX_TIME_NS else None


def parse_iso(value: object) -> float | None:
    """ISO-8601 (``2020-01-04T09:05:22.701000Z``) → epoch seconds; ``None`` if not parseable."""
    if not isinstance(value, str) or not value:
        return None
    raw = value.strip()
    if raw.endswith(("Z", "z")):
        raw = raw[:-1] + "+00:00"
    try:
        dt = datetime.fromisoformat(raw)
    except ValueError:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


def iso_time_ns(value: object) -> int | None:
    """ISO-8601 → nanoseconds since the epoch; ``None`` when absent, malformed or out of range."""
    ts = parse_iso(value)
    if ts is None or not math.isfinite(ts):
        return None
    return _ns_in_range(round(ts * 1000) * 1_000_000)


def ms_time_ns(value: object) -> int | None:
    """Milliseconds since the epoch (integer or decimal string) → ns; ``None`` when not valid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        t = value.strip()
        if not t.isascii() or not t.isdigit() or len(t) > 19:
            return None
        value = int(t)
    if not isinstance(value, int):
        return None
    return _ns_in_range(value * 1_000_000)


def cursor(value: object, call: str) -> str | None:
    """A paging cursor: a string, or absent/``null``/``""`` for the last page. Anything else (an
    integer, a list, ...) is a ``ProtocolError``: ending the listing there would hide entries."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ProtocolError(f"listing cursor {_show(value)} is not a string", call=call)
    if len(value) > MAX_CURSOR:
        raise ProtocolError(f"listing cursor of {len(value)} characters", call=call)
    return value


class ListingBudget:
    """The bounds of one listing: ``MAX_LISTING_PAGES`` pages, ``MAX_LISTING_ENTRIES`` entries.

    Beyond either the listing fails with a ``ProtocolError`` (a folder cut short would look as if
    its other files were deleted); the previous listing, if any, is still served (degraded)."""

    def __init__(
        self,
        call: str,
        what: str,
        *,
        max_pages: int = MAX_LISTING_PAGES,
        max_entries: int = MAX_LISTING_ENTRIES,
    ) -> None:
        self.call = call
        self.what = what
        self.max_pages = max_pages
        self.max_entries = max_entries
        self.pages = 0
        self.entries = 0

    def page(self, items: int) -> None:
        """One more page holding ``items`` raw items."""
        self.pages += 1
        self.entries += items
        if self.pages > self.max_pages:
            raise ProtocolError(
                f"{self.what}: more than {self.max_pages} pages; not listed (the limit of one "
                "listing)",
                call=self.call,
            )
        if self.entries > self.max_entries:
            raise ProtocolError(
                f"{self.what}: more than {self.max_entries} entries; not listed (the limit of "
                "one listing)",
                call=self.call,
            )


class SkipLog:
    """One log line per skipped entry (the first ``limit`` of a listing), then one summary."""

    def __init__(self, log: logging.Logger, what: str, *, limit: int = 20) -> None:
        self.log = log
        self.what = what
        self.limit = limit
        self.skipped = 0
        self.notes: dict[str, int] = {}

    def skip(self, entry: str, reason: str) -> None:
        self.skipped += 1
        if self.skipped <= self.limit:
            self.log.warning(
                "%s: entry %s skipped: %s", self.what, excerpt(entry, 120), excerpt(reason, 200)
            )

    def note(self, what: str) -> None:
        """A field that is not valid but not needed to list the entry (a time): counted, and
        logged once per listing by :meth:`done`."""
        self.notes[what] = self.notes.get(what, 0) + 1

    def time_ns(self, value: object, field: str) -> int:
        """An ISO-8601 time of an entry in ns; 0 (noted once per listing) when it is not valid,
        0 silently when it is absent."""
        ns = iso_time_ns(value)
        if ns is None:
            if value is not None:
                self.note(f"an {field} that is not a valid time (shown as 0)")
            return 0
        return ns

    def done(self) -> None:
        if self.skipped > self.limit:
            self.log.warning(
                "%s: %d entries skipped in all (%d not logged)",
                self.what,
                self.skipped,
                self.skipped - self.limit,
            )
        for what, n in sorted(self.notes.items()):
            self.log.warning("%s: %d entries with %s", self.what, n, what)


def describe_item(item: object, *keys: str) -> str:
    """How to name an item in a log line: its first string id among ``keys``, else its type."""
    if isinstance(item, Mapping):
        for k in keys:
            v = item.get(k)
            if isinstance(v, str) and v:
                return f"{k}={v!r}"
        return "(without an id)"
    return f"({type(item).__name__}, not an object)"
