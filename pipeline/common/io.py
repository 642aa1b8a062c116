"""Atomic output helpers: write to a temporary sibling, then rename into place.

- :func:`atomic_file` / :func:`atomic_dir`: one output;
- :func:`output_group`: several outputs that change together. A stage writes its store, rejects
  table and summary to temp siblings, checks its reject limit, and only then moves them all into
  place, so a failed run (e.g. too many rejects) leaves every previous output as it was.

Temp names are hidden siblings ending in ``.tmp`` (git-ignored), removed on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temp path next to ``path``; rename it onto ``path`` only if the block succeeds."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=f"{suffix}.tmp", dir=final.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual file mode
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp directory next to ``path``; swap it in for ``path`` only on success."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp creates 0700
        old = None
        if final.exists() or final.is_symlink():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
        os.replace(tmp, final)
        if old is not None:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old)
            else:
                old.unlink()
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


class OutputGroup:
    """Temp siblings of a stage's outputs, all moved into place when :func:`output_group` exits
    cleanly, none when it raises. Register with :meth:`file` / :meth:`dir`."""

    def __init__(self, stack: contextlib.ExitStack) -> None:
        self._stack = stack

    def file(self, path: str | os.PathLike, suffix: str = "") -> Path:
        """A temp file to write in place of ``path``."""
        return self._stack.enter_context(atomic_file(path, suffix))

    def dir(self, path: str | os.PathLike) -> Path:
        """A temp directory to fill in place of ``path``."""
        return self._stack.enter_context(atomic_dir(path))


@contextlib.contextmanager
def output_group() -> Iterator[OutputGroup]:
    """Commit several outputs together: renamed only if the whole block succeeds.

    The renames run in reverse registration order once the block is done (register the main
    store first: it is replaced last). On an exception every temp file is removed and every
    previous output is left untouched.
    """
    with contextlib.ExitStack() as stack:
        yield OutputGroup(stack)


def write_json(path: str | os.PathLike, data: Any) -> None:
    """Write ``data`` as indented, key-sorted JSON, atomically."""
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def write_parquet(path: str | os.PathLike, frame: Any) -> None:
    """Write a polars DataFrame to Parquet, atomically."""
    with atomic_file(path) as tmp:
        frame.write_parquet(tmp)
