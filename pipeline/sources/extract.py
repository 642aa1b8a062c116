"""Safe, idempotent extraction of zip and tar archives for ``acquire``.

Every member is checked before it is written: absolute paths, ``..`` components, links whose
target leaves the extraction directory, hard links to members not yet extracted, and device
or FIFO entries are refused (:class:`UnsafeArchive`). Members are written into a staging
directory inside the target, with a resolved-path check on every write, and merged into the
target only when the whole archive was read without a refusal. A marker file records what was
extracted, so a re-run with the same archive does nothing.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import shutil
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm.auto import tqdm

from pipeline.common.io import atomic_file

log = logging.getLogger(__name__)

TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
ZIP_SUFFIXES = (".zip",)
_DRIVE = re.compile(r"^[A-Za-z]:")


class UnsafeArchive(ValueError):
    """An archive member would be written outside the target, or is not a plain file/dir/link."""


@dataclass(frozen=True)
class Member:
    """One archive entry after the safety checks; ``name`` is relative to the target."""

    name: str
    kind: str  # file | dir | symlink | hardlink
    target: str | None = None
    mode: int = 0o644


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` or ``None`` (by suffix, then by content)."""
    name = path.name.lower()
    if name.endswith(ZIP_SUFFIXES):
        return "zip"
    if name.endswith(TAR_SUFFIXES):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    return None


def safe_name(raw: str, strip: int = 0) -> str | None:
    """Normalise a member path; ``None`` if ``strip`` removes it entirely. Refuses escapes."""
    text = raw.replace("\\", "/")
    if text.startswith("/") or _DRIVE.match(text):
        raise UnsafeArchive(f"{raw!r}: absolute path")
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchive(f"{raw!r}: '..' in path")
    parts = parts[strip:]
    return "/".join(parts) if parts else None


def check_symlink(name: str, target: str) -> None:
    """Refuse a symlink at ``name`` whose ``target`` is absolute or resolves above the root."""
    if target.startswith("/") or _DRIVE.match(target) or target.startswith("\\"):
        raise UnsafeArchive(f"{name!r} -> {target!r}: link to an absolute path")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    leading = next((i for i, p in enumerate(parts) if p != ".."), len(parts))
    if ".." in parts[leading:]:
        raise UnsafeArchive(f"{name!r} -> {target!r}: '..' after a directory name in a link target")
    resolved = posixpath.normpath(posixpath.join(posixpath.dirname(name), target))
    if resolved == ".." or resolved.startswith("../"):
        raise UnsafeArchive(f"{name!r} -> {target!r}: link points outside the target")


def _tar_members(tf: tarfile.TarFile, strip: int) -> Iterator[tuple[Member, IO[bytes] | None]]:
    for info in tf:
        name = safe_name(info.name, strip)
        if name is None:
            continue
        if info.isdir():
            yield Member(name, "dir"), None
        elif info.issym():
            check_symlink(name, info.linkname)
            yield Member(name, "symlink", info.linkname), None
        elif info.islnk():
            target = safe_name(info.linkname, strip)
            if target is None:
                raise UnsafeArchive(f"{info.name!r}: hard link to a stripped member")
            yield Member(name, "hardlink", target), None
        elif info.isreg():
            yield Member(name, "file", mode=_file_mode(info.mode)), tf.extractfile(info)
        else:
            raise UnsafeArchive(f"{info.name!r}: device, FIFO or other special entry")


def _zip_members(zf: zipfile.ZipFile, strip: int) -> Iterator[tuple[Member, IO[bytes] | None]]:
    for info in zf.infolist():
        name = safe_name(info.filename, strip)
        if name is None:
            continue
        unix_mode = info.external_attr >> 16
        if info.create_system == 3 and stat.S_ISLNK(unix_mode):
            target = zf.read(info).decode("utf-8")
            check_symlink(name, target)
            yield Member(name, "symlink", target), None
        elif info.is_dir():
            yield Member(name, "dir"), None
        else:
            yield Member(name, "file", mode=_file_mode(unix_mode)), zf.open(info)


def _file_mode(mode: int) -> int:
    return 0o755 if mode & 0o111 else 0o644


def _inside(root: Path, path: Path) -> bool:
    real = os.path.realpath(path)
    base = os.path.realpath(root)
    return real == base or real.startswith(base + os.sep)


