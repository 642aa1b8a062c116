"""Model inputs: label maps, attribute matrices, spectrogram normalisation, tuple batches, items.

Everything the train and evaluate stages feed the network comes from here (docs/design.md has
the tables and stores; :class:`TupleDataset` documents the training batch):

- :class:`LabelMaps`: class vocabularies built from the **train** split only: identity index,
  gender (``f`` = 0, ``m`` = 1) and nationality, where nationalities with fewer than
  ``min_nation_count`` train identities are pooled into ``other`` (a nationality never seen in
  train, e.g. at val or test, is ``other`` too). Unknown labels are :data:`IGNORE` (-100, the
  ``ignore_index`` of ``torch.nn.functional.cross_entropy``), as is the identity index of a
  non-train identity. JSON round trip with :meth:`LabelMaps.to_dict` / :meth:`LabelMaps.from_dict`.
- :func:`read_audio_attributes`: the 384 IS09 functionals, standardised with the train-split
  statistics of ``audio_attributes_stats.json``; :func:`read_face_attributes`: the 12 face
  attributes as probabilities (``prob``) or 0/1 (``binary``).
- :func:`spectrogram_normalization`: a store with raw dB values (the ``aml`` preset, store param
  ``normalization: none``) is standardised with one global mean/std over every frame of the
  **train** utterances (:func:`spectrogram_stats`); a CMVN store (the default) needs nothing.
- :class:`FeatureSource`: the stores, attribute tables and manifest labels behind every batch.
- :class:`TupleDataset` + :class:`TupleBatchSampler` (+ :func:`make_loader`): batches of matching
  tuples of one direction and one ``k``; items are held once per dataset (an :class:`ItemBank`)
  and tuples only hold item positions. One ``get_many`` call per store per batch. Training
  batches use random crops and random horizontal face flips drawn from
  ``(seed, epoch, tuple row)``, so a tuple's inputs are the same whichever batch, DataLoader
  worker or DDP rank reads it; evaluation batches use fixed centre crops and no flips. The
  sampler reshuffles each epoch from ``(seed, epoch)`` and splits every global batch into equal
  per-rank shares.
- :class:`ItemDataset` / :func:`iter_items`: every requested item of one modality once, in
  batches of fixed views (voice crops, face flips: :func:`eval_views`) for
  :meth:`model.avnet.AVMatchNet.embed_views`.
- :func:`load_tuples`: the train stage's only way to read tuples; it refuses the held-out splits
  (``test``, ``seen_heard``) with :class:`HeldOutSplitError`.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import torch

from model.stores import FaceStore, SpectrogramStore, view_positions
from pipeline.common.directions import DIRECTIONS, MODALITIES
from pipeline.tupling.layout import table_path

log = logging.getLogger(__name__)

__all__ = ["BatchKey", "DataConfig", "DataPaths", "FeatureSource", "HeldOutSplitError",
           "ItemBank", "ItemDataset", "LabelMaps", "MissingItemsError", "SpecNorm",
           "TrainData", "TupleBatchSampler", "TupleDataset", "AttributeTable", "eval_views",
           "iter_items", "load_tuples", "make_loader", "prepare_training", "read_audio_attributes",
           "read_face_attributes", "spectrogram_normalization", "spectrogram_stats",
           "train_utterance_ids", "DIRECTIONS", "GENDERS", "IGNORE", "OTHER"]

GENDERS = {"f": 0, "m": 1}
OTHER = "other"
IGNORE = -100  # an unknown label: F.cross_entropy's default ignore_index
TRAIN_SPLIT = "train"
HELD_OUT_SPLITS = ("test", "seen_heard")
TRAIN_STAGE_SPLITS = ("train", "val")
FACE_ATTR_MODES = ("prob", "binary")
PROB_SUFFIX = "_prob"
CROP_POSITIONS = ("center", "start")
MANIFEST_TABLES = {"voice": "utterances.parquet", "face": "faces.parquet"}


class HeldOutSplitError(PermissionError):
    """The train stage asked for tuples of a held-out split (test or seen_heard)."""


class MissingItemsError(KeyError):
    """Items referenced by tuples (or requested for evaluation) lack a store row or a table row."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


# ---- configuration and paths ------------------------------------------------------------------

@dataclass(frozen=True)
class DataPaths:
    """Every input file of the train and evaluate stages (defaults: the ``data/`` layout)."""

    spectrograms: Path = Path("data/features/spectrograms.h5")
    faces: Path = Path("data/features/faces.h5")
    audio_attributes: Path = Path("data/features/audio_attributes.parquet")
    audio_stats: Path = Path("data/features/audio_attributes_stats.json")
    face_attributes: Path = Path("data/features/face_attributes.parquet")
    manifest: Path = Path("data/manifest")  # identities / utterances / faces .parquet
    tuples: Path = Path("data/tuples")  # <split>/{matching,pairs,retrieval}.parquet

    @classmethod
    def under(cls, root: str | os.PathLike) -> DataPaths:
        """The standard layout below ``root`` (``features/``, ``manifest/``, ``tuples/``)."""
        root = Path(root)
        return cls(**{f.name: root / f.default.relative_to("data")  # type: ignore[union-attr]
                      for f in dataclasses.fields(cls)})

    @property
    def identities(self) -> Path:
        return self.manifest / "identities.parquet"

    def items(self, modality: str) -> Path:
        """The manifest table of ``modality`` (utterances or faces)."""
        return self.manifest / MANIFEST_TABLES[modality]

    def tuple_table(self, split: str, table: str = "matching") -> Path:
        """``tuples/<split>/<table>.parquet`` (the tuples stage's per-split layout)."""
        return table_path(self.tuples, split, table)


