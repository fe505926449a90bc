"""``SkipLog``: the bad samples a command met, counted and named, and the threshold
(``--max-skip-fraction``) past which the command stops."""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


class TooManyBadSamples(ValueError):
    """More bad samples than ``--max-skip-fraction`` allows: the command stops (one message)."""


#: Every command's ``--max-skip-fraction`` unless told otherwise (build, readers, training).
DEFAULT_MAX_SKIP_FRACTION = 0.01
#: How many skipped samples a report names (the count is always exact).
SKIPS_LISTED = 100


def check_fraction(bad: int, total: int, max_fraction: float, detail: str = "") -> None:
    """The one threshold rule: more than ``max_fraction`` of ``total`` bad -> ``TooManyBadSamples``,
    with ``detail`` (where the bad ones are named) after the counts."""
    if bad > max_fraction * total:
        raise TooManyBadSamples(
            f"{bad} bad samples of {total}: above --max-skip-fraction {max_fraction}"
            + (f" ({detail})" if detail else "")
        )


@dataclass
class SkipLog:
    """The bad samples a command met: each logged (shard, key, reason) as it is skipped.

    ``expected``: the samples the reader will see (the manifest's count), so a command stops as
    soon as more than ``max_fraction`` of them are bad rather than at the end; ``finish`` checks
    again against what was actually read. ``spool``: a folder where every skip is also
    appended, one JSON line per process, so DataLoader workers' skips reach the main process
    (``collect``).
    """

    max_fraction: float = 0.0
    expected: int = 0
    read: int = 0
    skipped: list[dict[str, str]] | None = None
    spool: Path | None = None

    def __post_init__(self) -> None:
        self.skipped = [] if self.skipped is None else self.skipped

    def ok(self) -> None:
        self.read += 1

    def skip(self, shard: str, key: str, reason: str, kind: str = "sample") -> None:
        entry = {"shard": str(shard), "key": str(key), "kind": kind, "reason": reason}
        self.skipped.append(entry)
        log.warning("skipped sample %s in shard %s: %s", key, shard, reason)
        if self.spool is not None:
            self._spooled(entry)
        else:
            self._check(max(self.expected, self.read + len(self.skipped)))

    def _spooled(self, entry: dict[str, Any]) -> None:
        Path(self.spool).mkdir(parents=True, exist_ok=True)
        with open(Path(self.spool) / f"skips-{os.getpid()}.jsonl", "a") as f:
            f.write(json.dumps(entry) + "\n")

    def spool_reads(self) -> None:
        """At the end of a pass: a spooling process hands its count of good samples on."""
        if self.spool is not None and self.read:
            self._spooled({"read": self.read})
            self.read = 0

    def collect(self) -> None:
        """Take in what other processes spooled (DataLoader workers), then clear the spool."""
        if self.spool is None or not Path(self.spool).is_dir():
            return
        for path in sorted(Path(self.spool).glob("skips-*.jsonl")):
            for entry in (json.loads(line) for line in path.read_text().splitlines() if line):
                if "read" in entry:
                    self.read += entry["read"]
                elif path.name != f"skips-{os.getpid()}.jsonl":
                    self.skipped.append(entry)
            path.unlink()
        try:
            Path(self.spool).rmdir()  # made again by the next skip, if any
        except OSError:
            pass

    def _check(self, total: int) -> None:
        if self.skipped:
            last = self.skipped[-1]
            check_fraction(
                len(self.skipped),
                total,
                self.max_fraction,
                f"last: shard {last['shard']}, key {last['key']}: {last['reason']}; every skip "
                "was logged with its shard and key",
            )

    def finish(self) -> dict[str, Any]:
        """``report()``, after the threshold is checked against every sample read."""
        self.collect()
        if self.skipped:
            self._check(self.read + len(self.skipped))
        return self.report()

    def report(self) -> dict[str, Any]:
        """What commands print and put in their JSON: counts, reasons, the skipped samples."""
        reasons = Counter(s["kind"] for s in self.skipped)
        return {
            "read": self.read,
            "skipped": len(self.skipped),
            "skip_reasons": dict(sorted(reasons.items())),
            "skipped_samples": self.skipped[:SKIPS_LISTED],
        }

    def summary(self) -> str:
        """One line for a command's summary."""
        reasons = self.report()["skip_reasons"]
        return f"skipped {len(self.skipped)} bad samples" + (
            f" ({', '.join(f'{k}: {v}' for k, v in reasons.items())})" if reasons else ""
        )
