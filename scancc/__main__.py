"""``python -m scancc``: the same command line as the ``scancc`` console script."""

import sys

from .cli import main

sys.exit(main())
