"""The pixel stage: upsampling soft patch masks to the image and refining
them with pixel-adaptive mask refinement (PAMR), in plain torch.

Araslanov and Roth, "Single-Stage Semantic Segmentation from Image Labels",
CVPR 2020: a mask is repeatedly replaced by a local average of itself whose
weights come from colour affinities of the image at several dilations, so that
mask edges move onto image edges.
"""

import numpy as np
import torch
import torch.nn.functional as F

from ._images import load_rgb

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


def load_pixels(image, shape):
    """The image's pixels at ``shape`` ``(H, W)``, float32 in [0, 1], (H, W, 3)."""
    rgb = load_rgb(image)
    if rgb.shape[:2] != tuple(shape):
        tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None]
        tensor = F.interpolate(tensor, size=tuple(shape), mode="bilinear",
                               antialias=True, align_corners=False)
        rgb = tensor[0].permute(1, 2, 0).contiguous().numpy()
    return rgb


def foreground_masks(soft, image_shape, images=None, *, n_iter=10,
                     dilations=(1, 2, 4, 8, 12, 24), max_side=128, device="cpu"):
    """Full-size binary foreground masks from soft patch scores.

    The scores are upsampled bilinearly to the image and, when ``images`` are
    given, refined with PAMR at a working resolution (as its authors apply it
    to coarse masks) and upsampled back. Only the foreground probability is
    propagated: affinities sum to one, so the background stays its complement.

    Parameters
    ----------
    soft : ndarray of shape (B, h, w)
        Soft foreground scores at patch resolution, thresholded at 0.5.
    image_shape : tuple of int
        ``(H, W)`` of every image of the batch.
    images : list of image references, default=None
        The images' pixels (anything :func:`load_rgb` reads); ``None`` skips
        refinement.
    n_iter, dilations : see :func:`pamr`
    max_side : int, default=128
        Longer side of the working resolution of the refinement.
    device : torch.device or str, default="cpu"

    Returns
    -------
    masks : ndarray of shape (B, H, W), bool
    """
    height, width = image_shape
    scores = torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))[:, None]
    scores = F.interpolate(scores.to(device), size=(height, width), mode="bilinear",
                           align_corners=False)
    if images is None or n_iter == 0:
        return scores[:, 0].cpu().numpy() > 0.5
    rgb = np.stack([load_pixels(image, image_shape) for image in images])
    shrink = min(1.0, max_side / max(height, width))
    work = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    image = torch.from_numpy(rgb).permute(0, 3, 1, 2).to(device)
    if work != (height, width):
        image = F.interpolate(image, size=work, mode="bilinear", antialias=True,
                              align_corners=False)
        scores = F.interpolate(scores, size=work, mode="bilinear", antialias=True,
                               align_corners=False)
    refined = pamr(image, scores, n_iter=n_iter, dilations=tuple(dilations))
    if work != (height, width):
        refined = F.interpolate(refined, size=(height, width), mode="bilinear",
                                align_corners=False)
    return refined[:, 0].cpu().numpy() > 0.5
