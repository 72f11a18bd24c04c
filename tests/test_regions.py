"""Object regions, their descriptors, and the label masks made from them."""

import pickle

import numpy as np
import pytest
from scipy import ndimage

from skseg._regions import (
    LabelMasks,
    Regions,
    encode_crops,
    mask_runs,
    object_regions,
    paint_runs,
    pixel_to_patch,
    pooled_descriptors,
    region_crops,
)


def _regions_of(region_map):
    """The Regions of a given region map (labels 1..n)."""
    region_map = np.asarray(region_map)
    n_regions = int(region_map.max(initial=0))
    rows, starts, stops, ids = [], [], [], []
    for label in range(1, n_regions + 1):
        label_rows, label_starts, label_stops = mask_runs(region_map == label)
        rows += list(label_rows)
        starts += list(label_starts)
        stops += list(label_stops)
        ids += [label] * len(label_rows)
    order = np.lexsort((starts, rows))
    return Regions(region_map.shape, *(np.array(v, dtype=int)[order]
                                       for v in (rows, starts, stops, ids)), n_regions)


def test_regions_are_eight_connected_and_small_ones_dropped():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[3, 3] = True  # touches the first diagonally: same region
    mask[6:8, 6:8] = True  # 4 pixels: dropped at min_size 5
    regions, = object_regions(mask[None], min_size=5)
    region_map = regions.region_map()
    assert regions.n_regions == 1 and region_map.dtype == np.int32
    assert region_map[3, 3] == region_map[0, 0] == 1
    assert (region_map[6:, 6:] == 0).all()
    regions, = object_regions(mask[None], min_size=4)
    assert regions.n_regions == 2 and regions.region_map()[7, 7] == 2
    np.testing.assert_array_equal(np.bincount(regions.region_map().ravel())[1:], [10, 4])
    assert object_regions(np.zeros((1, 4, 4), bool), 1)[0].n_regions == 0


def test_pixel_to_patch_covers_the_image_with_the_grid():
    patch = pixel_to_patch((4, 6), (2, 3))
    np.testing.assert_array_equal(patch, [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)


def test_pooled_descriptors_weight_patches_by_pixel_coverage():
    patches = np.zeros((1, 2, 2), np.float32)
    patches[0, 0] = [1, 0]
    patches[0, 1] = [0, 1]
    regions = np.zeros((2, 4), np.int32)
    regions[:, 0:3] = 1  # all of patch 0 (4 px) and half of patch 1 (2 px)
    described = pooled_descriptors(_regions_of(regions), patches)
    np.testing.assert_allclose(described, [[4 / 6, 2 / 6]])
    two = regions.copy()
    two[:, 3] = 2
    np.testing.assert_allclose(pooled_descriptors(_regions_of(two), patches),
                               [[4 / 6, 2 / 6], [0, 1]])


def test_region_crops_are_bounding_boxes_grown_to_a_minimum_side():
    rgb = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    regions = np.zeros((20, 30), np.int32)
    regions[2:4, 5:25] = 1  # a wide, flat region
    regions[18:20, 28:30] = 2  # in the corner
    wide, corner = region_crops(rgb, _regions_of(regions), min_side=8)
    assert wide.shape == (8, 20, 3)
    np.testing.assert_array_equal(wide[:, 0], rgb[0:8, 5])  # grown, clipped at the top
    assert corner.shape == (8, 8, 3)
    np.testing.assert_array_equal(corner, rgb[12:20, 22:30])  # kept inside the image


def test_regions_round_trip_and_are_small():
    region_map = np.zeros((200, 300), np.int32)
    region_map[50:150, 100:200] = 1
    region_map[0:10, 0:10] = 2
    regions = _regions_of(region_map)
    np.testing.assert_array_equal(regions.region_map(), region_map)
    assert len(regions._data) < region_map.size // 500
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):  # 0 and 1 too, despite slots
        restored = pickle.loads(pickle.dumps(regions, protocol=protocol))
        np.testing.assert_array_equal(restored.region_map(), region_map)
    many = np.arange(1, 300 * 2 + 1).reshape(20, 30) % 300 + 1
    assert _regions_of(many).region_map().max() == 300  # beyond uint8
    dots = np.zeros((1, 512, 512), bool)
    dots[0, ::2, ::2] = True  # 65,536 regions of one pixel: the last id needs 17 bits
    regions, = object_regions(dots, 1)
    assert regions.n_regions == 65536
    np.testing.assert_array_equal(regions.region_map()[dots[0]], np.arange(1, 65537))
    np.testing.assert_array_equal(regions.runs()[3], np.arange(1, 65537))  # ids as stored
    wide = np.zeros((2, 70000), np.int32)
    wide[1, 66000:69999] = 1  # columns beyond 16 bits
    np.testing.assert_array_equal(_regions_of(wide).region_map(), wide)


