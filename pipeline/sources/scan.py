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


@dataclass
class Scan:
    """What a layout found: identity rows plus candidate audio and face files (paths relative to root)."""

    identities: list[dict] = field(default_factory=list)
    audio: list[dict] = field(default_factory=list)
    faces: list[dict] = field(default_factory=list)


Scanner = Callable[[Path, Rejects], Scan]
LAYOUTS: dict[str, Scanner] = {}


def layout(name: str) -> Callable[[Scanner], Scanner]:
    """Register a scanner under ``name`` (the ``manifest.layout`` param)."""
    def deco(fn: Scanner) -> Scanner:
        LAYOUTS[name] = fn
        return fn
    return deco


def _sorted_dirs(path: Path) -> list[os.DirEntry]:
    if not path.is_dir():
        return []
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_dir()), key=lambda e: e.name)


def _sorted_files(path: Path, suffixes: tuple[str, ...]) -> list[os.DirEntry]:
    with os.scandir(path) as it:
        return sorted((e for e in it if e.is_file() and e.name.lower().endswith(suffixes)),
                      key=lambda e: e.name)


def name_key(name: str) -> str:
    """Folder-matching key for a name: some face folders drop a trailing dot (``Harry_Connick_Jr``)."""
    return name.rstrip(".")


def read_vox1_meta(path: Path, rejects: Rejects) -> list[dict]:
    """Parse ``vox1_meta.csv`` (tab separated); bad or duplicate rows go to ``rejects``."""
    lines = path.read_text(encoding="utf-8-sig").splitlines()
    header = tuple(h.strip() for h in lines[0].split("\t")) if lines else ()
    if header != L.VOX1_META_HEADER:
        raise ValueError(f"{path}: unexpected header {header!r}; expected {L.VOX1_META_HEADER!r}")
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


def _video_files(base: Path, rel: str, suffixes: tuple[str, ...]) -> Iterator[tuple[str, str, str]]:
    """Yield ``(video, stem, relpath)`` for ``base/<video>/<file>`` (relpath from the root)."""
    for video in _sorted_dirs(base):
        for entry in _sorted_files(Path(video.path), suffixes):
            stem = entry.name.rsplit(".", 1)[0]
            yield video.name, stem, f"{rel}/{video.name}/{entry.name}"


def scan_audio_tree(root: Path, rel: str, known: set[str], rejects: Rejects) -> list[dict]:
    """``<rel>/idXXXXX/<ytid>/NNNNN.ext`` (VoxCeleb1 wav and VoxCeleb2 aac alike)."""
    items = []
    for ident in _sorted_dirs(root / rel):
        if ident.name not in known:
            rejects.add("no_metadata", id=ident.name, path=f"{rel}/{ident.name}",
                        detail="audio folder with no metadata row")
            continue
        for video, stem, path in _video_files(Path(ident.path), f"{rel}/{ident.name}", AUDIO_SUFFIXES):
            items.append({"id": f"{ident.name}/{video}/{stem}", "path": path,
                          "identity": ident.name, "video": video})
    return items


def scan_facetracks(root: Path, rel: str, by_name: dict[str, str], rejects: Rejects) -> list[dict]:
    """``<rel>/<Name>/1.6/<ytid>/<frame>.jpg`` (VoxCeleb1 face tracks)."""
    items = []
    for folder in _sorted_dirs(root / rel):
        ident = by_name.get(name_key(folder.name))
        if ident is None:
            rejects.add("no_metadata", path=f"{rel}/{folder.name}",
                        detail="face folder with no metadata row")
            continue
        for sub in _sorted_dirs(Path(folder.path)):
            base = f"{rel}/{folder.name}/{sub.name}"
            for video, stem, path in _video_files(Path(sub.path), base, IMAGE_SUFFIXES):
                if not stem.isdigit():
                    rejects.add("bad_name", path=path, detail="frame file name is not a number")
                    continue
                items.append({"id": f"{ident}/{video}/{stem}", "path": path, "identity": ident,
                              "video": video, "frame": int(stem)})
    return items


def scan_vox1_audio(root: Path, rejects: Rejects) -> tuple[Scan, dict[str, str]]:
    """VoxCeleb1 metadata and audio; returns the scan (no faces yet) and the name -> id map."""
    meta = root / L.VOX1_META
    if not meta.is_file():
        raise FileNotFoundError(f"{meta} not found: is {root} a VoxCeleb1 tree "
                                "(see docs/real-data.md)?")
    identities = read_vox1_meta(meta, rejects)
    known = {row["id"] for row in identities}
    by_name = {name_key(row["name"]): row["id"] for row in identities}
    return Scan(identities, scan_audio_tree(root, L.VOX1_WAV, known, rejects)), by_name


@layout("voxceleb1")
def scan_voxceleb1(root: Path, rejects: Rejects) -> Scan:
    """VoxCeleb1 audio + face tracks: ``voxceleb1/{vox1_meta.csv,wav,unzippedFaces}``."""
    found, by_name = scan_vox1_audio(root, rejects)
    found.faces = scan_facetracks(root, L.VOX1_FACES, by_name, rejects)
    return found
