"""Cutting the two crops of a source image; an unusable one is a ``BadImage`` with its reason."""

import numpy as np
import pytest

from nsneg.datasets_manifest.format.image_decode import BadImage
from nsneg.pipeline import images
from nsneg.pipeline.images import make_crops
from nsneg_testing import bad_inputs, encode, photo

BAD = bad_inputs()


@pytest.mark.parametrize(
    "name, reason",
    [
        ("corrupt.jpg", "unreadable"),
        ("truncated.jpg", "unreadable"),
        ("empty.jpg", "unreadable"),
        ("tiny.png", "too small"),
    ],
)
def test_unusable_images_raise_bad_image_with_reason(name, reason):
    with pytest.raises(BadImage) as e:
        make_crops(BAD[name], np.random.default_rng(0))
    assert e.value.reason.startswith(reason)


def test_crops_are_center_and_seeded_random():
    data = encode(photo("chelsea.png", None))
    a = make_crops(data, np.random.default_rng(7))
    b = make_crops(data, np.random.default_rng(7))
    assert a.pixels.shape == (2, 96, 96, 3) and a.pixels.dtype == np.uint8
    assert min(a.resized_size) == images.RESIZE_SHORT
    w, h = a.resized_size
    assert a.boxes[0] == ((w - 96) // 2, (h - 96) // 2, (w - 96) // 2 + 96, (h - 96) // 2 + 96)
    assert a.boxes == b.boxes and np.array_equal(a.pixels, b.pixels)
    assert make_crops(data, np.random.default_rng(8)).boxes[1] != a.boxes[1]
