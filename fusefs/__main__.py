import sys

from fusefs.cli import main

sys.exit(main())
