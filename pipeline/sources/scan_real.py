"""Layouts of the real datasets beyond VoxCeleb1 face tracks (registered in ``scan.LAYOUTS``).

- ``voxceleb2``: VoxCeleb2 audio (``aac/idXXXXX/<ytid>/NNNNN.m4a``) with VGGFace2 faces
  (``vggface2/<split>/nXXXXXX/NNNN_NN.jpg``). ``vox2_meta.csv`` has a UTF-8 BOM and a trailing
  space after every field, and no names: names come from VGGFace2's ``identity_meta.csv``.
  Gender is the only public attribute (``nationality`` is null).
- ``vggface1`` / ``vggface1_curated``: VoxCeleb1 audio with VGGFace (v1) images. Each
  ``files/<Name>.txt`` line is ``id url left top right bottom pose detection_score curation``;
  the image fetched for line ``id`` lives at ``images/<Name>/<id>.jpg`` and keeps its box
  (``left top right bottom`` columns of ``faces.parquet``) for cropping. ``vggface1`` uses
  every listed image that is on disk; ``vggface1_curated`` only lines with ``curation == 1``.

Face items of still-image sources have no video: each photo is its own scene (``video`` is
the photo's id), so the seen-heard hold-out picks whole photos.
"""

from __future__ import annotations

import csv
import logging
import math
import os
import re
from pathlib import Path

from pipeline.common.rejects import Rejects
from pipeline.sources import layout as L
from pipeline.sources.scan import (
    IMAGE_SUFFIXES,
    MISPLACED,
    NOT_ON_DISK,
    Place,
    Scan,
    layout,
    listing,
    media_files,
    name_key,
    require_file,
    scan_audio_tree,
    scan_vox1_audio,
    skip_all,
)

log = logging.getLogger(__name__)

VGGFACE2_STEM = re.compile(r"^(\d+)_(\d+)$")


def _csv_rows(path: Path) -> list[list[str]]:
    """CSV rows with the BOM removed and every field stripped of surrounding spaces."""
    with open(path, encoding="utf-8-sig", newline="") as fh:
        return [[f.strip() for f in row] for row in csv.reader(fh, skipinitialspace=True)]


def read_vox2_meta(path: Path, rejects: Rejects) -> list[dict]:
    """Parse ``vox2_meta.csv`` (``id00012 ,n000012 ,m ,dev ``); bad rows go to ``rejects``."""
    rows = _csv_rows(path)
    header = tuple(rows[0]) if rows else ()
    if header != L.VOX2_META_HEADER:
        raise L.TreeError(f"{path}: unexpected header {header!r}; expected {L.VOX2_META_HEADER!r}")
    out: list[dict] = []
    seen: set[str] = set()
    for lineno, fields in enumerate(rows[1:], start=2):
        if not any(fields):
            continue
        where = f"{path.name}:{lineno}"
        if len(fields) < 4 or not all(fields[:4]):
            rejects.add("metadata_missing_fields", path=where, detail=",".join(fields))
            continue
        ident, vgg, gender, dset = fields[:4]
        if gender.lower() not in ("m", "f"):
            rejects.add("metadata_invalid", id=ident, path=where, detail=f"gender {gender!r}")
            continue
        if ident in seen or vgg in seen:
            rejects.add("duplicate_id", id=ident, path=where, detail=f"{ident} {vgg}")
            continue
        seen.update((ident, vgg))
        out.append({"id": ident, "vggface2": vgg, "gender": gender.lower(), "set": dset})
    return out


def read_vggface2_names(path: Path) -> dict[str, str]:
    """``identity_meta.csv`` (``Class_ID, Name, Sample_Num, Flag, Gender``) -> ``{class: name}``."""
    rows = _csv_rows(path)
    if not rows or rows[0][:2] != ["Class_ID", "Name"]:
        raise L.TreeError(f"{path}: expected a header starting with 'Class_ID, Name'; "
                          f"got {rows[0] if rows else 'an empty file'}")
    return {r[0]: r[1] for r in rows[1:] if len(r) >= 2 and r[0] and r[1]}


