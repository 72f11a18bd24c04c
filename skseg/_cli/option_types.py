"""The values of the command line's options: each function is an argparse
``type``, turning an option's text into its value or into a one-line
argparse error (checked before anything is loaded or read)."""

import argparse
from pathlib import Path


def at_least(smallest):
    """An argparse type: a whole number no smaller than ``smallest``."""

    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < smallest:
            raise argparse.ArgumentTypeError(f"{text} must be at least {smallest}")
        return value

    return whole_number


positive_int = at_least(1)


def random_state(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value < 2**32:
        raise argparse.ArgumentTypeError(f"{text} must be between 0 and 2**32 - 1")
    return value


def seconds(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of seconds")
    return value


def folder_or_url(text):
    """A URL (``s3://...``) stays a string; anything else is a local folder."""
    return text if "://" in text and not text.startswith("file://") else Path(
        text.removeprefix("file://"))


def n_classes(text):
    if text == "auto":
        return text
    value = positive_int(text)
    if value > 255:
        # Known now, not after the fit: labels are written as palette PNGs.
        raise argparse.ArgumentTypeError(f"{text} is above 255, the most a palette PNG holds")
    return value


def n_init(text):
    return text if text == "auto" else positive_int(text)


def min_region_size(text):
    """Pixels as a whole number, a fraction of the image as a decimal."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value.is_integer() and "." not in text:
        if value < 1:
            raise argparse.ArgumentTypeError("a pixel count must be at least 1")
        return int(value)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text}: a fraction must be in [0, 1)")
    return value


def non_negative(positive):
    """An argparse type: a number above zero, or from zero with ``positive=False``."""

    def number(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not (value > 0 if positive else value >= 0) or value == float("inf"):
            raise argparse.ArgumentTypeError(
                f"{text} must be {'above' if positive else 'at least'} 0 and finite")
        return value

    return number


def dilations(text):
    try:
        values = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give whole numbers, e.g. 1,2,4,8") from None
    if min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: dilations must be at least 1")
    return values


def image_size(text):
    """An ``--image-size``: a side (224), HEIGHTxWIDTH (224x320) or 'keep'."""
    if text.lower() == "keep":
        return None
    parts = text.lower().split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: give a side (224), HEIGHTxWIDTH (224x320) or 'keep'") from None
    if len(values) not in (1, 2) or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: sides must be positive")
    return values[0] if len(values) == 1 else tuple(values)
