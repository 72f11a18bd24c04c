"""Pixel-adaptive mask refinement (PAMR), in plain torch.

Araslanov and Roth, "Single-Stage Semantic Segmentation from Image Labels",
CVPR 2020: a mask is repeatedly replaced by a local average of itself whose
weights come from colour affinities of the image at several dilations, so that
mask edges move onto image edges.
"""

import torch
import torch.nn.functional as F

_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def pamr(image, mask, *, n_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
    """Refine soft masks with the colours of their images.

    Neighbours are visited one shift at a time, so memory stays a few times
    the size of the image whatever the number of dilations.

    Parameters
    ----------
    image : Tensor of shape (B, 3, H, W)
        Pixel values (any consistent scale).
    mask : Tensor of shape (B, C, H, W)
        Soft masks, e.g. background and foreground probabilities.
    n_iter : int, default=10
        Propagation steps.
    dilations : tuple of int, default=(1, 2, 4, 8, 12, 24)
        Neighbourhood dilations, in pixels.

    Returns
    -------
    refined : Tensor of shape (B, C, H, W)
    """
    if n_iter == 0:
        return mask
    height, width = image.shape[-2:]
    pad = max(dilations)
    shifts = [(dy * d, dx * d) for d in dilations for dy, dx in _OFFSETS]

    def shifted(padded, dy, dx):
        return padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]

    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
    # Colour distances are scaled by the local spread of colours (over all
    # neighbours and the pixel itself), so that affinities adapt to textured
    # and flat regions alike.
    total, total_sq = image.clone(), image * image
    for dy, dx in shifts:
        neighbour = shifted(padded, dy, dx)
        total += neighbour
        total_sq += neighbour * neighbour
    count = len(shifts) + 1
    spread = ((total_sq - total * total / count) / (count - 1)).clamp_min(0).sqrt()
    scale = 1e-8 + 0.1 * spread
    logits = torch.stack(
        [-((shifted(padded, dy, dx) - image).abs() / scale).mean(1) for dy, dx in shifts], 1
    )
    affinity = logits.softmax(1)  # (B, K, H, W)
    del padded, total, total_sq, spread, scale, logits
    for _ in range(n_iter):
        padded_mask = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
        refined = torch.zeros_like(mask)
        for k, (dy, dx) in enumerate(shifts):
            refined += shifted(padded_mask, dy, dx) * affinity[:, k:k + 1]
        mask = refined
    return mask
