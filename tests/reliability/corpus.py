"""The hostile corpus: mutations of the emulator's real answers (issue 9, "The suite").

Nothing here is written by hand per case: the emulator records the JSON answers it really gave
(fault plan ``record_answers``), every object in them that names a listed file (by its remote
id) is an *entry*, and each field of each entry gets the mutations of its type (wrong types,
missing, negative / huge / non-numeric numbers, hostile names, unknown enums). Whole answers
get malformed JSON, HTML, wrong shapes, huge pages, duplicates and endless or looping cursors;
download routes get bodies longer or shorter than listed and lying headers.
"""

from __future__ import annotations

import base64
import json
import random
from dataclasses import dataclass, field
from typing import Any

# a case's `target`: the file (path in the expected view) to list, stat and read
ROUTE_PROVIDER = {
    "enos": "enos",
    "koodrive": "koodrive",
    "iotda": "iotda",
    "roma": "roma",
}
LISTING_ROUTES = {
    "enos": [
        "enos.asset.search",
        "enos.file.info",
        "enos.firmware.search",
        "enos.model.get",
        "enos.measurepoint.latest",
    ],
    "koodrive": ["koodrive.list"],
    "iotda": ["iotda.list"],
    "roma": ["roma.job"],
}
# the list of entries in each listing answer (whole-answer mutations)
PAGE_KEY = {
    "enos.asset.search": "data",
    "enos.firmware.search": "data",
    "enos.measurepoint.latest": "data",
    "koodrive.list": "files",
    "iotda.list": "export_tasks",
}
UNIQUE_KEYS = {
    "enos.asset.search": ["assetId"],
    "enos.firmware.search": ["firmwareId", "fileUrl"],
    "koodrive.list": ["id", "fileName"],
    "iotda.list": ["export_task_id"],
}
# routes answered once per entry (a file's info, a job's status): a whole-answer mutation of them
# hits every entry of the folder, and skipping each bad entry is the designed answer
PER_ENTRY_ROUTES = frozenset({"enos.file.info", "roma.job"})
DOWNLOAD_ROUTES = {
    "enos": ["enos.download", "enos.firmware.download"],
    "koodrive": ["koodrive.obs", "koodrive.download_links"],
    "iotda": ["iotda.download"],
    "roma": ["roma.download"],
}

LONG_NAME = "n" * 300
LONG_UTF8 = "名" * 100  # 300 bytes
STRINGS: list[Any] = [
    None,
    7,
    1.5,
    True,
    [],
    {"a": 1},
    "",
    "a/b",
    "..",
    ".",
    "a\x00b",
    "x\n\x1b[2Jforged",
    LONG_NAME,
    LONG_UTF8,
    "\u202eexe.txt",
    "\ud800",
]
NUMBERS: list[Any] = [
    -5,
    -1,
    2**63,
    2**64 + 1,
    10**14,
    10**30,
    "abc",
    "12",
    "",
    1.5,
    1.0,
    None,
    True,
    [],
    {},
]
BOOLS: list[Any] = [None, "true", 1, 0, "yes", [], {}]
ENUM_LIKE = {
    "status",
    "category",
    "mimeType",
    "fileType",
    "resource_type",
    "dataType",
    "type",
    "signMethod",
    "export_format",
    "app_type",
    "fileSuffix",
}
TIMES: list[Any] = ["2020-13-45T99:99:99Z", "-1", "99999-01-01T00:00:00Z", "1e400", -1, 2**70]
HTML = (
    "<!DOCTYPE html>\n<html><head><title>502 Bad Gateway</title></head>\n<body>nginx</body></html>"
)


@dataclass
class Case:
    provider: str
    route: str
    name: str  # what was mutated, e.g. "koodrive.list size=-5"
    rules: list[dict[str, Any]]
    target: str  # path (relative to the mount) of the file looked at
    download: bool = False  # the download route is mutated: the target must not be cached
    whole: bool = False  # the whole answer is mutated, not one entry
    # what the server sends as the body instead of the real bytes (download cases): "real",
    # "body" (rule text), "pad" (real + fill) or "cut" (a prefix of real)
    served: str = "real"
    plan: dict[str, Any] = field(default_factory=dict)  # plan knobs for this case


def _short(v: Any) -> str:
    s = json.dumps(v, ensure_ascii=True)
    return s if len(s) <= 24 else s[:21] + "..."


def entries(answer: Any, ids: dict[str, str]) -> list[tuple[str, str, dict[str, Any]]]:
    """(key, id, object) for every object in ``answer`` holding a listed remote id."""
    out = []
    stack = [answer]
    while stack:
        v = stack.pop()
        if isinstance(v, dict):
            for k, x in v.items():
                if isinstance(x, str) and x in ids:
                    out.append((k, x, v))
                    break
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return out


