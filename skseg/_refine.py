"""The pixel stage: upsampling soft patch masks to the image and refining
them with the image's colours, in plain torch.

Two refinements, both moving mask edges onto image edges:

* a dense CRF (Kraehenbuehl and Koltun, NeurIPS 2011) whose pairwise kernels
  are truncated to a window around each pixel, as in ConvCRF (Teichmann and
  Cipolla, BMVC 2019), solved by mean-field inference;
* pixel-adaptive mask refinement (PAMR; Araslanov and Roth, "Single-Stage
  Semantic Segmentation from Image Labels", CVPR 2020): a mask is repeatedly
  replaced by a local average of itself whose weights come from colour
  affinities of the image at several dilations.

Refinement runs at a small working resolution, so its cost is bounded
whatever the photo size: the soft scores go there in one separable linear map,
JPEG files are decoded there by the decoder's own DCT scaling, and only the
refined score is upsampled to full size, once.
"""

import os

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ._image_decoding import is_sixteen_bit, load_rgb, open_image

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

    Notes
    -----
    As in the authors' code: the affinity of a pixel to its neighbour ``k``
    is ``softmax_k(-mean_c |I_k - I| / (0.1 * std + 1e-8))``, the standard
    deviation taken per channel over the neighbours and the pixel itself, with
    replicate padding. Unlike their code, the pixel itself is not one of the
    neighbours it averages (the 8 offsets of each dilation exclude the
    centre); ``tests/test_refine.py`` checks this definition against a loop
    over pixels.
    """
    if n_iter == 0:
        return mask
    # Shifted slices of a permuted (channels-last) tensor are several times
    # slower to combine than those of a contiguous one.
    image, mask = image.contiguous(), mask.contiguous()
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
        total_sq.addcmul_(neighbour, neighbour)
    count = len(shifts) + 1
    spread = ((total_sq - total * total / count) / (count - 1)).clamp_min_(0).sqrt_()
    # One multiplication by -1 / (n_channels * scale) turns the summed
    # distances into the negated channel mean of distance / scale.
    weight = (1e-8 + 0.1 * spread).reciprocal_().mul_(-1.0 / image.shape[1])
    del total, total_sq, spread
    logits = image.new_empty((image.shape[0], len(shifts), height, width))
    distance = torch.empty_like(image)
    for k, (dy, dx) in enumerate(shifts):
        torch.sub(shifted(padded, dy, dx), image, out=distance)
        torch.sum(distance.abs_().mul_(weight), 1, out=logits[:, k])
    affinity = logits.softmax(1)  # (B, K, H, W)
    del padded, weight, logits, distance
    for _ in range(n_iter):
        padded_mask = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
        refined = torch.zeros_like(mask)
        for k, (dy, dx) in enumerate(shifts):
            refined.addcmul_(shifted(padded_mask, dy, dx), affinity[:, k:k + 1])
        mask = refined
    return mask


def dense_crf(image, mask, *, n_iter=10, radius=6, stride=3, bilateral_weight=5.0,
              bilateral_xy=5.0, bilateral_rgb=0.05, gaussian_weight=1.0, gaussian_xy=1.0,
              eps=0.05):
    """Refine soft foreground masks by mean-field inference in a dense CRF.

    A binary (background/foreground) conditional random field with the
    pairwise potentials of Kraehenbuehl and Koltun (NeurIPS 2011): a Potts
    penalty weighted by a bilateral appearance kernel and a spatial Gaussian
    kernel, truncated to a square window around every pixel as in ConvCRF
    (Teichmann and Cipolla, BMVC 2019). Inference is a few weighted sums of
    shifted masks and a convolution: no permutohedral lattice, no compiled
    code, the same on CPU and GPU.

    Parameters
    ----------
    image : Tensor of shape (B, 3, H, W)
        Pixel values in [0, 1] (``bilateral_rgb`` is in these units).
    mask : Tensor of shape (B, 1, H, W)
        Soft foreground probabilities, the source of the unaries.
    n_iter : int, default=10
        Mean-field steps.
    radius : int, default=6
        The window: neighbours up to ``radius`` pixels away along each axis.
    stride : int, default=3
        The bilateral kernel visits the window's offsets that are multiples
        of ``stride`` (its cost is one weighted sum per offset); the Gaussian
        kernel, a convolution, visits them all.
    bilateral_weight : float, default=5.0
        Weight of the bilateral (appearance) kernel.
    bilateral_xy : float, default=5.0
        Spatial standard deviation of the bilateral kernel, in pixels.
    bilateral_rgb : float, default=0.05
        Colour standard deviation of the bilateral kernel (about 13 of 255,
        pydensecrf's usual setting).
    gaussian_weight : float, default=1.0
        Weight of the spatial Gaussian (smoothness) kernel.
    gaussian_xy : float, default=1.0
        Standard deviation of the Gaussian kernel, in pixels.
    eps : float, default=0.05
        Scores are clipped to ``[eps, 1 - eps]`` before their logit becomes
        the unary, so that the pairwise terms can overturn confident pixels.

    Returns
    -------
    refined : Tensor of shape (B, 1, H, W)
        Foreground marginals.

    Notes
    -----
    With ``p`` the foreground score, the unary favours foreground by
    ``u = logit(clip(p, eps, 1 - eps))``. Each kernel is normalised to sum to
    one over the neighbours of each pixel (neighbours outside the image do
    not count, the pixel itself is no neighbour), as PAMR's affinities are;
    pydensecrf normalises symmetrically instead. With two labels and a Potts
    penalty, a mean-field step is ``q(i) <- sigmoid(u(i) + sum_j a(i, j)
    (2 q(j) - 1))``, ``a`` the weighted sum of the two normalised kernels,
    started from ``q = sigmoid(u)``. ``tests/test_refine.py`` checks this
    definition against a loop over pixels.
    """
    image, mask = image.contiguous(), mask.contiguous()
    height, width = image.shape[-2:]
    steps = range(-(radius // stride) * stride, radius + 1, stride)
    shifts = [(dy, dx) for dy in steps for dx in steps if (dy, dx) != (0, 0)]

    def shifted(padded, dy, dx):
        return padded[..., radius + dy:radius + dy + height, radius + dx:radius + dx + width]

    # Logits of the bilateral kernel: colour distances one shift at a time
    # (memory stays a few images), the rest for all shifts at once.
    padded = F.pad(image, (radius,) * 4)
    logits = image.new_empty((image.shape[0], len(shifts), height, width))
    colour = torch.empty_like(image)
    for k, (dy, dx) in enumerate(shifts):
        torch.sub(shifted(padded, dy, dx), image, out=colour)
        torch.sum(colour.square_(), 1, out=logits[:, k])
    squared = image.new_tensor([dy * dy + dx * dx for dy, dx in shifts]).view(1, -1, 1, 1)
    logits.mul_(-0.5 / bilateral_rgb ** 2).sub_(squared, alpha=0.5 / bilateral_xy ** 2)
    # A neighbour outside the image gets the lowest logit, so that it takes
    # no weight; a pixel with no neighbour inside (a 1-pixel image) spreads
    # its weight over zeros, which the padded signed mask holds there.
    inside = F.pad(image.new_ones((1, 1, height, width)), (radius,) * 4)
    outside = torch.cat([shifted(inside, dy, dx) for dy, dx in shifts], 1) == 0
    logits.masked_fill_(outside, torch.finfo(image.dtype).min)
    affinity = logits.softmax(1).mul_(bilateral_weight)
    del padded, colour, logits
    # The Gaussian kernel is separable: a convolution by rows, then by
    # columns, less the pixel itself (weight 1 there).
    offsets = torch.arange(-radius, radius + 1, dtype=image.dtype, device=image.device)
    profile = offsets.square_().mul_(-0.5 / gaussian_xy ** 2).exp_()

    def gaussian(padded):
        rows = F.conv2d(padded, profile.view(1, 1, -1, 1))
        return F.conv2d(rows, profile.view(1, 1, 1, -1)).sub_(shifted(padded, 0, 0))

    # Normalised by each pixel's total weight over its neighbours inside the
    # image (none in a 1-pixel image, whose message is then zero).
    gaussian_scale = gaussian(inside).clamp_min_(torch.finfo(image.dtype).tiny)
    gaussian_scale = gaussian_scale.reciprocal_().mul_(gaussian_weight)
    unary = mask.clamp(eps, 1 - eps).logit()
    marginal = unary.sigmoid()
    for _ in range(n_iter):
        signed = F.pad(2 * marginal - 1, (radius,) * 4)
        message = gaussian(signed).mul_(gaussian_scale).add_(unary)
        for k, (dy, dx) in enumerate(shifts):
            message.addcmul_(shifted(signed, dy, dx), affinity[:, k:k + 1])
        marginal = message.sigmoid_()
    return marginal


def working_pixels(image, shape, *, reduced_decode=True):
    """The image's pixels resized to ``shape`` ``(h, w)``: a contiguous
    float32 tensor of shape (3, h, w) in [0, 1].

    The resize is bilinear with antialiasing (torch's, which follows PIL's).
    With ``reduced_decode``, an 8-bit file is decoded and resized by PIL in
    8 bits, a JPEG file first at the smallest DCT scale that covers
    ``shape``: both average pixel blocks much as the antialiasing filter
    would, at a fraction of the cost of decoding and converting every pixel
    (``docs/performance.rst`` gives the measured effect on masks).
    """
    if reduced_decode and isinstance(image, (str, os.PathLike)):
        img = open_image(image, shape)  # JPEGs at the smallest DCT scale covering it
        if not is_sixteen_bit(img):
            small = img.convert("RGB").resize(shape[::-1], Image.Resampling.BILINEAR)
            # In numpy: torch would open a parallel region for each of these
            # small copies, and on a busy machine wait longer for its second
            # thread than it computes. Both divide exactly (IEEE).
            rgb = np.ascontiguousarray(np.asarray(small).transpose(2, 0, 1), dtype=np.float32)
            rgb /= 255.0
            return torch.from_numpy(rgb)
        rgb = load_rgb(img)  # 16-bit: by its real range, in floats
    else:
        rgb = load_rgb(image)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)[None].contiguous()
    if tuple(tensor.shape[-2:]) != tuple(shape):
        tensor = F.interpolate(tensor, size=tuple(shape), mode="bilinear",
                               antialias=True, align_corners=False)
    return tensor[0]


def _resize_matrix(n_in, steps, device):
    """The ``(n_out, n_in)`` matrix of a chain of 1-D resizes.

    ``steps`` is a sequence of ``(n_out, antialias)``; each is torch's
    bilinear resize (``align_corners=False``) along one axis, applied here to
    the basis vectors so that the whole chain becomes one small matrix.
    """
    # Basis vectors laid along the width: torch's antialiased resize of an
    # (N, 1, H, 1) tensor does not match its resize of wider images.
    basis = torch.eye(n_in, device=device)[:, None, None, :]  # (n_in, 1, 1, n_in)
    for n_out, antialias in steps:
        basis = F.interpolate(basis, size=(1, n_out), mode="bilinear",
                              antialias=antialias, align_corners=False)
    return basis[:, 0, 0, :].T


def foreground_masks(soft, image_shape, images=None, *, refine=dense_crf, max_side=128,
                     device="cpu", reduced_decode=True):
    """Full-size binary foreground masks from soft patch scores.

    The scores are upsampled bilinearly to the image and, when ``images`` are
    given, refined at a working resolution (as PAMR's authors apply it to
    coarse masks) and upsampled back. Only the foreground probability is
    refined: PAMR's affinities sum to one, so the background stays its
    complement, and the CRF's two labels are one probability and its
    complement.

    Parameters
    ----------
    soft : ndarray of shape (B, h, w)
        Soft foreground scores at patch resolution, thresholded at 0.5.
    image_shape : tuple of int
        ``(H, W)`` of every image of the batch.
    images : list of image references, default=None
        The images' pixels (anything :func:`load_rgb` reads); ``None`` skips
        refinement.
    refine : callable, default=dense_crf
        ``refine(pixels, scores)``, both tensors of shape (B, C, h, w) at the
        working resolution, returns the refined scores: :func:`dense_crf` or
        :func:`pamr`, their parameters bound (``functools.partial``).
    max_side : int, default=128
        Longer side of the working resolution of the refinement.
    device : torch.device or str, default="cpu"
    reduced_decode : bool, default=True
        Decode and shrink 8-bit files with Pillow, JPEG files at a reduced
        DCT scale (see :func:`working_pixels`). ``False`` decodes every file
        to floats and shrinks it with torch, as skseg did before; masks then
        agree with its masks to float precision.

    Returns
    -------
    masks : ndarray of shape (B, H, W), bool
    """
    height, width = image_shape
    scores = torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))[:, None]
    scores = scores.to(device)
    if images is None:
        scores = F.interpolate(scores, size=(height, width), mode="bilinear",
                               align_corners=False)
        return scores[:, 0].cpu().numpy() > 0.5
    shrink = min(1.0, max_side / max(height, width))
    work = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    # Upsampling to full size and shrinking to the working size (antialiased)
    # are linear along each axis: two small matrices do both, and the
    # full-size score map is never made.
    down = work != (height, width)
    rows = _resize_matrix(scores.shape[-2], [(height, False)]
                          + ([(work[0], True)] if down else []), device)
    cols = _resize_matrix(scores.shape[-1], [(width, False)]
                          + ([(work[1], True)] if down else []), device)
    scores = rows @ scores @ cols.T
    pixels = torch.stack([working_pixels(image, work, reduced_decode=reduced_decode)
                          for image in images]).to(device)
    refined = refine(pixels, scores)
    if down:
        refined = F.interpolate(refined, size=(height, width), mode="bilinear",
                                align_corners=False)
    return refined[:, 0].cpu().numpy() > 0.5
