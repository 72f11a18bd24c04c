"""``skseg report OUTDIR``: the page :func:`skseg._report.write_report` writes,
and what to do next."""

from pathlib import Path

from .._io import CLASS_NAMES_FILE
from .._report import write_report
from .messages import say


def run(args):
    """Run ``skseg report``; return the exit status."""
    index, template_written, labels = write_report(
        args.output, n_examples=args.examples, max_images=args.max_images, quiet=args.quiet)
    names_path = Path(args.output) / CLASS_NAMES_FILE
    say(args, f"Wrote {index}: {len(labels)} classes.")
    if template_written:
        say(args, f"Name the classes in {names_path} (a template with ids "
                  f"{', '.join(map(str, labels))} was written), then run skseg report again.")
    else:
        say(args, f"Class names come from {names_path}; edit it and run skseg report again "
                  "to update the page.")
    return 0
