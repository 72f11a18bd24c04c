"""The ``skseg`` command line: one module per command (``segment``,
``evaluate``, ``report``, ``export``, ``demo``), ``parser`` for the arguments
and ``main``, ``messages`` for how every command speaks."""

from .parser import main

__all__ = ["main"]