@dataclass(frozen=True)
class DataConfig:
    """Loader settings; the trainer fills them from its ``train`` params section."""

    batch_size: int = 64  # tuples per batch and per rank
    directions: tuple[str, ...] = ("v2f", "f2v")
    min_nation_count: int = 5  # train identities a nationality needs to keep its own class
    face_attr: str = "prob"  # prob | binary
    flip: bool = True  # random horizontal face flips (training only)
    eval_crop: str = "center"  # center | start: the fixed spectrogram crop of evaluation
    drop_last: bool = False  # drop each (direction, k) group's last partial batch
    seed: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        unknown = sorted(set(self.directions) - set(DIRECTIONS))
        if unknown or not self.directions:
            raise ValueError(f"directions must be a non-empty subset of {tuple(DIRECTIONS)}; "
                             f"got {self.directions}")
        if self.min_nation_count < 1:
            raise ValueError("min_nation_count must be >= 1")
        if self.face_attr not in FACE_ATTR_MODES:
            raise ValueError(f"face_attr must be one of {FACE_ATTR_MODES}, got {self.face_attr!r}")
        if self.eval_crop not in CROP_POSITIONS:
            raise ValueError(f"eval_crop must be one of {CROP_POSITIONS}, got {self.eval_crop!r}")

    @classmethod
    def subset(cls, mapping: Mapping[str, Any]) -> DataConfig:
        """The fields of ``mapping`` (e.g. the ``train`` section) that this class knows."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: tuple(v) if isinstance(v, list) else v
                  for k, v in mapping.items() if k in names}
        return cls(**values)


# ---- label maps ---------------------------------------------------------------------------------

def _known(value: Any) -> bool:
    return value is not None and str(value).strip() != ""


@dataclass(frozen=True)
class LabelMaps:
    """Class vocabularies of the train split (JSON-serialisable; saved with the checkpoint)."""

    identities: tuple[str, ...]  # train identity ids, sorted: position = identity index
    nations: tuple[str, ...]  # kept train nationalities (sorted), then "other"
    pooled: tuple[str, ...]  # train nationalities pooled into "other"
    min_nation_count: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "_identity", {u: i for i, u in enumerate(self.identities)})
        object.__setattr__(self, "_nation", {n: i for i, n in enumerate(self.nations)})
        if not self.nations or self.nations[-1] != OTHER:
            raise ValueError(f"the last nationality class must be {OTHER!r}")

    @classmethod
    def from_identities(cls, identities: pl.DataFrame, min_nation_count: int) -> LabelMaps:
        """Build the maps from ``identities.parquet`` rows of split ``train`` only."""
        train = identities.filter(pl.col("split") == TRAIN_SPLIT)
        if train.height == 0:
            raise ValueError("no train identities: cannot build the label maps")
        counts: dict[str, int] = {}
        for nation in train["nationality"].to_list():
            if _known(nation):
                counts[str(nation)] = counts.get(str(nation), 0) + 1
        kept = sorted(n for n, c in counts.items() if c >= min_nation_count and n != OTHER)
        pooled = sorted(n for n in counts if n not in kept)
        return cls(identities=tuple(sorted(train["id"].to_list())), nations=(*kept, OTHER),
                   pooled=tuple(pooled), min_nation_count=int(min_nation_count))

    @property
    def n_identities(self) -> int:
        return len(self.identities)

    @property
    def n_gender(self) -> int:
        return len(GENDERS)

    @property
    def n_nation(self) -> int:
        return len(self.nations)

    def identity_index(self, identity: str) -> int:
        """Position among the train identities; :data:`IGNORE` for any other identity."""
        return self._identity.get(identity, IGNORE)  # type: ignore[attr-defined]

    def gender_index(self, gender: Any) -> int:
        """``f`` = 0, ``m`` = 1; :data:`IGNORE` when unknown."""
        return GENDERS.get(str(gender).strip().lower(), IGNORE) if _known(gender) else IGNORE

    def nation_index(self, nation: Any) -> int:
        """The nationality's class, ``other`` when pooled or unseen in train; IGNORE if unknown."""
        if not _known(nation):
            return IGNORE
        nations: dict[str, int] = self._nation  # type: ignore[attr-defined]
        return nations.get(str(nation), nations[OTHER])

    def to_dict(self) -> dict[str, Any]:
        return {"identities": list(self.identities), "nations": list(self.nations),
                "pooled": list(self.pooled), "min_nation_count": self.min_nation_count,
                "genders": dict(GENDERS), "ignore_index": IGNORE}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LabelMaps:
        if dict(data.get("genders", GENDERS)) != GENDERS:
            raise ValueError(f"label maps use genders {data.get('genders')}, expected {GENDERS}")
        return cls(identities=tuple(data["identities"]), nations=tuple(data["nations"]),
                   pooled=tuple(data["pooled"]), min_nation_count=int(data["min_nation_count"]))


def read_identities(paths: DataPaths) -> pl.DataFrame:
    """``identities.parquet``: ``id, gender, nationality, split``."""
    return pl.read_parquet(paths.identities, columns=["id", "gender", "nationality", "split"])


def train_utterance_ids(paths: DataPaths) -> list[str]:
    """Utterances of the train split (not seen_heard: those are held out)."""
    table = pl.read_parquet(paths.items("voice"), columns=["id", "split"])
    return table.filter(pl.col("split") == TRAIN_SPLIT)["id"].to_list()


