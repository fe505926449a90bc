"""The manifest of a shard set: building it, its schema, validating and loading it, and verifying
the shards it lists against their sha256 and size."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format.files import sha256_file
from nsneg.datasets_manifest.format.naming import (
    CLASS_FIELD,
    FORMAT_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    META_FIELD,
    SOURCE_FIELD,
    TEXTURE_FIELD,
)


def build_manifest(
    classes: list[str],
    splits: dict[str, dict[str, Any]],
    generator: dict[str, Any],
    has_source: bool,
) -> dict[str, Any]:
    """``splits[name] = {"shards": [records], "skipped": [{"path", "key", "reason"}], "complete": bool}``.

    ``complete`` is False while a split still has unfinished shards (an interrupted job).
    """
    out_splits = {}
    for name, split in splits.items():
        shards = [
            {k: r[k] for k in ("name", "sha256", "bytes", "samples")} for r in split["shards"]
        ]
        out_splits[name] = {
            "shards": shards,
            "samples": sum(s["samples"] for s in shards),
            "bytes": sum(s["bytes"] for s in shards),
            "skipped": split["skipped"],
            "complete": split["complete"],
        }
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "classes": classes,
        "has_source": has_source,
        "fields": sorted(
            [TEXTURE_FIELD, CLASS_FIELD, META_FIELD] + ([SOURCE_FIELD] if has_source else [])
        ),
        "generator": generator,
        "splits": out_splits,
    }


_SHARD_SCHEMA = {
    "type": "object",
    "required": ["name", "sha256", "bytes", "samples"],
    "properties": {
        "name": {"type": "string", "pattern": r"^[A-Za-z0-9_-][A-Za-z0-9._-]*\.tar$"},
        "sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"},
        "bytes": {"type": "integer", "minimum": 0},
        "samples": {"type": "integer", "minimum": 0},
        "url": {"type": "string"},  # published sets only
    },
}

#: The manifest schema. A published set (``datasets_manifest``) is the same document plus
#: ``name``, ``version``, ``base_url`` and a ``url`` per shard.
MANIFEST_SCHEMA = {
    "type": "object",
    "required": [
        "format",
        "format_version",
        "classes",
        "has_source",
        "fields",
        "generator",
        "splits",
    ],
    "properties": {
        "format": {"const": FORMAT_NAME},
        "format_version": {"type": "integer"},
        "classes": {"type": "array", "items": {"type": "string"}},
        "has_source": {"type": "boolean"},
        "fields": {"type": "array", "items": {"type": "string"}},
        "generator": {"type": "object"},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "version": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]*$"},
        "base_url": {"type": "string"},
        "splits": {
            "type": "object",
            "propertyNames": {"pattern": "^[A-Za-z0-9_-]+$"},
            "additionalProperties": {
                "type": "object",
                "required": ["shards", "samples", "bytes", "skipped", "complete"],
                "properties": {
                    "shards": {"type": "array", "items": _SHARD_SCHEMA},
                    "samples": {"type": "integer"},
                    "bytes": {"type": "integer"},
                    "skipped": {"type": "array"},
                    "complete": {"type": "boolean"},
                },
            },
        },
    },
}


class ManifestError(ValueError):
    pass


def validate_manifest(manifest: Any, where: str = "manifest") -> dict[str, Any]:
    """Check a manifest (local or published) before anything trusts it; clear errors, not KeyErrors.

    Beyond the schema: a known format version, unique shard names, names that cannot
    escape their directory, and shard urls under the set's ``base_url``.
    """
    import jsonschema

    if isinstance(manifest, dict) and manifest.get("format") == FORMAT_NAME:
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ManifestError(
                f"{where}: format_version {manifest.get('format_version')!r}; this nsneg reads "
                f"version {FORMAT_VERSION} (upgrade nsneg to read newer shard sets)"
            )
    try:
        jsonschema.validate(manifest, MANIFEST_SCHEMA)
    except jsonschema.ValidationError as e:
        path = "/".join(str(p) for p in e.absolute_path) or "(top level)"
        raise ManifestError(f"{where}: invalid at {path}: {e.message}") from None
    base = manifest.get("base_url")
    for split, info in manifest["splits"].items():
        names = [s["name"] for s in info["shards"]]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ManifestError(f"{where}: duplicate shard names in split {split!r}: {duplicates}")
        for shard in info["shards"]:
            if ".." in shard["name"] or "/" in shard["name"] or "\\" in shard["name"]:
                raise ManifestError(
                    f"{where}: shard name {shard['name']!r} must be a plain file name"
                )
            url = shard.get("url")
            if url is not None and (
                base is None or not url.startswith(base.rstrip("/") + "/") or "/../" in url
            ):
                raise ManifestError(
                    f"{where}: shard url {url!r} is outside the set's base_url {base!r}"
                )
    return manifest


def load_manifest(root: Path) -> dict[str, Any]:
    path = Path(root) / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"{path} not found: is {root} a shard directory written by `nsneg-textures build`?"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    return validate_manifest(manifest, str(path))


def shard_paths(root: Path, split: str, manifest: dict[str, Any] | None = None) -> list[Path]:
    manifest = manifest or load_manifest(root)
    if split not in manifest["splits"]:
        raise KeyError(f"split {split!r} not in {root} (has {sorted(manifest['splits'])})")
    return [Path(root) / split / s["name"] for s in manifest["splits"][split]["shards"]]


def shard_problem(path: Path, shard: dict[str, Any], *, hash_it: bool = True) -> str | None:
    """Why the file at ``path`` is not the manifest's ``shard`` (None when it is)."""
    if not path.exists():
        return f"{path}: missing"
    if path.stat().st_size != shard["bytes"]:
        return f"{path}: {path.stat().st_size} bytes, manifest says {shard['bytes']}"
    if hash_it and (actual := sha256_file(path)) != shard["sha256"]:
        return f"{path}: sha256 mismatch (manifest {shard['sha256']}, file {actual})"
    return None


def verify(root: Path, splits: Iterable[str] | None = None) -> list[str]:
    """Re-hash every shard of ``splits`` (default: all) listed in the manifest; returns a list of
    problems (empty = verified)."""
    manifest = load_manifest(root)
    problems = []
    for split in manifest["splits"] if splits is None else splits:
        for shard in manifest["splits"][split]["shards"]:
            if problem := shard_problem(Path(root) / split / shard["name"], shard):
                problems.append(problem)
    return problems