def _write(stage: Path, member: Member, stream: IO[bytes] | None) -> None:
    """Write one member under ``stage``, refusing any write that resolves outside it."""
    out = stage / member.name
    if not _inside(stage, out.parent):
        raise UnsafeArchive(f"{member.name!r}: parent directory resolves outside the target")
    if member.kind == "dir":
        out.mkdir(parents=True, exist_ok=True)
        return
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UnsafeArchive(f"{member.name!r}: a parent is a file or a dangling link") from None
    if not _inside(stage, out.parent):  # mkdir may have gone through a symlink
        raise UnsafeArchive(f"{member.name!r}: parent directory resolves outside the target")
    if out.is_symlink() or out.exists():
        if out.is_dir() and not out.is_symlink():
            raise UnsafeArchive(f"{member.name!r}: a file entry replaces a directory")
        out.unlink()
    if member.kind == "symlink":
        os.symlink(member.target or "", out)
        if not _inside(stage, out):  # resolved through links extracted earlier
            out.unlink()
            raise UnsafeArchive(f"{member.name!r} -> {member.target!r}: resolves outside the target")
    elif member.kind == "hardlink":
        source = stage / (member.target or "")
        if not source.is_file() or source.is_symlink() or not _inside(stage, source):
            raise UnsafeArchive(f"{member.name!r}: hard link to {member.target!r}, "
                                "which is not a file extracted earlier")
        shutil.copyfile(source, out)
    else:
        assert stream is not None
        with stream, open(out, "wb") as fh:
            shutil.copyfileobj(stream, fh, 4 << 20)
        os.chmod(out, member.mode)


def _merge(stage: Path, dest: Path) -> int:
    """Move everything from ``stage`` into ``dest`` (dirs merged, files replaced)."""
    moved = 0
    for dirpath, dirnames, filenames in os.walk(stage):
        rel = Path(dirpath).relative_to(stage)
        target_dir = dest / rel
        keep = []
        for d in sorted(dirnames):
            src = Path(dirpath) / d
            if src.is_symlink():
                filenames.append(d)  # move the link itself
            else:
                keep.append(d)
                (target_dir / d).mkdir(parents=True, exist_ok=True)
                if not _inside(dest, target_dir / d):
                    raise UnsafeArchive(f"{rel / d}: resolves outside {dest}")
        dirnames[:] = keep
        for f in sorted(filenames):
            target = target_dir / f
            if not _inside(dest, target.parent):
                raise UnsafeArchive(f"{rel / f}: resolves outside {dest}")
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(Path(dirpath) / f, target)
            moved += 1
    return moved


def _marker_key(archive: Path, md5: str | None, strip: int) -> dict:
    st = archive.stat()
    return {"archive": archive.name, "md5": md5, "size": st.st_size,
            "mtime_ns": None if md5 else st.st_mtime_ns, "strip": strip}


def extract(archive: Path, dest: Path, *, strip: int = 0, md5: str | None = None,
            marker: Path | None = None) -> dict:
    """Extract ``archive`` into ``dest`` safely. Skips the work when ``marker`` says it was done.

    Returns ``{"archive", "files", "skipped"}``. Raises :class:`UnsafeArchive` (and leaves
    ``dest`` untouched) when any member is refused.
    """
    kind = archive_kind(archive)
    if kind is None:
        raise ValueError(f"{archive}: not a zip or tar archive")
    key = _marker_key(archive, md5, strip)
    if marker is not None and marker.is_file():
        done = json.loads(marker.read_text(encoding="utf-8"))
        if {k: done.get(k) for k in key} == key:
            log.info("%s: already extracted into %s", archive.name, dest)
            return {"archive": archive.name, "files": done.get("files", 0), "skipped": True}
    dest.mkdir(parents=True, exist_ok=True)
    stage = dest / f".{archive.name}.extracting"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir()
    try:
        written = _extract_into(archive, kind, stage, strip)
        files = _merge(stage, dest)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    log.info("%s: extracted %d entries (%d files) into %s", archive.name, written, files, dest)
    if marker is not None:
        with atomic_file(marker) as tmp:
            tmp.write_text(json.dumps({**key, "files": files}, indent=2), encoding="utf-8")
    return {"archive": archive.name, "files": files, "skipped": False}


def _extract_into(archive: Path, kind: str, stage: Path, strip: int) -> int:
    count = 0
    bar = tqdm(desc=f"extract {archive.name}", unit="entry", mininterval=1.0, leave=False)
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                bar.total = len(zf.infolist())
                for member, stream in _zip_members(zf, strip):
                    _write(stage, member, stream)
                    count += 1
                    bar.update(1)
        else:
            with tarfile.open(archive, "r:*") as tf:
                for member, stream in _tar_members(tf, strip):
                    _write(stage, member, stream)
                    count += 1
                    bar.update(1)
    except UnsafeArchive as exc:
        raise UnsafeArchive(f"{archive.name}: refused to extract: {exc}. Nothing was written; "
                            "the archive is not a genuine dataset archive or is damaged.") from None
    finally:
        bar.close()
    return count