# ---- attribute tables ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AttributeTable:
    """Per-item attribute rows: ``values[i]`` belongs to ``ids[i]``."""

    ids: list[str]
    values: np.ndarray  # (n, A) float32
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {u: i for i, u in enumerate(self.ids)})

    def __contains__(self, uid: object) -> bool:
        return uid in self._index  # type: ignore[attr-defined]

    def rows(self, ids: Sequence[str]) -> np.ndarray:
        """Row positions of ``ids``; raises :class:`MissingItemsError` naming absent ids."""
        index: dict[str, int] = self._index  # type: ignore[attr-defined]
        missing = [u for u in ids if u not in index]
        if missing:
            raise MissingItemsError(f"{len(missing)} id(s) have no attribute row, e.g. {missing[:3]}")
        return np.fromiter((index[u] for u in ids), dtype=np.int64, count=len(ids))

    def take(self, ids: Sequence[str]) -> np.ndarray:
        """``(len(ids), A)`` float32 rows in the order of ``ids``."""
        return self.values[self.rows(ids)]


def _scan_ids(path: Path, ids: Sequence[str] | None) -> pl.LazyFrame:
    frame = pl.scan_parquet(path)
    return frame if ids is None else frame.filter(pl.col("id").is_in(list(ids)))


def read_audio_attributes(table: str | os.PathLike, stats: str | os.PathLike,
                          ids: Sequence[str] | None = None) -> AttributeTable:
    """IS09 functionals standardised with the train-split stats: ``(x - mean) / std``.

    Reads only the rows of ``ids`` when given. The stats file must come from the train split
    and name the same columns in the same order as the table.
    """
    info = json.loads(Path(stats).read_text())
    if info.get("split") != TRAIN_SPLIT or info.get("mean") is None:
        raise ValueError(f"{stats}: expected train-split statistics, got split={info.get('split')!r}")
    frame = _scan_ids(Path(table), ids).collect()
    names = [c for c in frame.columns if c != "id"]
    if names != list(info["names"]):
        raise ValueError(f"{table} columns differ from the names in {stats}")
    mean = np.asarray(info["mean"], np.float64)
    std = np.asarray(info["std"], np.float64)
    if (std <= 0).any():
        raise ValueError(f"{stats}: non-positive standard deviations")
    raw = frame.select(names).to_numpy().astype(np.float64)  # (n, 384)
    values = ((raw - mean) / std).astype(np.float32)
    return AttributeTable(frame["id"].to_list(), values, tuple(names))


def read_face_attributes(table: str | os.PathLike, mode: str = "prob",
                         ids: Sequence[str] | None = None) -> AttributeTable:
    """The face attributes: ``<name>_prob`` probabilities (``prob``) or the 0/1 columns (``binary``)."""
    if mode not in FACE_ATTR_MODES:
        raise ValueError(f"face attribute mode must be one of {FACE_ATTR_MODES}, got {mode!r}")
    frame = _scan_ids(Path(table), ids).collect()
    names = [c[: -len(PROB_SUFFIX)] for c in frame.columns if c.endswith(PROB_SUFFIX)]
    if not names:
        raise ValueError(f"{table} has no '*{PROB_SUFFIX}' columns")
    columns = [f"{n}{PROB_SUFFIX}" for n in names] if mode == "prob" else names
    values = frame.select(columns).to_numpy().astype(np.float32)  # (n, 12)
    return AttributeTable(frame["id"].to_list(), values, tuple(names))


# ---- spectrogram normalisation ------------------------------------------------------------------

@dataclass(frozen=True)
class SpecNorm:
    """Global standardisation of raw-dB spectrograms, from the train utterances only."""

    mean: float
    std: float
    frames: int  # spectrogram frames the statistics were computed from
    utterances: int
    split: str = TRAIN_SPLIT

    def apply(self, x: np.ndarray) -> np.ndarray:
        """``(x - mean) / std`` in float32 (in place when ``x`` is float32)."""
        x = np.asarray(x, dtype=np.float32)
        x -= np.float32(self.mean)
        x /= np.float32(self.std)
        return x

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "global", **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> SpecNorm | None:
        if data is None:
            return None
        if data.get("kind") != "global" or data.get("split") != TRAIN_SPLIT:
            raise ValueError(f"unsupported spectrogram normalisation {dict(data)}")
        return cls(mean=float(data["mean"]), std=float(data["std"]), frames=int(data["frames"]),
                   utterances=int(data["utterances"]))


