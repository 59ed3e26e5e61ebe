"""``python -m benchmarks``: see benchmarks/main.py and docs/benchmarks.md."""

import sys

from .main import main

sys.exit(main())
