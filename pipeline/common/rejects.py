"""Rejects tables: every unreadable or invalid input is recorded with a reason, never dropped."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field

import polars as pl

from pipeline.common.io import write_parquet

log = logging.getLogger(__name__)

SCHEMA = {"stage": pl.Utf8, "id": pl.Utf8, "path": pl.Utf8, "reason": pl.Utf8, "detail": pl.Utf8,
          "kept": pl.Boolean}


class TooManyRejects(RuntimeError):
    """Raised when a stage's reject fraction exceeds its configured maximum."""


@dataclass
class Rejects:
    """Collects ``(id, path, reason, detail)`` rows for one stage."""

    stage: str
    rows: list[dict[str, str | None]] = field(default_factory=list)

    def add(self, reason: str, *, id: str | None = None, path: str | os.PathLike | None = None,
            detail: str | None = None, kept: bool = False) -> None:
        """Record one bad input; ``reason`` is a short machine-readable token.

        ``kept=True`` records an anomaly that later stages handle (e.g. an unexpected sample
        rate): it is listed and counted but not dropped, and does not count toward the limit.
        """
        row = {"stage": self.stage, "id": id, "path": None if path is None else str(path),
               "reason": reason, "detail": detail, "kept": kept}
        log.debug("reject %s", row)
        self.rows.append(row)

    def extend(self, other: Rejects) -> None:
        self.rows.extend(other.rows)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def dropped(self) -> list[dict]:
        """Rows whose input was excluded (``kept`` is false)."""
        return [r for r in self.rows if not r["kept"]]

    def frame(self) -> pl.DataFrame:
        return pl.DataFrame(self.rows, schema=SCHEMA)

    def counts(self) -> dict[str, int]:
        """Number of rejects per reason."""
        out: dict[str, int] = {}
        for row in self.rows:
            out[row["reason"]] = out.get(row["reason"], 0) + 1
        return dict(sorted(out.items()))

    def write(self, path: str | os.PathLike) -> None:
        write_parquet(path, self.frame())

    def check(self, total: int, max_fraction: float, *, show: int = 5) -> None:
        """Raise ``TooManyRejects`` when the fraction is exceeded.

        The message gives the dropped count per reason and the first offenders: a stage that
        fails here writes none of its outputs (the previous ones stay), so the message is
        where the user sees what went wrong.
        """
        dropped = self.dropped
        fraction = len(dropped) / total if total else 0.0
        if fraction <= max_fraction:
            if self.rows:
                log.warning("%s: %d of %d inputs rejected (%s)", self.stage, len(dropped), total,
                            self.counts())
            return
        first = "; ".join(f"{r['path'] or r['id']}: {r['reason']}" + (f" ({r['detail']})" if r["detail"] else "")
                          for r in dropped[:show])
        by_reason: dict[str, int] = {}
        for row in dropped:
            by_reason[row["reason"]] = by_reason.get(row["reason"], 0) + 1
        raise TooManyRejects(
            f"{self.stage}: {len(dropped)} of {total} inputs rejected ({fraction:.1%}), above "
            f"max_reject_fraction={max_fraction:.1%}; by reason: "
            f"{dict(sorted(by_reason.items()))}. First offenders: {first}")
