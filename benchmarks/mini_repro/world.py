"""A seeded procedural shape/texture world for the miniature shape-vs-texture experiment.

Every image is one filled shape (the class) on a background, the shape and the
background each filled with a texture drawn from a bank of families (the background can
instead be one flat colour for all images: ``World.background_colour``, the protocol's choice). In the training
distribution texture is a *shortcut*: with probability ``World.class_texture_probability``
a class's shape wears that class's typical texture (family + colour pair), otherwise a
random one. A network can therefore separate the classes by texture or by shape on the
in-distribution splits (``pretrain``, ``train``, ``test``, ``heldout``); only shape transfers to the
out-of-domain sets:

* ``sketch``: black outlines on white, no texture at all;
* ``unseen_textures``: shape and background filled with families never used in training;
* ``cue_conflict``: the shape of class A wearing the typical texture of another class B
  (labelled A, and B written in the file name: ``..._as_<B>.png``), so a texture-reliant
  feature votes for B.

Everything derives from one seed: the same seed writes byte-identical PNGs.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = ("disk", "square", "triangle", "star", "cross", "ring", "hexagon", "crescent")
#: Texture families of the training distribution (also of test and cue_conflict).
TRAIN_FAMILIES = ("stripes", "checkers", "dots", "noise", "brick", "grass")
#: Held out of training entirely: only ``unseen_textures`` uses them.
UNSEEN_FAMILIES = ("gravel", "zigzag")
PHOTO_FAMILIES = {"brick": "brick.png", "grass": "grass.png", "gravel": "gravel.png"}
#: ``pretrain`` (the unlabelled pre-training images, textures made for each), ``train`` (the
#: probe's labelled images), ``test`` and ``heldout`` (the representation reading's images,
#: textures made for each) share one distribution; the rest are out of domain.
IN_DOMAIN_SPLITS = ("pretrain", "train", "test", "heldout")
OOD_SPLITS = ("sketch", "unseen_textures", "cue_conflict")
SPLITS = IN_DOMAIN_SPLITS + OOD_SPLITS


@dataclass(frozen=True)
class World:
    """The knobs of the world (fixed in the protocol; docs/mini-repro/gate-search.json records how they were chosen)."""

    image_size: int = 128  # >= the pipeline's 96 px crops after resizing to 256 px short side
    shape_radius: tuple[float, float] = (0.22, 0.36)  # circumradius as a fraction of the image side
    class_texture_probability: float = 0.8  # in-domain: a shape wears its class's typical texture
    texture_contrast: float = 1.0  # pattern amplitude around its mean colour (1 = the two colours)
    outline_width: int = 3  # sketch line, px at image_size
    #: the background's pattern amplitude (0 = its flat mean colour); None: ``texture_contrast``
    background_contrast: float | None = None
    #: one flat RGB colour in [0, 1] for every background (in every split but sketch), instead of
    #: a random texture: the background then tells no image from another
    background_colour: tuple[float, float, float] | None = None

    def __post_init__(self) -> None:
        lo, hi = self.shape_radius
        if not 0 < lo <= hi <= 0.46:
            raise ValueError(
                f"shape_radius must satisfy 0 < lo <= hi <= 0.46, got {self.shape_radius}"
            )
        if not 0 <= self.class_texture_probability <= 1 or not 0 < self.texture_contrast <= 1:
            raise ValueError(
                "class_texture_probability must be in [0, 1] and texture_contrast in (0, 1]"
            )
        if self.background_colour is not None and not (
            len(self.background_colour) == 3 and all(0 <= c <= 1 for c in self.background_colour)
        ):
            raise ValueError(
                f"background_colour must be 3 values in [0, 1], got {self.background_colour}"
            )
        if self.background_contrast is not None and not 0 <= self.background_contrast <= 1:
            raise ValueError(
                f"background_contrast must be in [0, 1], got {self.background_contrast}"
            )

    @property
    def background_pattern_contrast(self) -> float:
        """The background's pattern amplitude as rendered (``texture_contrast`` unless set)."""
        if self.background_contrast is None:
            return self.texture_contrast
        return self.background_contrast


