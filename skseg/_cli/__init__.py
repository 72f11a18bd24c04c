"""The ``skseg`` command line: one module per command (``segment``,
``evaluate``, ``report``, ``export``, ``demo``), ``parser`` for the arguments
and ``main``, ``messages`` for how every command speaks."""

from .parser import main, run_and_exit

__all__ = ["main", "run_and_exit"]
