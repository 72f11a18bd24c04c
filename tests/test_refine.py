"""The pixel stage: PAMR's definition, the masks it gives, and their cost-cutting."""

from functools import partial

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from skseg._image_decoding import load_rgb, open_image
from skseg._refine import _resize_matrix, dense_crf, foreground_masks, pamr, working_pixels
from skseg._regions import object_regions

from .conftest import square_scene

_OFFSETS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


# ------------------------------------------------------------- definition
def _loop_pamr(image, mask, n_iter, dilations):
    """PAMR written from Araslanov and Roth (CVPR 2020), one pixel at a time.

    For pixel p and its neighbours q (8 per dilation, replicate padding):
    a(p, q) = softmax_q(-mean_c |I_c(q) - I_c(p)| / (0.1 sigma_c(p) + 1e-8)),
    sigma_c(p) the sample standard deviation of channel c over p and its
    neighbours; then m(p) <- sum_q a(p, q) m(q), ``n_iter`` times.
    """
    _, height, width = image.shape
    offsets = [(dy * d, dx * d) for d in dilations for dy, dx in _OFFSETS]

    def at(array, y, x):
        return array[:, min(max(y, 0), height - 1), min(max(x, 0), width - 1)]

    affinity = np.zeros((len(offsets), height, width))
    for y in range(height):
        for x in range(width):
            centre = image[:, y, x]
            neighbours = [at(image, y + dy, x + dx) for dy, dx in offsets]
            sigma = np.std([centre] + neighbours, axis=0, ddof=1)
            logits = np.array([-np.mean(np.abs(q - centre) / (0.1 * sigma + 1e-8))
                               for q in neighbours])
            weights = np.exp(logits - logits.max())
            affinity[:, y, x] = weights / weights.sum()
    for _ in range(n_iter):
        refined = np.zeros_like(mask)
        for y in range(height):
            for x in range(width):
                for k, (dy, dx) in enumerate(offsets):
                    refined[:, y, x] += affinity[k, y, x] * at(mask, y + dy, x + dx)
        mask = refined
    return mask


def test_pamr_follows_the_paper_definition():
    rng = np.random.default_rng(0)
    image = rng.random((3, 7, 9))
    image[:, :, :4] += 1.0  # an edge, so that affinities differ across it
    mask = rng.random((2, 7, 9))
    expected = _loop_pamr(image, mask, n_iter=3, dilations=(1, 3))
    got = pamr(torch.from_numpy(image)[None], torch.from_numpy(mask)[None],
               n_iter=3, dilations=(1, 3))
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-9, atol=1e-12)


def test_pamr_accepts_channels_last_tensors():
    rng = np.random.default_rng(1)
    image = torch.from_numpy(rng.random((2, 20, 24, 3)).astype(np.float32))
    mask = torch.from_numpy(rng.random((2, 1, 20, 24)).astype(np.float32))
    permuted = image.permute(0, 3, 1, 2)
    assert not permuted.is_contiguous()
    torch.testing.assert_close(pamr(permuted, mask), pamr(permuted.contiguous(), mask))


def test_pamr_moves_mask_edges_onto_image_edges():
    rng = np.random.default_rng(0)
    image, truth = square_scene(rng)
    coarse = torch.nn.functional.interpolate(
        torch.from_numpy(truth[None, None].astype(np.float32)), size=(6, 6), mode="area")
    soft = torch.nn.functional.interpolate(coarse, size=(48, 48), mode="bilinear")
    probs = torch.cat([1 - soft, soft], 1)
    refined = pamr(torch.from_numpy(image).permute(2, 0, 1)[None], probs)
    before = ((soft[0, 0] > 0.5).numpy() == truth).mean()
    after = ((refined[0, 1] > refined[0, 0]).numpy() == truth).mean()
    assert after > before + 0.02 and after > 0.97
    assert torch.equal(pamr(torch.zeros(1, 3, 48, 48), probs, n_iter=0), probs)


