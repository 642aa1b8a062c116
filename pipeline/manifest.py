"""``manifest`` stage: index the raw tree, validate every file cheaply, split by name initial.

Synthetic and real data go through the same code: a layout scanner (``pipeline.sources.scan``) lists
metadata rows and candidate files; this module validates them, joins audio and faces through
the metadata, assigns splits and holds out the seen-heard videos.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl
import typer

from pipeline.common.config import ConfigError, from_sections, load_params
from pipeline.common.io import atomic_dir, write_json
from pipeline.common.parallel import imap_ordered
from pipeline.common.probe import BadInput, probe_audio, probe_image
from pipeline.common.rejects import Rejects, TooManyRejects
from pipeline.sources import scan
from pipeline.sources.layout import TreeError, misplaced_hint, resolve_root
from pipeline.sources.layouts import get_layout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ITEM_SPLITS = (*SPLITS, "seen_heard")
# Rejects listed in the table but not counted against max_reject_fraction: list lines whose
# image was never fetched are normal for VGGFace v1 (dead URLs); they are not files under the root.
UNCOUNTED = frozenset({scan.NOT_ON_DISK})


@dataclass(frozen=True)
class ManifestConfig:
    """The ``manifest`` params section; every default equals params.yaml (tests check it)."""

    # Fields read from another stage's section, so a knob shared by two stages is stated once
    # in params.yaml: field -> (section, key).
    shared_params: ClassVar[dict[str, tuple[str, str]]] = {"min_face_size": ("faces", "min_size")}

    layout: str = "voxceleb1"
    val_initials: str = "AB"
    test_initials: str = "CDE"
    seen_heard_fraction: float = 0.33
    seed: int = 0
    expected_sample_rate: int = 16000
    expected_channels: int = 1
    min_face_size: int = 32  # faces.min_size
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        val, test = set(self.val_initials.upper()), set(self.test_initials.upper())
        if val & test:
            raise ValueError(f"manifest: initials {sorted(val & test)} are in both val and test")
        if not 0.0 <= self.seen_heard_fraction < 1.0:
            raise ValueError("manifest.seen_heard_fraction must be in [0, 1)")


def config_from_params(params: Mapping[str, Any]) -> ManifestConfig:
    """The ``manifest`` section plus the shared knobs (``faces.min_size``) of a params mapping."""
    return from_sections(ManifestConfig, params, "manifest")


def split_of(name: str, cfg: ManifestConfig) -> str:
    """A-B val, C-E test, F-Z train by default (the first letter of the VGGFace1 name)."""
    initial = name[:1].upper()
    if initial and initial in cfg.val_initials.upper():
        return "val"
    if initial and initial in cfg.test_initials.upper():
        return "test"
    return "train"


def _probe(task: tuple[str, str, int]) -> tuple[str, dict]:
    """Worker: probe one file; return ``("ok", facts)`` or ``(reason, {"detail": ...})``."""
    kind, path, min_face = task
    try:
        if kind == "audio":
            info = probe_audio(path)
            return "ok", {"duration": info.duration, "sample_rate": info.sample_rate,
                          "channels": info.channels}
        info = probe_image(path, min_size=min_face)
        return "ok", {"width": info.width, "height": info.height}
    except BadInput as exc:
        return exc.reason, {"detail": exc.detail}


def validate(root: Path, items: list[dict], kind: str, cfg: ManifestConfig,
             rejects: Rejects) -> list[dict]:
    """Probe every file in parallel; keep the valid ones with their facts, reject the rest."""
    tasks = ((kind, str(root / item["path"]), cfg.min_face_size) for item in items)
    valid = []
    results = imap_ordered(_probe, tasks, workers=cfg.workers, desc=f"manifest {kind}",
                           total=len(items))
    for item, (status, facts) in zip(items, results, strict=True):
        if status != "ok":
            rejects.add(status, id=item["id"], path=item["path"], detail=facts.get("detail"))
            continue
        valid.append({**item, **facts})
        if kind == "audio" and (facts["sample_rate"] != cfg.expected_sample_rate
                                or facts["channels"] != cfg.expected_channels):
            rejects.add("unexpected_format", id=item["id"], path=item["path"], kept=True,
                        detail=f"{facts['sample_rate']} Hz x {facts['channels']} ch; "
                               "resampled/downmixed downstream")
    return valid


def _half_up(x: float) -> int:
    return int(math.floor(x + 0.5))


def held_out_videos(identity: str, audio_videos: set[str], face_videos: set[str],
                    cfg: ManifestConfig) -> tuple[set[str], set[str]]:
    """Choose a training identity's seen-heard videos, per modality.

    Videos with both modalities are held out first, so held-out voices and faces come from
    the same scenes where the data allows. At least one video per modality stays in train.
    """
    rng = np.random.default_rng([cfg.seed, zlib.crc32(identity.encode())])
    both = sorted(audio_videos & face_videos)
    order = [*rng.permutation(both).tolist(),
             *rng.permutation(sorted(audio_videos - face_videos)).tolist(),
             *rng.permutation(sorted(face_videos - audio_videos)).tolist()]
    n_audio = min(_half_up(cfg.seen_heard_fraction * len(audio_videos)), len(audio_videos) - 1)
    n_face = min(_half_up(cfg.seen_heard_fraction * len(face_videos)), len(face_videos) - 1)
    audio_out = [v for v in order if v in audio_videos][:max(n_audio, 0)]
    face_out = [v for v in order if v in face_videos][:max(n_face, 0)]
    return set(audio_out), set(face_out)


def _assign_item_splits(audio: list[dict], faces: list[dict], split: dict[str, str],
                        cfg: ManifestConfig) -> None:
    """Set ``split`` on every item: the identity's split, or seen_heard for held-out videos."""
    videos: dict[str, tuple[set[str], set[str]]] = defaultdict(lambda: (set(), set()))
    for item in audio:
        videos[item["identity"]][0].add(item["video"])
    for item in faces:
        videos[item["identity"]][1].add(item["video"])
    held = {ident: held_out_videos(ident, a, f, cfg)
            for ident, (a, f) in videos.items() if split[ident] == "train"}
    for modality, items in ((0, audio), (1, faces)):
        for item in items:
            ident = item["identity"]
            out = held.get(ident, (set(), set()))[modality]
            item["split"] = "seen_heard" if item["video"] in out else split[ident]


