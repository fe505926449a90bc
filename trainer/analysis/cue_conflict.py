"""Cue-conflict images: Geirhos et al.'s stimuli read from a folder, or made from our shards
(one class's photo with its edge region filled by another class's texture).

``sobel_kernel`` / ``sobel_gradients`` are the one Sobel operator of the analyses (also used by
``texture_classes.PixelStatistics``).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.constants import TEXTURE_SIZE
from nsneg.datasets_manifest.format.manifest import load_manifest, shard_paths
from nsneg.datasets_manifest.format.sample_reader import (
    BadSample,
    check_sample,
    iter_raw,
    iter_samples,
)
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog


def sobel_kernel() -> torch.Tensor:
    """The x and y Sobel filters, normalised to unit gain on a unit ramp: [2, 1, 3, 3]."""
    sobel_x = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8
    return torch.stack([sobel_x, sobel_x.T]).unsqueeze(1)


def sobel_gradients(grey: torch.Tensor, kernel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Horizontal and vertical gradients [N, H, W] of grey images [N, 1, H, W] (replicated border)."""
    return F.conv2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), kernel).unbind(dim=1)


@dataclass
class CueImage:
    name: str
    shape: str
    texture: str
    image: Path | Image.Image


_CUE_NAME = re.compile(r"^(?P<shape>[a-z]+)\d+-(?P<texture>[a-z]+)\d+\.png$", re.IGNORECASE)


def read_cue_conflict_dir(
    root: Path, categories: Sequence[str]
) -> tuple[list[CueImage], dict[str, list[str]]]:
    """``DIR/<shape>/<shape><n>-<texture><m>.png`` (rgeirhos/texture-vs-shape stimuli) -> the images to
    score, and the files left out by reason: same category for both cues, unparsable name, unknown category."""
    images, left_out = [], {"same category": [], "unparsable name": [], "unknown category": []}
    for path in sorted(Path(root).rglob("*")):
        if not path.is_file() or path.suffix.lower() not in (".png", ".jpg", ".jpeg"):
            continue
        name = str(path.relative_to(root))
        match = _CUE_NAME.match(path.name)
        if match is None:
            left_out["unparsable name"].append(name)
            continue
        shape, texture = match["shape"].lower(), match["texture"].lower()
        if shape not in categories or texture not in categories:
            left_out["unknown category"].append(name)
        elif shape == texture:
            left_out["same category"].append(name)
        else:
            images.append(CueImage(name, shape, texture, path))
    return images, left_out


def centre_view(image: Image.Image, size: int) -> Image.Image:
    """Short side to ``size``, centre crop ``size`` x ``size``: the whole object, as the eval view sees it."""
    scale = size / min(image.size)
    width, height = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    resized = image.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    return resized.crop((left, top, left + size, top + size))


