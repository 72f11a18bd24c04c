"""``skseg export OUTDIR -o EXPORTDIR --format F``: the masks of a segment
folder as a dataset, written by :func:`skseg.io.export`."""

from .._export import export
from .messages import say


def run(args):
    """Run ``skseg export``; return the exit status."""
    export(args.folder, args.output, args.format, link=args.link)
    say(args, f"Exported the masks of {args.folder} to {args.output} ({args.format}).")
    return 0