UTTERANCE_SCHEMA = {"id": pl.Utf8, "path": pl.Utf8, "identity": pl.Utf8, "video": pl.Utf8,
                    "duration": pl.Float64, "sample_rate": pl.Int64, "channels": pl.Int64,
                    "split": pl.Utf8}
FACE_SCHEMA = {"id": pl.Utf8, "path": pl.Utf8, "identity": pl.Utf8, "video": pl.Utf8,
               "frame": pl.Int64, "width": pl.Int64, "height": pl.Int64, "split": pl.Utf8,
               "left": pl.Int64, "top": pl.Int64, "right": pl.Int64, "bottom": pl.Int64}
IDENTITY_SCHEMA = {"id": pl.Utf8, "name": pl.Utf8, "gender": pl.Utf8, "nationality": pl.Utf8,
                   "set": pl.Utf8, "split": pl.Utf8, "n_utterances": pl.Int64, "n_faces": pl.Int64}


def _frame(rows: list[dict], schema: dict) -> pl.DataFrame:
    rows = [{k: row.get(k) for k in schema} for row in rows]
    return pl.DataFrame(rows, schema=schema, orient="row").sort("id")


def build_tables(found: scan.Scan, audio: list[dict], faces: list[dict],
                 cfg: ManifestConfig) -> tuple[dict[str, pl.DataFrame], dict]:
    """Join valid files with the metadata, drop identities missing a modality, assign splits."""
    n_audio = defaultdict(int)
    n_faces = defaultdict(int)
    for item in audio:
        n_audio[item["identity"]] += 1
    for item in faces:
        n_faces[item["identity"]] += 1
    kept, no_audio, no_faces = [], [], []
    for row in found.identities:
        if not n_audio[row["id"]]:
            no_audio.append(row["name"])
        elif not n_faces[row["id"]]:
            no_faces.append(row["name"])
        else:
            kept.append({**row, "split": split_of(row["name"], cfg),
                         "n_utterances": n_audio[row["id"]], "n_faces": n_faces[row["id"]]})
    split = {row["id"]: row["split"] for row in kept}
    audio = [item for item in audio if item["identity"] in split]
    faces = [item for item in faces if item["identity"] in split]
    _assign_item_splits(audio, faces, split, cfg)
    tables = {"identities": _frame(kept, IDENTITY_SCHEMA),
              "utterances": _frame(audio, UTTERANCE_SCHEMA),
              "faces": _frame(faces, FACE_SCHEMA)}
    excluded = {"no_audio": len(no_audio), "no_faces": len(no_faces),
                "names": sorted(no_audio + no_faces)[:50]}
    return tables, excluded


