"""Decoding source images: every convertible mode becomes upright RGB, a bomb is refused before
it is decoded."""

import numpy as np
import pytest

from nsneg.datasets_manifest.format import image_decode
from nsneg.datasets_manifest.format.image_decode import BadImage, decode_rgb
from nsneg_testing import bad_inputs, encode, photo

BAD = bad_inputs()


@pytest.mark.parametrize(
    "name, conversion",
    [
        ("cmyk.jpg", "cmyk->rgb"),
        ("gray.png", "l->rgb"),
        ("palette.png", "P->rgb"),
        ("sixteen.png", "I;16->rgb"),
    ],
)
def test_convertible_modes_become_rgb(name, conversion):
    img, conversions, _ = decode_rgb(BAD[name])
    assert img.mode == "RGB" and img.size == (160, 128)
    assert conversions == [conversion]


def test_sixteen_bit_is_scaled_not_clipped():
    img, _, _ = decode_rgb(BAD["sixteen.png"])
    expected = np.asarray(photo().convert("L"))
    # 16-bit values v*257 must map back to v, not saturate at 255.
    assert np.abs(np.asarray(img)[..., 0].astype(int) - expected).max() <= 1


def test_exif_orientation_is_applied():
    img, conversions, fmt = decode_rgb(BAD["rotated.jpg"])
    assert img.size == (128, 160)  # 160x128 stored, rotated 90 degrees on display
    assert conversions == ["exif-orientation-6"] and fmt == "JPEG"


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(image_decode, "MAX_PIXELS", 100 * 100)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_rgb(encode(photo()))
