"""Contact sheet of a shard set: source (crop boxes drawn) | center crop | random crop | texture."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image, ImageDraw

from nsneg.pipeline import contract, files
from nsneg.pipeline.images import decode_rgb, resize_short

CELL = 160


def _row(sample: contract.TextureSample, classes: list[str]) -> Image.Image:
    row = Image.new("RGB", (4 * CELL, CELL + 14), "white")
    draw = ImageDraw.Draw(row)
    meta = sample.meta
    if sample.source_bytes is not None:
        source, _, _ = decode_rgb(sample.source_bytes)
        source = resize_short(source, meta.get("resized_size") and min(meta["resized_size"]) or 256)
        crops = [source.crop(tuple(meta["crop_boxes"][k])) for k in ("center", "random")]
        thumb = source.copy()
        boxed = ImageDraw.Draw(thumb)
        for box, colour in zip(
            (meta["crop_boxes"]["center"], meta["crop_boxes"]["random"]), ("red", "lime")
        ):
            boxed.rectangle(box, outline=colour, width=3)
        thumb.thumbnail((CELL, CELL))
        row.paste(thumb, ((CELL - thumb.width) // 2, (CELL - thumb.height) // 2))
        for i, crop in enumerate(crops, start=1):
            row.paste(crop.resize((CELL, CELL), Image.Resampling.NEAREST), (i * CELL, 0))
    else:
        draw.text((8, CELL // 2), "(no source pixels)", fill="gray")
    row.paste(sample.texture.resize((CELL, CELL), Image.Resampling.LANCZOS), (3 * CELL, 0))
    label = f"{sample.key}  {classes[sample.cls] if sample.cls < len(classes) else sample.cls}  loss {meta.get('loss')}"
    draw.text((4, CELL + 1), label, fill="black")
    return row


def contact_sheet(
    root: Path, split: str, out: Path, n: int = 16, classes: set[str] | None = None
) -> Path:
    """Write a PNG of the first ``n`` samples of ``split`` (only of ``classes`` if given), atomically."""
    manifest = contract.load_manifest(root)
    if split not in manifest["splits"]:
        raise ValueError(f"{root} has no split {split!r} (has {sorted(manifest['splits'])})")
    unknown = sorted(set(classes or ()) - set(manifest["classes"]))
    if unknown:
        shown = ", ".join(manifest["classes"][:10]) + (
            ", ..." if len(manifest["classes"]) > 10 else ""
        )
        raise ValueError(f"no class {', '.join(unknown)} in {root} (its classes: {shown})")
    rows = []
    for sample in contract.iter_samples(root, split):
        if classes and manifest["classes"][sample.cls] not in classes:
            continue
        rows.append(_row(sample, manifest["classes"]))
        if len(rows) >= n:
            break
    if not rows:
        raise ValueError(
            f"{root}/{split} holds no samples"
            + (f" of classes {', '.join(sorted(classes))}" if classes else "")
            + " to preview"
        )
    header = Image.new("RGB", (4 * CELL, 16), "white")
    hd = ImageDraw.Draw(header)
    for i, title in enumerate(("source (boxes)", "center crop", "random crop", "texture")):
        hd.text((i * CELL + 4, 2), title, fill="black")
    sheet = Image.new("RGB", (4 * CELL, 16 + sum(r.height for r in rows)), "white")
    sheet.paste(header, (0, 0))
    y = 16
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    files.atomic_write_bytes(Path(out), buf.getvalue())
    return Path(out)