def summarize(tables: dict[str, pl.DataFrame], excluded: dict, rejects: Rejects,
              total: int, cfg: ManifestConfig) -> dict:
    def by_split(frame: pl.DataFrame, splits: tuple[str, ...]) -> dict[str, int]:
        counts = dict(frame.group_by("split").len().iter_rows())
        return {s: int(counts.get(s, 0)) for s in splits}

    utt = tables["utterances"]
    return {
        "layout": cfg.layout,
        "identities": by_split(tables["identities"], SPLITS),
        "utterances": by_split(utt, ITEM_SPLITS),
        "faces": by_split(tables["faces"], ITEM_SPLITS),
        "audio_hours": round(float(utt["duration"].sum()) / 3600, 4),
        "excluded_identities": excluded,
        "files_checked": total,
        "rejected": len(rejects.dropped),
        "recorded_anomalies": len(rejects) - len(rejects.dropped),
        "rejects_by_reason": rejects.counts(),
    }


def _place_note(place: scan.Place, rejects: Rejects) -> str:
    """What the scan passed over under ``place``, e.g. " The scan skipped 2 entries there ..."."""
    rows = [r for r in rejects.rows
            if r["path"] and r["path"].startswith(tuple(f"{p}/" for p in place.paths))]
    if not rows:
        return ""
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(Counter(r["reason"] for r in rows).items()))
    first = "; ".join(f"`{r['path']}` ({r['detail']})" for r in rows[:3])
    return f" The scan skipped {len(rows)} entries there ({reasons}), e.g. {first}."


def check_modality(root: Path, kind: str, place: scan.Place | None, found: int, valid: int,
                   rejects: Rejects, cfg: ManifestConfig) -> None:
    """Raise :class:`TreeError` when a modality has no valid file at all."""
    if valid:
        return
    what = "audio files" if kind == "audio" else "face images"
    paths = place.paths if place else ()
    where = ", ".join(f"`{p}/{place.shape}`" for p in paths) if place else "(unknown place)"
    expected = f"expected {where}" if len(paths) < 2 else f"expected one of {where}"
    if found:
        bad = Counter(r["reason"] for r in rejects.dropped
                      if r["path"] and r["path"].startswith(tuple(f"{p}/" for p in paths)))
        reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items()))
        raise TreeError(f"manifest (layout {cfg.layout}): all {found} {what} were rejected "
                        f"({reasons}); no identity has {kind}.")
    note = _place_note(place, rejects) if place else ""
    hint = misplaced_hint(root, *paths) if paths else ""
    raise TreeError(f"manifest (layout {cfg.layout}): no {what} under {root}: {expected}. "
                    f"{hint}{note}")


def check_metadata(found: scan.Scan, rejects: Rejects, cfg: ManifestConfig) -> None:
    """Raise :class:`TreeError` when the metadata lists no valid identity."""
    if found.identities:
        return
    bad = Counter(r["reason"] for r in rejects.rows if r["reason"].startswith(("metadata", "dup")))
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(bad.items())) or "no rows"
    raise TreeError(f"manifest (layout {cfg.layout}): the metadata lists no valid identity "
                    f"({reasons}).")


