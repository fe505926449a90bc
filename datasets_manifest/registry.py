"""Published shard sets: their manifests, found by name, and how one is published.

A published manifest is the pipeline's manifest (``nsneg.datasets_manifest.format.manifest``) plus ``name``,
``version``, ``base_url`` and a ``url`` per shard, stored as ``<name>-<version>.json``.
``NAME[@VERSION]`` is looked up, in this order, in ``datasets_manifest/sets/`` (shipped with
nsneg), in the user's manifest folder (``user_manifest_dir``: where ``publish`` writes) and in
every ``--manifest-dir``, which may also be a url: the folder of a published set holds its
own ``<name>-<version>.json`` (``publish`` writes it there), so ``--manifest-dir BASE_URL``
finds ``NAME@VERSION`` where it is served. A set's folder itself, wherever it is served
(``https://``, ``hf://datasets/ORG/NAME``, ``file://``), is also a published set
(``from_url``): its ``manifest.json`` carries the name and version it was published under.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import (
    ManifestError,
    load_manifest,
    validate_manifest,
    verify,
)
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME

SHIPPED_DIR = Path(__file__).parent / "sets"


def user_manifest_dir() -> Path:
    """``$NSNEG_MANIFEST_DIR``, else ``$XDG_DATA_HOME/nsneg/sets`` (``~/.local/share/nsneg/sets``)."""
    if os.environ.get("NSNEG_MANIFEST_DIR"):
        return Path(os.environ["NSNEG_MANIFEST_DIR"])
    data_home = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(data_home) / "nsneg" / "sets"


@dataclass(frozen=True)
class PublishedSet:
    name: str
    version: str
    manifest: dict[str, Any]
    path: Path

    def urls(self, split: str) -> list[str]:
        if split not in self.manifest["splits"]:
            raise KeyError(
                f"{self.name}@{self.version} has no split {split!r} (has {sorted(self.manifest['splits'])})"
            )
        return [s["url"] for s in self.manifest["splits"][split]["shards"]]


def is_url(location: str | Path) -> bool:
    return "://" in str(location)


def read_text(where: str) -> str:
    """The text at a url (http(s) through requests, anything else through fsspec);
    ``FileNotFoundError`` naming it when it cannot be read."""
    try:
        if where.startswith(("http://", "https://")):
            import requests

            response = requests.get(where, timeout=(10, 60))
            response.raise_for_status()
            return response.text
        import fsspec

        with fsspec.open(where, "rt") as f:
            return f.read()
    except (OSError, ValueError, ImportError) as e:  # requests' errors are OSErrors
        raise FileNotFoundError(f"cannot read {where}: {e}") from None


def _read(path: Path | str, text: str | None = None) -> PublishedSet:
    try:
        manifest = json.loads(Path(path).read_text() if text is None else text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{path}: not valid JSON ({e})") from None
    validate_manifest(manifest, str(path))
    for field in ("name", "version", "base_url"):
        if field not in manifest:
            raise ManifestError(f"{path}: a published manifest needs {field!r}")
    for split, info in manifest["splits"].items():
        if any("url" not in s for s in info["shards"]):
            raise ManifestError(
                f"{path}: every shard of a published set needs a 'url' (split {split!r})"
            )
    return PublishedSet(manifest["name"], manifest["version"], manifest, Path(str(path)))


def published_name(name: str, version: str) -> str:
    """The file name of a published manifest."""
    return f"{name}-{version}.json"


def known_sets(manifest_dirs: Iterable[Path | str] = ()) -> list[PublishedSet]:
    """Every published manifest shipped with nsneg, in the user's folder and in the local
    ``manifest_dirs`` (a url cannot be listed), sorted by name and version."""
    sets = []
    user = [user_manifest_dir()] if user_manifest_dir().is_dir() else []
    local = [Path(d) for d in manifest_dirs if not is_url(d)]
    for directory in dict.fromkeys([SHIPPED_DIR, *user, *local]):
        if not Path(directory).is_dir():
            raise FileNotFoundError(f"manifest directory {directory} does not exist")
        sets += [
            _read(p)
            for p in sorted(Path(directory).glob("*.json"))
            if p.name != MANIFEST_NAME  # a set's own folder: only its published manifest
        ]
    return sorted(sets, key=lambda s: (s.name, s.version))


def find(spec: str, manifest_dirs: Iterable[Path | str] = ()) -> PublishedSet:
    """``NAME`` (newest version) or ``NAME@VERSION``; a url in ``manifest_dirs`` is asked for
    ``<url>/<name>-<version>.json`` (``NAME@VERSION`` only)."""
    manifest_dirs = list(manifest_dirs)
    name, _, version = spec.partition("@")
    matches = [
        s
        for s in known_sets(manifest_dirs)
        if s.name == name and (not version or s.version == version)
    ]
    remote = [str(d).rstrip("/") for d in manifest_dirs if is_url(d)]
    if not matches and remote:
        if not version:
            raise KeyError(
                f"{spec!r}: give NAME@VERSION to look a set up at {', '.join(remote)} "
                "(a url cannot be listed)"
            )
        for base in remote:
            where = f"{base}/{published_name(name, version)}"
            try:
                text = read_text(where)
            except FileNotFoundError:
                continue
            found = _read(where, text)
            if (found.name, found.version) != (name, version):
                raise ManifestError(f"{where} describes {found.name}@{found.version}, not {spec}")
            return found
    if not matches:
        known = sorted({f"{s.name}@{s.version}" for s in known_sets(manifest_dirs)})
        raise KeyError(
            f"no published shard set {spec!r}; known: {', '.join(known) or 'none'} "
            "(add --manifest-dir DIR for manifests kept elsewhere)"
        )
    return max(matches, key=lambda s: _version_key(s.version))


class UnknownSet(LookupError):
    """No published set answers to a name or url (or its manifest is unreadable); one message."""


def lookup(spec: str, manifest_dirs: Iterable[Path | str] = ()) -> PublishedSet:
    """A set by ``NAME[@VERSION]`` (``find``), or by the url of its folder (``from_url``:
    ``hf://datasets/ORG/NAME``, ``https://...``); ``UnknownSet`` where neither gives one."""
    try:
        return from_url(spec) if "://" in spec else find(spec, manifest_dirs)
    except (KeyError, FileNotFoundError, ManifestError) as e:
        raise UnknownSet(str(e).strip('"')) from None


def _version_key(version: str) -> tuple:
    return tuple(
        (0, int(p)) if p.isdigit() else (1, p) for p in version.replace("-", ".").split(".")
    )


def from_url(url: str) -> PublishedSet:
    """The set whose folder is served at ``url`` (http(s), hf://, file://, any fsspec url): its
    ``manifest.json``, with every shard's url under ``url``."""
    base = url.rstrip("/")
    where = f"{base}/{MANIFEST_NAME}"
    text = read_text(where)
    try:
        manifest = json.loads(text)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: not valid JSON ({e})") from None
    validate_manifest(manifest, where)
    splits = {
        split: {
            **info,
            "shards": [{**s, "url": f"{base}/{split}/{s['name']}"} for s in info["shards"]],
        }
        for split, info in manifest["splits"].items()
    }
    name = manifest.get("name") or base.rsplit("/", 1)[-1]
    version = manifest.get("version") or "0"
    published = {**manifest, "name": name, "version": version, "base_url": base, "splits": splits}
    return PublishedSet(name, version, validate_manifest(published, where), Path(where))


def publish(
    shards: Path, base_url: str, name: str, version: str, manifest_dir: Path | None = None
) -> Path:
    """Publish a local, verified shard set whose folder will be served, as it is, under ``base_url``.

    Writes the published manifest ``<name>-<version>.json`` into ``manifest_dir`` (default
    ``user_manifest_dir()``) and into the folder itself (so ``--manifest-dir BASE_URL`` finds the
    set by name), the name, version and base url into the folder's ``manifest.json`` (so a fetch
    by url gets them), and the dataset card ``SHARDS/README.md`` (so the folder loads with
    Hugging Face ``datasets``, with the manifest's split names)."""
    from nsneg.datasets_manifest.card import write_card

    problems = verify(shards)
    if problems:
        raise ManifestError(
            "refusing to publish shards that do not match their manifest:\n  "
            + "\n  ".join(problems)
        )
    manifest = load_manifest(shards)
    if not all(info["complete"] for info in manifest["splits"].values()):
        raise ManifestError(
            f"{shards}: a split is incomplete (an interrupted job); finish it before publishing"
        )
    base = base_url.rstrip("/")
    published = {**manifest, "name": name, "version": version, "base_url": base}
    published["splits"] = {
        split: {
            **info,
            "shards": [{**s, "url": f"{base}/{split}/{s['name']}"} for s in info["shards"]],
        }
        for split, info in manifest["splits"].items()
    }
    validate_manifest(published, f"{name}@{version}")
    out = Path(manifest_dir or user_manifest_dir()) / published_name(name, version)
    out.parent.mkdir(parents=True, exist_ok=True)
    local = {**manifest, "name": name, "version": version, "base_url": base}
    write_card(shards, name, version, local)
    files.atomic_write_json(Path(shards) / published_name(name, version), published)
    files.atomic_write_json(Path(shards) / MANIFEST_NAME, local)
    files.atomic_write_json(out, published)
    return out
