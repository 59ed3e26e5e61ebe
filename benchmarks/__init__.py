"""The side-by-side benchmark of ``./scripts/bench`` (docs/benchmarks.md).

It drives fusefs only through its command line (``fusefs mount``, ``python -m fusefs.emulator``)
and imports nothing from the ``fusefs`` package, so it keeps working while the daemon changes.
"""
