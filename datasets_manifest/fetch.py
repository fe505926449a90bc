"""Download a published shard set: parallel, resumable, verified before anything is kept.

Each shard downloads to ``.<name>.part`` (resumed with an HTTP Range request when it is
already there), is checked against the manifest's size and sha256, and only then renamed
to its final name. A shard that fails the check is deleted and downloaded again;
transient failures (connection errors, 5xx, 429) are retried with exponential backoff. A
final name therefore always holds a verified shard, and a rerun downloads only what is
missing. http(s) goes through requests; every other scheme through fsspec (file://,
s3://, gs://, hf:// where those filesystems are installed).
"""

from __future__ import annotations

import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nsneg.datasets_manifest.card import write_card
from nsneg.datasets_manifest.format import files
from nsneg.datasets_manifest.format.manifest import ManifestError, build_manifest
from nsneg.datasets_manifest.format.naming import MANIFEST_NAME
from nsneg.datasets_manifest.registry import PublishedSet, published_name

CHUNK = 1 << 16  # small enough that a cut connection leaves most of what arrived on disk


class TransientError(Exception):
    """Worth retrying: the network or the server hiccuped."""


class PermanentError(Exception):
    """Not worth retrying: the server answered, and the answer is no (404, 403, ...)."""


class FetchFailed(RuntimeError):
    """A shard could not be fetched; ``retries``: how many times it was retried before giving up."""

    def __init__(self, message: str, retries: int):
        super().__init__(message)
        self.retries = retries


@dataclass
class FetchReport:
    downloaded: list[str] = field(default_factory=list)
    already_verified: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)
    retries: int = 0


def _stream_http(url: str, offset: int, out, progress) -> None:
    import requests

    headers = {"Range": f"bytes={offset}-"} if offset else {}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=(10, 60)) as response:
            if response.status_code == 416:  # nothing past offset: the part is already whole
                return
            if response.status_code >= 500 or response.status_code == 429:
                raise TransientError(f"HTTP {response.status_code}")
            if response.status_code >= 400:
                raise PermanentError(f"HTTP {response.status_code} {response.reason}")
            if offset and response.status_code != 206:  # server ignored Range: start over
                out.seek(0)
                out.truncate()
                progress(-offset)
            for chunk in response.iter_content(CHUNK):
                out.write(chunk)
                progress(len(chunk))
    except (
        requests.ConnectionError,
        requests.Timeout,
        requests.exceptions.ChunkedEncodingError,
    ) as e:
        raise TransientError(str(e)) from None


def _stream_fsspec(url: str, offset: int, out, progress) -> None:
    import fsspec

    with fsspec.open(url, "rb") as f:
        f.seek(offset)
        while chunk := f.read(CHUNK):
            out.write(chunk)
            progress(len(chunk))


def fetch_shard(
    url: str,
    dest: Path,
    sha256: str,
    size: int,
    progress=lambda n: None,
    retries: int = 5,
    backoff: float = 1.0,
) -> int:
    """Download ``url`` to ``dest`` (verified); returns how many retries it took.

    ``progress(n)`` is told of every byte that joins (or, negative, leaves) the partial file;
    bytes already in it when the call starts were counted by the caller.
    """
    part = dest.with_name(f".{dest.name}.part")
    stream = _stream_http if url.startswith(("http://", "https://")) else _stream_fsspec
    last_error = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        offset = part.stat().st_size if part.exists() else 0
        if offset > size:
            part.unlink()
            offset = 0
        try:
            with open(part, "ab") as out:
                if offset < size:
                    stream(url, offset, out, progress)
                out.flush()
                os.fsync(out.fileno())
        except TransientError as e:
            last_error = str(e)
            continue  # keep the part: the next attempt resumes it
        except PermanentError as e:
            if part.exists() and part.stat().st_size == 0:
                part.unlink()
            raise FetchFailed(
                f"{url}: {e} (not retried: check the set's base url)", attempt
            ) from None
        except OSError as e:
            kept = part.exists() and part.stat().st_size > 0
            if not kept:
                part.unlink(missing_ok=True)
            hint = f" (the partial download {part} is kept; rerun to resume)" if kept else ""
            raise FetchFailed(f"{dest}: {e}{hint}", attempt) from None
        if part.stat().st_size == size and files.sha256_file(part) == sha256:
            os.replace(part, dest)
            return attempt
        last_error = f"size or sha256 mismatch ({part.stat().st_size} of {size} bytes)"
        progress(-part.stat().st_size)
        part.unlink()  # never kept, never read
    raise FetchFailed(f"{url}: gave up after {retries + 1} attempts: {last_error}", retries)