def check_identities(found: scan.Scan, tables: dict[str, pl.DataFrame], excluded: dict,
                     cfg: ManifestConfig) -> None:
    """Raise :class:`TreeError` when too many identities were excluded or a split is empty."""
    rows = len(found.identities)
    n_out = excluded["no_audio"] + excluded["no_faces"]
    counts = (f"no audio: {excluded['no_audio']}, no faces: {excluded['no_faces']}; "
              f"e.g. {', '.join(excluded['names'][:5])}")
    if n_out / rows > cfg.max_reject_fraction:
        raise TreeError(
            f"manifest (layout {cfg.layout}): {n_out} of {rows} identities "
            f"({n_out / rows:.1%}) have no valid audio or no valid face, above "
            f"max_reject_fraction={cfg.max_reject_fraction:.1%} ({counts}). Check that the "
            "audio and face folders belong to the people in the metadata.")
    present = set(tables["identities"]["split"])
    for split in SPLITS:
        if split in present:
            continue
        letters = {"val": cfg.val_initials, "test": cfg.test_initials}.get(split)
        rule = f"names starting with {', '.join(letters.upper())}" if letters else \
            "names starting with any other letter"
        listed = sum(split_of(row["name"], cfg) == split for row in found.identities)
        why = f"; excluded identities: {n_out} ({counts})" if n_out else ""
        raise TreeError(
            f"manifest (layout {cfg.layout}): split {split} ({rule}) has no identities: the "
            f"metadata lists {listed} such name(s){why}. Every split needs identities: check "
            "manifest.val_initials / manifest.test_initials and the tree.")


def collect(root: Path, cfg: ManifestConfig,
            rejects: Rejects) -> tuple[scan.Scan, list[dict], list[dict], int]:
    """Scan and validate; return the scan, valid audio and faces, and the scan's reject count.

    Raises :class:`TreeError` when the metadata or a modality is missing (before probing files
    when nothing was found, after it when every file was rejected).
    """
    found = get_layout(cfg.layout)(root, rejects)
    # bad metadata rows, orphan folders and skipped files (not list lines without an image)
    scan_rejects = sum(r["reason"] not in UNCOUNTED for r in rejects.dropped)
    log.info("found %d identities, %d audio files, %d face files under %s",
             len(found.identities), len(found.audio), len(found.faces), root)
    check_metadata(found, rejects, cfg)
    modalities = (("audio", found.audio, found.audio_place),
                  ("faces", found.faces, found.faces_place))
    for kind, items, place in modalities:
        check_modality(root, kind, place, len(items), len(items), rejects, cfg)
    audio = validate(root, found.audio, "audio", cfg, rejects)
    faces = validate(root, found.faces, "face", cfg, rejects)
    for (kind, items, place), valid in zip(modalities, (audio, faces), strict=True):
        check_modality(root, kind, place, len(items), len(valid), rejects, cfg)
    return found, audio, faces, scan_rejects


def run(raw_dir: Path, out_dir: Path, cfg: ManifestConfig) -> dict:
    """Scan, validate, split and write the manifest tables into ``out_dir`` (atomically).

    Raises :class:`TreeError` (nothing written) when the metadata or a modality is absent, a
    split has no identities, or more identities than ``max_reject_fraction`` lack a modality;
    and ``TooManyRejects`` when too many files are rejected.
    """
    root = resolve_root(raw_dir)
    rejects = Rejects("manifest")
    found, audio, faces, scan_rejects = collect(root, cfg, rejects)
    tables, excluded = build_tables(found, audio, faces, cfg)
    check_identities(found, tables, excluded, cfg)
    total = len(found.audio) + len(found.faces) + len(found.identities) + scan_rejects
    counted = Rejects("manifest", [r for r in rejects.rows if r["reason"] not in UNCOUNTED])
    summary = summarize(tables, excluded, counted, total, cfg)
    summary["rejects_by_reason"] = rejects.counts()  # not_on_disk rows too
    with atomic_dir(out_dir) as tmp:
        for name, frame in tables.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        rejects.write(tmp / "rejects.parquet")
        write_json(tmp / "summary.json", summary)
        counted.check(total, cfg.max_reject_fraction)
    log.info("manifest: %s identities, %s utterances, %s faces, %d rejected",
             summary["identities"], summary["utterances"], summary["faces"], summary["rejected"])
    return summary


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw)."),
    out_dir: Path = typer.Argument(..., help="Where to write the manifest (data/manifest)."),
    params: Path = typer.Option(
        Path("params.yaml"), help="Params file; reads `manifest` and `faces.min_size`."),
) -> None:
    """Index the raw data, validate files, and split identities by name initial."""
    try:
        run(raw_dir, out_dir, config_from_params(load_params(params)))
    except (TreeError, TooManyRejects, ConfigError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
