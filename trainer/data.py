"""Streaming training data: shards -> decoded (query, key, texture) crops -> batches; or an
ImageFolder tree -> (query, key) crops, for the negatives that need no texture (``none``, ``patch``).

A webdataset pipeline of small stages. Sources are a local shard directory (its
manifest is checked and its train shards' sha256 verified before training, once per
node, remembered by size and mtime: ``verify_local``), a published set by name or by its
folder's url (streamed; every shard hashed as it is read and refused on a mismatch before
any of its samples is used: ``open_verified``), or a comma list or brace pattern of shard
URLs (file paths, http(s)://). Shards are resampled, split by node and worker, and every
epoch has exactly ``steps_per_epoch`` batches on every rank, so DDP ranks never wait on
an uneven shard.

The loader does the geometric part of MoCo v2's augmentation (``nsneg.trainer.crops``: the
query's and key's crops of the source, the texture cropped with the query's box); photometric
augmentation happens batched on the device (``nsneg.trainer.augment``). A sample that breaks
the sample policy or does not decode is skipped and named (``SkipLog``); the count travels with
the next batch, so the trainer holds it against ``--max-skip-fraction``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from nsneg.datasets_manifest.format.files import atomic_write_json
from nsneg.datasets_manifest.format.manifest import (
    load_manifest,
    shard_paths,
    shard_problem,
)
from nsneg.datasets_manifest.format.sample_reader import check_sample, read_tar
from nsneg.datasets_manifest.format.skip_log import SkipLog
from nsneg.trainer.crops import decode_for_crops, paired_crops

SPLIT = "train"
#: A url's expected sha256 travels with it as a fragment (as pip's ``#sha256=``): ``open_verified`` checks it.
HASH_FRAGMENT = "#sha256="
SPOOL_BYTES = 64 << 20  # a streamed shard is held in memory up to this size, on disk beyond


class BadShards(RuntimeError):
    pass


def verified_cache_path() -> Path:
    """``$NSNEG_CACHE_DIR/verified.json``, else ``$XDG_CACHE_HOME/nsneg/`` (``~/.cache/nsneg/``)."""
    root = (
        os.environ.get("NSNEG_CACHE_DIR")
        or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nsneg"
    )
    return Path(root) / "verified.json"


def verify_local(
    root: Path, split: str = SPLIT, *, reverify: bool = False, show_progress: bool = False
) -> int:
    """Hash ``split``'s shards of a local set against its manifest; returns how many were hashed now.

    A shard already verified on this machine (``verified_cache_path``: keyed by path, size and
    mtime, and the sha256 it matched) is not read again unless ``reverify``. Raises ``BadShards``
    naming every shard that does not match.
    """
    from tqdm import tqdm

    manifest = load_manifest(root)
    if split not in manifest["splits"]:
        raise BadShards(f"{root} has no {split!r} split (has {sorted(manifest['splits'])})")
    cache_path = verified_cache_path()
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, json.JSONDecodeError):
        cache = {}
    shards = [
        (Path(root).resolve() / split / s["name"], s) for s in manifest["splits"][split]["shards"]
    ]

    def known(path: Path, shard: dict[str, Any]) -> bool:
        entry, stat = cache.get(str(path)), path.stat() if path.exists() else None
        return (
            not reverify
            and stat is not None
            and entry
            == {"bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns, "sha256": shard["sha256"]}
        )

    todo = [(p, s) for p, s in shards if not known(p, s)]
    problems = []
    with tqdm(
        total=sum(s["bytes"] for _, s in todo),
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=f"verify {split}",
        disable=not (show_progress and todo),
    ) as bar:
        for path, shard in todo:
            if problem := shard_problem(path, shard):
                problems.append(problem)
                cache.pop(str(path), None)
            else:
                stat = path.stat()
                cache[str(path)] = {
                    "bytes": stat.st_size,
                    "mtime_ns": stat.st_mtime_ns,
                    "sha256": shard["sha256"],
                }
            bar.update(shard["bytes"])
    if todo:
        try:
            cache_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(cache_path, cache)
        except OSError:  # an unwritable cache only costs the next start a re-hash
            pass
    if problems:
        raise BadShards(
            "shards do not match their manifest, refusing to train on them:\n  "
            + "\n  ".join(problems)
        )
    return len(todo)


def resolve_urls(
    spec: str, verify: bool = True, manifest_dirs: tuple[str, ...] = ()
) -> tuple[list[str], int | None]:
    """-> (shard urls, number of samples or None when unknown).

    A directory with a manifest: its train split, verified against the manifest's sha256
    (``verify_local``; a shard that does not match is refused: it is never read). A
    published set's name (``NAME[@VERSION]``, see ``nsneg-data list``) or its folder's url
    (``hf://datasets/ORG/NAME``, ``https://...``, no ``.tar`` at the end): its urls, each
    with its expected sha256 (``HASH_FRAGMENT``), streamed without download and verified
    as read. Otherwise a comma list or brace pattern of urls.
    """
    path = Path(spec)
    if path.is_dir():
        manifest = load_manifest(path)
        if not manifest["has_source"]:
            raise BadShards(
                f"{spec} carries no source pixels (--no-source); pair it with ImageNet first"
            )
        if verify:
            verify_local(path)
        return [str(p) for p in shard_paths(path, SPLIT, manifest)], manifest["splits"][SPLIT][
            "samples"
        ]
    if (
        ("/" not in spec or "://" in spec)
        and not spec.endswith(".tar")
        and not any(c in spec for c in ",{")
    ):
        from nsneg.datasets_manifest import registry

        try:
            published = registry.lookup(spec, manifest_dirs)
        except registry.UnknownSet as e:
            raise BadShards(str(e)) from None
        if not published.manifest["has_source"]:
            raise BadShards(
                f"{spec} carries no source pixels; fetch it and pair it with ImageNet "
                "(nsneg-textures pair) first"
            )
        if SPLIT not in published.manifest["splits"]:
            raise BadShards(
                f"{spec} has no {SPLIT!r} split (has {sorted(published.manifest['splits'])})"
            )
        shards = published.manifest["splits"][SPLIT]["shards"]
        urls = published.urls(SPLIT)
        return [
            f"{u}{HASH_FRAGMENT}{s['sha256']}" for u, s in zip(urls, shards)
        ], published.manifest["splits"][SPLIT]["samples"]
    import braceexpand

    urls = [
        u for part in spec.split(",") if part.strip() for u in braceexpand.braceexpand(part.strip())
    ]
    if not urls:
        raise BadShards(f"no shards in {spec!r}")
    missing = [u for u in urls if "://" not in u and not Path(u).is_file()]
    if missing:
        raise BadShards(f"no such shard directory or file: {', '.join(missing[:5])}")
    return urls, None


def _read_verified(url: str, expected: str):
    """The whole shard at ``url``, hashed as it is read, as a file object rewound to its start.

    Nothing of a shard is passed on before all of it has matched ``expected``, so a changed
    shard never reaches a batch, however decodable its samples are.
    """
    import webdataset as wds

    digest, spool = hashlib.sha256(), tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES)
    with wds.gopen(url) as stream:
        while block := stream.read(1 << 20):
            digest.update(block)
            spool.write(block)
    if digest.hexdigest() != expected:
        spool.close()
        raise BadShards(
            f"shard {url}: sha256 {digest.hexdigest()}, but its manifest says {expected}; refusing "
            "to train on it (it changed where it is served, or arrived damaged)"
        )
    spool.seek(0)
    return spool


def open_verified(src: Iterator[dict], handler=None) -> Iterator[dict]:
    """webdataset's ``url_opener`` stage, verifying every url that carries ``HASH_FRAGMENT``.

    A mismatch raises ``BadShards`` (never passed to ``handler``: it stops the run); other
    errors in opening go to ``handler`` as in webdataset (True: skip the shard).
    """
    import webdataset as wds

    handler = handler or wds.reraise_exception
    for sample in src:
        url, _, expected = sample["url"].partition(HASH_FRAGMENT)
        try:
            stream = _read_verified(url, expected) if expected else wds.gopen(url)
        except BadShards:
            raise
        except Exception as exn:
            exn.args = exn.args + (url,)
            if handler(exn):
                continue
            break
        yield {**sample, "url": url, "stream": stream}


def tar_samples(src: Iterator[dict], handler) -> Iterator[dict]:
    """Shard urls -> raw samples through the contract's tar layer (``read_tar``: a refused
    member condemns its sample, which ``views`` skips), with ``open_verified`` as the opener."""
    for opened in open_verified(src, handler):
        with opened["stream"] as stream:
            yield from read_tar(stream, opened["url"])


def worker_seed(seed: int) -> int:
    """A seed for this rank and DataLoader worker: streams differ across workers, repeat across runs."""
    import webdataset as wds

    return wds.utils.make_seed(seed, wds.utils.pytorch_worker_seed())


def views(samples: Iterator[dict], image_size: int, seed: int) -> Iterator[tuple]:
    """Raw shard samples -> (q, k, t) uint8 crops and the number of bad samples skipped before.

    A sample that fails the contract's sample policy (``check_sample``; its class is not
    range-checked: training does not read it) or whose source fails to decode is skipped.
    """
    yield from _crops(samples, image_size, random.Random(worker_seed(seed)), _shard_source)


def _shard_source(raw: dict) -> tuple[io.BytesIO, Image.Image | None]:
    sample = check_sample(raw, has_source=True)
    return io.BytesIO(sample.source_bytes), sample.texture


def _folder_source(sample: dict) -> tuple[str, None]:
    return sample["path"], None


def _crops(
    samples: Iterator[dict], image_size: int, rng: random.Random, open_source
) -> Iterator[tuple]:
    """Samples -> (q, k, t, skipped before): ``open_source(sample)`` -> (image file, texture or None),
    then ``decode_for_crops``. A bad sample goes to this worker's ``SkipLog`` (logged with its shard
    and key); the count travels with the next good sample and the trainer holds the total against
    its threshold (``check_fraction``)."""
    skips = SkipLog(max_fraction=1.0)  # judged by the trainer, which sees every rank's batches
    for raw in samples:
        try:
            source, texture = open_source(raw)
            image, box_q, box_k = decode_for_crops(source, image_size, rng)
        except Exception as e:
            where = raw if isinstance(raw, dict) else {}
            skips.skip(
                where.get("__url__", "?"),
                where.get("__key__", "?"),
                str(e),
                getattr(e, "kind", "source"),
            )
            continue
        yield (*paired_crops(image, box_q, box_k, image_size, texture), len(skips.skipped))
        skips.skipped.clear()  # each was logged; only the count moves on


def image_folder(root: str | Path) -> list[str] | None:
    """The image files of an ImageFolder tree (``root/CLASS/*.JPEG``, torchvision's scan), in a
    fixed order; None where ``root`` is no folder or a shard set (it has a manifest.json)."""
    root = Path(root)
    if not root.is_dir() or (root / "manifest.json").exists():
        return None
    from torchvision.datasets import ImageFolder

    try:
        return [path for path, _ in ImageFolder(str(root), loader=str).samples]
    except (FileNotFoundError, RuntimeError):  # no class folders, or no image in them
        return None


def folder_images(paths: list[str], seed: int) -> Iterator[dict]:
    """Endless samples ``{"__key__", "__url__", "path"}`` of this rank and worker's share of ``paths``,
    reshuffled each pass with a generator seeded by (``seed``, rank, worker)."""
    import webdataset as wds

    rank, world, worker, workers = wds.utils.pytorch_worker_info()
    mine = paths[rank * workers + worker :: world * workers] or paths
    rng = random.Random(worker_seed(seed))
    while True:
        order = list(mine)
        rng.shuffle(order)
        for path in order:
            yield {"__key__": Path(path).stem, "__url__": str(Path(path).parent), "path": path}


def folder_views(samples: Iterator[dict], image_size: int, seed: int) -> Iterator[tuple]:
    """Image files -> (q, k, empty texture) uint8 crops and the number of unreadable files skipped
    before (as ``views`` for shard samples)."""
    yield from _crops(samples, image_size, random.Random(worker_seed(seed) + 1), _folder_source)


def make_folder_loader(
    paths: list[str],
    *,
    batch_size: int,
    image_size: int,
    steps: int,
    workers: int,
    seed: int,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """``make_loader`` for the images of an ImageFolder tree (``image_folder``): no textures."""
    import webdataset as wds

    pipeline = wds.DataPipeline(
        lambda: folder_images(paths, seed),
        lambda src: folder_views(src, image_size, seed),
        wds.batched(batch_size, partial=False),
    )
    return epoch_loader(pipeline, steps=steps, workers=workers, pin_memory=pin_memory)


def epoch_loader(pipeline, *, steps: int, workers: int, pin_memory: bool):
    """A pipeline of whole batches as a DataLoader of exactly ``steps`` batches."""
    import webdataset as wds

    loader = wds.WebLoader(
        pipeline,
        batch_size=None,
        num_workers=workers,
        pin_memory=pin_memory,
        worker_init_fn=ignore_interrupts,
    )
    return loader.with_epoch(steps)


def ignore_interrupts(_worker: int) -> None:
    """DataLoader workers leave Ctrl-C to the training process, which stops after its step."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def make_loader(
    urls: list[str],
    *,
    batch_size: int,
    image_size: int,
    steps: int,
    workers: int,
    seed: int,
    shuffle_buffer: int = 1000,
    pin_memory: bool = False,
) -> torch.utils.data.DataLoader:
    """Per-rank loader for one epoch: exactly ``steps`` batches of ``batch_size`` (per rank).

    Shards are resampled with a seed from (``seed``, rank, worker), so a given seed gives
    the same stream again -- make one loader per epoch with a per-epoch seed. ``pin_memory``:
    batches in page-locked memory, for ``non_blocking`` copies to a GPU.
    """
    import webdataset as wds

    pipeline = wds.DataPipeline(
        wds.ResampledShards(urls, seed=seed, deterministic=True),
        lambda src: tar_samples(src, wds.warn_and_continue),
        lambda src: wds.shuffle(shuffle_buffer, seed=worker_seed(seed))(src),
        lambda src: views(src, image_size, seed),
        wds.batched(batch_size, partial=False),
    )
    return epoch_loader(pipeline, steps=steps, workers=workers, pin_memory=pin_memory)