def _loop_crf(image, mask, *, n_iter, radius, stride, bilateral_weight, bilateral_xy,
              bilateral_rgb, gaussian_weight, gaussian_xy, eps):
    """The binary dense CRF of Kraehenbuehl and Koltun on a window, one pixel at a time.

    Unary u(i) = logit(clip(p(i), eps, 1 - eps)). Neighbours j of i: inside
    the image, j != i, |dy|, |dx| <= radius; the bilateral kernel only at
    offsets that are multiples of ``stride``. Kernels normalised per pixel:
    b(i, j) ~ exp(-|dp|^2 / (2 bilateral_xy^2) - |I(j) - I(i)|^2 / (2 bilateral_rgb^2)),
    g(i, j) ~ exp(-|dp|^2 / (2 gaussian_xy^2)); mean field on the Potts
    model: q(i) <- sigmoid(u(i) + sum_j (wb b + wg g)(i, j) (2 q(j) - 1)).
    """
    _, height, width = image.shape
    p = np.clip(mask[0], eps, 1 - eps)
    unary = np.log(p / (1 - p))
    pairs = np.zeros((height, width, height, width))
    for y in range(height):
        for x in range(width):
            bilateral, gaussian = np.zeros((height, width)), np.zeros((height, width))
            for v in range(max(0, y - radius), min(height, y + radius + 1)):
                for w in range(max(0, x - radius), min(width, x + radius + 1)):
                    if (v, w) == (y, x):
                        continue
                    squared = (v - y) ** 2 + (w - x) ** 2
                    gaussian[v, w] = np.exp(-squared / (2 * gaussian_xy ** 2))
                    if (v - y) % stride == 0 and (w - x) % stride == 0:
                        colour = np.sum((image[:, v, w] - image[:, y, x]) ** 2)
                        bilateral[v, w] = np.exp(-squared / (2 * bilateral_xy ** 2)
                                                 - colour / (2 * bilateral_rgb ** 2))
            pairs[y, x] = (bilateral_weight * bilateral / bilateral.sum()
                           + gaussian_weight * gaussian / gaussian.sum())
    q = 1 / (1 + np.exp(-unary))
    for _ in range(n_iter):
        message = unary + np.einsum("yxvw,vw->yx", pairs, 2 * q - 1)
        q = 1 / (1 + np.exp(-message))
    return q[None]