def edge_mask(image: Image.Image, quantile: float = 0.9, radius: int | None = None) -> np.ndarray:
    """Where ``image`` has its strongest edges: Sobel magnitude of the lightly blurred grey image at or
    above its ``quantile``, dilated by a disc of ``radius`` px (default: size / 28, 8 px at 224). Contours
    and textured parts of an object fall inside; smooth areas (much of the background) do not."""
    grey = torch.from_numpy(np.asarray(image.convert("L"), dtype=np.float32) / 255)[None, None]
    grey = F.avg_pool2d(F.pad(grey, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    gx, gy = sobel_gradients(grey, sobel_kernel())
    magnitude = torch.hypot(gx, gy)[0]
    edges = (magnitude >= torch.quantile(magnitude.flatten(), quantile)) & (magnitude > 0)
    radius = max(1, min(image.size) // 28) if radius is None else radius
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
    disc = (offsets[:, None] ** 2 + offsets[None, :] ** 2 <= radius**2).float()[None, None]
    return (F.conv2d(edges[None, None].float(), disc, padding=radius)[0, 0] > 0.5).numpy()


def cue_conflict_image(
    shape_image: Image.Image, texture_image: Image.Image, size: int = TEXTURE_SIZE
) -> tuple[Image.Image, np.ndarray]:
    """A's photo (centre view) with its edge region (``edge_mask``) filled by B's texture, and the mask.
    Shape cue: A's contours and layout; texture cue: B's texture where A had its edges and detail."""
    a = np.asarray(centre_view(shape_image, size))
    b = np.asarray(centre_view(texture_image, size))
    mask = edge_mask(Image.fromarray(a))
    return Image.fromarray(np.where(mask[..., None], b, a)), mask


def cue_conflict_from_shards(
    root: Path,
    split: str,
    head_classes: Sequence[str],
    n: int,
    seed: int,
    out_dir: Path,
    skips: SkipLog | None = None,
) -> tuple[list[CueImage], list[dict[str, Any]]]:
    """``n`` (shape A, texture B) pairs of samples of different classes the head knows, drawn with ``seed``;
    writes each image as ``out_dir/<A wnid>/<i>_<A wnid>-<B wnid>.png`` and returns the images and their records.
    Samples are read through the sample policy; the bad ones go to ``skips`` (a pair drawn with a
    sample whose source then fails to decode is left out)."""
    skips = skips if skips is not None else SkipLog(DEFAULT_MAX_SKIP_FRACTION)
    manifest = load_manifest(root)
    if not manifest.get("has_source"):
        raise ValueError(
            f"{root} holds textures only (built with --no-source): no photo gives the shape cue"
        )
    classes, known = manifest["classes"], set(head_classes)
    paths = shard_paths(root, split, manifest)
    index = [
        (sample.key, sample.cls) for sample in iter_samples(root, split, skips)
    ]  # the sources' headers only
    index = [(key, cls) for key, cls in index if classes[cls] in known]
    if len({cls for _, cls in index}) < 2:
        raise ValueError(
            f"{root} split {split!r} needs samples of at least two classes the head knows"
        )
    rng = np.random.default_rng(seed)
    pairs = []
    for _ in range(n):
        a = b = index[int(rng.integers(len(index)))]
        while (
            b[1] == a[1]
        ):  # B: uniform over the samples of the other classes (rejection; two classes exist)
            b = index[int(rng.integers(len(index)))]
        pairs.append((a, b))
    needed = {key for pair in pairs for key, _ in pair}
    samples = {}
    for raw in iter_raw(paths):
        if raw["__key__"] in needed:
            try:
                samples[raw["__key__"]] = check_sample(
                    raw, classes, has_source=True, decode_source=True
                )
            except BadSample as e:
                skips.skip(raw["__url__"], raw["__key__"], e.reason, e.kind)
    images, records, sheet_rows = [], [], []
    for i, ((key_a, cls_a), (key_b, cls_b)) in enumerate(pairs):
        if key_a not in samples or key_b not in samples:
            continue
        a, b = samples[key_a].source(), samples[key_b].texture
        image, mask = cue_conflict_image(a, b)
        shape, texture = classes[cls_a], classes[cls_b]
        name = f"{shape}/{i:04d}_{shape}-{texture}.png"
        (out_dir / shape).mkdir(parents=True, exist_ok=True)
        files.atomic_write_bytes(out_dir / name, files.png_bytes(np.asarray(image)))
        images.append(CueImage(name, shape, texture, image))
        records.append(
            {
                "file": name,
                "shape": shape,
                "shape_key": key_a,
                "texture": texture,
                "texture_key": key_b,
                "mask_fraction": round(float(mask.mean()), 4),
            }
        )
        if i < 8:
            tiles = [a, b, Image.fromarray(mask).convert("RGB"), image]
            sheet_rows.append((f"shape {shape}  texture {texture}", tiles))
    files.atomic_write_bytes(
        out_dir / "contact-sheet.png", files.png_bytes(cue_conflict_sheet(sheet_rows))
    )
    return images, records


def cue_conflict_sheet(rows: list[tuple[str, list[Image.Image]]], thumb: int = 112) -> Image.Image:
    """Captioned rows of images ([A photo | B texture | mask | cue-conflict image]) for a look at what was made."""
    sheet = Image.new(
        "RGB", (max(len(tiles) for _, tiles in rows) * thumb, len(rows) * (thumb + 14)), "white"
    )
    draw = ImageDraw.Draw(sheet)
    for row, (caption, tiles) in enumerate(rows):
        y = row * (thumb + 14)
        draw.text((2, y), caption, fill="black")
        for col, tile in enumerate(tiles):
            sheet.paste(centre_view(tile, thumb), (col * thumb, y + 14))
    return sheet
