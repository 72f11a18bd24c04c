"""``skseg demo``: the whole pipeline, offline, on synthetic scenes."""

from .._demo import run_demo


def run(args):
    """Run ``skseg demo``; return the exit status."""
    return run_demo(args.output, n_images=args.n_images, quiet=args.quiet,
                    random_state=args.random_state)
