"""Dataset layouts: find the metadata, audio files and face images under a data root.

Every layout returns the same :class:`Scan`, so the manifest code after scanning is shared by
synthetic and real data. Layouts register themselves in :data:`LAYOUTS` with :func:`layout`;
:func:`pipeline.sources.layouts.get_layout` looks one up once every layout module is imported.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.common.rejects import Rejects
from pipeline.sources import layout as L

AUDIO_SUFFIXES = (".wav", ".flac", ".m4a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
# Reasons for files the scan passes over (recorded with kept = false, never dropped silently).
WRONG_EXTENSION = "wrong_extension"  # a file without an audio/image suffix where those live
MISPLACED = "misplaced"  # a file outside a video folder, or a folder where files belong
NOT_ON_DISK = "not_on_disk"  # a list line (VGGFace v1) whose image was never fetched


@dataclass(frozen=True)
class Place:
    """Where a layout looks for one modality, for error messages."""

    paths: tuple[str, ...]  # folders relative to the root; files in any of them count
    shape: str  # what goes inside, e.g. ``idXXXXX/<ytid>/NNNNN.wav``


@dataclass
class Scan:
    """What a layout found: identity rows plus candidate audio and face files (paths relative to root)."""

    identities: list[dict] = field(default_factory=list)
    audio: list[dict] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)
    audio_place: Place | None = None
    faces_place: Place | None = None


Scanner = Callable[[Path, Rejects], Scan]
LAYOUTS: dict[str, Scanner] = {}


def layout(name: str) -> Callable[[Scanner], Scanner]:
    """Register a scanner under ``name`` (the ``manifest.layout`` param)."""
    def deco(fn: Scanner) -> Scanner:
        LAYOUTS[name] = fn
        return fn
    return deco


def listing(path: Path) -> tuple[list[os.DirEntry], list[os.DirEntry]]:
    """``(folders, files)`` directly in ``path``, each sorted by name (empty if not a folder)."""
    if not path.is_dir():
        return [], []
    with os.scandir(path) as it:
        entries = sorted(it, key=lambda e: e.name)
    folders = [e for e in entries if e.is_dir()]
    return folders, [e for e in entries if not e.is_dir()]


def skip_all(rejects: Rejects, reason: str, rel: str, entries: list[os.DirEntry],
             detail: str) -> None:
    """Record each of ``entries`` (in the folder ``rel``) as skipped, with ``kept = false``."""
    for entry in entries:
        slash = "/" if entry.is_dir() else ""
        rejects.add(reason, path=f"{rel}/{entry.name}{slash}", detail=detail)


def media_files(folder: Path, rel: str, suffixes: tuple[str, ...],
                rejects: Rejects) -> list[os.DirEntry]:
    """The files in ``folder`` with one of ``suffixes``; other files and sub-folders are recorded."""
    folders, files = listing(folder)
    skip_all(rejects, MISPLACED, rel, folders, "a folder where only files belong")
    keep, other = [], []
    for entry in files:
        (keep if entry.name.lower().endswith(suffixes) else other).append(entry)
    skip_all(rejects, WRONG_EXTENSION, rel, other, f"expected {' / '.join(suffixes)}")
    return keep


def name_key(name: str) -> str:
    """Folder-matching key for a name: some face folders drop a trailing dot (``Harry_Connick_Jr``)."""
    return name.rstrip(".")


def read_vox1_meta(path: Path, rejects: Rejects) -> list[dict]:
    """Parse ``vox1_meta.csv`` (tab separated); bad or duplicate rows go to ``rejects``."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = tuple(h.strip() for h in lines[0].split("\t")) if lines else ()
    if header != L.VOX1_META_HEADER:
        raise L.TreeError(f"{path}: unexpected header {header!r}; expected {L.VOX1_META_HEADER!r}")
    rows: list[dict] = []
    seen_ids: set[str] = set()
    seen_names: set[str] = set()
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        fields = [f.strip() for f in line.split("\t")]
        where = f"{path.name}:{lineno}"
        if len(fields) < 5 or not all(fields[:5]):
            rejects.add("metadata_missing_fields", path=where, detail=line)
            continue
        ident, name, gender, nationality, dset = fields[:5]
        if gender.lower() not in ("m", "f"):
            rejects.add("metadata_invalid", id=ident, path=where, detail=f"gender {gender!r}")
            continue
        if ident in seen_ids or name_key(name) in seen_names:
            rejects.add("duplicate_id", id=ident, path=where, detail=f"{ident} {name}")
            continue
        seen_ids.add(ident)
        seen_names.add(name_key(name))
        rows.append({"id": ident, "name": name, "gender": gender.lower(),
                     "nationality": nationality, "set": dset})
    return rows