def vox2_identities(root: Path, rejects: Rejects) -> list[dict]:
    """vox2_meta rows joined with VGGFace2 names; rows without a name are rejected."""
    meta = require_file(root, L.VOX2_META, "VoxCeleb2")
    names_file = require_file(root, L.VGGFACE2_META, "VoxCeleb2 + VGGFace2")
    names = read_vggface2_names(names_file)
    identities = []
    for row in read_vox2_meta(meta, rejects):
        name = names.get(row["vggface2"])
        if not name:
            rejects.add("no_name", id=row["id"], path=L.VOX2_META,
                        detail=f"{row['vggface2']} is not in {L.VGGFACE2_META}")
            continue
        identities.append({"id": row["id"], "name": name, "gender": row["gender"],
                           "nationality": None, "set": row["set"], "vggface2": row["vggface2"]})
    return identities


VGGFACE2_SHAPE = "<split>/nXXXXXX/NNNN_NN.jpg"


def scan_vggface2(root: Path, by_class: dict[str, str], rejects: Rejects) -> list[dict]:
    """``vggface2/<split>/nXXXXXX/NNNN_NN.jpg`` for the classes that are VoxCeleb2 speakers."""
    items, other = [], 0
    for split in L.VGGFACE2_SPLITS:
        rel = f"{L.VGGFACE2}/{split}"
        folders, loose = listing(root / rel)
        skip_all(rejects, MISPLACED, rel, loose, f"file outside a class folder ({VGGFACE2_SHAPE})")
        for folder in folders:
            ident = by_class.get(folder.name)
            if ident is None:
                other += 1  # VGGFace2 has 9,131 classes, VoxCeleb2 6,112 speakers
                continue
            base = f"{rel}/{folder.name}"
            for entry in media_files(Path(folder.path), base, IMAGE_SUFFIXES, rejects):
                stem = entry.name.rsplit(".", 1)[0]
                path = f"{base}/{entry.name}"
                match = VGGFACE2_STEM.match(stem)
                if match is None:
                    rejects.add("bad_name", path=path, detail="expected <imageID>_<faceID>.jpg")
                    continue
                frame = int(match[1]) * 100 + int(match[2])
                items.append({"id": f"{ident}/{folder.name}/{stem}", "path": path,
                              "identity": ident, "video": stem, "frame": frame})
    log.info("vggface2: %d face images of VoxCeleb2 speakers; %d other classes skipped",
             len(items), other)
    return items


@layout("voxceleb2")
def scan_voxceleb2(root: Path, rejects: Rejects) -> Scan:
    """VoxCeleb2 audio + VGGFace2 faces, names from ``identity_meta.csv``."""
    identities = vox2_identities(root, rejects)
    known = {row["id"] for row in identities}
    audio = [item for rel in L.VOX2_AAC_DIRS if (root / rel).is_dir()
             for item in scan_audio_tree(root, rel, known, rejects)]
    by_class = {row["vggface2"]: row["id"] for row in identities}
    faces = scan_vggface2(root, by_class, rejects)
    for row in identities:
        del row["vggface2"]
    return Scan(identities, audio, faces,
                audio_place=Place(L.VOX2_AAC_DIRS, "idXXXXX/<ytid>/NNNNN.m4a"),
                faces_place=Place(tuple(f"{L.VGGFACE2}/{s}" for s in L.VGGFACE2_SPLITS),
                                  "nXXXXXX/NNNN_NN.jpg"))


def read_vggface_list(path: Path, rel: str, rejects: Rejects) -> list[dict]:
    """Lines ``id url left top right bottom pose detection_score curation`` of one list."""
    rows = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) != len(L.VGGFACE_LIST_COLUMNS):
                raise ValueError(f"{len(fields)} fields")
            left, top, right, bottom = (float(v) for v in fields[2:6])
            curation = int(float(fields[8]))
        except ValueError as exc:
            rejects.add("metadata_invalid", path=f"{rel}:{lineno}", detail=f"{exc}: {line[:120]}")
            continue
        rows.append({"id": fields[0], "url": fields[1], "left": max(0, math.floor(left)),
                     "top": max(0, math.floor(top)), "right": math.ceil(right),
                     "bottom": math.ceil(bottom), "curation": curation, "line": lineno})
    return rows


def _image_key(stem: str) -> str:
    return str(int(stem)) if stem.isdigit() else stem


def _vggface_images(root: Path, name: str, rejects: Rejects) -> dict[str, str]:
    """``{image id: file name}`` of the images fetched for one list (ids compared unpadded)."""
    rel = f"{L.VOX1_VGGFACE_IMAGES}/{name}"
    return {_image_key(e.name.rsplit(".", 1)[0]): e.name
            for e in media_files(root / rel, rel, IMAGE_SUFFIXES, rejects)}


VGGFACE_SHAPE = "<Name>/<id>.jpg, listed in files/<Name>.txt"