def _partial_bytes(dest: Path, size: int) -> int:
    """Bytes of ``dest`` an earlier run left in its partial file (what a resume starts from)."""
    part = dest.with_name(f".{dest.name}.part")
    return part.stat().st_size if part.exists() and part.stat().st_size <= size else 0


def _verified(path: Path, shard: dict[str, Any]) -> bool:
    return (
        path.exists()
        and path.stat().st_size == shard["bytes"]
        and files.sha256_file(path) == shard["sha256"]
    )


def fetch(
    published: PublishedSet,
    to: Path,
    splits: list[str] | None = None,
    jobs: int = 4,
    show_progress: bool = True,
    retries: int = 5,
    backoff: float = 1.0,
    first_shards: int | None = None,
) -> FetchReport:
    """Fetch ``splits`` (default: all) of a published set into ``to``; writes ``to/manifest.json``
    (the pipeline's format, with the set's name, version and base url) listing the shards that
    are there and verified, the published manifest (``to/<name>-<version>.json``, as in the
    publisher's folder) and the dataset card (``to/README.md``, as ``publish`` wrote it for these
    splits), so Hugging Face ``datasets`` reads the copy with the publisher's split names.
    ``first_shards``: only the first N shards of each split (a preview needs no more)."""
    from tqdm import tqdm

    manifest = published.manifest
    splits = splits or list(manifest["splits"])  # the publisher's order, as the card lists them
    report = FetchReport()
    todo = []
    for split in splits:
        if split not in manifest["splits"]:
            raise KeyError(f"{published.name}@{published.version} has no split {split!r}")
        (to / split).mkdir(parents=True, exist_ok=True)
        for shard in manifest["splits"][split]["shards"][:first_shards]:
            dest = to / split / shard["name"]
            if _verified(dest, shard):
                report.already_verified.append(f"{split}/{shard['name']}")
            else:
                todo.append((split, shard, dest))
    total = sum(shard["bytes"] for _, shard, _ in todo)
    already = sum(_partial_bytes(dest, shard["bytes"]) for _, shard, dest in todo)  # resumed below
    bar = tqdm(
        total=total,
        initial=already,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc="fetch",
        disable=not show_progress,
    )
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            bar.update(n)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        futures = {
            pool.submit(
                fetch_shard,
                shard["url"],
                dest,
                shard["sha256"],
                shard["bytes"],
                progress,
                retries,
                backoff,
            ): f"{split}/{shard['name']}"
            for split, shard, dest in todo
        }
        for future in as_completed(futures):
            try:
                report.retries += future.result()
                report.downloaded.append(futures[future])
            except FetchFailed as e:
                report.retries += e.retries
                report.failed[futures[future]] = str(e)
    bar.close()
    _write_local_manifest(published, to, splits, report)
    return report


def _write_local_manifest(
    published: PublishedSet, to: Path, splits: list[str], report: FetchReport
) -> None:
    """The fetched set as an ordinary local shard directory: the trainer and analysis read it as such."""
    here = set(report.downloaded) | set(report.already_verified)
    local_splits = {}
    for split in splits:
        info = published.manifest["splits"][split]
        shards = [s for s in info["shards"] if f"{split}/{s['name']}" in here]
        local_splits[split] = {
            "shards": shards,
            "skipped": info["skipped"],
            "complete": info["complete"] and len(shards) == len(info["shards"]),
        }
    m = published.manifest
    local = build_manifest(m["classes"], local_splits, m["generator"], m["has_source"])
    local.update(name=m["name"], version=m["version"], base_url=m["base_url"])
    files.atomic_write_json(to / MANIFEST_NAME, local)
    files.atomic_write_json(to / published_name(m["name"], m["version"]), m)
    try:
        write_card(to, m["name"], m["version"], local)
    except ManifestError:
        pass  # the user's own README.md there is kept