def spectrogram_stats(store: SpectrogramStore, train_ids: Sequence[str]) -> SpecNorm:
    """Mean and std over every stored frame and bin of ``train_ids`` (the train utterances),
    merged utterance by utterance in float64 (Chan et al.'s pairwise update)."""
    ids = [u for u in dict.fromkeys(train_ids) if u in store]
    if not ids:
        raise ValueError("no train utterance in the spectrogram store: cannot normalise")
    n, mean, m2 = 0, 0.0, 0.0
    for uid in ids:
        block = store.full(uid).astype(np.float64)  # (F, T_i)
        nb, mb = block.size, float(block.mean())
        m2b = float(((block - mb) ** 2).sum())
        delta, total = mb - mean, n + nb
        mean += delta * nb / total
        m2 += m2b + delta * delta * n * nb / total
        n = total
    std = math.sqrt(m2 / n)
    if not std > 0:
        raise ValueError("train spectrograms are constant: cannot normalise")
    return SpecNorm(mean=mean, std=std, frames=n // store.n_bins, utterances=len(ids))


def spectrogram_normalization(store: SpectrogramStore,
                              train_ids: Sequence[str]) -> SpecNorm | None:
    """What the store's front end needs: raw dB (``normalization: none``, the ``aml`` preset)
    -> train-split global stats; per-utterance CMVN (the default) -> ``None``."""
    kind = store.params.get("normalization")
    if kind == "none":
        return spectrogram_stats(store, train_ids)
    if kind == "cmvn":
        return None
    raise ValueError(f"{store.path}: unknown spectrogram normalization {kind!r}")


# ---- items --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ItemBank:
    """Items of one modality, each once: store row, model-ready attributes and public labels."""

    modality: str
    ids: list[str]
    store_index: np.ndarray  # (n,) int64 rows of the HDF5 store
    attr: np.ndarray  # (n, A) float32
    identity_ids: list[str]  # manifest identity of each item
    identity: np.ndarray  # (n,) int64 train identity index or IGNORE
    gender: np.ndarray  # (n,) int64
    nation: np.ndarray  # (n,) int64

    def __len__(self) -> int:
        return len(self.ids)


class FeatureSource:
    """The stores, attribute tables and manifest labels behind every batch (train and eval).

    Holds the label maps and the spectrogram normalisation: computed from the train split by
    :func:`prepare_training`, restored from a checkpoint with :meth:`from_state`. Picklable
    (the stores reopen their HDF5 files in each DataLoader worker).
    """

    def __init__(self, paths: DataPaths, labels: LabelMaps, spec_norm: SpecNorm | None,
                 face_attr: str = "prob") -> None:
        if face_attr not in FACE_ATTR_MODES:
            raise ValueError(f"face_attr must be one of {FACE_ATTR_MODES}, got {face_attr!r}")
        self.paths, self.labels, self.spec_norm, self.face_attr = paths, labels, spec_norm, face_attr
        self.stores: dict[str, SpectrogramStore | FaceStore] = {
            "voice": SpectrogramStore(paths.spectrograms), "face": FaceStore(paths.faces)}
        if (spec_norm is None) != (self.voice_store.params.get("normalization") == "cmvn"):
            raise ValueError(f"{paths.spectrograms} has normalization "
                             f"{self.voice_store.params.get('normalization')!r} but the "
                             f"spectrogram statistics are {'missing' if spec_norm is None else 'set'}")
        identities = read_identities(paths)
        self._identity_labels = {
            row["id"]: (labels.identity_index(row["id"]), labels.gender_index(row["gender"]),
                        labels.nation_index(row["nationality"]))
            for row in identities.iter_rows(named=True)}

    @property
    def voice_store(self) -> SpectrogramStore:
        return self.stores["voice"]  # type: ignore[return-value]

    @property
    def face_store(self) -> FaceStore:
        return self.stores["face"]  # type: ignore[return-value]

    @classmethod
    def from_state(cls, paths: DataPaths, state: Mapping[str, Any]) -> FeatureSource:
        """Rebuild from :meth:`state` (e.g. the ``data`` entry of a checkpoint's JSON)."""
        return cls(paths, LabelMaps.from_dict(state["labels"]),
                   SpecNorm.from_dict(state["spec_norm"]), state["face_attr"])

    def state(self) -> dict[str, Any]:
        """JSON-ready label maps, spectrogram statistics and attribute mode (for checkpoints)."""
        return {"labels": self.labels.to_dict(),
                "spec_norm": None if self.spec_norm is None else self.spec_norm.to_dict(),
                "face_attr": self.face_attr, "input_dims": self.input_dims()}

    def input_dims(self) -> dict[str, int]:
        """Keyword arguments of :class:`model.avnet.InputDims`."""
        audio_names = json.loads(self.paths.audio_stats.read_text())["names"]
        face = read_face_attributes(self.paths.face_attributes, self.face_attr, ids=[])
        return {"n_bins": self.voice_store.n_bins, "frames": self.voice_store.frames,
                "face_size": self.face_store.size, "n_audio_attr": len(audio_names),
                "n_face_attr": len(face.names), "n_gender": self.labels.n_gender,
                "n_nation": self.labels.n_nation, "n_identity": self.labels.n_identities}

    def _attributes(self, modality: str, ids: Sequence[str]) -> AttributeTable:
        if modality == "voice":
            return read_audio_attributes(self.paths.audio_attributes, self.paths.audio_stats, ids)
        return read_face_attributes(self.paths.face_attributes, self.face_attr, ids)

    def resolve(self, modality: str, ids: Sequence[str]) -> tuple[ItemBank, dict[str, str]]:
        """The bank of the usable ``ids`` (order kept, duplicates dropped) and, for each unusable
        id, why: absent from the store, the attribute table or the manifest."""
        if modality not in MODALITIES:
            raise ValueError(f"unknown modality {modality!r}; expected one of {MODALITIES}")
        ids = list(dict.fromkeys(ids))
        store = self.stores[modality]
        attrs = self._attributes(modality, ids)
        items = pl.read_parquet(self.paths.items(modality), columns=["id", "identity"])
        owner = dict(items.filter(pl.col("id").is_in(ids)).iter_rows())
        missing: dict[str, str] = {}
        for uid in ids:
            if uid not in store:
                missing[uid] = f"not in {store.path.name}"
            elif uid not in attrs:
                where = self.paths.audio_attributes if modality == "voice" else self.paths.face_attributes
                missing[uid] = f"not in {Path(where).name}"
            elif uid not in owner:
                missing[uid] = f"not in {self.paths.items(modality).name}"
            elif owner[uid] not in self._identity_labels:
                missing[uid] = "identity not in identities.parquet"
        kept = [u for u in ids if u not in missing]
        labels = np.asarray([self._identity_labels[owner[u]] for u in kept],
                            np.int64).reshape(len(kept), 3)  # (n, 3): identity, gender, nation
        bank = ItemBank(modality=modality, ids=kept,
                        store_index=np.asarray([store.index(u) for u in kept], np.int64),
                        attr=attrs.take(kept), identity_ids=[owner[u] for u in kept],
                        identity=labels[:, 0].copy(), gender=labels[:, 1].copy(),
                        nation=labels[:, 2].copy())
        return bank, missing

    def bank(self, modality: str, ids: Sequence[str]) -> ItemBank:
        """:meth:`resolve`, raising :class:`MissingItemsError` when any id is unusable."""
        bank, missing = self.resolve(modality, ids)
        if missing:
            raise MissingItemsError(_missing_message(modality, missing))
        return bank

    def read_voices(self, store_index: np.ndarray, uniforms: np.ndarray | None = None,
                    position: str | float = "center") -> np.ndarray:
        """Spectrogram crops ``(n, 1, F, T)`` float32, normalised for the model.

        ``uniforms`` (``(n,)`` in [0, 1)) place random crops (training); without them the crops
        are fixed at ``position`` (evaluation). One HDF5 read.
        """
        x = self.voice_store.get_many(store_index, position=position,
                                      uniforms=uniforms)  # (n, F, T)
        if self.spec_norm is not None:
            x = self.spec_norm.apply(x)
        return x[:, None]  # (n, F, T) -> (n, 1, F, T)

    def read_faces(self, store_index: np.ndarray, flips: np.ndarray | None = None) -> np.ndarray:
        """Faces ``(n, 3, S, S)`` float32 in [-1, 1], mirrored where ``flips`` is true."""
        raw = self.face_store.get_many(store_index)  # (n, S, S, 3) uint8
        if flips is not None and flips.any():
            raw = raw.copy()
            raw[flips] = raw[flips, :, ::-1]  # mirror along the width axis
        x = raw.transpose(0, 3, 1, 2).astype(np.float32)  # (n, S, S, 3) -> (n, 3, S, S)
        x /= np.float32(127.5)
        x -= np.float32(1.0)
        return x

    def read(self, bank: ItemBank, local: np.ndarray, *, uniforms: np.ndarray | None = None,
             flips: np.ndarray | None = None, position: str | float = "center") -> np.ndarray:
        """Model inputs of ``bank`` items at positions ``local`` (1-D)."""
        rows = bank.store_index[local]
        if bank.modality == "voice":
            return self.read_voices(rows, uniforms, position)
        return self.read_faces(rows, flips)


def _missing_message(modality: str, missing: Mapping[str, str]) -> str:
    reasons: dict[str, int] = {}
    for why in missing.values():
        reasons[why] = reasons.get(why, 0) + 1
    first = list(missing.items())[:3]
    return (f"{len(missing)} {modality} item(s) cannot be read ({reasons}); e.g. {first}. "
            "Tuples must reference only items present in every store and table.")


# ---- tuples -------------------------------------------------------------------------------------

def load_tuples(tuples_dir: str | os.PathLike, split: str,
                directions: Sequence[str] = tuple(DIRECTIONS),
                constraints: Sequence[str] | None = None,
                ks: Sequence[int] | None = None) -> pl.DataFrame:
    """Matching tuples of ``split`` (train or val) for the train stage, from
    ``tuples_dir/<split>/matching.parquet``.

    Raises :class:`HeldOutSplitError` for ``test`` and ``seen_heard`` before any path of theirs
    is built: the train stage can never read them (and its dvc.yaml deps name only the
    ``train/`` and ``val/`` files).
    """
    if split in HELD_OUT_SPLITS:
        raise HeldOutSplitError(f"the train stage must not read {split!r} tuples "
                                f"(held-out splits: {HELD_OUT_SPLITS})")
    if split not in TRAIN_STAGE_SPLITS:
        raise ValueError(f"unknown split {split!r}; the train stage reads {TRAIN_STAGE_SPLITS}")
    bad = sorted(set(directions) - set(DIRECTIONS))
    if bad:
        raise ValueError(f"unknown direction(s) {bad}; expected {tuple(DIRECTIONS)}")
    path = table_path(tuples_dir, split, "matching")
    query = pl.scan_parquet(path).filter((pl.col("split") == split)
                                         & pl.col("direction").is_in(list(directions)))
    if constraints is not None:
        query = query.filter(pl.col("constraint").is_in(list(constraints)))
    if ks is not None:
        query = query.filter(pl.col("k").is_in(list(ks)))
    frame = query.collect()
    _refuse_held_out(frame)
    return frame


def _refuse_held_out(frame: pl.DataFrame) -> None:
    splits = set(frame["split"].unique().to_list()) if frame.height else set()
    if splits & set(HELD_OUT_SPLITS):
        raise HeldOutSplitError(f"tuples of held-out split(s) {sorted(splits & set(HELD_OUT_SPLITS))} "
                                "reached the train-stage loader")


class BatchKey(NamedTuple):
    """What a :class:`TupleBatchSampler` yields: one rank's share of a global batch."""

    epoch: int
    number: int  # position of the global batch within the epoch
    rows: np.ndarray  # (B,) dataset rows


class TupleDataset:
    """Matching tuples whose items are read by id (each item held once, in an :class:`ItemBank`).

    ``dataset[key]`` returns a whole batch (``key`` is a :class:`BatchKey` or a sequence of rows
    of one direction and one ``k``), as the dict of the "Training batch" contract: ``direction``,
    ``voice (B, n_v, 1, F, T)``, ``voice_attr (B, n_v, 384)``, ``face (B, n_f, 3, S, S)``,
    ``face_attr (B, n_f, 12)``, ``{voice,face}_{identity,gender,nation} (B, n)`` int64 and
    ``label (B,)`` int64. With ``train=True`` crops and flips are random, drawn from
    ``(seed, epoch, row)``; otherwise crops are fixed (``eval_crop``) and faces unflipped.

    ``missing='raise'`` (default) refuses tuples with unreadable items; ``'drop'`` drops those
    tuples with a warning that counts them.
    """

    def __init__(self, tuples: pl.DataFrame, source: FeatureSource, *, train: bool,
                 seed: int = 0, flip: bool = True, eval_crop: str = "center",
                 missing: str = "raise") -> None:
        _refuse_held_out(tuples)
        if missing not in ("raise", "drop"):
            raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
        self.source, self.train, self.seed, self.flip, self.eval_crop = (
            source, train, seed, flip, eval_crop)
        self.banks: dict[str, ItemBank] = {}
        unusable: dict[str, str] = {}
        for m in MODALITIES:
            self.banks[m], bad = source.resolve(m, self._ids_of(tuples, m))
            if bad and missing == "raise":
                raise MissingItemsError(_missing_message(m, bad))
            unusable.update(bad)
        tuples = self._drop(tuples, unusable)
        local = {m: {u: i for i, u in enumerate(self.banks[m].ids)} for m in MODALITIES}
        self.frame = tuples
        self.direction = tuples["direction"].to_numpy().astype(str)
        self.k = tuples["k"].to_numpy().astype(np.int64)
        self.label = tuples["label"].to_numpy().astype(np.int64)
        self.query = np.zeros(tuples.height, np.int64)
        width = int(self.k.max()) if tuples.height else 0
        self.candidates = np.full((tuples.height, width), -1, np.int64)  # (n, k_max), -1 padding
        for d, (q_mod, c_mod) in DIRECTIONS.items():
            rows = np.flatnonzero(self.direction == d)
            sub = tuples[rows]
            self.query[rows] = [local[q_mod][u] for u in sub["query_id"].to_list()]
            for r, cands in zip(rows.tolist(), sub["candidate_ids"].to_list(), strict=True):
                self.candidates[r, : len(cands)] = [local[c_mod][u] for u in cands]
        lengths = tuples["candidate_ids"].list.len().to_numpy()
        if (lengths != self.k).any():
            raise ValueError(f"{int((lengths != self.k).sum())} tuple(s) have k != len(candidate_ids)")
        if (self.label < 0).any() or (self.label >= self.k).any():
            raise ValueError("a tuple's label is outside 0..k-1")

    @staticmethod
    def _ids_of(tuples: pl.DataFrame, modality: str) -> list[str]:
        ids: list[str] = []
        for d, (q_mod, c_mod) in DIRECTIONS.items():
            sub = tuples.filter(pl.col("direction") == d)
            if q_mod == modality:
                ids += sub["query_id"].to_list()
            if c_mod == modality:
                ids += sub["candidate_ids"].explode().to_list()
        return list(dict.fromkeys(ids))

    @staticmethod
    def _drop(tuples: pl.DataFrame, unusable: Mapping[str, str]) -> pl.DataFrame:
        """``tuples`` without those that reference an unusable item (logged with a count)."""
        if not unusable:
            return tuples
        bad = list(unusable)
        keep = ~(pl.col("query_id").is_in(bad)
                 | pl.col("candidate_ids").list.eval(pl.element().is_in(bad)).list.any())
        kept = tuples.filter(keep)
        log.warning("dropped %d of %d tuples: %s", tuples.height - kept.height, tuples.height,
                    _missing_message("", unusable))
        return kept

    def __len__(self) -> int:
        return len(self.label)

    def groups(self) -> dict[tuple[str, int], np.ndarray]:
        """Rows of each ``(direction, k)``, in dataset order (sorted keys)."""
        keys = sorted({(d, int(k)) for d, k in zip(self.direction.tolist(), self.k.tolist(),
                                                   strict=True)})
        return {(d, k): np.flatnonzero((self.direction == d) & (self.k == k)) for d, k in keys}

    def draws(self, epoch: int, rows: np.ndarray, n_voice: int, n_face: int
              ) -> tuple[np.ndarray, np.ndarray]:
        """Per tuple: crop uniforms ``(B, n_voice)`` and flip flags ``(B, n_face)``, each from its
        own generator seeded with ``(seed, epoch, row)``."""
        uniforms = np.empty((len(rows), n_voice))
        flips = np.zeros((len(rows), n_face), bool)
        for i, row in enumerate(rows.tolist()):
            rng = np.random.default_rng([self.seed, epoch, row])
            uniforms[i] = rng.random(n_voice)
            if self.flip:
                flips[i] = rng.random(n_face) < 0.5
        return uniforms, flips

    def __getitem__(self, key: BatchKey | Sequence[int] | np.ndarray) -> dict[str, Any]:
        epoch, rows = (key.epoch, key.rows) if isinstance(key, BatchKey) else (0, key)
        rows = np.asarray(rows, np.int64)
        if rows.ndim != 1 or rows.size == 0:
            raise ValueError("a batch needs a non-empty 1-D list of rows")
        directions, ks = set(self.direction[rows].tolist()), set(self.k[rows].tolist())
        if len(directions) != 1 or len(ks) != 1:
            raise ValueError(f"a batch mixes directions {directions} or k {ks}")
        direction, k = directions.pop(), ks.pop()
        q_mod, c_mod = DIRECTIONS[direction]
        local = {q_mod: self.query[rows][:, None], c_mod: self.candidates[rows, :k]}  # (B, n)
        n_v, n_f = local["voice"].shape[1], local["face"].shape[1]
        uniforms, flips = self.draws(epoch, rows, n_v, n_f) if self.train else (None, None)
        b = len(rows)
        batch: dict[str, Any] = {"direction": direction}
        voice = self.source.read(self.banks["voice"], local["voice"].ravel(),
                                 uniforms=None if uniforms is None else uniforms.ravel(),
                                 position=self.eval_crop)  # (B*n_v, 1, F, T)
        face = self.source.read(self.banks["face"], local["face"].ravel(),
                                flips=None if flips is None else flips.ravel())  # (B*n_f, 3, S, S)
        batch["voice"] = torch.from_numpy(voice.reshape(b, n_v, *voice.shape[1:]))  # (B, n_v, 1, F, T)
        batch["face"] = torch.from_numpy(face.reshape(b, n_f, *face.shape[1:]))  # (B, n_f, 3, S, S)
        for m in MODALITIES:
            bank, idx = self.banks[m], local[m]
            batch[f"{m}_attr"] = torch.from_numpy(bank.attr[idx])  # (B, n, A)
            for name in ("identity", "gender", "nation"):
                batch[f"{m}_{name}"] = torch.from_numpy(getattr(bank, name)[idx])  # (B, n)
        batch["label"] = torch.from_numpy(self.label[rows])
        return batch


class TupleBatchSampler:
    """Batches of one ``(direction, k)``, reshuffled each epoch from ``(seed, epoch)``.

    Each epoch, every group's rows are permuted and cut into global batches of
    ``batch_size * world_size`` tuples; the global batches of all groups are then shuffled
    together. Rank ``r`` takes slice ``r`` of each global batch, so ranks get disjoint,
    equal-length shares (like ``DistributedSampler``) and the global batches are the same for
    any ``world_size`` with the same ``batch_size * world_size``. A group's last partial batch
    is dropped (``drop_last``) or, with several ranks, filled up by wrapping around the group.
    ``skip`` batches at the start of the epoch (resume mid-epoch) with :meth:`set_epoch`.
    """

    def __init__(self, groups: Mapping[tuple[str, int], np.ndarray], batch_size: int, *,
                 seed: int = 0, shuffle: bool = True, drop_last: bool = False, rank: int = 0,
                 world_size: int = 1) -> None:
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size}, rank {rank} or world_size {world_size}")
        self.groups = {key: np.asarray(rows, np.int64) for key, rows in sorted(groups.items())
                       if len(rows)}
        self.batch_size, self.seed, self.shuffle, self.drop_last = batch_size, seed, shuffle, drop_last
        self.rank, self.world_size = rank, world_size
        self.epoch, self.skip = 0, 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.epoch, self.skip = int(epoch), int(skip)

    @property
    def global_batch_size(self) -> int:
        return self.batch_size * self.world_size

    def _count(self, n: int) -> int:
        return n // self.global_batch_size if self.drop_last else -(-n // self.global_batch_size)

    def __len__(self) -> int:
        return max(sum(self._count(len(r)) for r in self.groups.values()) - self.skip, 0)

    def global_batches(self, epoch: int) -> list[np.ndarray]:
        """Every global batch of ``epoch`` in order (each ``<= batch_size * world_size`` rows)."""
        rng = np.random.default_rng([self.seed, epoch])
        size, batches = self.global_batch_size, []
        for rows in self.groups.values():
            order = rng.permutation(rows) if self.shuffle else rows
            for start in range(0, self._count(len(order)) * size, size):
                chunk = order[start:start + size]
                short = -len(chunk) % self.world_size
                if short:  # equal shares for every rank: wrap around the group
                    chunk = np.r_[chunk, np.resize(order, short)]
                batches.append(chunk)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        return batches

    def __iter__(self) -> Iterator[BatchKey]:
        for number, chunk in enumerate(self.global_batches(self.epoch)):
            if number < self.skip:
                continue
            share = len(chunk) // self.world_size
            yield BatchKey(self.epoch, number, chunk[self.rank * share:(self.rank + 1) * share])


