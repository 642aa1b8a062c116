"""On-disk layout of the ``tuples`` stage's output: one subdirectory per split.

::

    OUT/
      train/       matching.parquet  pairs.parquet  retrieval.parquet
      val/         matching.parquet  pairs.parquet  retrieval.parquet
      test/        matching.parquet  pairs.parquet  retrieval.parquet
      seen_heard/  matching.parquet  pairs.parquet  retrieval.parquet
      rejects.parquet
      summary.json

Each split's files hold only that split's rows (their ``split`` column is kept, so a file is
self-describing) and every split gets all three files, empty ones with the table's schema
included. The split directories are what DVC tracks separately: the train stage lists only
``train/`` and ``val/`` files as dependencies, so it provably never opens test or seen_heard
tuples. Concatenating the split files in :data:`SPLITS` order gives back the whole table, row for
row (the stage draws split by split in that order); :func:`read_tables` does it.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import polars as pl

from pipeline.tupling.inputs import ITEM_SPLITS

SPLITS = ITEM_SPLITS  # train, val, test, seen_heard: one subdirectory each
TABLES = ("matching", "pairs", "retrieval")  # one Parquet file per split each
REJECTS = "rejects.parquet"
SUMMARY = "summary.json"


def table_path(root: str | os.PathLike, split: str, table: str) -> Path:
    """``root/<split>/<table>.parquet``; an unknown split or table raises ``ValueError``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; tuples are stored for {SPLITS}")
    if table not in TABLES:
        raise ValueError(f"unknown tuples table {table!r}; use one of {TABLES}")
    return Path(root) / split / f"{table}.parquet"


def by_split(frame: pl.DataFrame) -> dict[str, pl.DataFrame]:
    """``frame`` cut into one frame per split of :data:`SPLITS`, rows in their order.

    Raises ``ValueError`` if a row's split is not one of :data:`SPLITS` (it would be lost).
    """
    parts = {split: frame.filter(pl.col("split") == split) for split in SPLITS}
    kept = sum(part.height for part in parts.values())
    if kept != frame.height:
        unknown = sorted(set(frame["split"].drop_nulls().unique()) - set(SPLITS))
        raise ValueError(f"{frame.height - kept} rows have no split directory "
                         f"(split {unknown or 'null'}; known: {SPLITS})")
    return parts


def write_tables(root: str | os.PathLike, tables: Mapping[str, pl.DataFrame]) -> dict[str, dict[str, int]]:
    """Write every table of :data:`TABLES` split by split under ``root``; rows per split and table.

    ``root`` is the stage's temporary directory (the whole output is swapped in atomically).
    """
    rows: dict[str, dict[str, int]] = {split: {} for split in SPLITS}
    for name in TABLES:
        for split, part in by_split(tables[name]).items():
            path = table_path(root, split, name)
            path.parent.mkdir(parents=True, exist_ok=True)
            part.write_parquet(path)
            rows[split][name] = part.height
    return rows


def read_table(root: str | os.PathLike, table: str, splits: Iterable[str] = SPLITS) -> pl.DataFrame:
    """One table of the given splits, concatenated in the order given (default: all, in
    :data:`SPLITS` order, which is the order the stage drew them)."""
    paths = [table_path(root, split, table) for split in splits]
    if not paths:
        raise ValueError(f"read_table({table!r}): no splits given")
    return pl.concat([pl.read_parquet(path) for path in paths])


def read_tables(root: str | os.PathLike, splits: Iterable[str] = SPLITS) -> dict[str, pl.DataFrame]:
    """Every table of :data:`TABLES` for the given splits (see :func:`read_table`)."""
    splits = tuple(splits)
    return {name: read_table(root, name, splits) for name in TABLES}
