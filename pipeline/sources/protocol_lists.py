"""Import published evaluation lists into the tuples schemas, by mapping paths to manifest ids.

Researchers compare against papers that evaluate on fixed lists. Supported formats, from
"Seeking the Shape of Sound" (Wen et al., CVPR 2021):

- ``sss-verification``: one pair per line, ``<voice> <face>`` (or ``<face> <voice>``), e.g.
  ``id10117/59-3D0HIDAc/00001.wav CCH_Pounder/00000657.jpg``. The voice is a VoxCeleb1 wav path
  relative to ``wav/``; the face a VGGFace1 image ``<VGGFace1 name>/<8-digit number>.jpg``. The
  label is whether both belong to the same identity; an optional third field ``0``/``1`` is
  checked against it (``label_mismatch`` otherwise). Output: the ``pairs.parquet`` schema.
- ``sss-retrieval``: one query per line, the query path followed by its gallery paths,
  space-separated (all gallery items of the other modality). Output: the ``retrieval.parquet``
  schema with one row per line (``query_ids`` holds the one query, ``gallery_ids`` its gallery,
  with their identities and videos; ``exclude_same_video`` is false: the list's gallery is used
  as published).

Blank lines and lines starting with ``#`` are skipped. The first item's modality sets
``direction``: a voice query is ``v2f``, a face query ``f2v``.

Mapping (``data/manifest``):

- voices: the path after ``wav/`` (or ``aac/``) of ``utterances.parquet``'s ``path``, or the
  path without its extension as an utterance ``id``;
- faces, in order: (1) the path after ``unzippedFaces/`` or ``vggface/images/`` of
  ``faces.parquet``'s ``path`` (``face_mapping = "path"``: the very image); (2) with the
  ``vggface1``/``vggface1_curated`` layouts, the face of that identity whose VGGFace image id
  is the number (``vggface_id``: the very image, stored under another file name); (3) with the
  ``voxceleb1`` face-track layout, which has no VGGFace images, the face-track frame of that
  identity whose frame number is the image number (``name_number``): *a different photo of the
  same identity*, so labels are kept but the image is not the published one. When several
  videos have that frame the first face in manifest order is used and the line is listed as
  an anomaly (``ambiguous_face``, ``kept``). Identity names match ``identities.parquet``'s
  ``name`` (a trailing dot may be dropped, as on disk).

Unmapped lines go to the rejects table with a reason (``bad_line``, ``unknown_modality``,
``unmapped_voice``, ``unmapped_face``, ``label_mismatch``, ``duplicate_item``); the import fails
only when the rejected fraction exceeds ``max_reject_fraction``.

Extra columns beyond the tuples schemas: ``line`` (1-based line number in the list),
``query_path`` and ``candidate_path`` / ``gallery_paths`` (as written in the list),
``candidate_split`` (pairs: the candidate item's split; ``split`` is the query item's),
``face_mapping`` (pairs: how the face was mapped), ``n_relevant`` (retrieval: gallery items of
the query's identity), ``source`` (the list's file name). ``seed`` is null. Next to ``out`` the
import writes ``<stem>_rejects.parquet`` and ``<stem>_summary.json``.
"""

from __future__ import annotations

import logging
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import typer

from pipeline.common.io import write_json, write_parquet
from pipeline.common.rejects import Rejects

log = logging.getLogger(__name__)

STAGE = "tuples_import"
FORMATS = ("sss-verification", "sss-retrieval")
CONSTRAINTS = ("U", "G", "N", "GN")
VOICE_SUFFIXES = (".wav", ".m4a", ".flac", ".aac")
FACE_SUFFIXES = (".jpg", ".jpeg", ".png")
VOICE_ROOTS = ("wav/", "aac/")
FACE_ROOTS = ("unzippedFaces/", "vggface/images/")
VGGFACE_LAYOUTS = ("vggface1", "vggface1_curated")
FACE_TRACK_LAYOUTS = ("voxceleb1",)
NAME_NUMBER = re.compile(r"^(?P<name>[^/]+)/(?P<number>\d+)\.(?:jpe?g|png)$", re.IGNORECASE)

PAIRS_SCHEMA = {"split": pl.Utf8, "direction": pl.Utf8, "constraint": pl.Utf8, "query_id": pl.Utf8,
                "candidate_id": pl.Utf8, "same": pl.Boolean, "seed": pl.Int64, "line": pl.Int32,
                "query_path": pl.Utf8, "candidate_path": pl.Utf8, "candidate_split": pl.Utf8,
                "face_mapping": pl.Utf8, "source": pl.Utf8}
