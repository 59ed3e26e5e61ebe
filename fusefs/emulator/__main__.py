"""``python -m fusefs.emulator --world DIR [--host H] [--port N | --port-file F] [--faults F]``."""

from __future__ import annotations

import sys

from .server import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
