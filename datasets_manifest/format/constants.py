"""Sizes and limits shared by the pipeline that writes shards and everything that reads them."""

from __future__ import annotations

#: Side of a texture sample, in pixels (RGB, square).
TEXTURE_SIZE = 224
#: Side of each of the two crops a texture is synthesised from.
CROP_SIZE = 96
#: Pixel count above which an image is treated as a decompression bomb (PIL's default is ~89 Mpx).
MAX_PIXELS = 64_000_000
#: ImageNet's per-channel normalisation (RGB, images scaled to [0, 1]).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
