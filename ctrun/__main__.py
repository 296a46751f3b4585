"""`python -m ctrun`: the command line, through the store's warm server (ctrun.client)."""

import sys

from .client import main

sys.exit(main())
