"""Kept for old habits: ``python scripts/bench.py ARGS`` = ``./scripts/bench ARGS`` without the
install step. The benchmark lives in ``benchmarks/`` (docs/benchmarks.md)."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.main import main

if __name__ == "__main__":
    sys.exit(main())
