"""`fusefs status MNT`: the daemon's "status" answer (control.py) as rich tables.

Providers reachable or not (start checks, then listings), token expiry where known, the cache's
size and hit rate, downloads in flight, the queues of rate-limited downloads (IoTDA: one per
window) and the last warnings of the daemon's log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from fusefs.control import find_mount, request


def fetch(path: Path) -> dict[str, Any]:
    """The status of the mount that holds ``path`` (ValueError: not a mount, no daemon)."""
    mount, _ = find_mount(path)
    replies = list(request(mount, {"op": "status"}))
    if len(replies) != 1:
        raise ValueError("the daemon sent no status")
    return replies[0]


def _bytes(n: object) -> str:
    if not isinstance(n, int):
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)  # pragma: no cover


def _ago(when: object, now: float) -> str:
    if not isinstance(when, int | float):
        return "-"
    s = round(now - when)
    if s < 0:
        return f"in {_span(-s)}"
    return f"{_span(s)} ago"


def _span(s: int) -> str:
    if s < 120:
        return f"{s} s"
    if s < 7200:
        return f"{s // 60} min"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def _clock(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def render(st: dict[str, Any], console: Console) -> None:
    now = float(st.get("now") or time.time())
    up = _span(round(now - st["started_at"]))
    head = f"[bold]{st['mountpoint']}[/bold]  pid {st['pid']}, up {up}"
    if st.get("offline"):
        head += ", [yellow]offline[/yellow]"
    if st.get("metrics"):
        head += f", metrics {st['metrics']}"
    console.print(head)

    providers = Table(title="Providers", title_justify="left")
    for col in ("provider", "state", "since", "token expires", "download queue", "error"):
        providers.add_column(col)
    colour = {"up": "green", "down": "red", "unreachable": "yellow", "offline": "yellow"}
    for p in st["providers"]:
        state = p["state"]
        queue = p.get("queue")
        qtext = "-"
        if queue is not None:
            qtext = f"{queue['waiting']} waiting"
            if queue.get("holder"):
                qtext += ", 1 downloading"
            if queue.get("interval"):
                qtext += f", one per {queue['interval']:g} s"
            if queue["waiting"]:
                qtext += f", last in ~{_span(round(queue.get('eta_last') or 0))}"
        expires = p.get("token_expires")
        providers.add_row(
            p["name"],
            f"[{colour.get(state, 'white')}]{state}[/]",
            _ago(p.get("since"), now) if p.get("since") else "-",
            _ago(expires, now) if isinstance(expires, int | float) else "-",
            qtext,
            p.get("error") or "",
        )
    console.print(providers)

    c = st["cache"]
    cache = Table(title="Cache", title_justify="left", show_header=False)
    cache.add_column("what")
    cache.add_column("value", justify="right")
    rate = c.get("hit_rate")
    cache.add_row(
        "size (evictable)", f"{_bytes(c.get('unpinned_bytes'))} of {_bytes(c.get('max_bytes'))}"
    )
    cache.add_row("pinned", _bytes(c.get("pinned_bytes")))
    cache.add_row("hit rate", "-" if rate is None else f"{rate * 100:.1f} %")
    cache.add_row("hits / misses", f"{c.get('hits')} / {c.get('misses')}")
    cache.add_row("downloaded", _bytes(c.get("fetched_bytes")))
    cache.add_row("evicted blocks", str(c.get("evicted_blocks")))
    cache.add_row("downloads in flight", str(st.get("downloads_in_flight", 0)))
    cache.add_row("inodes", str(st.get("inodes")))
    console.print(cache)

    errors = st.get("last_errors") or []
    if errors:
        table = Table(title="Last warnings", title_justify="left")
        table.add_column("time")
        table.add_column("level")
        table.add_column("message", overflow="fold")
        for e in errors:
            table.add_row(_clock(float(e["time"])), e["level"], e["message"])
        console.print(table)
    else:
        console.print("no warnings logged")


def show(path: Path, *, as_json: bool = False) -> int:
    """Print the status of the mount at ``path``; the exit status (1: a provider is not up)."""
    st = fetch(path)
    if as_json:
        print(json.dumps(st, ensure_ascii=False))
    else:
        render(st, Console(highlight=False, soft_wrap=False))
    return 0 if all(p["state"] == "up" for p in st["providers"]) else 1