def test_label_masks_map_regions_to_their_classes():
    first = np.array([[0, 1], [2, 2]])
    second = np.array([[1, 0], [0, 0]])
    masks = LabelMasks(
        [_regions_of(first), _regions_of(second)],
        [np.array([3, 1]), np.array([2])], np.uint8,
    )
    assert len(masks) == 2
    np.testing.assert_array_equal(masks[0], [[0, 3], [1, 1]])
    np.testing.assert_array_equal(masks[-1], [[2, 0], [0, 0]])
    assert masks[0].dtype == np.uint8
    np.testing.assert_array_equal(masks[1:][0], masks[1])
    np.testing.assert_array_equal(masks[[1, 0]][1], masks[0])
    np.testing.assert_array_equal(masks[np.array([False, True])][0], masks[1])
    with pytest.raises(IndexError):
        masks[2]


def test_crop_tokens_are_split_back_per_image():
    class Encoder:
        def transform(self, crops):
            class Token:
                def __init__(self, value):
                    self.cls = np.full(3, value, np.float32)
            return [Token(crop.mean()) for crop in crops]

    crops = [[np.full((2, 2), 1.0), np.full((2, 2), 2.0)], [], [np.full((2, 2), 3.0)]]
    described = encode_crops(Encoder(), crops)
    assert [d.shape for d in described] == [(2, 3), (0, 3), (1, 3)]
    np.testing.assert_array_equal(described[0], [[1, 1, 1], [2, 2, 2]])  # in crop order
    np.testing.assert_array_equal(described[2], [[3, 3, 3]])
    assert [d.shape[0] for d in encode_crops(Encoder(), [[], []])] == [0, 0]


def test_a_single_small_region_is_dropped():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    regions, = object_regions(mask[None], min_size=5)
    assert regions.n_regions == 0 and not regions.region_map().any()


def test_pooled_descriptors_of_a_region_away_from_the_last_patch():
    patches = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    regions = np.zeros((4, 4), np.int32)
    regions[0:2, 0:2] = 1  # the first patch only
    np.testing.assert_allclose(pooled_descriptors(_regions_of(regions), patches), [[0, 1]])


def test_sub_sequences_of_label_masks_keep_their_label_type():
    masks = LabelMasks([_regions_of([[0, 1]])], [np.array([2])], np.uint8)
    assert masks[0:1][0].dtype == np.uint8 and masks[[0]][0].dtype == np.uint8


def test_runs_are_the_row_stretches_of_foreground():
    mask = np.array([[1, 1, 0, 1], [0, 0, 0, 0], [1, 1, 1, 1]], bool)
    rows, starts, stops = mask_runs(mask)
    np.testing.assert_array_equal(rows, [0, 0, 2])
    np.testing.assert_array_equal(starts, [0, 3, 0])
    np.testing.assert_array_equal(stops, [2, 4, 4])


@pytest.mark.parametrize("seed", range(4))
def test_regions_equal_scipy_labelling_on_random_masks(seed):
    # The reference: 8-connected labels in raster order, small ones dropped,
    # the rest renumbered in order; stacked masks never join.
    rng = np.random.default_rng(seed)
    for _ in range(50):
        masks = rng.random((3, rng.integers(1, 14), rng.integers(1, 14))) \
            < rng.uniform(0.1, 0.9)
        min_size = int(rng.integers(1, 6))
        found = object_regions(masks, min_size)
        assert len(found) == len(masks)
        for mask, regions in zip(masks, found):
            labels, n_found = ndimage.label(mask, structure=np.ones((3, 3)))
            sizes = np.bincount(labels.ravel(), minlength=n_found + 1)
            keep = sizes >= min_size
            keep[0] = False
            renumber = np.zeros(n_found + 1, int)
            renumber[keep] = np.arange(1, keep.sum() + 1)
            np.testing.assert_array_equal(regions.region_map(), renumber[labels])
            assert regions.n_regions == keep.sum()


@pytest.mark.parametrize("density, grid", [(0.5, (5, 7)), (0.97, (5, 7)), (0.9, (40, 60))])
def test_pooled_descriptors_equal_the_pixel_average(density, grid):
    # Each region's descriptor is the average over its pixels of the
    # feature of the patch under each pixel: for short runs, runs across
    # many patch columns, and a grid finer than the image.
    rng = np.random.default_rng(0)
    masks = rng.random((4, 37, 51)) < density
    patches = rng.standard_normal((*grid, 3)).astype(np.float32)
    patch = pixel_to_patch((37, 51), grid)
    for regions in object_regions(masks, 3):
        region_map = regions.region_map()
        expected = [patches.reshape(-1, 3)[patch[region_map == k]].mean(0)
                    for k in range(1, regions.n_regions + 1)]
        np.testing.assert_allclose(pooled_descriptors(regions, patches),
                                   np.reshape(expected, (-1, 3)), rtol=1e-5, atol=1e-6)


def test_boxes_bound_each_region():
    rng = np.random.default_rng(1)
    masks = rng.random((3, 20, 25)) < 0.3
    for regions in object_regions(masks, 1):
        region_map = regions.region_map()
        assert regions.boxes() == ndimage.find_objects(region_map)


