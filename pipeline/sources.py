"""Where source images come from: the embedded demo set or an ImageNet-style folder tree.

Listing is deterministic (sorted), so shard ``i`` always holds the same images and a
rerun, or a resume, reproduces the same dataset.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from nsneg.datasets_manifest.format.naming import safe_key

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: Real photographs bundled with scikit-image (no network): the default demo set.
#: Each is its own class. camera.png is grayscale, so the demo exercises conversion too.
EMBEDDED_PHOTOS = (
    "astronaut.png",
    "brick.png",
    "camera.png",
    "chelsea.png",
    "coffee.png",
    "grass.png",
    "gravel.png",
    "hubble_deep_field.jpg",
    "motorcycle_left.png",
    "rocket.jpg",
)

#: ImageNet-100, the CMC subset (Tian et al.) used by the paper's code.
IMAGENET100 = tuple(
    """
n02869837 n01749939 n02488291 n02107142 n13037406 n02091831 n04517823 n04589890 n03062245 n01773797
n01735189 n07831146 n07753275 n03085013 n04485082 n02105505 n01983481 n02788148 n03530642 n04435653
n02086910 n02859443 n13040303 n03594734 n02085620 n02099849 n01558993 n04493381 n02109047 n04111531
n02877765 n04429376 n02009229 n01978455 n02106550 n01820546 n01692333 n07714571 n02974003 n02114855
n03785016 n03764736 n03775546 n02087046 n07836838 n04099969 n04592741 n03891251 n02701002 n03379051
n02259212 n07715103 n03947888 n04026417 n02326432 n03637318 n01980166 n02113799 n02086240 n03903868
n02483362 n04127249 n02089973 n03017168 n02093428 n02804414 n02396427 n04418357 n02172182 n01729322
n02113978 n03787032 n02089867 n02119022 n03777754 n04238763 n02231487 n03032252 n02138441 n02104029
n03837869 n03494278 n04136333 n03794056 n03492542 n02018207 n04067472 n03930630 n03584829 n02123045
n04229816 n02100583 n03642806 n04336792 n03259280 n02116738 n02108089 n03424325 n01855672 n02090622
""".split()
)


@dataclass(frozen=True)
class SourceImage:
    key: str  # safe webdataset key, unique in the listing
    path: str  # absolute path of the source file: read here, never stored in a shard
    cls: int  # index into the listing's classes
    wnid: str
    relpath: str  # the path below the listing's root (``<split>/<wnid>/<file>``): what shards and manifests record


@dataclass(frozen=True)
class Listing:
    classes: list[str]
    images: list[SourceImage]


def key_candidates(wnid: str, stem: str) -> tuple[str, str]:
    """The key a source file gets: the safe stem, or -- when two classes share the stem -- the safe ``<wnid>_<stem>``."""
    return safe_key(stem), safe_key(f"{wnid}_{stem}")


def _assign_keys(entries: list[tuple[Path, int, str]], root: Path) -> list[SourceImage]:
    """``entries``: (path under ``root``, class index, wnid)."""
    seen: dict[str, int] = {}
    for path, _, _ in entries:
        seen[safe_key(path.stem)] = seen.get(safe_key(path.stem), 0) + 1
    images = []
    for path, cls, wnid in entries:
        plain, with_class = key_candidates(wnid, path.stem)
        key = with_class if seen[plain] > 1 else plain
        images.append(
            SourceImage(
                key=key,
                path=str(path.resolve()),
                cls=cls,
                wnid=wnid,
                relpath=path.relative_to(root).as_posix(),
            )
        )
    if len({im.key for im in images}) != len(images):
        raise ValueError(
            "source keys are not unique even after adding class names; rename the duplicates"
        )
    return images


def embedded_listing() -> Listing:
    import skimage

    data_dir = Path(skimage.__file__).parent / "data"
    classes = sorted(Path(name).stem for name in EMBEDDED_PHOTOS)
    entries = [
        (data_dir / name, classes.index(Path(name).stem), Path(name).stem)
        for name in EMBEDDED_PHOTOS
    ]
    missing = [str(p) for p, _, _ in entries if not p.exists()]
    if missing:
        raise FileNotFoundError(f"scikit-image's bundled photos are missing: {missing}")
    return Listing(classes=classes, images=_assign_keys(sorted(entries), data_dir))


def folder_listing(root: Path, split: str, subset: str = "all") -> Listing:
    """``root/<split>/<wnid>/*`` (ImageFolder layout). ``subset``: ``all`` or ``imagenet100``."""
    split_dir = Path(root) / split
    if not split_dir.is_dir():
        raise FileNotFoundError(
            f"{split_dir} is not a directory: expected {root}/{split}/<wnid>/<image files>"
        )
    classes = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if subset == "imagenet100":
        missing = sorted(set(IMAGENET100) - set(classes))
        if missing:
            raise FileNotFoundError(
                f"{split_dir} lacks {len(missing)} ImageNet-100 classes, e.g. {missing[:5]}"
            )
        classes = sorted(IMAGENET100)
    elif subset != "all":
        raise ValueError(f"unknown subset {subset!r}: choose 'all' or 'imagenet100'")
    if not classes:
        raise FileNotFoundError(f"{split_dir} has no class folders")
    entries = []
    for cls, wnid in enumerate(classes):
        for path in sorted((split_dir / wnid).iterdir()):
            if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                entries.append((path, cls, wnid))
    if not entries:
        raise FileNotFoundError(
            f"{split_dir} holds no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    return Listing(classes=classes, images=_assign_keys(entries, Path(root)))
