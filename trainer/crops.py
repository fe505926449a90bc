"""The geometric part of MoCo v2's augmentation, on decoded PIL images: RandomResizedCrop boxes,
the decode of a source just large enough for its crops, and the paired crops of a sample.

Two independent crops of the source give the query and the key; the texture negative is cropped
with the *query's* box (same area fraction and aspect ratio, same relative centre). The boxes are
drawn from the source's size before it is decoded, so a JPEG is decoded already downscaled (by
1/2, 1/4 or 1/8, ``Image.draft``) as far as both crops still have at least ``image_size`` source
pixels per side (``decode_for_crops``: the one decode path of the training loaders).
"""

from __future__ import annotations

import math
import random
from typing import IO

import numpy as np
import torch
from PIL import Image

SCALE = (0.2, 1.0)
RATIO = (3 / 4, 4 / 3)

#: A crop box relative to its image: (area fraction, aspect ratio w/h, centre x, centre y).
Box = tuple[float, float, float, float]

#: The texture crop of a sample without texture (image folders): batches of it are ``[B, 0]``.
NO_TEXTURE = torch.zeros(0, dtype=torch.uint8)


def crop_box(width: int, height: int, rng: random.Random) -> Box:
    """RandomResizedCrop's sampling (torchvision's algorithm) -> (area fraction, aspect ratio, cx, cy relative)."""
    area = width * height
    log_ratio = (math.log(RATIO[0]), math.log(RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        w, h = round(math.sqrt(target * ratio)), round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            x, y = rng.randint(0, width - w), rng.randint(0, height - h)
            return w * h / area, w / h, (x + w / 2) / width, (y + h / 2) / height
    side = min(width, height)  # fallback: central crop, as torchvision does
    return side * side / area, 1.0, 0.5, 0.5


def apply_box(img: Image.Image, box: Box, size: int) -> torch.Tensor:
    """Crop ``img`` with a relative box (area fraction, ratio, centre) and resize -> uint8 [3,size,size].

    The box is placed in sub-pixel coordinates, so the same relative box lands on the same
    part of the picture at any decoded scale (a draft-mode JPEG, a texture of another size).
    """
    fraction, ratio, cx, cy = box
    area = img.width * img.height * fraction
    w = min(float(img.width), max(1.0, math.sqrt(area * ratio)))
    h = min(float(img.height), max(1.0, math.sqrt(area / ratio)))
    left = min(max(0.0, cx * img.width - w / 2), img.width - w)
    top = min(max(0.0, cy * img.height - h / 2), img.height - h)
    crop = img.resize((size, size), Image.Resampling.BILINEAR, box=(left, top, left + w, top + h))
    return torch.from_numpy(np.array(crop, dtype=np.uint8)).permute(2, 0, 1)  # one copy out of PIL


def draft_for_crops(img: Image.Image, boxes: list[Box], size: int) -> None:
    """Let a not yet decoded JPEG decode at 1/2, 1/4 or 1/8 scale where every crop in ``boxes``
    keeps >= ``size`` pixels per side (so resizing it to ``size`` loses nothing). Other formats: no-op."""
    if img.format != "JPEG":
        return
    width, height = img.size
    area = width * height
    side = min(
        min(math.sqrt(area * f * r), math.sqrt(area * f / r)) for f, r, _, _ in boxes
    )  # shortest crop side
    scale = side / size
    if scale >= 2:
        img.draft(
            "RGB", (math.ceil(width / scale), math.ceil(height / scale))
        )  # PIL keeps >= the size asked


def decode_for_crops(
    source: str | IO[bytes], image_size: int, rng: random.Random
) -> tuple[Image.Image, Box, Box]:
    """An image file (path or file object) -> (RGB image, query box, key box).

    The two boxes are drawn from the header's size, then the pixels are decoded as small as
    both crops allow (``draft_for_crops``). Raises whatever PIL raises for a broken file.
    """
    img = Image.open(source)  # header only: size known, pixels not decoded
    box_q, box_k = crop_box(*img.size, rng), crop_box(*img.size, rng)
    draft_for_crops(img, [box_q, box_k], image_size)
    img.load()
    return (img if img.mode == "RGB" else img.convert("RGB")), box_q, box_k  # convert() copies


def paired_crops(
    source: Image.Image,
    box_q: Box,
    box_k: Box,
    image_size: int,
    texture: Image.Image | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query and key crops of ``source`` and the texture negative's crop -> uint8 [3, S, S] each.

    The texture is cropped with the *query's* box (same area fraction, aspect ratio and relative
    centre), so that it covers what the query covers; without a texture the third is empty
    (``[0]``).
    """
    q, k = apply_box(source, box_q, image_size), apply_box(source, box_k, image_size)
    t = apply_box(texture, box_q, image_size) if texture is not None else NO_TEXTURE
    return q, k, t
