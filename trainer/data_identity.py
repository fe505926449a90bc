"""What identifies a run's training data, whatever path or url it is read from.

A run stores it (in its checkpoint and resolved ``config.yaml``) so that it can move: resumed
on another machine or mount point with ``--negatives`` given anew, the data is accepted when
its identity is the stored one, not when its path string is.

* a shard set (a local directory with ``manifest.json``, or a published set by name or url):
  the manifest's ``name`` and ``version`` (where it has them) and the sha256 of its train
  shards (one digest over them, with their count);
* an ImageFolder tree: its images' paths relative to the tree and their sizes;
* a list of shard urls: their file names.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format.manifest import ManifestError, load_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.trainer.data import SPLIT, image_folder


def _digest(parts: list[str]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part.encode() + b"\n")
    return h.hexdigest()


def _of_manifest(manifest: dict[str, Any]) -> dict[str, Any]:
    split = manifest["splits"].get(SPLIT, {"shards": [], "samples": 0})
    return {
        "kind": "shards",
        "name": manifest.get("name"),
        "version": manifest.get("version"),
        "shards": len(split["shards"]),
        "samples": split["samples"],
        "sha256": _digest([s["sha256"] for s in split["shards"]]),
    }


def data_identity(
    spec: str, manifest_dirs: tuple[str, ...] = (), images: list[str] | None = None
) -> dict[str, Any]:
    """The identity of the data ``--negatives spec`` names (see the module's docstring).

    ``images``: the ImageFolder's files as ``data.image_folder(spec)`` listed them, where the
    caller has them already (a tree is walked once)."""
    path = Path(spec)
    if path.is_dir() and (path / MANIFEST_NAME).is_file():
        return _of_manifest(load_manifest(path))
    images = images if images is not None else image_folder(spec)
    if images is not None:
        # the paths as listed under the tree (class folders may be links elsewhere)
        return {
            "kind": "image_folder",
            "images": len(images),
            "sha256": _digest([f"{os.path.relpath(p, spec)} {os.path.getsize(p)}" for p in images]),
        }
    if (
        ("/" not in spec or "://" in spec)
        and not spec.endswith(".tar")
        and not any(c in spec for c in ",{")
    ):  # a published set, as ``data.resolve_urls`` tells them apart
        from nsneg.datasets_manifest import registry

        try:
            published = (
                registry.from_url(spec)
                if "://" in spec
                else registry.find(spec, list(manifest_dirs))
            )
        except (KeyError, FileNotFoundError, ManifestError) as e:
            raise ValueError(str(e).strip('"')) from None
        return _of_manifest(published.manifest)
    import braceexpand

    names = [
        u.rsplit("/", 1)[-1]
        for part in spec.split(",")
        if part.strip()
        for u in braceexpand.braceexpand(part.strip())
    ]
    return {"kind": "urls", "shards": len(names), "sha256": _digest(names)}


def differences(stored: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """What tells two identities apart (empty: the same data). ``name`` and ``version`` count
    only where both have them: a set's local copy may not carry the name it was published under."""
    problems = []
    for key in ("kind", "name", "version", "shards", "images", "samples", "sha256"):
        a, b = stored.get(key), found.get(key)
        if key in ("name", "version") and (a is None or b is None):
            continue
        if a != b:
            problems.append(f"{key} {a} -> {b}" if key != "sha256" else "the content hashes differ")
    return problems


def describe(identity: dict[str, Any]) -> str:
    if identity.get("kind") == "shards":
        name = f"{identity['name']}@{identity['version']}, " if identity.get("name") else ""
        return f"{name}{identity['shards']} shards, {identity['samples']} samples"
    if identity.get("kind") == "image_folder":
        return f"an image folder of {identity['images']} images"
    return f"{identity.get('shards')} shard urls"
