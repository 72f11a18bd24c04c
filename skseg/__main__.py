"""``python -m skseg``: the same command line as ``skseg``."""

from ._cli import run_and_exit

run_and_exit()