@dataclass(frozen=True)
class TextureSpec:
    """A family plus the two colours it is painted with (RGB in [0, 1])."""

    family: str
    colours: tuple[tuple[float, float, float], tuple[float, float, float]]


def _hsv(h: float, s: float, v: float) -> tuple[float, float, float]:
    import colorsys

    return colorsys.hsv_to_rgb(h % 1.0, s, v)


def class_texture(cls: int, rng: np.random.Generator) -> TextureSpec:
    """The typical texture of class ``cls``: a fixed family and hue, lightly jittered per image."""
    hue = cls / len(CLASSES) + rng.uniform(-0.02, 0.02)
    return TextureSpec(
        TRAIN_FAMILIES[cls % len(TRAIN_FAMILIES)],
        (_hsv(hue, 0.9, 0.95), _hsv(hue + 0.5, 0.7, rng.uniform(0.15, 0.35))),
    )


def random_texture(
    families: tuple[str, ...], rng: np.random.Generator, avoid: str | None = None
) -> TextureSpec:
    """Any family of ``families`` (other than ``avoid`` where possible) in random colours."""
    choices = [f for f in families if f != avoid] or list(families)
    family = choices[rng.integers(len(choices))]
    return TextureSpec(
        family,
        (
            _hsv(rng.random(), rng.uniform(0.4, 1), rng.uniform(0.5, 1)),
            _hsv(rng.random(), rng.uniform(0.4, 1), rng.uniform(0.05, 0.5)),
        ),
    )


_PHOTOS: dict[str, np.ndarray] = {}


def _photo(name: str) -> np.ndarray:
    """A bundled scikit-image texture photograph as grey levels in [0, 1] (cached)."""
    if name not in _PHOTOS:
        import skimage

        img = Image.open(Path(skimage.__file__).parent / "data" / PHOTO_FAMILIES[name]).convert("L")
        _PHOTOS[name] = np.asarray(img, dtype=np.float32) / 255.0
    return _PHOTOS[name]


