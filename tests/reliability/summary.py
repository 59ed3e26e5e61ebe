"""Print a table of the reliability suite's figures: ``python -m tests.reliability.summary [DIR]``
(DIR: the results dir, default ``FUSEFS_RELIABILITY_OUT`` or ``$TMPDIR/fusefs-reliability``)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from tests.reliability.common import results_dir

# the figures shown first, when a test has them
HEADLINE = (
    "hostile_inputs_tried",
    "kills_survived",
    "restarts",
    "tries",
    "reads",
    "files",
    "faults_injected",
    "bytes_compared",
    "mismatches",
    "wrong_bytes_reads",
    "unexpected_errors",
    "problems",
    "known_defect_hits",
    "secrets_searched",
    "bytes_searched",
    "secrets_found",
    "reader_outcomes",
    "slowest_syscall_s",
    "slowest_listdir_or_stat_s",
    "most_log_lines_for_a_case",
    "files_written_outside_cache",
    "fds_before",
    "fds_after",
    "rss_kib_before",
    "rss_kib_after",
    "exit_status",
    "seconds_to_exit",
    "seconds",
)


def _fmt(v: Any) -> str:
    if isinstance(v, int) and abs(v) >= 10_000:
        return f"{v:,}"
    if isinstance(v, dict):
        return ", ".join(f"{k} {_fmt(x)}" for k, x in v.items()) or "-"
    return str(v)


def table(d: Path) -> str:
    rows = []
    for p in sorted(d.glob("*.json")):
        rec = json.loads(p.read_text())
        figs = rec["figures"]
        shown = [f"{k}={_fmt(figs[k])}" for k in HEADLINE if k in figs]
        if figs.get("errnos"):
            shown.append(f"errnos={_fmt(figs['errnos'])}")
        rows.append((rec["test"], rec["variant"], rec["date"], "; ".join(shown)))
    if not rows:
        return f"no results in {d}"
    w = max(len(r[0]) for r in rows)
    head = f"{'test':<{w}}  variant  date                     figures"
    lines = [head, "-" * len(head)]
    lines += [f"{t:<{w}}  {v:<7}  {dt:<23}  {f}" for t, v, dt, f in rows]
    first = json.loads(next(iter(sorted(d.glob("*.json")))).read_text())
    lines.append(f"machine: {first['machine']}; results: {d}")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(Path(sys.argv[1]) if len(sys.argv) > 1 else results_dir()))
