"""Byte snapshots of output directories, for "a failed run leaves the previous outputs" tests."""

from __future__ import annotations

from pathlib import Path


def snapshot(directory: Path) -> dict[str, bytes | None]:
    """Every entry under ``directory``, hidden temp files and directories included:
    relative path -> file bytes (``None`` for a directory)."""
    return {p.relative_to(directory).as_posix(): None if p.is_dir() else p.read_bytes()
            for p in sorted(directory.rglob("*"))}
