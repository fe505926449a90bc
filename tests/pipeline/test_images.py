import numpy as np
import pytest

from nsneg.pipeline import images
from nsneg.pipeline.images import BadImage, decode_rgb, make_crops
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


def test_decompression_bomb_is_refused_before_decoding(monkeypatch):
    monkeypatch.setattr(images, "MAX_PIXELS", 100 * 100)
    with pytest.raises(BadImage, match="decompression bomb"):
        decode_rgb(encode(photo()))


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
