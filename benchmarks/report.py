"""Results of a run: cells (runs of one measure on one system), the measure/limit catalogue, and
the Markdown + JSON report with ratios to the limit and to the best peer."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from .util import median

SYSTEM_LABELS = {
    "fusefs": "fusefs",
    "fusefs-noxattr": "fusefs, `xattrs = false`",
    "rclone-off": "rclone mount, cache off",
    "rclone-full": "rclone mount, `--vfs-cache-mode full`",
    "httpdirfs": "httpdirfs `--cache`",
}
PEERS = ("rclone-off", "rclone-full", "httpdirfs")
FUSEFS = ("fusefs", "fusefs-noxattr")


@dataclass
class Cell:
    runs: list[float] = field(default_factory=list)
    capped: bool = False  # a run was stopped by its time cap (the value is over what was done)
    notes: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def value(self) -> float | None:
        good = [r for r in self.runs if r is not None and not math.isnan(r)]
        return median(good) if good else None

    def to_json(self) -> dict[str, Any]:
        good = [r for r in self.runs if not math.isnan(r)]
        out: dict[str, Any] = {"runs": self.runs}
        if good:
            out |= {"median": median(good), "min": min(good), "max": max(good)}
        if self.capped:
            out["capped"] = True
        if self.notes:
            out["notes"] = self.notes
        if self.errors:
            out["errors"] = self.errors
        if self.extra:
            out["extra"] = self.extra
        return out


@dataclass(frozen=True)
class Measure:
    key: str
    label: str
    unit: str
    higher_better: bool
    limit: str | None  # key of the limit it is compared with
    lan_only: bool = False


@dataclass(frozen=True)
class Limit:
    key: str
    label: str
    unit: str


def measures(big: str, mid: str, count: str, huge: str) -> list[Measure]:
    return [
        Measure("seq_cold", f"sequential {big} cold", "MB/s", True, "curl"),
        Measure("seq_mid_cold", f"sequential {mid} cold", "MB/s", True, "curl_mid"),
        Measure("reread", "re-read at once", "MB/s", True, "page_cache"),
        Measure("reread_own", "re-read after `drop_caches` (own cache)", "MB/s", True, "disk"),
        Measure(
            "rand_cold_mean",
            f"random 4 KiB pread cold ({huge} file), mean",
            "ms",
            False,
            "range_get_mean",
        ),
        Measure("rand_cold_p50", "random 4 KiB pread cold, p50", "ms", False, "range_get_p50"),
        Measure(
            "rand_own_mean",
            "random 4 KiB after `drop_caches`, mean",
            "ms",
            False,
            "disk_pread_mean",
        ),
        Measure(
            "rand_own_p50", "random 4 KiB after `drop_caches`, p50", "ms", False, "disk_pread_p50"
        ),
        Measure("rand_repeat_mean", "random 4 KiB repeated, mean", "ms", False, "page_pread_mean"),
        Measure("rand_repeat_p50", "random 4 KiB repeated, p50", "ms", False, "page_pread_p50"),
        Measure("ls_cold", f"`ls -l` {count} entries cold", "s", False, "listing_api"),
        Measure("ls_warm", "`ls -l` warm", "s", False, "ls_local"),
        Measure("cp_r", f"`cp -r` {count} × 1 KiB", "s", False, "gets_series"),
        Measure("par4", "4 parallel readers, aggregate", "MB/s", True, "curl_par4"),
        Measure("par8", "8 parallel readers, aggregate", "MB/s", True, "curl_par8"),
        Measure("tls_seq_cold", f"TLS: sequential {big} cold", "MB/s", True, "curl_tls"),
        Measure(
            "tls_rand_cold_mean", "TLS: random 4 KiB cold, mean", "ms", False, "range_get_tls_mean"
        ),
        Measure(
            "tls_rand_cold_p50", "TLS: random 4 KiB cold, p50", "ms", False, "range_get_tls_p50"
        ),
        Measure("cpu_per_gib", "daemon CPU per GiB read (cold)", "s", False, "curl_cpu"),
        Measure("rss", f"daemon peak RSS streaming {huge}", "MiB", False, None, lan_only=True),
    ]


def limits(big: str, mid: str, count: str) -> list[Limit]:
    return [
        Limit("curl", f"curl of the {big} object from the static server", "MB/s"),
        Limit("curl_mid", f"curl of the {mid} object", "MB/s"),
        Limit("curl_tls", "curl over TLS", "MB/s"),
        Limit("curl_cpu", "curl's CPU per GiB", "s"),
        Limit("curl_par4", "4 curls of distinct ranges at once", "MB/s"),
        Limit("curl_par8", "8 curls of distinct ranges at once", "MB/s"),
        Limit("page_cache", "local read from the page cache (1 MiB reads)", "MB/s"),
        Limit("disk", "local read after `drop_caches` (disk)", "MB/s"),
        Limit("range_get_mean", "one 4 KiB Range GET, persistent connection, mean", "ms"),
        Limit("range_get_p50", "one 4 KiB Range GET, p50", "ms"),
        Limit("range_get_tls_mean", "one 4 KiB Range GET over TLS, mean", "ms"),
        Limit("range_get_tls_p50", "one 4 KiB Range GET over TLS, p50", "ms"),
        Limit("disk_pread_mean", "local 4 KiB pread after `drop_caches`, mean", "ms"),
        Limit("disk_pread_p50", "local 4 KiB pread after `drop_caches`, p50", "ms"),
        Limit("page_pread_mean", "local 4 KiB pread from the page cache, mean", "ms"),
        Limit("page_pread_p50", "local 4 KiB pread from the page cache, p50", "ms"),
        Limit("listing_api", f"paging the listing API for {count} entries (plain client)", "s"),
        Limit("ls_local", f"local `ls -l` of {count} entries, warm", "s"),
        Limit("gets_series", f"{count} GETs in series from the static server", "s"),
        Limit(
            "links_gets",
            f"emulator floor: links in batches of 100 + the {count} GETs in series",
            "s",
        ),
    ]


def fmt(v: float | None, unit: str) -> str:
    if v is None or math.isnan(v):
        return "–"
    if math.isinf(v):
        return "∞"
    a = abs(v)
    if unit in ("MB/s", "MiB") or a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    if a >= 0.01:
        return f"{v:.3f}"
    return f"{v:.4f}"


def note_ref(notes: list[str], text: str) -> str:
    """``[n]``: the footnote number of ``text`` (added once per table)."""
    if text not in notes:
        notes.append(text)
    return f"[{notes.index(text) + 1}]"


def fmt_cell(cell: Cell | None, unit: str, notes: list[str]) -> str:
    if cell is None:
        return ""
    v = cell.value
    if v is None:
        if cell.errors:
            return f"failed {note_ref(notes, cell.errors[0])}"
        return " ".join(["n/a", *(note_ref(notes, n) for n in cell.notes)])
    text = fmt(v, unit)
    good = [r for r in cell.runs if not math.isnan(r)]
    if len(good) > 1:
        text += f" ({fmt(min(good), unit)}–{fmt(max(good), unit)})"
    if cell.capped:
        text += " †"
    if cell.errors:
        text += f" {note_ref(notes, cell.errors[0])}"
    for note in cell.notes:
        text += f" {note_ref(notes, note)}"
    return text


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0 or math.isnan(a) or math.isnan(b):
        return None
    return a / b


def best_peer(row: dict[str, Cell], m: Measure) -> tuple[str, float] | None:
    vals = [(k, row[k].value) for k in PEERS if k in row and row[k].value is not None]
    good = [(k, v) for k, v in vals if v is not None and not math.isinf(v)]
    if not good:
        return None
    pick = max if m.higher_better else min
    k, v = pick(good, key=lambda kv: kv[1])
    assert v is not None
    return k, v


def fmt_ratio(r: float | None) -> str:
    if r is None:
        return "–"
    return f"{r:.2f}" if r < 10 else f"{r:.0f}"


def ratios(
    results: dict[str, dict[str, Cell]], lims: dict[str, Cell], ms: list[Measure]
) -> dict[str, dict[str, dict[str, float | None]]]:
    """measure -> system -> {to_limit, to_best_peer} (value ÷ limit, value ÷ best peer)."""
    out: dict[str, dict[str, dict[str, float | None]]] = {}
    for m in ms:
        row = results.get(m.key, {})
        bp = best_peer(row, m)
        lim = lims[m.limit].value if m.limit and m.limit in lims else None
        out[m.key] = {
            k: {
                "to_limit": ratio(c.value, lim),
                "to_best_peer": ratio(c.value, bp[1] if bp else None),
            }
            for k, c in row.items()
        }
    return out


def markdown_table(
    profile: str,
    results: dict[str, dict[str, Cell]],
    lims: dict[str, Cell],
    ms: list[Measure],
    lim_specs: list[Limit],
    systems: list[str],
    notes: list[str],
) -> str:
    lim_by_key = {x.key: x for x in lim_specs}
    head = ["measure", *(SYSTEM_LABELS[s] for s in systems), "limit", "best peer"]
    fus = [s for s in systems if s in FUSEFS]
    head += [f"{SYSTEM_LABELS[s]} ÷ limit, ÷ best peer" for s in fus]
    lines = [
        f"### profile `{profile}`",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for m in ms:
        if m.lan_only and profile != "lan":
            continue
        row = results.get(m.key, {})
        cells = [
            "·" if s == "fusefs-noxattr" and s not in row else fmt_cell(row.get(s), m.unit, notes)
            for s in systems
        ]
        bp = best_peer(row, m)
        if bp is not None:
            for i, s in enumerate(systems):
                if s == bp[0]:
                    cells[i] = f"**{cells[i]}**"
        lim_cell = lims.get(m.limit) if m.limit else None
        lim_text = ""
        if m.limit and lim_cell is not None:
            lim_text = fmt_cell(lim_cell, lim_by_key[m.limit].unit, notes)
            lim_text = f"{lim_text} ({lim_by_key[m.limit].label})"
            if m.key == "cp_r" and "links_gets" in lims:
                lim_text += f"; {fmt_cell(lims['links_gets'], 's', notes)} (links + GETs)"
        lim_v = lim_cell.value if lim_cell is not None else None
        extra = []
        for s in fus:
            c = row.get(s)
            v = c.value if c is not None else None
            extra.append(
                f"{fmt_ratio(ratio(v, lim_v))}, {fmt_ratio(ratio(v, bp[1] if bp else None))}"
            )
        label = f"{m.label}, {m.unit}" + (" ↑" if m.higher_better else " ↓")
        bp_text = f"{SYSTEM_LABELS[bp[0]]}" if bp else "–"
        lines.append("| " + " | ".join([label, *cells, lim_text, bp_text, *extra]) + " |")
    return "\n".join(lines)


def cells_to_json(table: dict[str, dict[str, Cell]]) -> dict[str, Any]:
    return {m: {s: c.to_json() for s, c in row.items()} for m, row in table.items()}
