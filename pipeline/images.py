"""Cutting the two 96 px crops of a source image.

The image is decoded by ``nsneg.datasets_manifest.format.image_decode`` (a correct conversion or a
``BadImage`` with a reason that the job counts and lists in the manifest -- never a crash mid-job).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image

from nsneg.datasets_manifest.format.constants import CROP_SIZE
from nsneg.datasets_manifest.format.image_decode import BadImage, decode_rgb

#: Shorter side the image is resized to before cropping, as ImageNet training pipelines do.
RESIZE_SHORT = 256


@dataclass
class Crops:
    pixels: np.ndarray  # uint8 [2, 96, 96, 3]: center crop, random crop
    boxes: list[tuple[int, int, int, int]]  # (left, top, right, bottom) in the resized image
    resized_size: tuple[int, int]  # (width, height) of the image the boxes refer to
    conversions: list[str]  # what was done to make it RGB, e.g. ["cmyk->rgb"]
    source_format: str | None  # PIL's name of the file format, e.g. "JPEG"


def resize_short(img: Image.Image, short: int = RESIZE_SHORT) -> Image.Image:
    scale = short / min(img.size)
    size = (max(short, round(img.width * scale)), max(short, round(img.height * scale)))
    return img.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)


def make_crops(data: bytes, rng: np.random.Generator, resize_to: int = RESIZE_SHORT) -> Crops:
    """The paper's two 96 px crops of one image: the center crop and one at a seeded random place."""
    img, conversions, source_format = decode_rgb(data)
    if min(img.size) < CROP_SIZE:
        raise BadImage(f"too small: {img.width}x{img.height} is under the {CROP_SIZE} px crop")
    img = resize_short(img, resize_to)
    w, h = img.size
    cx, cy = (w - CROP_SIZE) // 2, (h - CROP_SIZE) // 2
    rx, ry = int(rng.integers(0, w - CROP_SIZE + 1)), int(rng.integers(0, h - CROP_SIZE + 1))
    boxes = [(x, y, x + CROP_SIZE, y + CROP_SIZE) for x, y in ((cx, cy), (rx, ry))]
    arr = np.asarray(img)
    pixels = np.stack([arr[top:bottom, left:right] for left, top, right, bottom in boxes])
    return Crops(
        pixels=pixels,
        boxes=boxes,
        resized_size=(w, h),
        conversions=conversions,
        source_format=source_format,
    )
