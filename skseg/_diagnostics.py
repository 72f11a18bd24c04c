"""Whether a fit's foreground decision looks right.

Objects seldom fill most of the border of their picture, and levels that
each found the foreground agree: a foreground on half of the border patches
or more, or two levels whose foregrounds overlap by less than 0.4 (IoU),
mean the decision went wrong somewhere. On the demo's scenes with random
weights, good fits agree at 0.56 or more and share at most 12% of the
border; collapsed ones reach 0.51 or agree at 0.35 or less.
"""

import warnings

import numpy as np

from ._levels import LEVEL_PAIRS, LEVELS

BORDER_LIMIT = 0.5
AGREEMENT_LIMIT = 0.4


class ForegroundWarning(UserWarning):
    """A fit whose foreground decision looks wrong: the foreground covers
    most of the image borders, or the clustering levels disagree."""


def foreground_diagnostics(counts):
    """Per level, the foreground's share of the patches and of the border
    patches; per pair of levels, the IoU of their foregrounds (from the
    counts that :func:`skseg._levels.level_counts` sums)."""
    share = counts["foreground"] / max(int(counts["patches"][0]), 1)
    border = counts["border_foreground"] / max(int(counts["border"][0]), 1)
    # Two levels that both find no foreground agree.
    agreement = np.where(counts["union"] > 0,
                         counts["intersection"] / np.maximum(counts["union"], 1), 1.0)
    return (dict(zip(LEVELS, share.tolist())), dict(zip(LEVELS, border.tolist())),
            {f"{a}/{b}": value for (a, b), value in zip(LEVEL_PAIRS, agreement.tolist())})


def warn_if_foreground_looks_wrong(segmenter):
    """A :class:`ForegroundWarning` naming what looks wrong in a fitted
    segmenter's diagnostics and the parameters to try."""
    problems = []
    border = segmenter.border_foreground_share_["consensus"]
    if border >= BORDER_LIMIT:
        problems.append(f"the foreground covers {border:.0%} of the image border patches "
                        "(objects seldom fill most of the border)")
    agreement = segmenter.level_agreement_
    worst = min(agreement, key=agreement.get)
    if agreement[worst] < AGREEMENT_LIMIT:
        problems.append(f"the {worst.replace('/', ' and ')} levels disagree (foreground "
                        f"IoU {agreement[worst]:.3f})")
    if problems:
        shares = ", ".join(f"{name} {value:.0%}"
                           for name, value in segmenter.foreground_share_.items())
        other = "attention" if segmenter.foreground == "border" else "border"
        warnings.warn(
            f"The foreground decision looks wrong: {'; '.join(problems)}. Foreground "
            f"share of the patches per level: {shares}. Try a larger "
            f"n_dataset_clusters (now {segmenter.n_dataset_clusters}), "
            f"foreground='{other}', or features from pretrained weights; see "
            "foreground_share_, border_foreground_share_ and level_agreement_.",
            ForegroundWarning,
        )
