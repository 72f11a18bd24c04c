"""``python -m skseg``: the same command line as ``skseg``."""

import sys

from ._cli import main

sys.exit(main())
