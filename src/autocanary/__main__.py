"""Run the command line with ``python -m autocanary``."""

import sys

from autocanary.cli import main

sys.exit(main())
