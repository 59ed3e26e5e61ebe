"""The name mapping rule (docs/world.md): remote names -> file names, per directory listing.

The world generator has its own implementation of the same rule; the two meet in the tests
(``diff -r expected/ mountpoint``), which is the point of keeping them separate.
"""

from __future__ import annotations

import hashlib
import re
from collections import defaultdict
from collections.abc import Sequence

NAME_MAX = 255
_EXT_MAX = 16
_NEEDS_ESCAPE = re.compile("[%/\x00\ud800-\udfff]")
_SHORT = NAME_MAX // 4  # UTF-8 needs at most 4 bytes per character


def escape(name: str) -> str:
    """Steps 1-2: make one remote name a legal single path component."""
    if name == "":
        return "%"
    if name == ".":
        return "%2E"
    if name == "..":
        return "%2E%2E"
    if _NEEDS_ESCAPE.search(name) is None:  # nearly every name: no loop over its characters
        return name
    out: list[str] = []
    for ch in name:
        if ch == "%":
            out.append("%25")
        elif ch == "/":
            out.append("%2F")
        elif ch == "\0":
            out.append("%00")
        elif 0xD800 <= ord(ch) <= 0xDFFF:
            out.append(f"%u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out)


def _split_ext(name: str) -> tuple[str, str]:
    dot = name.rfind(".")
    if dot <= 0:
        return name, ""
    ext = name[dot:]
    if len(ext.encode()) > _EXT_MAX:
        return name, ""
    return name[:dot], ext


def _cut(stem: str, budget: int) -> str:
    """Longest prefix of ``stem`` within ``budget`` UTF-8 bytes, not splitting a %XX escape."""
    used = 0
    end = 0
    i = 0
    while i < len(stem):
        if stem[i] == "%" and i + 2 < len(stem) and stem[i + 1] == "u":
            tok = stem[i : i + 6]
        elif stem[i] == "%":
            tok = stem[i : i + 3]
        else:
            tok = stem[i]
        size = len(tok.encode())
        if used + size > budget:
            break
        used += size
        i += len(tok)
        end = i
    return stem[:end]


def _finish(remote_name: str, escaped: str, dup_id: str | None) -> str:
    """Steps 3 (suffix of a non-first duplicate) and 4 (length cap) for one name."""
    stem, ext = _split_ext(escaped)
    suffix = "" if dup_id is None else "~" + escape(dup_id)
    name = stem + suffix + ext
    if len(name.encode()) <= NAME_MAX:
        return name
    digest = hashlib.sha256(remote_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    tail = suffix + "~" + digest + ext
    return _cut(stem, NAME_MAX - len(tail.encode())) + tail


def map_names(entries: Sequence[tuple[str, str]]) -> list[str]:
    """Map ``(remote name, remote id)`` pairs of one directory to unique file names (same order)."""
    escaped = [escape(name) for name, _ in entries]
    dup_id: dict[int, str] = {}
    if len(set(escaped)) != len(escaped):
        groups: dict[str, list[int]] = defaultdict(list)
        for i, e in enumerate(escaped):
            groups[e].append(i)
        for members in groups.values():
            members.sort(key=lambda i: entries[i][1])
            for i in members[1:]:
                dup_id[i] = entries[i][1]
    # a unique name of at most NAME_MAX // 4 characters is its own file name (steps 3-4 keep it)
    return [
        e if len(e) <= _SHORT and i not in dup_id else _finish(entries[i][0], e, dup_id.get(i))
        for i, e in enumerate(escaped)
    ]
