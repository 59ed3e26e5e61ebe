"""The name mapping rule of docs/world.md: remote names -> file names, per directory listing.

This is the world generator's own implementation (an independent witness); the daemon has
another one. It imports nothing from the rest of ``fusefs``.

Steps (see docs/world.md):

1. escape ``%`` ``/`` NUL and lone surrogates;
2. reserved names ``.`` ``..`` and the empty name;
3. duplicates: the smallest remote id keeps the name, the others get ``~<id>`` before the
   extension;
4. names longer than 255 UTF-8 bytes are cut to ``stem~<8 hex of sha256(remote name)><ext>``.

Two points the text of docs/world.md leaves open, decided here:

* the remote id inserted in step 3 is itself escaped as in step 1 (EnOS file ids are
  ``enos-connect://…`` URIs, and a ``/`` cannot be part of a file name);
* when a duplicate (step 3) is also too long (step 4), the ``~<id>`` suffix is kept whole and
  only the stem before it is cut: ``stem~<id>~<h><ext>``. Cutting through ``~<id>`` would give
  every duplicate of a long name the same result (they share the remote name, hence ``h``).
"""

from __future__ import annotations

import hashlib

NAME_MAX = 255
EXT_MAX = 16

_ESCAPES = {"%": "%25", "/": "%2F", "\0": "%00"}
_RESERVED = {".": "%2E", "..": "%2E%2E", "": "%"}


def _utf8_len(text: str) -> int:
    return len(text.encode("utf-8"))


def escape_text(text: str) -> str:
    """Step 1: ``%`` -> ``%25``, ``/`` -> ``%2F``, NUL -> ``%00``, surrogate -> ``%uXXXX``."""
    out: list[str] = []
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0xD800 <= code <= 0xDFFF:
            out.append(f"%u{code:04X}")
        else:
            out.append(ch)
    return "".join(out)


def escape_name(name: str) -> str:
    """Steps 1 and 2: a name that is safe as a file name except for length and duplicates."""
    escaped = escape_text(name)
    return _RESERVED.get(escaped, escaped)


def split_ext(name: str) -> tuple[str, str]:
    """``(stem, ext)``: ext runs from the last ``.`` (not the first character, <= 16 bytes)."""
    dot = name.rfind(".")
    if dot > 0 and _utf8_len(name[dot:]) <= EXT_MAX:
        return name[:dot], name[dot:]
    return name, ""


def _atoms(escaped: str) -> list[str]:
    """Split an escaped text into units that must not be cut: ``%XX``, ``%uXXXX``, characters."""
    atoms: list[str] = []
    i = 0
    while i < len(escaped):
        if escaped[i] == "%":
            width = 6 if escaped.startswith("%u", i) else 3
            atoms.append(escaped[i : i + width])
            i += width
        else:
            atoms.append(escaped[i])
            i += 1
    return atoms


def _cut(stem: str, budget: int) -> str:
    """The longest prefix of ``stem`` (whole atoms) of at most ``budget`` UTF-8 bytes."""
    kept: list[str] = []
    used = 0
    for atom in _atoms(stem):
        size = _utf8_len(atom)
        if used + size > budget:
            break
        kept.append(atom)
        used += size
    return "".join(kept)


def name_hash(remote_name: str) -> str:
    """First 8 hex digits of sha256 of the remote name (UTF-8, surrogates passed through)."""
    return hashlib.sha256(remote_name.encode("utf-8", "surrogatepass")).hexdigest()[:8]


def _finish(remote_name: str, escaped: str, dup_id: str | None) -> str:
    """Steps 3 (suffix for a non-first duplicate) and 4 (length cap) for one name."""
    stem, ext = split_ext(escaped)
    suffix = "" if dup_id is None else "~" + escape_text(dup_id)
    name = stem + suffix + ext
    if _utf8_len(name) <= NAME_MAX:
        return name
    tail = suffix + "~" + name_hash(remote_name) + ext
    return _cut(stem, NAME_MAX - _utf8_len(tail)) + tail


def namemap(names_with_ids: list[tuple[str, str]]) -> list[str]:
    """Map the remote ``(name, id)`` pairs of one directory to file names (same order).

    The result does not depend on the order of the input: duplicates are ranked by remote id.
    """
    escaped = [escape_name(name) for name, _ in names_with_ids]
    groups: dict[str, list[int]] = {}
    for index, key in enumerate(escaped):
        groups.setdefault(key, []).append(index)
    dup_id: dict[int, str] = {}
    for members in groups.values():
        ranked = sorted(members, key=lambda i: names_with_ids[i][1])
        for index in ranked[1:]:
            dup_id[index] = names_with_ids[index][1]
    return [_finish(name, escaped[i], dup_id.get(i)) for i, (name, _) in enumerate(names_with_ids)]
