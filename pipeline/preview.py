"""Contact sheet of a shard set: source (crop boxes drawn) | center crop | random crop | texture.

Class-balanced: the first samples of each class shown (every requested class, else classes
spread over the whole list), one captioned row per sample, read through the sample policy.
"""

from __future__ import annotations

import io
import math
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import load_manifest
from nsneg.datasets_manifest.format.sample_reader import TextureSample, iter_samples
from nsneg.datasets_manifest.format.skip_log import DEFAULT_MAX_SKIP_FRACTION, SkipLog
from nsneg.pipeline.images import resize_short

CELL = 160
CAPTION = 20
HEADER = 46
#: The boxes drawn on the source: the two 96 px crops the texture was synthesised from.
BOX_COLOURS = {"center": "red", "random": "lime"}


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _row(sample: TextureSample, classes: list[str]) -> Image.Image:
    row = Image.new("RGB", (4 * CELL, CAPTION + CELL), "white")
    draw = ImageDraw.Draw(row)
    meta = sample.meta
    boxes = meta.get("crop_boxes") if isinstance(meta.get("crop_boxes"), dict) else {}
    source = sample.source()
    if source is not None:
        resized = meta.get("resized_size")
        short = min(resized) if isinstance(resized, list) and resized else 256
        source = resize_short(source, int(short))
        thumb = source.copy()
        boxed = ImageDraw.Draw(thumb)
        for i, (name, colour) in enumerate(BOX_COLOURS.items(), start=1):
            box = boxes.get(name)
            if isinstance(box, list) and len(box) == 4:
                boxed.rectangle(box, outline=colour, width=3)
                crop = source.crop(tuple(box)).resize((CELL, CELL), Image.Resampling.NEAREST)
                row.paste(crop, (i * CELL, CAPTION))
        thumb.thumbnail((CELL, CELL))
        row.paste(thumb, ((CELL - thumb.width) // 2, CAPTION + (CELL - thumb.height) // 2))
    else:
        draw.text((8, CAPTION + CELL // 2), "(no source pixels)", fill="gray", font=_font(12))
    row.paste(sample.texture.resize((CELL, CELL), Image.Resampling.LANCZOS), (3 * CELL, CAPTION))
    loss = meta.get("loss")
    parts = [f"class {classes[sample.cls]}", f"sample {sample.key}"]
    if isinstance(loss, int | float):
        parts.append(f"texture loss {loss:.4g}")
    draw.rectangle((0, 0, 4 * CELL, CAPTION - 2), fill=(235, 235, 235))
    draw.text((4, 3), "  \u00b7  ".join(parts), fill="black", font=_font(13))
    return row


def _header() -> Image.Image:
    header = Image.new("RGB", (4 * CELL, HEADER), "white")
    draw = ImageDraw.Draw(header)
    for i, title in enumerate(("source", "center crop (red)", "random crop (green)", "texture")):
        draw.text((i * CELL + 4, 4), title, fill="black", font=_font(14))
    y = 26
    draw.text((4, y), "boxes on the source:", fill="black", font=_font(12))
    x = 130
    for name, colour in BOX_COLOURS.items():
        draw.rectangle((x, y + 2, x + 12, y + 12), outline=colour, width=3)
        label = f"{name} 96 px crop"
        draw.text((x + 18, y), label, fill="black", font=_font(12))
        x += 150
    draw.text((x, y), "(the texture is synthesised from both)", fill="gray", font=_font(12))
    return header


def pick_classes(classes: list[str], wanted: set[str] | None, n: int) -> list[str]:
    """The classes a sheet of ``n`` rows shows: every wanted one, else up to ``n`` spread evenly."""
    if wanted:
        return [c for c in classes if c in wanted]
    if len(classes) <= n:
        return list(classes)
    return [classes[math.floor(i * len(classes) / n)] for i in range(n)]


def contact_sheet(
    root: Path,
    split: str,
    out: Path,
    n: int = 16,
    classes: set[str] | None = None,
    skips: SkipLog | None = None,
) -> int:
    """Write a PNG of about ``n`` samples of ``split``, the same number of each class shown
    (``classes``: those only, every one of them), atomically. Bad samples go to ``skips``.
    Returns how many rows the sheet lacks for every shown class to have its share (0: none)."""
    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root} has no split {split!r} (has {sorted(manifest['splits'])})")
    unknown = sorted(set(classes or ()) - set(manifest["classes"]))
    if unknown:
        shown = ", ".join(manifest["classes"][:10]) + (
            ", ..." if len(manifest["classes"]) > 10 else ""
        )
        raise ValueError(f"no class {', '.join(unknown)} in {root} (its classes: {shown})")
    shown = pick_classes(manifest["classes"], classes, n)
    per_class = max(1, math.ceil(n / len(shown)))
    index = {name: i for i, name in enumerate(manifest["classes"])}
    rows: dict[str, list[Image.Image]] = {c: [] for c in shown}
    skips = skips if skips is not None else SkipLog(DEFAULT_MAX_SKIP_FRACTION)
    for sample in iter_samples(root, split, skips, decode_source=manifest["has_source"]):
        name = manifest["classes"][sample.cls]
        if name in rows and len(rows[name]) < per_class:
            rows[name].append(_row(sample, manifest["classes"]))
            if all(len(r) >= per_class for r in rows.values()):
                break
    skips.collect()
    ordered = [r for name in sorted(rows, key=index.get) for r in rows[name]]
    if not ordered:
        raise ValueError(
            f"{root}/{split} holds no samples"
            + (f" of classes {', '.join(sorted(classes))}" if classes else "")
            + " to preview"
        )
    header = _header()
    sheet = Image.new("RGB", (4 * CELL, header.height + sum(r.height for r in ordered)), "white")
    sheet.paste(header, (0, 0))
    y = header.height
    for r in ordered:
        sheet.paste(r, (0, y))
        y += r.height
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    files.atomic_write_bytes(Path(out), buf.getvalue())
    return sum(per_class - len(r) for r in rows.values())