@pytest.mark.parametrize("radius, stride", [(3, 2), (2, 1), (5, 3)])
def test_dense_crf_follows_its_definition(radius, stride):
    rng = np.random.default_rng(0)
    image = rng.random((3, 7, 9)) * 0.2
    image[:, :, :4] += 0.5  # an edge, so that the bilateral kernel differs across it
    mask = rng.random((1, 7, 9))
    mask[0, 0, 0], mask[0, 1, 1] = 0.0, 1.0  # clipped to eps, 1 - eps
    params = dict(n_iter=3, radius=radius, stride=stride, bilateral_weight=4.0,
                  bilateral_xy=2.5, bilateral_rgb=0.1, gaussian_weight=1.5, gaussian_xy=1.2,
                  eps=0.05)
    expected = _loop_crf(image, mask, **params)
    got = dense_crf(torch.from_numpy(image)[None], torch.from_numpy(mask)[None], **params)
    np.testing.assert_allclose(got[0].numpy(), expected, rtol=1e-9, atol=1e-12)
    # Batched: each image refined as if alone.
    pair = dense_crf(torch.from_numpy(np.stack([image, image[:, ::-1].copy()])),
                     torch.from_numpy(np.stack([mask, mask[:, ::-1].copy()])), **params)
    np.testing.assert_allclose(pair[0].numpy(), expected, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(pair[1].numpy(), expected[:, ::-1], rtol=1e-9, atol=1e-12)


def test_dense_crf_without_neighbours_keeps_its_unary():
    # A 1-pixel image has no neighbour: the message is zero, q = sigmoid(u).
    got = dense_crf(torch.full((1, 3, 1, 1), 0.5), torch.tensor([[[[0.8]]]]))
    torch.testing.assert_close(got, torch.tensor([[[[0.8]]]]))
    # Clipped at eps before the logit.
    got = dense_crf(torch.full((1, 3, 1, 1), 0.5), torch.tensor([[[[1.0]]]]), eps=0.1)
    torch.testing.assert_close(got, torch.tensor([[[[0.9]]]]))


def test_dense_crf_snaps_a_blurry_mask_to_a_colour_edge():
    # Left of column 20 dark, right of it bright; the mask's ramp is centred
    # on column 15 and 8 columns wide, as a bilinearly upsampled patch mask.
    height, width = 24, 40
    image = torch.full((1, 3, height, width), 0.2)
    image[..., 20:] = torch.tensor([0.8, 0.6, 0.3]).view(1, 3, 1, 1)
    image += 0.01 * torch.randn(image.shape, generator=torch.Generator().manual_seed(0))
    columns = torch.arange(width, dtype=torch.float32)
    blurry = torch.sigmoid((columns - 15) / 2).expand(1, 1, height, width)
    assert ((blurry > 0.5).sum(-1) == width - 16).all()  # the edge at column 15.5
    refined = dense_crf(image, blurry)
    # Every row's foreground starts exactly at the colour edge.
    assert ((refined > 0.5).sum(-1) == width - 20).all()
    # Far from the edge the unaries hold.
    assert (refined[..., :10] < 0.1).all() and (refined[..., 30:] > 0.9).all()


# --------------------------------------------- today's masks, kept to compare
def _previous_pamr(image, mask, *, n_iter=10, dilations=(1, 2, 4, 8, 12, 24)):
    """skseg's PAMR before the pixel stage was made cheap (commit 67a79af)."""
    if n_iter == 0:
        return mask
    height, width = image.shape[-2:]
    pad = max(dilations)
    shifts = [(dy * d, dx * d) for d in dilations for dy, dx in _OFFSETS]

    def shifted(padded, dy, dx):
        return padded[..., pad + dy:pad + dy + height, pad + dx:pad + dx + width]

    padded = F.pad(image, (pad, pad, pad, pad), mode="replicate")
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
    affinity = logits.softmax(1)
    for _ in range(n_iter):
        padded_mask = F.pad(mask, (pad, pad, pad, pad), mode="replicate")
        refined = torch.zeros_like(mask)
        for k, (dy, dx) in enumerate(shifts):
            refined += shifted(padded_mask, dy, dx) * affinity[:, k:k + 1]
        mask = refined
    return mask


def _previous_foreground_masks(soft, image_shape, images=None, *, n_iter=10,
                               dilations=(1, 2, 4, 8, 12, 24), max_side=128):
    """skseg's foreground_masks before the pixel stage was made cheap."""
    height, width = image_shape
    scores = torch.from_numpy(np.ascontiguousarray(soft, dtype=np.float32))[:, None]
    scores = F.interpolate(scores, size=(height, width), mode="bilinear", align_corners=False)
    if images is None or n_iter == 0:
        return scores[:, 0].numpy() > 0.5
    rgb = []
    for image in images:
        pixels = load_rgb(image)
        if pixels.shape[:2] != tuple(image_shape):
            tensor = F.interpolate(torch.from_numpy(pixels).permute(2, 0, 1)[None],
                                   size=tuple(image_shape), mode="bilinear",
                                   antialias=True, align_corners=False)
            pixels = tensor[0].permute(1, 2, 0).contiguous().numpy()
        rgb.append(pixels)
    shrink = min(1.0, max_side / max(height, width))
    work = (max(1, round(height * shrink)), max(1, round(width * shrink)))
    image = torch.from_numpy(np.stack(rgb)).permute(0, 3, 1, 2)
    if work != (height, width):
        image = F.interpolate(image, size=work, mode="bilinear", antialias=True,
                              align_corners=False)
        scores = F.interpolate(scores, size=work, mode="bilinear", antialias=True,
                               align_corners=False)
    refined = _previous_pamr(image, scores, n_iter=n_iter, dilations=tuple(dilations))
    if work != (height, width):
        refined = F.interpolate(refined, size=(height, width), mode="bilinear",
                                align_corners=False)
    return refined[:, 0].numpy() > 0.5


def _photo(rng, shape):
    """A textured background with two ellipses of other colours, and noise."""
    height, width = shape
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    rgb = rng.uniform(0.2, 0.8, 3) + 0.08 * np.sin(xx / rng.uniform(3, 8))[..., None]
    truth = np.zeros(shape, bool)
    for _ in range(2):
        cy, cx = rng.uniform(0.25, 0.75) * height, rng.uniform(0.25, 0.75) * width
        inside = ((yy - cy) / (0.2 * height)) ** 2 + ((xx - cx) / (0.2 * width)) ** 2 < 1
        rgb[inside] = rng.uniform(0, 1, 3)
        truth |= inside
    rgb = rgb + 0.05 * rng.standard_normal(rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), truth


def _coverage(truth, grid):
    """Fraction of each patch the objects cover: soft scores with blurred edges."""
    height, width = truth.shape
    rows = np.arange(height) * grid[0] // height
    cols = np.arange(width) * grid[1] // width
    covered = np.zeros(grid)
    np.add.at(covered, (rows[:, None], cols[None, :]), truth)
    return covered / np.outer(np.bincount(rows), np.bincount(cols))


@pytest.fixture
def jpeg_batch(tmp_path):
    """Four 120 x 160 JPEG photos, their soft patch scores and their pixels."""
    rng = np.random.default_rng(0)
    paths, soft, arrays = [], [], []
    for i in range(4):
        rgb, truth = _photo(rng, (120, 160))
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        paths.append(str(path))
        arrays.append(np.asarray(Image.open(path).convert("RGB")))
        soft.append(_coverage(truth, (8, 10)))
    return paths, np.stack(soft).astype(np.float32), arrays


@pytest.mark.slow
def test_dense_crf_refines_planted_photos(tmp_path):
    # Blocky masks (patch grid of 8 x 10, thresholded) of JPEG photos: the
    # CRF moves their edges onto the objects' outlines.
    rng = np.random.default_rng(0)
    for i in range(3):
        rgb, truth = _photo(rng, (120, 160))
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(rgb).save(path, quality=90)
        grid = (_coverage(truth, (8, 10)) > 0.5)[None].astype(np.float32)
        plain = foreground_masks(grid, (120, 160))[0]
        refined = foreground_masks(grid, (120, 160), [path], refine=dense_crf)[0]
        plain_iou = (plain & truth).sum() / (plain | truth).sum()
        refined_iou = (refined & truth).sum() / (refined | truth).sum()
        assert plain_iou < 0.82 and refined_iou > 0.92


@pytest.mark.parametrize("max_side", [64, 200])
@pytest.mark.slow
def test_masks_agree_with_the_previous_implementation(jpeg_batch, max_side):
    paths, soft, arrays = jpeg_batch
    before = _previous_foreground_masks(soft, (120, 160), paths, n_iter=5,
                                        dilations=(1, 2, 4, 8), max_side=max_side)
    assert before.any() and not before.all()
    kwargs = dict(refine=partial(pamr, n_iter=5, dilations=(1, 2, 4, 8)), max_side=max_side)
    exact = foreground_masks(soft, (120, 160), paths, reduced_decode=False, **kwargs)
    # Only the order of float operations changed: at most a pixel sitting on 0.5.
    assert (exact != before).mean() <= 1e-4
    # Arrays take the same path as fully decoded files.
    np.testing.assert_array_equal(foreground_masks(soft, (120, 160), arrays, **kwargs), exact)
    # Decoding and shrinking in 8 bits moves a few boundary pixels, no more.
    reduced = foreground_masks(soft, (120, 160), paths, **kwargs)
    assert (reduced != before).mean() <= 0.005


def test_masks_without_refinement_are_unchanged(jpeg_batch):
    _, soft, _ = jpeg_batch
    np.testing.assert_array_equal(foreground_masks(soft, (120, 160)),
                                  _previous_foreground_masks(soft, (120, 160)))


@pytest.mark.slow
def test_refinement_leaves_its_inputs_alone(jpeg_batch):
    _, soft, arrays = jpeg_batch
    soft_before, arrays_before = soft.copy(), [a.copy() for a in arrays]
    for refine in (partial(pamr, n_iter=2), partial(dense_crf, n_iter=2)):
        foreground_masks(soft, (120, 160), arrays, refine=refine, max_side=64)
    np.testing.assert_array_equal(soft, soft_before)
    for array, before in zip(arrays, arrays_before):
        np.testing.assert_array_equal(array, before)


@pytest.mark.parametrize("n_in, steps", [
    (14, [(375, False), (96, True)]),
    (7, [(50, False), (13, True)]),
    (5, [(40, False)]),
])
def test_one_matrix_does_the_chain_of_resizes(n_in, steps):
    rng = np.random.default_rng(0)
    values = torch.from_numpy(rng.random((2, 1, 3, n_in)).astype(np.float32))
    chained = values
    for n_out, antialias in steps:
        chained = F.interpolate(chained, size=(3, n_out), mode="bilinear",
                                antialias=antialias, align_corners=False)
    matrix = _resize_matrix(n_in, steps, "cpu")
    torch.testing.assert_close(values @ matrix.T, chained)


# ----------------------------------------------------------- reduced decode
@pytest.mark.parametrize("orientation, shape", [(1, (60, 80)), (6, (80, 60))])
def test_reduced_decode_honours_exif_orientation(tmp_path, orientation, shape):
    rng = np.random.default_rng(0)
    stored, _ = _photo(rng, (240, 320))
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, quality=95, exif=exif)
    full = load_rgb(path)
    assert full.shape[:2] == (shape[0] * 4, shape[1] * 4)
    # The decoder's 1/4 scale covers the working size exactly, either way up.
    assert open_image(path, shape).size == (shape[1], shape[0])
    reduced = working_pixels(path, shape)
    exact = working_pixels(path, shape, reduced_decode=False)
    assert reduced.shape == exact.shape == (3, *shape)
    assert reduced.is_contiguous() and reduced.dtype == torch.float32
    # Same picture, same way up: only the decoder's averaging differs.
    assert (reduced - exact).abs().mean() < 0.02


