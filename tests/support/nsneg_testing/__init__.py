"""Test helpers: bundled photos, encoded bytes, ImageFolder trees (fixtures live in conftest.py)."""

from __future__ import annotations

import io
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
from PIL import Image

from nsneg.pipeline.synthesis import SynthesisConfig

#: Few steps: the job tests exercise plumbing; quality is tested with the default config.
TINY = SynthesisConfig(steps=(4, 2, 1), batch_size=4)


def texture_build_cmd(tree: Path, out: Path, *extra: str) -> list[str]:
    """``nsneg-textures build`` of an ImageFolder tree as a user runs it: one image per shard."""
    return [
        sys.executable, "-m", "nsneg.pipeline.cli", "build", "--imagenet", str(tree),
        "--out", str(out), "--shard-size", "1", "--batch-size", "1", "--quiet", *extra,
    ]  # fmt: skip


#: A small run on the CPU, as TrainConfig fields (tests/trainer: the library and the command).
SMALL_RUN = dict(arch="resnet18", image_size=32, batch_size=4, workers=0, bn_splits=2)


class _SmallMethod(Mapping):
    """Per registered method (``nsneg.trainer.methods.METHODS``, looked up when asked: a method
    registered by a test is here too), the TrainConfig fields that train it small (added to
    ``SMALL_RUN``): its ``Settings.small()``."""

    def __getitem__(self, name: str) -> dict:
        from nsneg.trainer.methods import METHODS

        return dict(method=name, method_settings=METHODS[name].Settings.small())

    def __iter__(self):
        from nsneg.trainer.methods import METHODS

        return iter(list(METHODS))

    def __len__(self) -> int:
        from nsneg.trainer.methods import METHODS

        return len(METHODS)


SMALL_METHOD = _SmallMethod()

#: Photographs bundled with scikit-image that the tests build their image trees from.
PHOTOS = (
    "chelsea.png",
    "coffee.png",
    "astronaut.png",
    "rocket.jpg",
    "motorcycle_left.png",
    "brick.png",
)


def photo(name: str = "chelsea.png", size: tuple[int, int] | None = (160, 128)) -> Image.Image:
    """A real photograph bundled with scikit-image, optionally shrunk to keep tests fast."""
    import skimage

    img = Image.open(Path(skimage.__file__).parent / "data" / name).convert("RGB")
    return img.resize(size) if size else img


def encode(img: Image.Image, fmt: str = "PNG", **kwargs) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def exif_rotated_jpeg() -> bytes:
    """A 160x128 photo stored with EXIF orientation 6 (display rotated 90 degrees)."""
    img = photo()
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(img, "JPEG", exif=exif)


def bad_inputs() -> dict[str, bytes]:
    """Every kind of awkward file a real collection holds, by name -> bytes."""
    base = photo()
    rgb16 = (np.asarray(base.convert("L"), dtype=np.uint16) * 257).astype(np.uint16)
    palette = base.convert("P", palette=Image.Palette.ADAPTIVE, colors=32)
    jpeg = encode(base, "JPEG", quality=90)
    return {
        "cmyk.jpg": encode(base.convert("CMYK"), "JPEG"),
        "gray.png": encode(base.convert("L")),
        "palette.png": encode(palette, transparency=0),
        "sixteen.png": encode(Image.fromarray(rgb16)),
        "rotated.jpg": exif_rotated_jpeg(),
        "corrupt.jpg": b"\xff\xd8\xff\xe0 this is not a jpeg" + bytes(200),
        "truncated.jpg": jpeg[: len(jpeg) // 2],
        "tiny.png": encode(photo(size=(80, 60))),
        "empty.jpg": b"",
    }


def make_tree(root: Path, *, n_per_class: int = 3, bad: bool = True, split: str = "train") -> Path:
    """An ImageFolder tree of real photos (two classes), plus the bad inputs in a third class."""
    for c, wnid in enumerate(["n00000001", "n00000002"]):
        d = root / split / wnid
        d.mkdir(parents=True)
        for i in range(n_per_class):
            name = PHOTOS[(c * n_per_class + i) % len(PHOTOS)]
            img = photo(name, (160 + 8 * i, 128))
            (d / f"{wnid}_{i}.JPEG").write_bytes(encode(img, "JPEG", quality=92))
    if bad:
        d = root / split / "n00000003"
        d.mkdir(parents=True)
        for name, data in bad_inputs().items():
            (d / name).write_bytes(data)
        (d / "with.dots.in.name.png").write_bytes(encode(photo("coffee.png")))
    return root


def keep_sample(path: Path, tmp_root: Path, name: str | None = None) -> None:
    """With ``NSNEG_SAMPLES_DIR`` set, copy a test's output file there (as ``name``, default its own); in text
    files every path under ``tmp_root`` (the test run's temporary folder) becomes ``<tmp>``.
    docs/samples is made so: ``NSNEG_SAMPLES_DIR=docs/samples pytest tests/trainer/eval/test_robustness.py
    tests/trainer/analysis``."""
    import os
    import re
    import shutil

    target = os.environ.get("NSNEG_SAMPLES_DIR")
    if not target:
        return
    Path(target).mkdir(parents=True, exist_ok=True)
    if path.suffix in (".md", ".json", ".txt"):
        text = re.sub(re.escape(str(tmp_root)) + r"[^\s`()|]*", "<tmp>", path.read_text())
        (Path(target) / (name or path.name)).write_text(text)
    else:
        shutil.copyfile(path, Path(target) / (name or path.name))
