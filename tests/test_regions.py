"""Object regions, their descriptors, and the label masks made from them."""

import pickle

import numpy as np
import pytest

from skseg._regions import (
    CompactRegions,
    LabelMasks,
    encode_crops,
    object_regions,
    pixel_to_patch,
    pooled_descriptors,
    region_crops,
)


def test_regions_are_eight_connected_and_small_ones_dropped():
    mask = np.zeros((8, 8), bool)
    mask[0:3, 0:3] = True  # 9 pixels
    mask[3, 3] = True  # touches the first diagonally: same region
    mask[6:8, 6:8] = True  # 4 pixels: dropped at min_size 5
    regions, n = object_regions(mask, min_size=5)
    assert n == 1 and regions.dtype == np.int32
    assert regions[3, 3] == regions[0, 0] == 1
    assert (regions[6:, 6:] == 0).all()
    regions, n = object_regions(mask, min_size=4)
    assert n == 2 and regions[7, 7] == 2
    assert object_regions(np.zeros((4, 4), bool), 1)[1] == 0


def test_pixel_to_patch_covers_the_image_with_the_grid():
    patch = pixel_to_patch((4, 6), (2, 3))
    np.testing.assert_array_equal(patch, [[0, 0, 1, 1, 2, 2]] * 2 + [[3, 3, 4, 4, 5, 5]] * 2)


def test_pooled_descriptors_weight_patches_by_pixel_coverage():
    patches = np.zeros((1, 2, 2), np.float32)
    patches[0, 0] = [1, 0]
    patches[0, 1] = [0, 1]
    regions = np.zeros((2, 4), np.int32)
    regions[:, 0:3] = 1  # all of patch 0 (4 px) and half of patch 1 (2 px)
    described = pooled_descriptors(regions, 1, patches)
    np.testing.assert_allclose(described, [[4 / 6, 2 / 6]])
    two = regions.copy()
    two[:, 3] = 2
    np.testing.assert_allclose(pooled_descriptors(two, 2, patches), [[4 / 6, 2 / 6], [0, 1]])


def test_region_crops_are_bounding_boxes_grown_to_a_minimum_side():
    rgb = np.arange(20 * 30 * 3, dtype=np.float32).reshape(20, 30, 3)
    regions = np.zeros((20, 30), np.int32)
    regions[2:4, 5:25] = 1  # a wide, flat region
    regions[18:20, 28:30] = 2  # in the corner
    wide, corner = region_crops(rgb, regions, 2, min_side=8)
    assert wide.shape == (8, 20, 3)
    np.testing.assert_array_equal(wide[:, 0], rgb[0:8, 5])  # grown, clipped at the top
    assert corner.shape == (8, 8, 3)
    np.testing.assert_array_equal(corner, rgb[12:20, 22:30])  # kept inside the image


def test_compact_regions_round_trip_and_are_small():
    region_map = np.zeros((200, 300), np.int32)
    region_map[50:150, 100:200] = 1
    region_map[0:10, 0:10] = 2
    compact = CompactRegions(region_map, 2)
    np.testing.assert_array_equal(compact.region_map(), region_map)
    assert len(compact.data) < region_map.size // 50
    restored = pickle.loads(pickle.dumps(compact))
    np.testing.assert_array_equal(restored.region_map(), region_map)
    many = np.arange(300 * 2).reshape(20, 30) % 300
    assert CompactRegions(many, 299).region_map().max() == 299  # beyond uint8


def test_label_masks_map_regions_to_their_classes():
    first = np.array([[0, 1], [2, 2]])
    second = np.array([[1, 0], [0, 0]])
    masks = LabelMasks(
        [CompactRegions(first, 2), CompactRegions(second, 1)],
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
    np.testing.assert_array_equal(described[2], [[3, 3, 3]])
    assert [d.shape[0] for d in encode_crops(Encoder(), [[], []])] == [0, 0]


def test_a_single_small_region_is_dropped():
    mask = np.zeros((6, 6), bool)
    mask[0:2, 0:2] = True
    regions, n = object_regions(mask, min_size=5)
    assert n == 0 and not regions.any()


def test_pooled_descriptors_of_a_region_away_from_the_last_patch():
    patches = np.arange(8, dtype=np.float32).reshape(2, 2, 2)
    regions = np.zeros((4, 4), np.int32)
    regions[0:2, 0:2] = 1  # the first patch only
    np.testing.assert_allclose(pooled_descriptors(regions, 1, patches), [[0, 1]])


def test_compact_regions_hold_256_regions_and_more():
    region_map = (np.arange(16 * 17).reshape(16, 17) % 257).astype(np.int32)
    np.testing.assert_array_equal(CompactRegions(region_map, 256).region_map(), region_map)


def test_sub_sequences_of_label_masks_keep_their_label_type():
    masks = LabelMasks([CompactRegions(np.array([[0, 1]]), 1)], [np.array([2])], np.uint8)
    assert masks[0:1][0].dtype == np.uint8 and masks[[0]][0].dtype == np.uint8
