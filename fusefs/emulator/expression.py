"""The subset of EnOS search ``expression`` syntax the emulator supports (enos.md §1.5).

``field = value``, ``field != value``, ``field in (v1, v2)``, ``and`` / ``or`` (any case),
parentheses; values quoted with ``'...'`` or ``"..."``, numbers, ``true``/``false``. Anything
else (``like``, ``exists``, ...) raises :class:`ExpressionError` (answered with 99400).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from typing import Any

Predicate = Callable[[Mapping[str, Any]], bool]


class ExpressionError(ValueError):
    pass


_TOKEN = re.compile(
    r"""\s*(?:
        (?P<str>'(?:[^'\\]|\\.)*'|"(?:[^"\\]|\\.)*")
      | (?P<op>!=|=|\(|\)|,)
      | (?P<num>-?\d+(?:\.\d+)?)
      | (?P<word>[A-Za-z_][A-Za-z0-9_.\[\]*]*)
    )""",
    re.VERBOSE,
)


def _tokens(text: str) -> list[tuple[str, Any]]:
    out: list[tuple[str, Any]] = []
    pos = 0
    text = text.rstrip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None or m.end() == pos:
            raise ExpressionError(f"unexpected input at {pos}: {text[pos : pos + 20]!r}")
        pos = m.end()
        if m.group("str") is not None:
            raw = m.group("str")[1:-1]
            out.append(("val", re.sub(r"\\(.)", r"\1", raw)))
        elif m.group("op") is not None:
            out.append(("op", m.group("op")))
        elif m.group("num") is not None:
            num = m.group("num")
            out.append(("val", float(num) if "." in num else int(num)))
        else:
            word = m.group("word")
            low = word.lower()
            if low in ("and", "or", "in", "like", "not", "exists"):
                out.append(("kw", low))
            elif low in ("true", "false"):
                out.append(("val", low == "true"))
            elif low == "null":
                out.append(("val", None))
            else:
                out.append(("field", word))
    return out


class _Parser:
    def __init__(self, tokens: list[tuple[str, Any]], fields: set[str]) -> None:
        self.toks = tokens
        self.i = 0
        self.fields = fields

    def peek(self) -> tuple[str, Any] | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def take(self) -> tuple[str, Any]:
        tok = self.peek()
        if tok is None:
            raise ExpressionError("unexpected end of expression")
        self.i += 1
        return tok

    def expect(self, kind: str, value: Any = None) -> Any:
        tok = self.take()
        if tok[0] != kind or (value is not None and tok[1] != value):
            raise ExpressionError(f"expected {value or kind}, got {tok[1]!r}")
        return tok[1]

    def parse_or(self) -> Predicate:
        parts = [self.parse_and()]
        while self.peek() == ("kw", "or"):
            self.take()
            parts.append(self.parse_and())
        return parts[0] if len(parts) == 1 else (lambda row: any(p(row) for p in parts))

    def parse_and(self) -> Predicate:
        parts = [self.parse_term()]
        while self.peek() == ("kw", "and"):
            self.take()
            parts.append(self.parse_term())
        return parts[0] if len(parts) == 1 else (lambda row: all(p(row) for p in parts))

    def parse_term(self) -> Predicate:
        if self.peek() == ("op", "("):
            self.take()
            inner = self.parse_or()
            self.expect("op", ")")
            return inner
        field = self.expect("field")
        if field not in self.fields:
            raise ExpressionError(f"unsupported field {field!r}")
        kind, op = self.take()
        if kind == "op" and op in ("=", "!="):
            value = self.expect("val")
            if op == "=":
                return lambda row: _eq(row.get(field), value)
            return lambda row: not _eq(row.get(field), value)
        if (kind, op) == ("kw", "in"):
            self.expect("op", "(")
            values = [self.expect("val")]
            while self.peek() == ("op", ","):
                self.take()
                values.append(self.expect("val"))
            self.expect("op", ")")
            return lambda row: any(_eq(row.get(field), v) for v in values)
        raise ExpressionError(f"unsupported operator {op!r}")


def _eq(actual: Any, value: Any) -> bool:
    if isinstance(actual, bool) or isinstance(value, bool):
        return actual is value or str(actual).lower() == str(value).lower()
    if actual is None or value is None:
        return actual is value
    return str(actual) == str(value)


def compile_expression(text: str | None, fields: set[str]) -> Predicate:
    """A predicate over a flat row (field name -> value); empty/None matches everything."""
    if text is None or not str(text).strip():
        return lambda row: True
    parser = _Parser(_tokens(str(text)), fields)
    pred = parser.parse_or()
    if parser.peek() is not None:
        raise ExpressionError(f"unexpected {parser.peek()!r}")
    return pred
