"""The identity digest and the sampling key."""

import hashlib
import subprocess

import numpy as np
import pytest

from skseg._digest import array_digest, file_digest, json_digest, sampling_key


def test_a_file_digest_is_what_sha1sum_prints(tmp_path):
    path = tmp_path / "image.jpg"
    path.write_bytes(bytes(range(256)) * 5000)  # larger than one read block
    assert file_digest(path) == hashlib.sha1(path.read_bytes()).hexdigest()
    try:
        printed = subprocess.run(["sha1sum", str(path)], capture_output=True, text=True,
                                 check=True).stdout.split()[0]
    except FileNotFoundError:
        pytest.skip("no sha1sum here")
    assert file_digest(path) == printed


def test_an_array_digest_names_dtype_shape_and_header():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    digests = {array_digest(a), array_digest(a.reshape(4, 3)), array_digest(a.astype(np.int32)),
               array_digest(a, header="(3, 4)"), array_digest(a, a)}
    assert len(digests) == 5
    assert array_digest(a) == array_digest(np.asfortranarray(a))  # contents, not layout
    assert array_digest(a, None) == array_digest(a)


def test_a_json_digest_ignores_key_order():
    assert json_digest({"a": 1, "b": [2, 3]}) == json_digest({"b": [2, 3], "a": 1})
    assert json_digest({"a": 1}) != json_digest({"a": 1.5})


def test_a_sampling_key_comes_from_the_content_key_before_the_features():
    patches = np.ones((2, 2, 4), np.float32)
    keyed = sampling_key("abc", (patches,))
    assert keyed == sampling_key("abc", (patches + 1,))  # the features' last bits vary
    assert keyed != sampling_key("abd", (patches,))
    assert sampling_key(None, (patches,)) != sampling_key(None, (patches + 1,))
    assert 0 <= keyed < 1 << 64 and keyed.bit_length() > 32  # all 64 bits used


def test_a_sampling_key_depends_on_every_byte_of_every_array_and_fills_64_bits():
    rng = np.random.default_rng(0)
    patches = rng.standard_normal((14, 14, 8)).astype(np.float32)
    cls = rng.standard_normal(8).astype(np.float32)
    key = sampling_key(None, (patches, cls))
    for where in ((0, 0, 0), (6, 13, 7), (13, 13, 7)):
        changed = patches.copy()
        changed[where] += 1
        assert sampling_key(None, (changed, cls)) != key, where
    assert sampling_key(None, (patches, cls + 1)) != key
    assert sampling_key(None, (np.asfortranarray(patches), cls)) == key
    keys = [sampling_key(None, (rng.standard_normal(10),)) for _ in range(1000)]
    high, low = np.array([k >> 32 for k in keys]), np.array([k & 0xFFFFFFFF for k in keys])
    assert len(set(high)) == len(set(low)) == 1000