def _video_files(base: Path, rel: str, suffixes: tuple[str, ...],
                 rejects: Rejects) -> Iterator[tuple[str, str, str]]:
    """Yield ``(video, stem, relpath)`` for ``base/<video>/<file>`` (relpath from the root).

    Files directly in ``base`` (outside a video folder) and files with other suffixes are
    recorded in ``rejects``.
    """
    videos, loose = listing(base)
    skip_all(rejects, MISPLACED, rel, loose, "file outside a video folder")
    for video in videos:
        for entry in media_files(Path(video.path), f"{rel}/{video.name}", suffixes, rejects):
            stem = entry.name.rsplit(".", 1)[0]
            yield video.name, stem, f"{rel}/{video.name}/{entry.name}"


AUDIO_SHAPE = "idXXXXX/<ytid>/NNNNN.wav"


def scan_audio_tree(root: Path, rel: str, known: set[str], rejects: Rejects) -> list[dict]:
    """``<rel>/idXXXXX/<ytid>/NNNNN.ext`` (VoxCeleb1 wav and VoxCeleb2 aac alike)."""
    items = []
    idents, loose = listing(root / rel)
    skip_all(rejects, MISPLACED, rel, loose, f"file outside an identity folder ({AUDIO_SHAPE})")
    for ident in idents:
        if ident.name not in known:
            rejects.add("no_metadata", id=ident.name, path=f"{rel}/{ident.name}",
                        detail="audio folder with no metadata row")
            continue
        for video, stem, path in _video_files(Path(ident.path), f"{rel}/{ident.name}",
                                              AUDIO_SUFFIXES, rejects):
            items.append({"id": f"{ident.name}/{video}/{stem}", "path": path,
                          "identity": ident.name, "video": video})
    return items


FACETRACK_SHAPE = "<Name>/1.6/<ytid>/<frame>.jpg"


def scan_facetracks(root: Path, rel: str, by_name: dict[str, str], rejects: Rejects) -> list[dict]:
    """``<rel>/<Name>/1.6/<ytid>/<frame>.jpg`` (VoxCeleb1 face tracks)."""
    items = []
    folders, loose = listing(root / rel)
    skip_all(rejects, MISPLACED, rel, loose, f"file outside a name folder ({FACETRACK_SHAPE})")
    for folder in folders:
        ident = by_name.get(name_key(folder.name))
        if ident is None:
            rejects.add("no_metadata", path=f"{rel}/{folder.name}",
                        detail="face folder with no metadata row")
            continue
        subs, loose = listing(Path(folder.path))
        skip_all(rejects, MISPLACED, f"{rel}/{folder.name}", loose,
                 f"file outside a video folder ({FACETRACK_SHAPE})")
        for sub in subs:
            base = f"{rel}/{folder.name}/{sub.name}"
            for video, stem, path in _video_files(Path(sub.path), base, IMAGE_SUFFIXES, rejects):
                if not stem.isdigit():
                    rejects.add("bad_name", path=path, detail="frame file name is not a number")
                    continue
                items.append({"id": f"{ident}/{video}/{stem}", "path": path, "identity": ident,
                              "video": video, "frame": int(stem)})
    return items


def require_file(root: Path, rel: str, what: str) -> Path:
    """``root / rel``, or a :class:`~pipeline.sources.layout.TreeError` saying where it might be."""
    path = root / rel
    if not path.is_file():
        raise L.TreeError(f"{rel} not found under {root}: is it a {what} tree (see "
                          f"docs/real-data.md)? {L.misplaced_hint(root, rel)}")
    return path


def scan_vox1_audio(root: Path, rejects: Rejects) -> tuple[Scan, dict[str, str]]:
    """VoxCeleb1 metadata and audio; returns the scan (no faces yet) and the name -> id map."""
    meta = require_file(root, L.VOX1_META, "VoxCeleb1")
    identities = read_vox1_meta(meta, rejects)
    known = {row["id"] for row in identities}
    by_name = {name_key(row["name"]): row["id"] for row in identities}
    audio = scan_audio_tree(root, L.VOX1_WAV, known, rejects)
    return Scan(identities, audio, audio_place=Place((L.VOX1_WAV,), AUDIO_SHAPE)), by_name


@layout("voxceleb1")
def scan_voxceleb1(root: Path, rejects: Rejects) -> Scan:
    """VoxCeleb1 audio + face tracks: ``voxceleb1/{vox1_meta.csv,wav,unzippedFaces}``."""
    found, by_name = scan_vox1_audio(root, rejects)
    found.faces = scan_facetracks(root, L.VOX1_FACES, by_name, rejects)
    found.faces_place = Place((L.VOX1_FACES,), FACETRACK_SHAPE)
    return found