def test_boxes_index_the_image():
    # Boxes are integer slices: they cut each region out of a full-size map
    # (and crop the image, as region_crops does with a tall region).
    region_map = np.zeros((30, 20), np.int32)
    region_map[2:25, 3:6] = 1
    region_map[27:29, 10:19] = 2
    regions = _regions_of(region_map)
    for k, (rows, columns) in enumerate(regions.boxes(), 1):
        assert all(isinstance(v, (int, np.integer))
                   for v in (rows.start, rows.stop, columns.start, columns.stop))
        np.testing.assert_array_equal(region_map[rows, columns] == k, (region_map == k)[rows, columns])
        assert (region_map[rows, columns] == k).sum() == (region_map == k).sum()
    tall, _ = region_crops(np.zeros((30, 20, 3)), regions, min_side=4)
    assert tall.shape == (23, 4, 3)


def test_paint_runs_takes_run_columns_of_any_integer_type():
    # Rows stored in 16 bits: row * width goes beyond 16 bits.
    shape = (300, 400)
    rows = np.array([0, 299], np.uint16)
    starts, stops = np.array([0, 390], np.uint16), np.array([5, 400], np.uint16)
    painted = paint_runs(shape, rows, starts, stops, np.array([7, 9]), np.uint8)
    expected = np.zeros(shape, np.uint8)
    expected[0, 0:5] = 7
    expected[299, 390:400] = 9
    np.testing.assert_array_equal(painted, expected)


def test_descriptors_are_float32_whatever_the_features():
    region_map = np.zeros((4, 4), np.int32)
    region_map[:2] = 1
    for dtype in (np.float32, np.float64, np.float16):
        patches = np.arange(8, dtype=dtype).reshape(2, 2, 2)
        described = pooled_descriptors(_regions_of(region_map), patches)
        assert described.dtype == np.float32
        np.testing.assert_allclose(described, [[1, 2]])


def test_crop_tokens_are_float32_even_with_no_crop():
    class Encoder:
        def transform(self, crops):
            class Token:
                cls = np.ones(3)  # float64
            return [Token() for _ in crops]

    described = encode_crops(Encoder(), [[np.zeros((2, 2))], []])
    assert [d.dtype for d in described] == [np.float32, np.float32]
    assert [d.dtype for d in encode_crops(Encoder(), [[]])] == [np.float32]


def _two_images():
    first = np.array([[0, 1, 1], [2, 0, 0]])
    second = np.array([[1, 0, 0], [0, 0, 2]])
    return LabelMasks([_regions_of(first), _regions_of(second)],
                      [np.array([3, 1]), [2, 5]], np.uint8)


def test_label_masks_errors_name_the_type():
    masks = _two_images()
    with pytest.raises(IndexError, match="LabelMasks indices"):
        masks[[0.5]]
    with pytest.raises(IndexError, match="LabelMasks indices"):
        masks.region_map(np.array([[0]]))


def test_label_masks_region_map_numbers_the_regions_without_classes():
    masks = _two_images()
    np.testing.assert_array_equal(masks.region_map(0), [[0, 1, 1], [2, 0, 0]])
    np.testing.assert_array_equal(masks.region_map(-1), [[1, 0, 0], [0, 0, 2]])
    assert masks.region_map(1).dtype == np.int32
    with pytest.raises(IndexError):
        masks.region_map(2)


def test_label_masks_pickle_with_every_protocol():
    masks = _two_images()
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        restored = pickle.loads(pickle.dumps(masks, protocol=protocol))
        assert len(restored) == 2
        for i in range(2):
            assert restored[i].dtype == np.uint8
            np.testing.assert_array_equal(restored[i], masks[i])
            np.testing.assert_array_equal(restored.region_map(i), masks.region_map(i))
        # Sub-sequences of a restored sequence keep the classes and type.
        np.testing.assert_array_equal(restored[1:][0], [[2, 0, 0], [0, 0, 5]])
        assert restored[[1]][0].dtype == np.uint8
    # The state is built-in values only (the dtype by name).
    state = masks.__getstate__()
    assert set(state) == {"regions", "classes", "dtype"} and isinstance(state["dtype"], str)


def test_label_masks_save_writes_palette_pngs(tmp_path):
    from PIL import Image

    from skseg._palettes import cluster_palette, voc_palette

    masks = _two_images()
    paths = masks.save(tmp_path / "out", names=["a.jpg", "sub/b.jpg"], palette="voc")
    assert paths == [tmp_path / "out" / "a.png", tmp_path / "out" / "sub" / "b.png"]
    for path, i in zip(paths, range(2)):
        with Image.open(path) as png:
            assert png.mode == "P"
            np.testing.assert_array_equal(np.asarray(png), masks[i])
            colours = np.array(png.getpalette()[:3 * 6]).reshape(-1, 3)
        np.testing.assert_array_equal(colours, voc_palette()[:6])
    # Default names and palette: numbered files in the cluster colours.
    paths = masks.save(tmp_path / "default")
    assert [p.name for p in paths] == ["0.png", "1.png"]
    with Image.open(paths[1]) as png:
        np.testing.assert_array_equal(np.asarray(png), masks[1])
        colours = np.array(png.getpalette()[:3 * 6]).reshape(-1, 3)
    np.testing.assert_array_equal(colours, cluster_palette()[:6])