def pattern(family: str, size: int, rng: np.random.Generator) -> np.ndarray:
    """A grey-level pattern [size, size] in [0, 1] of ``family`` with random orientation/frequency."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float32)
    theta = rng.uniform(0, math.pi)
    u = x * math.cos(theta) + y * math.sin(theta)
    v = -x * math.sin(theta) + y * math.cos(theta)
    period = rng.uniform(6, 16)
    if family == "stripes":
        return (np.sin(2 * math.pi * u / period) > 0).astype(np.float32)
    if family == "checkers":
        return ((np.floor(u / period) + np.floor(v / period)) % 2).astype(np.float32)
    if family == "dots":
        du, dv = (u / period) % 1 - 0.5, (v / period) % 1 - 0.5
        return (du**2 + dv**2 < rng.uniform(0.06, 0.16)).astype(np.float32)
    if family == "noise":
        cells = int(rng.integers(6, 16))
        coarse = rng.random((cells, cells)).astype(np.float32)
        img = Image.fromarray((coarse * 255).astype(np.uint8)).resize((size, size), Image.BICUBIC)
        return np.asarray(img, dtype=np.float32) / 255.0
    if family == "zigzag":
        return ((u + period / 2 * np.abs(((v / period) % 2) - 1)) % period < period / 2).astype(
            np.float32
        )
    if family in PHOTO_FAMILIES:
        photo = _photo(family)
        scale = rng.uniform(
            0.5, 1.0
        )  # a random crop, resized: scale varies like the others' period
        side = int(min(photo.shape) * scale)
        top, left = rng.integers(photo.shape[0] - side + 1), rng.integers(photo.shape[1] - side + 1)
        crop = Image.fromarray((photo[top : top + side, left : left + side] * 255).astype(np.uint8))
        out = np.asarray(crop.resize((size, size), Image.BILINEAR), dtype=np.float32) / 255.0
        lo, hi = np.percentile(out, (2, 98))
        return np.clip((out - lo) / max(hi - lo, 1e-3), 0, 1)
    raise ValueError(f"unknown texture family {family!r}")


def paint(
    spec: TextureSpec, size: int, rng: np.random.Generator, contrast: float = 1.0
) -> np.ndarray:
    """[size, size, 3] float RGB: the family's pattern mapped onto its two colours, its
    amplitude around the mean colour scaled by ``contrast``."""
    p = pattern(spec.family, size, rng)[..., None]
    c0, c1 = (np.asarray(c, dtype=np.float32) for c in spec.colours)
    img = c1 * (1 - p) + c0 * p
    mean = img.mean(axis=(0, 1), keepdims=True)
    return mean + contrast * (img - mean)


def _polygon(cls: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    if cls == "square":
        corners = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
        pts = [(0.8 * a, 0.8 * b) for a, b in corners]
    elif cls == "triangle":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 4)[:-1]]
    elif cls == "hexagon":
        pts = [(math.cos(a), math.sin(a)) for a in np.linspace(0, 2 * math.pi, 7)[:-1]]
    elif cls == "star":
        pts = [
            (
                (1.0 if i % 2 == 0 else 0.42) * math.cos(a),
                (1.0 if i % 2 == 0 else 0.42) * math.sin(a),
            )
            for i, a in enumerate(np.linspace(0, 2 * math.pi, 11)[:-1])
        ]
    elif cls == "cross":
        w = 0.33
        pts = [
            (-w, -1),
            (w, -1),
            (w, -w),
            (1, -w),
            (1, w),
            (w, w),
            (w, 1),
            (-w, 1),
            (-w, w),
            (-1, w),
            (-1, -w),
            (-w, -w),
        ]
    else:
        raise ValueError(cls)
    ca, sa = math.cos(angle), math.sin(angle)
    return [(cx + r * (a * ca - b * sa), cy + r * (a * sa + b * ca)) for a, b in pts]


def shape_mask(
    cls: str,
    size: int,
    rng: np.random.Generator,
    radius: tuple[float, float] = (0.22, 0.36),
    supersample: int = 4,
) -> np.ndarray:
    """Anti-aliased coverage [size, size] in [0, 1] of one shape at a random place, scale
    (circumradius a fraction in ``radius`` of the side), rotation."""
    s = size * supersample
    r = rng.uniform(*radius) * s
    cx, cy = rng.uniform(r + 0.04 * s, s - r - 0.04 * s, size=2)
    angle = rng.uniform(0, 2 * math.pi)
    img = Image.new("L", (s, s), 0)
    draw = ImageDraw.Draw(img)
    if cls == "disk":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
    elif cls == "ring":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        inner = 0.55 * r
        draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=0)
    elif cls == "crescent":
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=255)
        ox, oy = cx + 0.45 * r * math.cos(angle), cy + 0.45 * r * math.sin(angle)
        draw.ellipse([ox - 0.85 * r, oy - 0.85 * r, ox + 0.85 * r, oy + 0.85 * r], fill=0)
    else:
        draw.polygon(_polygon(cls, cx, cy, r, angle), fill=255)
    return np.asarray(img.resize((size, size), Image.BOX), dtype=np.float32) / 255.0


def outline(mask: np.ndarray, width: int = 3) -> np.ndarray:
    """The mask's boundary band (dilation minus erosion), as coverage in [0, 1]."""
    m = Image.fromarray((mask > 0.5).astype(np.uint8) * 255)
    k = 2 * (width // 2) + 1
    band = np.asarray(m.filter(ImageFilter.MaxFilter(k)), dtype=np.float32) - np.asarray(
        m.filter(ImageFilter.MinFilter(k)), dtype=np.float32
    )
    return band / 255.0


def render(
    world: World, split: str, cls: int, rng: np.random.Generator
) -> tuple[np.ndarray, int | None]:
    """One uint8 [size, size, 3] image of class ``cls`` drawn from ``split``'s distribution,
    and the class whose typical texture it wears (None where it wears none of them)."""
    size = world.image_size
    mask = shape_mask(CLASSES[cls], size, rng, world.shape_radius)
    if split == "sketch":
        line = outline(mask, world.outline_width)[..., None]
        return ((1 - line) * 255).repeat(3, axis=2).round().astype(np.uint8), None
    texture_class = None
    if split in IN_DOMAIN_SPLITS:
        typical = rng.random() < world.class_texture_probability
        fg = class_texture(cls, rng) if typical else random_texture(TRAIN_FAMILIES, rng)
        texture_class = cls if typical else None
        bg = random_texture(TRAIN_FAMILIES, rng, avoid=fg.family)
    elif split == "cue_conflict":
        texture_class = (cls + 1 + int(rng.integers(len(CLASSES) - 1))) % len(CLASSES)
        fg = class_texture(texture_class, rng)
        bg = random_texture(TRAIN_FAMILIES, rng, avoid=fg.family)
    elif split == "unseen_textures":
        fg = random_texture(UNSEEN_FAMILIES, rng)
        bg = random_texture(UNSEEN_FAMILIES, rng, avoid=fg.family)
    else:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    m = mask[..., None]
    foreground = paint(fg, size, rng, world.texture_contrast)
    # drawn in any case, so that the same draws follow
    background = paint(bg, size, rng, world.background_pattern_contrast)
    if world.background_colour is not None:
        background = np.broadcast_to(
            np.asarray(world.background_colour, np.float32), background.shape
        )
    img = foreground * m + background * (1 - m)
    return (np.clip(img, 0, 1) * 255).round().astype(np.uint8), texture_class


def image_rng(seed: int, split: str, cls: int, index: int) -> np.random.Generator:
    """Independent stream per image: any one image can be regenerated alone."""
    digest = hashlib.sha256(f"{seed}:{split}:{cls}:{index}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def file_name(split: str, cls: int, index: int, texture_class: int | None) -> str:
    """``<split>_<class>_<i>.png``; cue-conflict images also name the class of their texture."""
    stem = f"{split}_{CLASSES[cls]}_{index:04d}"
    return f"{stem}_as_{CLASSES[texture_class]}.png" if split == "cue_conflict" else f"{stem}.png"


def texture_class_of(path: str | Path) -> int:
    """The texture's class of a cue-conflict image, from its file name."""
    stem = Path(path).stem
    if "_as_" not in stem:
        raise ValueError(f"{path} is not a cue-conflict image (no _as_<class> in its name)")
    return CLASSES.index(stem.rsplit("_as_", 1)[1])


def generate(
    root: Path,
    world: World,
    per_class: dict[str, int],
    seed: int = 0,
    show_progress: bool = True,
    sides: dict[str, int] | None = None,
) -> Path:
    """Write ``root/<split>/<class>/<file_name>`` for every split in ``per_class``; a split in
    ``sides`` is stored resized to that side (px; Lanczos), rendered at ``world.image_size``."""
    from tqdm import tqdm

    root = Path(root)
    total = sum(per_class.values()) * len(CLASSES)
    with tqdm(
        total=total, desc="world", unit="img", leave=False, disable=not show_progress or total < 500
    ) as bar:
        for split, n in per_class.items():
            for cls, name in enumerate(CLASSES):
                d = root / split / name
                d.mkdir(parents=True, exist_ok=True)
                for i in range(n):
                    img, texture_class = render(world, split, cls, image_rng(seed, split, cls, i))
                    picture = Image.fromarray(img)
                    side = (sides or {}).get(split)
                    if side and side != world.image_size:
                        picture = picture.resize((side, side), Image.LANCZOS)
                    picture.save(d / file_name(split, cls, i, texture_class), optimize=False)
                    bar.update()
    return root
