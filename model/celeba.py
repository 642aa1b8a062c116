"""CelebA-format annotation files: attributes, evaluation partition, identities.

Formats (as distributed with CelebA):

- ``list_attr_celeba.txt``: a count line, a line of the 40 attribute names, then one line per
  image: ``NNNNNN.jpg`` followed by 40 values of ``1`` / ``-1`` (any whitespace);
- ``list_eval_partition.txt``: ``NNNNNN.jpg 0|1|2`` (train / val / test);
- ``identity_CelebA.txt``: ``NNNNNN.jpg <celebrity id>``.

Malformed lines are returned as problems (line number, text, reason) rather than raised, so the
training stage can list them in its rejects table.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PARTITIONS = ("train", "val", "test")


class CelebAFormatError(ValueError):
    """An annotation file is unusable as a whole (missing header, unknown attribute ...)."""


@dataclass
class Problem:
    file: str
    line: int
    reason: str
    detail: str


@dataclass
class AttributeTable:
    """``labels[i, j]`` is 1 when image ``files[i]`` has attribute ``names[j]``, else 0."""

    names: tuple[str, ...]
    files: list[str]
    labels: np.ndarray  # (n_images, n_attributes) uint8
    problems: list[Problem] = field(default_factory=list)

    def select(self, attributes: tuple[str, ...]) -> AttributeTable:
        """The columns ``attributes``, in that order."""
        missing = [a for a in attributes if a not in self.names]
        if missing:
            raise CelebAFormatError(f"attribute(s) {missing} not in the attribute file; "
                                    f"available: {', '.join(self.names)}")
        cols = [self.names.index(a) for a in attributes]
        return AttributeTable(tuple(attributes), self.files, self.labels[:, cols], self.problems)


def _lines(path: str | os.PathLike) -> list[str]:
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise CelebAFormatError(f"cannot read {path}: {exc}") from exc


def read_attributes(path: str | os.PathLike) -> AttributeTable:
    """Parse ``list_attr_celeba.txt``."""
    lines = _lines(path)
    name = Path(path).name
    if len(lines) < 2:
        raise CelebAFormatError(f"{path}: expected a count line and a header line")
    names = tuple(lines[1].split())
    if not names or len(set(names)) != len(names):
        raise CelebAFormatError(f"{path}: bad attribute header {lines[1]!r}")
    files: list[str] = []
    rows: list[list[int]] = []
    problems: list[Problem] = []
    seen: set[str] = set()
    for number, line in enumerate(lines[2:], start=3):
        parts = line.split()
        if not parts:
            continue
        values = parts[1:]
        if len(values) != len(names) or any(v not in ("1", "-1") for v in values):
            problems.append(Problem(name, number, "bad_annotation",
                                    f"expected {len(names)} values of 1/-1: {line[:80]!r}"))
            continue
        if parts[0] in seen:
            problems.append(Problem(name, number, "duplicate", f"{parts[0]} listed twice"))
            continue
        seen.add(parts[0])
        files.append(parts[0])
        rows.append([v == "1" for v in values])
    declared = lines[0].strip()
    if declared.isdigit() and int(declared) != len(files) + len(problems):
        problems.append(Problem(name, 1, "count_mismatch",
                                f"count line says {declared}, file has {len(files) + len(problems)} rows"))
    labels = np.asarray(rows, dtype=np.uint8).reshape(len(rows), len(names))  # (n, attributes)
    return AttributeTable(names, files, labels, problems)


def read_pairs(path: str | os.PathLike) -> tuple[dict[str, str], list[Problem]]:
    """Parse a two-column ``file value`` list (partition or identity file)."""
    out: dict[str, str] = {}
    problems: list[Problem] = []
    name = Path(path).name
    for number, line in enumerate(_lines(path), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 2:
            problems.append(Problem(name, number, "bad_annotation", f"{line[:80]!r}"))
            continue
        out[parts[0]] = parts[1]
    return out, problems


def read_partition(path: str | os.PathLike) -> tuple[dict[str, str], list[Problem]]:
    """``list_eval_partition.txt`` -> ``{file: "train" | "val" | "test"}``."""
    raw, problems = read_pairs(path)
    out: dict[str, str] = {}
    for file, value in raw.items():
        if value in ("0", "1", "2"):
            out[file] = PARTITIONS[int(value)]
        else:
            problems.append(Problem(Path(path).name, 0, "bad_annotation",
                                    f"{file}: partition {value!r} is not 0/1/2"))
    return out, problems