def test_reduced_decode_divides_in_numpy_as_torch_did(tmp_path):
    # 8-bit pixels become floats in numpy now: the same values, bit for bit,
    # as the torch conversion and division they replace.
    rng = np.random.default_rng(4)
    stored, _ = _photo(rng, (375, 500))
    path = tmp_path / "photo.jpg"
    Image.fromarray(stored).save(path, quality=90)
    shape = (96, 128)
    small = open_image(path, shape).convert("RGB").resize(shape[::-1], Image.Resampling.BILINEAR)
    reference = torch.from_numpy(np.array(small)).permute(2, 0, 1).contiguous()
    reference = reference.to(torch.float32).div_(255.0)
    got = working_pixels(path, shape)
    assert got.is_contiguous() and torch.equal(got, reference)
    every_level = torch.arange(256, dtype=torch.uint8)
    levels = np.arange(256, dtype=np.uint8).astype(np.float32)
    levels /= 255.0
    assert torch.equal(torch.from_numpy(levels), every_level.to(torch.float32).div_(255.0))


def test_sixteen_bit_files_keep_their_precision(tmp_path):
    ramp = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (32, 1))
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    pixels = working_pixels(path, (16, 32))
    # 8-bit shrinking would leave at most 256 levels; a 16-bit ramp keeps more
    # distinct values than 8 bits could hold between neighbouring columns.
    np.testing.assert_allclose(pixels[0, 0].numpy(), pixels[2, 0].numpy())
    steps = np.diff(pixels[0, 0].numpy())
    assert (steps > 0).all()
    assert not np.allclose(pixels[0, 0].numpy() * 255, np.round(pixels[0, 0].numpy() * 255))


# ------------------------------------------------------------------ regions
def test_object_regions_drop_small_ones_and_number_the_rest():
    mask = np.zeros((30, 40), bool)
    mask[2:12, 2:12] = True      # 100 pixels
    mask[20, 30] = True          # 1 pixel
    mask[15:20, 20:25] = True    # 25 pixels
    regions, = object_regions(mask[None], min_size=20)
    assert regions.n_regions == 2
    assert sorted(np.bincount(regions.region_map().ravel())[1:]) == [25, 100]
    assert regions.region_map()[20, 30] == 0
    regions, = object_regions(mask[None], min_size=1)
    assert regions.n_regions == 3 and set(np.unique(regions.region_map())) == {0, 1, 2, 3}
    empty, = object_regions(np.zeros((1, 5, 5), bool), min_size=1)
    assert empty.n_regions == 0 and not empty.region_map().any()