def _vggface_lists(root: Path, rejects: Rejects) -> list[os.DirEntry]:
    """The ``files/<Name>.txt`` lists; other files there are recorded as skipped."""
    lists = L.VOX1_VGGFACE_LISTS
    if not (root / lists).is_dir():
        raise L.TreeError(f"{lists}/ not found under {root}: VGGFace lists go to "
                          f"{lists}/<Name>.txt (see docs/real-data.md). "
                          f"{L.misplaced_hint(root, lists)}")
    return media_files(root / lists, lists, (".txt",), rejects)


def scan_vggface1(root: Path, by_name: dict[str, str], rejects: Rejects,
                  curated_only: bool) -> list[dict]:
    """Images listed in ``files/<Name>.txt`` and present under ``images/<Name>/``, with boxes.

    Listed images that are not on disk (dead URLs, never fetched) are recorded as
    ``not_on_disk``; images without a list line, and image folders without a list, as
    ``no_metadata``.
    """
    items, absent, other, names = [], 0, 0, set()
    for entry in _vggface_lists(root, rejects):
        name = entry.name[:-4]
        names.add(name)
        ident = by_name.get(name_key(name))
        if ident is None:
            other += 1  # VGGFace has 2,622 identities, VoxCeleb1 1,251
            continue
        rel_list = f"{L.VOX1_VGGFACE_LISTS}/{entry.name}"
        images = _vggface_images(root, name, rejects)
        listed = set()
        for row in read_vggface_list(Path(entry.path), rel_list, rejects):
            key = _image_key(row["id"])
            listed.add(key)
            if curated_only and row["curation"] != 1:
                continue
            if key not in images:
                absent += 1  # never fetched (many VGGFace URLs are dead)
                rejects.add(NOT_ON_DISK, id=f"{ident}/vggface/{key}",
                            path=f"{L.VOX1_VGGFACE_IMAGES}/{name}/{row['id']}.jpg",
                            detail=f"listed in {rel_list}:{row['line']}, not on disk")
                continue
            path = f"{L.VOX1_VGGFACE_IMAGES}/{name}/{images[key]}"
            if row["right"] <= row["left"] or row["bottom"] <= row["top"]:
                rejects.add("bad_box", path=path, detail=f"{rel_list}:{row['line']}")
                continue
            items.append({"id": f"{ident}/vggface/{key}", "path": path, "identity": ident,
                          "video": key, "frame": int(key) if key.isdigit() else None,
                          **{k: row[k] for k in ("left", "top", "right", "bottom")}})
        for key in sorted(set(images) - listed):
            rejects.add("no_metadata", path=f"{L.VOX1_VGGFACE_IMAGES}/{name}/{images[key]}",
                        detail=f"image id {key} is not in {rel_list}")
    _unlisted_folders(root, names, rejects)
    log.info("vggface: %d listed images found; %d listed but not on disk; %d lists of other "
             "identities skipped", len(items), absent, other)
    return items


def _unlisted_folders(root: Path, names: set[str], rejects: Rejects) -> None:
    """Record image folders that have no list, and files outside a name folder."""
    rel = L.VOX1_VGGFACE_IMAGES
    folders, loose = listing(root / rel)
    skip_all(rejects, MISPLACED, rel, loose, f"file outside a name folder ({VGGFACE_SHAPE})")
    for folder in folders:
        if folder.name not in names:
            rejects.add("no_metadata", path=f"{rel}/{folder.name}",
                        detail=f"image folder with no {L.VOX1_VGGFACE_LISTS}/{folder.name}.txt")


def _scan_vox1_vggface(root: Path, rejects: Rejects, curated_only: bool) -> Scan:
    found, by_name = scan_vox1_audio(root, rejects)
    found.faces = scan_vggface1(root, by_name, rejects, curated_only)
    found.faces_place = Place((L.VOX1_VGGFACE_IMAGES,), VGGFACE_SHAPE)
    return found


@layout("vggface1")
def scan_vox1_vggface(root: Path, rejects: Rejects) -> Scan:
    """VoxCeleb1 audio + every listed VGGFace (v1) image on disk, cropped by its box."""
    return _scan_vox1_vggface(root, rejects, curated_only=False)


@layout("vggface1_curated")
def scan_vox1_vggface_curated(root: Path, rejects: Rejects) -> Scan:
    """VoxCeleb1 audio + VGGFace (v1) images whose list line has ``curation == 1``."""
    return _scan_vox1_vggface(root, rejects, curated_only=True)
