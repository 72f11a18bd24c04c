"""How the command line speaks: a mistake the user can fix is one line
(``skseg: error: ...``), never a traceback; Python warnings and the log lines
of Dask and distributed are ``skseg: warning: ...`` lines."""

import contextlib
import logging
import os
import sys

# The loggers of Dask and distributed, and of the web server under distributed.
_DASK_LOGGERS = ("distributed", "dask", "tornado", "bokeh")


class UserError(ValueError):
    """A mistake the user can fix; printed as one line, never a traceback."""


def one_line(text):
    """A message with its line breaks and runs of spaces made single spaces."""
    return " ".join(str(text).split())


def say(args, message):
    """Print ``message`` unless the command runs with ``-q``."""
    if not args.quiet:
        print(message, file=sys.stderr)


def print_error(message):
    """Print ``skseg: error: message`` on one line."""
    print(f"skseg: error: {one_line(message)}", file=sys.stderr)


def print_warning(message):
    """Print ``skseg: warning: message`` on one line."""
    print(f"skseg: warning: {one_line(message)}", file=sys.stderr)


def show_warning(message, category, filename, lineno, file=None, line=None):
    """A :func:`warnings.showwarning` printing each Python warning as one line."""
    print_warning(message)


class _OneLineLogHandler(logging.Handler):
    """Log records printed as the command line prints Python warnings."""

    def emit(self, record):
        try:
            message = record.getMessage()
        except (TypeError, ValueError):  # a record whose arguments do not fit it
            message = str(record.msg)
        print_warning(message)


@contextlib.contextmanager
def dask_logs_as_warnings(quiet):
    """Within the block, Dask's and distributed's log lines (warnings and
    worse) print as ``skseg: warning: ...`` lines, or not at all with ``-q``.

    This process's loggers get a handler that does so in place of theirs.
    Worker processes started in the block configure their logging from
    Dask's settings in the environment when they import distributed, so
    those say the same (their tracebacks keep their lines).
    """
    with contextlib.suppress(ImportError):
        # distributed gives its loggers their handlers on import: first that,
        # then ours in their place.
        import distributed  # noqa: F401
    handler = _OneLineLogHandler(logging.CRITICAL + 1 if quiet else logging.WARNING)
    saved = []
    names = set(_DASK_LOGGERS) | {
        name for name in logging.root.manager.loggerDict
        if name.split(".")[0] in _DASK_LOGGERS and logging.getLogger(name).handlers}
    for name in sorted(names):
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers, logger.propagate = [handler], False
    environment = {"DASK_DISTRIBUTED__ADMIN__LOG_FORMAT": "skseg: warning: %(message)s",
                   "DASK_LOGGING__DISTRIBUTED": "critical" if quiet else "warning"}
    before = {key: os.environ.get(key) for key in environment}
    os.environ.update(environment)
    try:
        yield
    finally:
        for key, value in before.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        for logger, handlers, propagate in saved:
            logger.handlers, logger.propagate = handlers, propagate