def make_loader(dataset: TupleDataset | ItemDataset, sampler: Any = None, *,
                num_workers: int = 0, pin_memory: bool = False,
                persistent_workers: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader that hands whole batch keys to ``dataset`` (its ``__getitem__`` reads a
    batch with one store call); ``sampler`` defaults to every batch of an :class:`ItemDataset`."""
    if sampler is None:
        sampler = range(len(dataset))
    return torch.utils.data.DataLoader(
        dataset, sampler=sampler, batch_size=None, num_workers=num_workers,
        pin_memory=pin_memory, persistent_workers=persistent_workers and num_workers > 0)


# ---- evaluation items ---------------------------------------------------------------------------

class ItemDataset:
    """Batches of one modality's items for embedding: ``dataset[i]`` is batch ``i`` as a dict
    ``modality``, ``ids`` (list), ``x`` ``(V, N, C, H, W)`` and ``attr`` ``(N, A)``, plus
    ``identity``/``gender``/``nation`` ``(N,)`` int64 for analyses.

    ``x`` holds ``V`` fixed views of every item (:func:`eval_views`): a voice's ``crops``
    spectrogram crops (one at ``position`` when ``crops`` is 1, else evenly spaced over the
    utterance), a face as it is plus, with ``flip``, mirrored. Nothing is random.
    """

    def __init__(self, source: FeatureSource, modality: str, ids: Sequence[str],
                 batch_size: int = 256, position: str = "center", *, crops: int = 1,
                 flip: bool = False) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.source, self.modality, self.batch_size = source, modality, batch_size
        self.views = eval_views(modality, crops, flip, position)
        self.bank = source.bank(modality, ids)

    def __len__(self) -> int:
        return -(-len(self.bank) // self.batch_size)

    def __getitem__(self, i: int) -> dict[str, Any]:
        if not 0 <= i < len(self):
            raise IndexError(i)
        local = np.arange(i * self.batch_size, min((i + 1) * self.batch_size, len(self.bank)))
        x = np.stack([self._view(local, view) for view in self.views])  # (V, N, C, H, W)
        return {"modality": self.modality, "ids": [self.bank.ids[j] for j in local.tolist()],
                "x": torch.from_numpy(x), "attr": torch.from_numpy(self.bank.attr[local]),
                "identity": torch.from_numpy(self.bank.identity[local]),
                "gender": torch.from_numpy(self.bank.gender[local]),
                "nation": torch.from_numpy(self.bank.nation[local])}

    def _view(self, local: np.ndarray, view: str | float | bool) -> np.ndarray:
        if self.modality == "voice":
            return self.source.read(self.bank, local, position=view)  # (N, 1, F, T)
        return self.source.read(self.bank, local, flips=np.full(len(local), bool(view)))


def eval_views(modality: str, crops: int = 1, flip: bool = False, position: str = "center"
               ) -> tuple[str | float | bool, ...]:
    """The fixed views of an evaluation item: voice crop positions (``position`` alone for one
    crop, else :func:`model.stores.view_positions`), or face flip flags (``False`` and, with
    ``flip``, ``True``). The network averages their embeddings (``AVMatchNet.embed_views``)."""
    if modality == "voice":
        return (position,) if crops == 1 else view_positions(crops)
    if modality == "face":
        return (False, True) if flip else (False,)
    raise ValueError(f"unknown modality {modality!r}")


def iter_items(source: FeatureSource, modality: str, ids: Sequence[str], batch_size: int = 256,
               *, num_workers: int = 0, position: str = "center", crops: int = 1,
               flip: bool = False) -> Iterator[dict[str, Any]]:
    """Every item of ``ids`` (duplicates once, order kept) in batches of model inputs, each
    with its fixed views (:class:`ItemDataset`)."""
    dataset = ItemDataset(source, modality, ids, batch_size, position, crops=crops, flip=flip)
    yield from make_loader(dataset, num_workers=num_workers)


# ---- the train stage's inputs -------------------------------------------------------------------

@dataclass
class TrainData:
    """What :func:`prepare_training` builds: the source, the train and val tuple datasets."""

    source: FeatureSource
    train: TupleDataset
    val: TupleDataset | None
    config: DataConfig

    @property
    def labels(self) -> LabelMaps:
        return self.source.labels

    @property
    def spec_norm(self) -> SpecNorm | None:
        return self.source.spec_norm

    def sampler(self, rank: int = 0, world_size: int = 1) -> TupleBatchSampler:
        """The training batch sampler of this rank (call ``set_epoch`` every epoch)."""
        cfg = self.config
        return TupleBatchSampler(self.train.groups(), cfg.batch_size, seed=cfg.seed,
                                 shuffle=True, drop_last=cfg.drop_last, rank=rank,
                                 world_size=world_size)

    def val_sampler(self, batch_size: int | None = None) -> TupleBatchSampler:
        """Every val tuple once, in order (no shuffling, no padding)."""
        if self.val is None:
            raise ValueError("no val tuples")
        return TupleBatchSampler(self.val.groups(), batch_size or self.config.batch_size,
                                 shuffle=False)


def prepare_training(paths: DataPaths, cfg: DataConfig, *,
                     val_constraints: Sequence[str] | None = None,
                     val_ks: Sequence[int] | None = None, missing: str = "raise") -> TrainData:
    """Label maps and spectrogram statistics from the train split, the stores, and the train
    and val tuples of ``cfg.directions`` (never test or seen_heard)."""
    labels = LabelMaps.from_identities(read_identities(paths), cfg.min_nation_count)
    with SpectrogramStore(paths.spectrograms) as store:
        spec_norm = spectrogram_normalization(store, train_utterance_ids(paths))
    source = FeatureSource(paths, labels, spec_norm, cfg.face_attr)
    train = TupleDataset(load_tuples(paths.tuples, "train", cfg.directions), source,
                         train=True, seed=cfg.seed, flip=cfg.flip, eval_crop=cfg.eval_crop,
                         missing=missing)
    if len(train) == 0:
        raise ValueError(f"{paths.tuple_table('train')} has no train tuples for directions "
                         f"{cfg.directions}")
    val_tuples = load_tuples(paths.tuples, "val", cfg.directions, val_constraints, val_ks)
    val = (TupleDataset(val_tuples, source, train=False, eval_crop=cfg.eval_crop, missing=missing)
           if val_tuples.height else None)
    log.info("train data: %d train tuples, %d val tuples, %d train identities, %d nation classes",
             len(train), 0 if val is None else len(val), labels.n_identities, labels.n_nation)
    return TrainData(source=source, train=train, val=val, config=cfg)