def field_values(key: str, value: Any) -> list[Any]:
    """The hostile values tried for one field, chosen by its real value's type."""
    if isinstance(value, bool):
        vals = list(BOOLS)
    elif isinstance(value, int | float):
        vals = list(NUMBERS)
    elif isinstance(value, str):
        vals = list(STRINGS)
        if key in ENUM_LIKE:
            vals += ["UNKNOWN_ENUM_VALUE", value.lower() + "x"]
        if key.endswith(("time", "Time")) or value[:2] in ("19", "20"):
            vals += TIMES
    elif value is None:
        vals = [0, "", "x", -1, [], {}]
    else:  # lists, objects
        vals = [None, "x", 0, [] if isinstance(value, dict) else {}]
    return [v for v in vals if v != value or type(v) is not type(value)]


def entry_cases(
    provider: str, answers: list[dict[str, Any]], files: dict[str, str], per_route: int = 2
) -> list[Case]:
    """Field mutations of the first ``per_route`` entries of each route in the recorded
    listing answers of ``provider``. ``files``: remote id -> path of the listed file it names.
    """
    cases: list[Case] = []
    seen: set[tuple[str, str, str]] = set()
    taken: dict[str, int] = {}
    for a in answers:
        route = a["route"]
        for key, rid, obj in entries(a["json"], files):
            if (route, key, rid) in seen or taken.get(route, 0) >= per_route:
                continue
            seen.add((route, key, rid))
            taken[route] = taken.get(route, 0) + 1
            match = {key: rid}
            for k, v in obj.items():
                base = {"route": route, "kind": "patch", "match": match}
                cases.append(
                    Case(
                        provider,
                        route,
                        f"{route} {k} missing",
                        [{**base, "unset": [k]}],
                        files[rid],
                    )
                )
                for bad in field_values(k, v):
                    cases.append(
                        Case(
                            provider,
                            route,
                            f"{route} {k}={_short(bad)}",
                            [{**base, "set": {k: bad}}],
                            files[rid],
                        )
                    )
    return cases