RETRIEVAL_SCHEMA = {"split": pl.Utf8, "direction": pl.Utf8, "exclude_same_video": pl.Boolean,
                    "query_ids": pl.List(pl.Utf8), "query_identities": pl.List(pl.Utf8),
                    "query_videos": pl.List(pl.Utf8), "gallery_ids": pl.List(pl.Utf8),
                    "gallery_identities": pl.List(pl.Utf8), "gallery_videos": pl.List(pl.Utf8),
                    "line": pl.Int32, "query_path": pl.Utf8,
                    "gallery_paths": pl.List(pl.Utf8), "n_relevant": pl.Int32, "source": pl.Utf8}


class Unmapped(Exception):
    """A list line that cannot be imported; ``reason`` goes into the rejects table."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class Item:
    """One mapped list entry."""

    modality: str  # voice | face
    id: str
    identity: str
    split: str
    video: str
    mapping: str  # path | id | vggface_id | name_number
    ambiguous: int = 0  # other faces that matched name + number equally well


def _tail(path: str, roots: tuple[str, ...]) -> str | None:
    """The part of a manifest path after its dataset root folder (``wav/``, ``unzippedFaces/``)."""
    for root in roots:
        at = path.find("/" + root)
        if at >= 0:
            return path[at + 1 + len(root):]
        if path.startswith(root):
            return path[len(root):]
    return None


def _clean(token: str) -> str:
    token = token.replace("\\", "/")
    while token.startswith("./"):
        token = token[2:]
    return token.lstrip("/")


def modality_of(token: str) -> str:
    suffix = Path(token).suffix.lower()
    if suffix in VOICE_SUFFIXES:
        return "voice"
    if suffix in FACE_SUFFIXES:
        return "face"
    raise Unmapped("unknown_modality", f"{token!r}: expected a voice ({', '.join(VOICE_SUFFIXES)}) "
                                       f"or face ({', '.join(FACE_SUFFIXES)}) path")


@dataclass
class ManifestIndex:
    """Lookups from list paths to manifest items."""

    layout: str | None
    voices: dict[str, tuple[str, str, str]] = field(default_factory=dict)  # key -> id, identity, split
    faces: dict[str, tuple[str, str, str]] = field(default_factory=dict)
    faces_by_number: dict[tuple[str, int], list[tuple[str, str, str]]] = field(default_factory=dict)
    identity_by_name: dict[str, str] = field(default_factory=dict)

    @classmethod
    def load(cls, manifest_dir: Path) -> ManifestIndex:
        manifest_dir = Path(manifest_dir)
        summary = manifest_dir / "summary.json"
        layout = None
        if summary.is_file():
            import json

            layout = json.loads(summary.read_text(encoding="utf-8")).get("layout")
        index = cls(layout=layout)
        identities = pl.read_parquet(manifest_dir / "identities.parquet", columns=["id", "name"])
        for ident, name in identities.iter_rows():
            if name:
                index.identity_by_name.setdefault(name, ident)
                index.identity_by_name.setdefault(name.rstrip("."), ident)
        cols = ["id", "path", "identity", "split", "video"]
        for uid, path, ident, split, video in pl.read_parquet(manifest_dir / "utterances.parquet",
                                                              columns=cols).iter_rows():
            value = (uid, ident, split, video)
            index.voices.setdefault(uid, value)
            tail = _tail(path, VOICE_ROOTS)
            if tail:
                index.voices.setdefault(tail, value)
        faces = pl.read_parquet(manifest_dir / "faces.parquet", columns=[*cols, "frame"])
        for uid, path, ident, split, video, frame in faces.iter_rows():
            value = (uid, ident, split, video)
            tail = _tail(path, FACE_ROOTS)
            if tail:
                index.faces.setdefault(tail, value)
            if frame is not None:
                index.faces_by_number.setdefault((ident, int(frame)), []).append(value)
        return index

    def voice(self, token: str) -> Item:
        key = _clean(token)
        hit = self.voices.get(key) or self.voices.get(key.rsplit(".", 1)[0])
        if hit is None:
            raise Unmapped("unmapped_voice", f"{token!r} is not in utterances.parquet")
        return Item("voice", *hit, mapping="path")

    def face(self, token: str) -> Item:
        key = _clean(token)
        hit = self.faces.get(key)
        if hit is not None:
            return Item("face", *hit, mapping="path")
        match = NAME_NUMBER.match(key)
        if match is None:
            raise Unmapped("unmapped_face", f"{token!r} is not in faces.parquet and is not "
                                            "<VGGFace1 name>/<number>.jpg")
        if self.layout is not None and self.layout not in (*VGGFACE_LAYOUTS, *FACE_TRACK_LAYOUTS):
            raise Unmapped("unmapped_face", f"{token!r}: VGGFace1 names cannot be mapped onto the "
                                            f"{self.layout!r} layout")
        name, number = match["name"], int(match["number"])
        ident = self.identity_by_name.get(name) or self.identity_by_name.get(name.rstrip("."))
        if ident is None:
            raise Unmapped("unmapped_face", f"{token!r}: no identity named {name!r}")
        found = self.faces_by_number.get((ident, number))
        if not found:
            raise Unmapped("unmapped_face", f"{token!r}: identity {ident} has no face numbered "
                                            f"{number}")
        mapping = "vggface_id" if self.layout in VGGFACE_LAYOUTS else "name_number"
        return Item("face", *found[0], mapping=mapping, ambiguous=len(found) - 1)

    def item(self, token: str) -> Item:
        return self.voice(token) if modality_of(token) == "voice" else self.face(token)


def read_lines(path: Path) -> list[tuple[int, list[str]]]:
    """``(line number, fields)`` of every non-blank, non-comment line."""
    text = Path(path).read_text(encoding="utf-8-sig", errors="replace")
    out = []
    for lineno, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if fields and not fields[0].startswith("#"):
            out.append((lineno, fields))
    return out


def _label(field_text: str) -> bool:
    value = field_text.strip().lower()
    if value in ("1", "true"):
        return True
    if value in ("0", "false"):
        return False
    raise Unmapped("bad_line", f"label {field_text!r} is not 0/1")


def _note_ambiguous(items: list[Item], lineno: int, rejects: Rejects, where: str) -> None:
    for item in items:
        if item.ambiguous:
            rejects.add("ambiguous_face", id=item.id, path=where, kept=True,
                        detail=f"line {lineno}: {item.ambiguous + 1} faces share the number; "
                               "the first in manifest order is used")


def verification_row(index: ManifestIndex, fields: list[str], constraint: str) -> tuple[dict, list[Item]]:
    if len(fields) not in (2, 3):
        raise Unmapped("bad_line", f"expected '<voice> <face> [label]', got {len(fields)} fields")
    first, second = (modality_of(f) for f in fields[:2])
    if first == second:
        raise Unmapped("bad_line", f"both paths are {first}s")
    query, candidate = index.item(fields[0]), index.item(fields[1])
    same = query.identity == candidate.identity
    if len(fields) == 3 and _label(fields[2]) != same:
        raise Unmapped("label_mismatch", f"list says {fields[2]}, manifest identities are "
                                         f"{query.identity} and {candidate.identity}")
    face = candidate if candidate.modality == "face" else query
    row = {"split": query.split, "direction": "v2f" if query.modality == "voice" else "f2v",
           "constraint": constraint, "query_id": query.id, "candidate_id": candidate.id,
           "same": same, "seed": None, "query_path": fields[0], "candidate_path": fields[1],
           "candidate_split": candidate.split, "face_mapping": face.mapping}
    return row, [query, candidate]


def retrieval_row(index: ManifestIndex, fields: list[str]) -> tuple[dict, list[Item]]:
    if len(fields) < 2:
        raise Unmapped("bad_line", "expected a query path followed by gallery paths")
    query_modality = modality_of(fields[0])
    for token in fields[1:]:
        if modality_of(token) == query_modality:
            raise Unmapped("bad_line", f"gallery item {token!r} has the query's modality")
    repeated = [t for t, n in Counter(fields[1:]).items() if n > 1]
    if repeated:
        raise Unmapped("duplicate_item", f"gallery lists {repeated[0]!r} more than once")
    query = index.item(fields[0])
    gallery = [index.item(t) for t in fields[1:]]
    row = {"split": query.split, "direction": "v2f" if query.modality == "voice" else "f2v",
           "exclude_same_video": False, "query_ids": [query.id],
           "query_identities": [query.identity], "query_videos": [query.video],
           "gallery_ids": [g.id for g in gallery],
           "gallery_identities": [g.identity for g in gallery],
           "gallery_videos": [g.video for g in gallery],
           "query_path": fields[0], "gallery_paths": fields[1:],
           "n_relevant": sum(g.identity == query.identity for g in gallery)}
    return row, [query, *gallery]


def side_paths(out: Path) -> tuple[Path, Path]:
    """The rejects table and the summary written next to ``out``."""
    out = Path(out)
    return out.with_name(f"{out.stem}_rejects.parquet"), out.with_name(f"{out.stem}_summary.json")


def import_list(fmt: str, file: Path, manifest_dir: Path, out: Path, *, constraint: str = "U",
                max_reject_fraction: float = 0.05) -> dict[str, Any]:
    """Convert a published list into ``out`` (Parquet, pairs or retrieval schema); see the module.

    ``constraint`` is recorded on verification pairs (a list file does not say which it is).
    Returns the summary (also written as ``<stem>_summary.json``).
    """
    if fmt not in FORMATS:
        raise ValueError(f"unknown list format {fmt!r}; supported: {', '.join(FORMATS)}")
    if constraint not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {constraint!r}")
    file, out = Path(file), Path(out)
    if not file.is_file():
        raise FileNotFoundError(f"list file {file} does not exist")
    index = ManifestIndex.load(manifest_dir)
    lines = read_lines(file)
    if not lines:
        raise ValueError(f"{file}: no list lines")
    rejects, rows, mappings = Rejects(STAGE), [], Counter()
    for lineno, fields in lines:
        where = f"{file.name}:{lineno}"
        try:
            if fmt == "sss-verification":
                row, items = verification_row(index, fields, constraint)
            else:
                row, items = retrieval_row(index, fields)
        except Unmapped as exc:
            rejects.add(exc.reason, path=where, detail=f"{exc.detail} | {' '.join(fields)[:200]}")
            continue
        _note_ambiguous(items, lineno, rejects, where)
        mappings.update(f"{i.modality}:{i.mapping}" for i in items)
        if fmt == "sss-retrieval" and row["n_relevant"] == 0:
            rejects.add("no_relevant", id=row["query_ids"][0], path=where, kept=True,
                        detail="no gallery item shares the query's identity")
        rows.append({**row, "line": lineno, "source": file.name})
    schema = PAIRS_SCHEMA if fmt == "sss-verification" else RETRIEVAL_SCHEMA
    table = pl.DataFrame(rows, schema=schema)
    rejects_path, summary_path = side_paths(out)
    rejects.write(rejects_path)
    rejects.check(len(lines), max_reject_fraction)
    summary = _summary(fmt, file, index, table, rejects, len(lines), mappings, out, constraint)
    write_parquet(out, table)
    write_json(summary_path, summary)
    log.info("imported %d of %d lines of %s into %s (%s)", table.height, len(lines), file, out,
             rejects.counts() or "no rejects")
    return summary


def _summary(fmt: str, file: Path, index: ManifestIndex, table: pl.DataFrame, rejects: Rejects,
             total: int, mappings: Counter, out: Path, constraint: str) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "format": fmt, "source": str(file), "out": str(out), "manifest_layout": index.layout,
        "lines": total, "imported": table.height, "rejected": len(rejects.dropped),
        "recorded_anomalies": len(rejects) - len(rejects.dropped),
        "rejects_by_reason": rejects.counts(), "item_mappings": dict(sorted(mappings.items())),
        "rows_by_split_direction": _counts(table),
    }
    if fmt == "sss-verification":
        summary["constraint"] = constraint
        summary["positive_fraction"] = round(float(table["same"].mean()), 6) if table.height else None
        summary["cross_split_pairs"] = int((table["split"] != table["candidate_split"]).sum())
    else:
        summary["gallery_sizes"] = sorted(set(table["gallery_ids"].list.len().to_list()))
    return summary


def _counts(table: pl.DataFrame) -> dict[str, int]:
    groups = table.group_by("split", "direction").len().sort("split", "direction")
    return {f"{split}/{direction}": int(n) for split, direction, n in groups.iter_rows()}


def import_cli(
    fmt: str = typer.Argument(..., metavar="FORMAT", help=f"List format: {', '.join(FORMATS)}."),
    file: Path = typer.Argument(..., help="The published list (text file)."),
    out: Path = typer.Argument(..., help="Output Parquet (pairs or retrieval schema)."),
    manifest: Path = typer.Option(Path("data/manifest"), help="Manifest directory to map paths onto."),
    constraint: str = typer.Option("U", help="Constraint recorded on verification pairs (U/G/N/GN)."),
    max_reject_fraction: float = typer.Option(0.05, help="Fail when more lines than this are rejected."),
) -> None:
    """Import a published protocol list ("Seeking the Shape of Sound") as a tuples table."""
    summary = import_list(fmt, file, manifest, out, constraint=constraint,
                          max_reject_fraction=max_reject_fraction)
    typer.echo(f"{summary['imported']} of {summary['lines']} lines imported into {out}; "
               f"rejected: {summary['rejects_by_reason'] or 'none'}")
