"""``manifest`` stage: index the raw tree, validate every file cheaply, split by name initial.

Synthetic and real data go through the same code: a layout scanner (``pipeline.sources.scan``) lists
metadata rows and candidate files; this module validates them, joins audio and faces through
the metadata, assigns splits and holds out the seen-heard videos.
"""

from __future__ import annotations

import logging
import math
import zlib
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import typer

from pipeline.common.config import from_params
from pipeline.common.io import atomic_dir, write_json
from pipeline.common.parallel import imap_ordered
from pipeline.common.probe import BadInput, probe_audio, probe_image
from pipeline.common.rejects import Rejects
from pipeline.sources import scan
from pipeline.sources.layout import resolve_root
from pipeline.sources.layouts import get_layout

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
ITEM_SPLITS = (*SPLITS, "seen_heard")


@dataclass(frozen=True)
class ManifestConfig:
    layout: str = "voxceleb1"
    val_initials: str = "AB"
    test_initials: str = "CDE"
    seen_heard_fraction: float = 0.25
    seed: int = 0
    expected_sample_rate: int = 16000
    expected_channels: int = 1
    min_face_size: int = 32
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        val, test = set(self.val_initials.upper()), set(self.test_initials.upper())
        if val & test:
            raise ValueError(f"manifest: initials {sorted(val & test)} are in both val and test")
        if not 0.0 <= self.seen_heard_fraction < 1.0:
            raise ValueError("manifest.seen_heard_fraction must be in [0, 1)")


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


def run(raw_dir: Path, out_dir: Path, cfg: ManifestConfig) -> dict:
    """Scan, validate, split and write the manifest tables into ``out_dir`` (atomically)."""
    root = resolve_root(raw_dir)
    rejects = Rejects("manifest")
    found = get_layout(cfg.layout)(root, rejects)
    scan_rejects = len(rejects.dropped)  # bad metadata rows and orphan folders
    log.info("found %d identities, %d audio files, %d face files under %s",
             len(found.identities), len(found.audio), len(found.faces), root)
    audio = validate(root, found.audio, "audio", cfg, rejects)
    faces = validate(root, found.faces, "face", cfg, rejects)
    tables, excluded = build_tables(found, audio, faces, cfg)
    total = len(found.audio) + len(found.faces) + len(found.identities) + scan_rejects
    summary = summarize(tables, excluded, rejects, total, cfg)
    with atomic_dir(out_dir) as tmp:
        for name, frame in tables.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        rejects.write(tmp / "rejects.parquet")
        write_json(tmp / "summary.json", summary)
        rejects.check(total, cfg.max_reject_fraction)
    log.info("manifest: %s identities, %s utterances, %s faces, %d rejected",
             summary["identities"], summary["utterances"], summary["faces"], summary["rejected"])
    return summary


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw)."),
    out_dir: Path = typer.Argument(..., help="Where to write the manifest (data/manifest)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `manifest` section."),
) -> None:
    """Index the raw data, validate files, and split identities by name initial."""
    run(raw_dir, out_dir, from_params(ManifestConfig, params, "manifest"))