def answer_cases(provider: str, route: str, answer: Any, target: str) -> list[Case]:
    """Whole-answer mutations of one listing route (the listing of ``target``'s folder)."""
    text = json.dumps(answer)
    body = {"route": route, "kind": "body", "status": 200, "content_type": "application/json"}
    raw: list[tuple[str, dict[str, Any]]] = [
        ("HTML where JSON was due", {**body, "text": HTML, "content_type": "text/html"}),
        (
            "HTML with status 502",
            {**body, "status": 502, "text": HTML, "content_type": "text/html"},
        ),
        ("JSON cut in half", {**body, "text": text[: len(text) // 2]}),
        ("JSON with a NUL", {**body, "text": text[:20] + "\x00" + text[20:]}),
        ("empty body", {**body, "text": ""}),
        ("JSON null", {**body, "text": "null"}),
        ("JSON array", {**body, "text": "[]"}),
        ("JSON string", {**body, "text": '"ok"'}),
        ("JSON with trailing garbage", {**body, "text": text + "}}garbage"}),
        ("deeply nested", {**body, "text": "[" * 100_000 + "]" * 100_000}),
        (
            "body cut mid-way (Content-Length lie)",
            {"route": route, "kind": "truncate", "after_bytes": len(text) // 3},
        ),
        ("connection reset", {"route": route, "kind": "reset", "after_bytes": 10}),
        ("answer longer than declared data", {"route": route, "kind": "resize", "delta": 50}),
        (
            "Content-Type html",
            {"route": route, "kind": "headers", "headers": {"Content-Type": "text/html"}},
        ),
    ]
    if isinstance(answer, dict):
        for k, v in answer.items():
            raw.append((f"top-level {k} missing", {"route": route, "kind": "patch", "unset": [k]}))
            for bad in field_values(k, v)[:6]:
                raw.append(
                    (
                        f"top-level {k}={_short(bad)}",
                        {"route": route, "kind": "patch", "set": {k: bad}},
                    )
                )
    page = PAGE_KEY.get(route)
    if page is not None and isinstance(answer, dict) and answer.get(page):
        grow = {
            "route": route,
            "kind": "patch",
            "grow": {page: 100_000},
            "unique": UNIQUE_KEYS.get(route, []),
        }
        raw.append(("100,000-entry page", grow))
        raw.append(
            (
                "every entry 3 times",
                {"route": route, "kind": "patch", "grow": {page: 3 * len(answer[page])}},
            )
        )
    return [Case(provider, route, f"{route} {n}", [r], target, whole=True) for n, r in raw]


def loop_cursor(parent: str) -> str:
    """A KooDrive cursor the emulator takes, for the first page of ``parent`` (again)."""
    raw = json.dumps({"p": parent, "o": 0, "n": 1}, separators=(",", ":")).encode()
    return "0|" + base64.urlsafe_b64encode(raw).decode()


def cursor_cases(route: str, answer: Any, target: str, parent: str = "") -> list[Case]:
    """Cursors that never end, loop, or have the wrong type."""
    out: list[Case] = []
    patch = {"route": route, "kind": "patch"}
    if route == "koodrive.list":
        for n, s in [
            (
                "a new cursor every page (never ends)",
                {"nextCursor": "$seq", "searchCompleted": False},
            ),
            ("integer nextCursor", {"nextCursor": 5, "searchCompleted": False}),
            ("4 KiB+ cursor", {"nextCursor": "c" * 5000, "searchCompleted": False}),
            ("cursor null, not completed", {"nextCursor": None, "searchCompleted": False}),
            ("looping cursor", {"nextCursor": loop_cursor(parent), "searchCompleted": False}),
            ("cursor of no page", {"nextCursor": "0|bm9wZQ==", "searchCompleted": False}),
        ]:
            out.append(Case("koodrive", route, f"{route} {n}", [{**patch, "set": s}], target))
    elif route == "iotda.list":
        for n, s in [
            ("marker never ends", {"page": {"count": 10**9, "marker": "$seq"}}),
            ("integer marker", {"page": {"count": 10**9, "marker": 5}}),
            (
                "count huge, marker repeats",
                {"page": {"count": 10**9, "marker": "ffffffffffffffffffffffff"}},
            ),
            ("page missing", {"page": None}),
        ]:
            out.append(Case("iotda", route, f"{route} {n}", [{**patch, "set": s}], target))
    elif route in ("enos.firmware.search", "enos.asset.search"):
        for n, s in [
            (
                "totalSize huge",
                {"pagination": {"pageNo": 1, "pageSize": 1, "totalSize": 10**12, "sortedBy": None}},
            ),
            ("pagination wrong type", {"pagination": "x"}),
        ]:
            out.append(Case("enos", route, f"{route} {n}", [{**patch, "set": s}], target))
    return out


def download_cases(provider: str, route: str, targets: list[str]) -> list[Case]:
    """Download answers that lie, one target (an uncached file) each, in turn."""
    if route == "koodrive.download_links":
        p = {"route": route, "kind": "patch", "match": {"code": "0"}}
        specs: list[tuple[str, dict[str, Any], str]] = [
            ("url missing", {**p, "unset": ["url"]}, "real"),
            ("url null", {**p, "set": {"url": None}}, "real"),
            ("url not http", {**p, "set": {"url": "file:///etc/passwd"}}, "real"),
            ("url relative", {**p, "set": {"url": "/obs/x"}}, "real"),
            ("url to another host", {**p, "set": {"url": "http://127.0.0.1:1/obs/x"}}, "real"),
            ("item code failed", {**p, "set": {"code": "13000309", "msg": "x\ny"}}, "real"),
            ("fileId changed", {**p, "set": {"fileId": "Fnope"}}, "real"),
            (
                "downloads missing",
                {"route": route, "kind": "patch", "unset": ["downloads"]},
                "real",
            ),
            (
                "HTML",
                {
                    "route": route,
                    "kind": "body",
                    "status": 200,
                    "text": HTML,
                    "content_type": "text/html",
                },
                "real",
            ),
        ]
    else:
        specs = [
            ("body 1 byte longer", {"route": route, "kind": "resize", "delta": 1}, "pad"),
            ("body 4 KiB longer", {"route": route, "kind": "resize", "delta": 4096}, "pad"),
            ("body 1 byte shorter", {"route": route, "kind": "resize", "delta": -1}, "cut"),
            ("body half as long", {"route": route, "kind": "resize", "delta": -(10**9)}, "cut"),
            (
                "Content-Length smaller",
                {"route": route, "kind": "headers", "headers": {"Content-Length": "3"}},
                "cut",
            ),
            (
                "Content-Range lies",
                {
                    "route": route,
                    "kind": "headers",
                    "headers": {"Content-Range": "bytes 0-9/999999999999"},
                },
                "real",
            ),
            (
                "Content-Range of another offset",
                {"route": route, "kind": "headers", "headers": {"Content-Range": "bytes 5-9/10"}},
                "real",
            ),
            (
                "Content-Type html",
                {"route": route, "kind": "headers", "headers": {"Content-Type": "text/html"}},
                "real",
            ),
            (
                "HTML with status 200",
                {
                    "route": route,
                    "kind": "body",
                    "status": 200,
                    "text": HTML,
                    "content_type": "text/html",
                },
                "body",
            ),
            ("empty 200", {"route": route, "kind": "body", "status": 200, "text": ""}, "body"),
            (
                "Content-Length lie (truncated)",
                {"route": route, "kind": "truncate", "after_bytes": 7},
                "cut",
            ),
        ]
    out = []
    for i, (n, rule, served) in enumerate(specs):
        out.append(
            Case(
                provider,
                route,
                f"{route} {n}",
                [rule],
                targets[i % len(targets)],
                download=True,
                served=served,
            )
        )
    return out


def sample(cases: list[Case], n: int, seed: int = 9) -> list[Case]:
    """``n`` of ``cases`` (all when fewer), the same ones every run."""
    if len(cases) <= n:
        return list(cases)
    picked = random.Random(seed).sample(range(len(cases)), n)
    return [cases[i] for i in sorted(picked)]
