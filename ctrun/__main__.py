"""`python -m ctrun`: the command line (ctrun.cli)."""

import sys

from .cli import main

sys.exit(main())
