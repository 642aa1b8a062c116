"""Inputs of the ``tuples`` stage: the manifest tables, checked row by row and integer-encoded.

Every manifest row that cannot be used goes into the stage's rejects table with a reason:
a missing field, a duplicate id, an unknown split, an item whose identity is not in
``identities.parquet``, or an item whose split disagrees with its identity's split (an item's
split is its identity's split, except ``seen_heard`` items, whose identity is ``train``).
Identities with an unknown gender or nationality are kept and listed as anomalies
(``kept=True``); they are simply not eligible for the constraints that need that attribute.

Feature stores. A model may read, for a voice, its spectrogram (``spectrograms.h5``) and its
IS09 attributes (``audio_attributes.parquet``); for a face, its crop (``faces.h5``) and its
attributes (``face_attributes.parquet``). The feature stages drop items the manifest kept (silent,
too short or undecodable clips; truncated or too small faces), and may drop different sets, so
an item is usable only when every store of its modality holds it (:data:`FEATURE_STORES`). The
others go into the rejects table with reason ``missing_features`` and a detail naming each stage
whose store lacks the item and, when that stage's rejects table lists it, that stage's reason
(e.g. ``spectrograms: silent; audio_attributes: silent``). Only the stores' id lists are read:
the HDF5 ``ids`` dataset, the Parquet ``id`` column.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.common.rejects import Rejects

log = logging.getLogger(__name__)

IDENTITY_SPLITS = ("train", "val", "test")
ITEM_SPLITS = (*IDENTITY_SPLITS, "seen_heard")
GENDERS = ("m", "f")
# modality -> manifest table
TABLES = {"voice": "utterances", "face": "faces"}
ITEM_COLUMNS = ("id", "identity", "video", "split")
IDENTITY_COLUMNS = ("id", "gender", "nationality", "split")
# modality -> (stage, store file in the features directory) for every store a model may read
FEATURE_STORES = {
    "voice": (("spectrograms", "spectrograms.h5"), ("audio_attributes", "audio_attributes.parquet")),
    "face": (("faces", "faces.h5"), ("face_attributes", "face_attributes.parquet")),
}
MISSING_FEATURES = "missing_features"


@dataclass(frozen=True)
class Manifest:
    """The usable part of the manifest, integer-encoded for vectorized sampling.

    ``identities`` is sorted by id; its row number is the identity index ``ident``.
    ``gender`` is 0 (m) / 1 (f) / -1 (unknown); ``nationality`` is the rank of the name among
    the known nationalities, or -1. ``items[modality]`` has ``id, identity, video, split,
    ident, video_code`` sorted by id; ``video_code`` indexes one dictionary shared by both
    modalities, so a voice and a face from the same video have the same code.
    """

    identities: pl.DataFrame
    items: dict[str, pl.DataFrame]
    n_videos: int

    @property
    def gender(self) -> np.ndarray:
        return self.identities["gender_code"].to_numpy()

    @property
    def nationality(self) -> np.ndarray:
        return self.identities["nationality_code"].to_numpy()

    def split_items(self, modality: str, split: str) -> pl.DataFrame:
        """Items of one modality in one item split, sorted by id."""
        return self.items[modality].filter(pl.col("split") == split)


def _read(path: Path, columns: tuple[str, ...]) -> pl.DataFrame:
    frame = pl.read_parquet(path)
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame.select([pl.col(c).cast(pl.Utf8) for c in columns])


def _reject_rows(frame: pl.DataFrame, rejects: Rejects, path: str) -> pl.DataFrame:
    """Record rows with a non-null ``reason`` as rejects; return the other rows without it."""
    bad = frame.filter(pl.col("reason").is_not_null())
    for row in bad.iter_rows(named=True):
        rejects.add(row["reason"], id=row["id"], path=path, detail=row.get("detail"))
    return frame.filter(pl.col("reason").is_null()).drop("reason", "detail")


def _check_identities(frame: pl.DataFrame, rejects: Rejects) -> pl.DataFrame:
    reason = (pl.when(pl.col("id").is_null()).then(pl.lit("missing_field"))
              .when(~pl.col("id").is_first_distinct()).then(pl.lit("duplicate_id"))
              .when(~pl.col("split").is_in(IDENTITY_SPLITS) | pl.col("split").is_null())
              .then(pl.lit("bad_split")))
    frame = frame.with_columns(reason=reason, detail=pl.format("split={}", pl.col("split")))
    good = _reject_rows(frame, rejects, "identities.parquet")
    for row in good.filter(~pl.col("gender").is_in(GENDERS) | pl.col("gender").is_null()).iter_rows(named=True):
        rejects.add("unknown_gender", id=row["id"], path="identities.parquet", kept=True,
                    detail=f"gender={row['gender']}; not used in G/GN tuples")
    for row in good.filter(pl.col("nationality").is_null()).iter_rows(named=True):
        rejects.add("unknown_nationality", id=row["id"], path="identities.parquet", kept=True,
                    detail="not used in N/GN tuples")
    return good


def _check_items(frame: pl.DataFrame, identities: pl.DataFrame, rejects: Rejects,
                 path: str) -> pl.DataFrame:
    home = identities.select(pl.col("id").alias("identity"), pl.col("split").alias("home"))
    frame = frame.join(home, on="identity", how="left", maintain_order="left")
    expected = pl.when(pl.col("split") == "seen_heard").then(pl.lit("train")).otherwise(pl.col("split"))
    reason = (pl.when(pl.any_horizontal([pl.col(c).is_null() for c in ITEM_COLUMNS]))
              .then(pl.lit("missing_field"))
              .when(~pl.col("id").is_first_distinct()).then(pl.lit("duplicate_id"))
              .when(~pl.col("split").is_in(ITEM_SPLITS)).then(pl.lit("bad_split"))
              .when(pl.col("home").is_null()).then(pl.lit("unknown_identity"))
              .when(expected != pl.col("home")).then(pl.lit("split_mismatch")))
    detail = pl.format("identity={} split={} identity_split={}", pl.col("identity"),
                       pl.col("split"), pl.col("home"))
    frame = frame.with_columns(reason=reason, detail=detail).drop("home")
    return _reject_rows(frame, rejects, path)


def _encode_identities(frame: pl.DataFrame) -> pl.DataFrame:
    nationalities = sorted(frame["nationality"].drop_nulls().unique().to_list())
    rank = {name: i for i, name in enumerate(nationalities)}
    return frame.sort("id").with_row_index("ident").with_columns(
        pl.col("ident").cast(pl.Int64),
        gender_code=pl.col("gender").replace_strict({"m": 0, "f": 1}, default=-1,
                                                    return_dtype=pl.Int64),
        nationality_code=pl.col("nationality").replace_strict(rank, default=-1,
                                                              return_dtype=pl.Int64))


def _encode_items(items: dict[str, pl.DataFrame], identities: pl.DataFrame
                  ) -> tuple[dict[str, pl.DataFrame], int]:
    videos = pl.concat([f.select("video") for f in items.values()]).unique().sort("video")
    videos = videos.with_row_index("video_code").with_columns(pl.col("video_code").cast(pl.Int64))
    ident = identities.select(pl.col("id").alias("identity"), "ident")
    encoded = {m: f.join(ident, on="identity", how="left").join(videos, on="video", how="left").sort("id")
               for m, f in items.items()}
    return encoded, videos.height


@dataclass(frozen=True)
class StoreIds:
    """The ids one feature store holds, and why its stage dropped the others (if it says)."""

    stage: str
    path: Path
    ids: pl.Series         # ids held by the store
    reasons: pl.DataFrame  # ``id, reason`` from ``<stage>_rejects.parquet`` (empty if absent)


def read_store_ids(path: Path) -> pl.Series:
    """Ids of an HDF5 store (its ``ids`` dataset) or a Parquet table (its ``id`` column) only."""
    if path.suffix == ".h5":
        import h5py

        with h5py.File(path, "r") as f:
            if "ids" not in f:
                raise ValueError(f"{path}: no `ids` dataset")
            return pl.Series("id", f["ids"].asstr()[:], dtype=pl.Utf8)
    return pl.read_parquet(path, columns=["id"])["id"].cast(pl.Utf8)


def _stage_reasons(path: Path) -> pl.DataFrame:
    empty = pl.DataFrame(schema={"id": pl.Utf8, "reason": pl.Utf8})
    if not path.exists():
        return empty
    frame = pl.read_parquet(path)
    if not {"id", "reason"} <= set(frame.columns):
        return empty
    if "kept" in frame.columns:
        frame = frame.filter(~pl.col("kept").fill_null(False))
    return frame.select(pl.col("id").cast(pl.Utf8), pl.col("reason").cast(pl.Utf8)).drop_nulls("id").unique(
        "id", keep="first", maintain_order=True)


def read_stores(features_dir: Path) -> dict[str, list[StoreIds]]:
    """Per modality, the id lists of every store in :data:`FEATURE_STORES` under ``features_dir``."""
    stores: dict[str, list[StoreIds]] = {}
    for modality, entries in FEATURE_STORES.items():
        stores[modality] = []
        for stage, name in entries:
            path = Path(features_dir) / name
            if not path.exists():
                raise FileNotFoundError(f"tuples: feature store {path} not found; the `{stage}` stage "
                                        f"writes it (run `dvc repro {stage}` first)")
            reasons = _stage_reasons(Path(features_dir) / f"{stage}_rejects.parquet")
            stores[modality].append(StoreIds(stage, path, read_store_ids(path), reasons))
    return stores


def _drop_missing(frame: pl.DataFrame, stores: list[StoreIds], rejects: Rejects,
                  path: str) -> tuple[pl.DataFrame, dict[str, int]]:
    """Keep the items every store holds; reject the others as ``missing_features``."""
    marks = frame.select("id")
    for store in stores:
        held = store.ids.to_frame("id").unique().with_columns(pl.lit(True).alias(f"has:{store.stage}"))
        why = store.reasons.rename({"reason": f"why:{store.stage}"})
        marks = marks.join(held, on="id", how="left", maintain_order="left").join(
            why, on="id", how="left", maintain_order="left")
    lacks = {s.stage: pl.col(f"has:{s.stage}").is_null() for s in stores}
    notes = [pl.when(lacks[s.stage]).then(pl.format(f"{s.stage}: {{}}", pl.col(f"why:{s.stage}").fill_null(
        f"not in {s.path.name}"))) for s in stores]
    marks = marks.with_columns(missing=pl.any_horizontal(list(lacks.values())),
                               detail=pl.concat_str(notes, separator="; ", ignore_nulls=True))
    for row in marks.filter("missing").iter_rows(named=True):
        rejects.add(MISSING_FEATURES, id=row["id"], path=path, detail=row["detail"])
    counts = {stage: int(marks.select(lack.sum()).item()) for stage, lack in lacks.items()}
    counts["dropped"] = int(marks["missing"].sum())
    return frame.filter(~marks["missing"]), counts


def _store_summary(stores: dict[str, list[StoreIds]], raw_ids: dict[str, pl.Series],
                   dropped: dict[str, dict[str, int]]) -> dict:
    """Per modality: items dropped (per stage and in all), and per store its size and stray ids."""
    out = {}
    for modality, entries in stores.items():
        known = raw_ids[modality].to_frame("id")
        stray = {s.stage: s.ids.to_frame("id").join(known, on="id", how="anti").height for s in entries}
        out[modality] = {
            "missing_features": dropped[modality],
            "stores": {s.stage: {"file": s.path.name, "ids": s.ids.len(), "not_in_manifest": stray[s.stage]}
                       for s in entries},
        }
    return out


def load(manifest_dir: Path, rejects: Rejects, stores: dict[str, list[StoreIds]]
         ) -> tuple[Manifest, int, dict]:
    """Read and check the manifest, keep the items every feature store of their modality holds.

    Returns the usable part, the number of manifest rows read and a summary of the stores.
    """
    identities = _check_identities(_read(manifest_dir / "identities.parquet", IDENTITY_COLUMNS), rejects)
    total = len(rejects.dropped) + identities.height
    items, raw_ids, dropped = {}, {}, {}
    for modality, table in TABLES.items():
        raw = _read(manifest_dir / f"{table}.parquet", ITEM_COLUMNS)
        total += raw.height
        raw_ids[modality] = raw["id"]
        checked = _check_items(raw, identities, rejects, f"{table}.parquet")
        items[modality], dropped[modality] = _drop_missing(checked, stores[modality], rejects,
                                                           f"{table}.parquet")
    identities = _encode_identities(identities)
    encoded, n_videos = _encode_items(items, identities)
    log.info("tuples: %d identities, %d utterances, %d faces usable (%d and %d lack features)",
             identities.height, encoded["voice"].height, encoded["face"].height,
             dropped["voice"]["dropped"], dropped["face"]["dropped"])
    summary = _store_summary(stores, raw_ids, dropped)
    return Manifest(identities=identities, items=encoded, n_videos=n_videos), total, summary
