"""Published shard sets: their manifests, found by name, and how one is published.

A published manifest is the pipeline's manifest (``pipeline.contract``) plus ``name``,
``version``, ``base_url`` and a ``url`` per shard, stored as
``datasets_manifest/sets/<name>-<version>.json`` next to the code, or in any directory
passed as ``--manifest-dir``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from pipeline import contract, files

SHIPPED_DIR = Path(__file__).parent / "sets"


@dataclass(frozen=True)
class PublishedSet:
    name: str
    version: str
    manifest: dict[str, Any]
    path: Path

    def urls(self, split: str) -> list[str]:
        if split not in self.manifest["splits"]:
            raise KeyError(f"{self.name}@{self.version} has no split {split!r} (has {sorted(self.manifest['splits'])})")
        return [s["url"] for s in self.manifest["splits"][split]["shards"]]


def _read(path: Path) -> PublishedSet:
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise contract.ManifestError(f"{path}: not valid JSON ({e})") from None
    contract.validate_manifest(manifest, str(path))
    for field in ("name", "version", "base_url"):
        if field not in manifest:
            raise contract.ManifestError(f"{path}: a published manifest needs {field!r}")
    for split, info in manifest["splits"].items():
        if any("url" not in s for s in info["shards"]):
            raise contract.ManifestError(f"{path}: every shard of a published set needs a 'url' (split {split!r})")
    return PublishedSet(manifest["name"], manifest["version"], manifest, path)


def known_sets(manifest_dirs: Iterable[Path] = ()) -> list[PublishedSet]:
    """Every published manifest shipped with nsneg and in ``manifest_dirs``, sorted by name and version."""
    sets = []
    for directory in [SHIPPED_DIR, *manifest_dirs]:
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"manifest directory {directory} does not exist")
        sets += [_read(p) for p in sorted(Path(directory).glob("*.json"))]
    return sorted(sets, key=lambda s: (s.name, s.version))


def find(spec: str, manifest_dirs: Iterable[Path] = ()) -> PublishedSet:
    """``NAME`` (newest version) or ``NAME@VERSION``."""
    name, _, version = spec.partition("@")
    matches = [s for s in known_sets(manifest_dirs) if s.name == name and (not version or s.version == version)]
    if not matches:
        known = sorted({f"{s.name}@{s.version}" for s in known_sets(manifest_dirs)})
        raise KeyError(f"no published shard set {spec!r}; known: {', '.join(known) or 'none'} "
                       "(add --manifest-dir DIR for manifests kept elsewhere)")
    return max(matches, key=lambda s: _version_key(s.version))


def _version_key(version: str) -> tuple:
    return tuple((0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split("."))


def publish(shards: Path, base_url: str, name: str, version: str, manifest_dir: Path = SHIPPED_DIR) -> Path:
    """Write the published manifest of a local, verified shard set whose files will be served under ``base_url``."""
    problems = contract.verify(shards)
    if problems:
        raise contract.ManifestError("refusing to publish shards that do not match their manifest:\n  " + "\n  ".join(problems))
    manifest = contract.load_manifest(shards)
    if not all(info["complete"] for info in manifest["splits"].values()):
        raise contract.ManifestError(f"{shards}: a split is incomplete (an interrupted job); finish it before publishing")
    base = base_url.rstrip("/")
    published = {**manifest, "name": name, "version": version, "base_url": base}
    published["splits"] = {
        split: {**info, "shards": [{**s, "url": f"{base}/{split}/{s['name']}"} for s in info["shards"]]}
        for split, info in manifest["splits"].items()
    }
    contract.validate_manifest(published, f"{name}@{version}")
    out = Path(manifest_dir) / f"{name}-{version}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    files.atomic_write_json(out, published)
    return out
