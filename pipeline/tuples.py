"""``tuples`` stage: fixed matching tuples, verification pairs and retrieval lists.

The papers train and evaluate on tuples drawn once before training (AML IV-B: "we randomly
select data tuples before training and fixed them"). This stage draws them from the manifest
items that every feature store of their modality holds (voices: ``spectrograms.h5`` and
``audio_attributes.parquet``; faces: ``faces.h5`` and ``face_attributes.parquet``; the others
are rejected as ``missing_features``, see :mod:`pipeline.tupling.inputs`), and stores them by
manifest id only, in ``data/tuples/``, one subdirectory per split (:mod:`pipeline.tupling.layout`)::

    data/tuples/{train,val,test,seen_heard}/{matching,pairs,retrieval}.parquet
    data/tuples/rejects.parquet
    data/tuples/summary.json

Each split file holds only that split's rows and keeps the ``split`` column; concatenating the
four files of a table in that split order gives the whole table, row for row. The train stage
depends on the ``train/`` and ``val/`` files only. The tables:

- ``matching.parquet``: ``split, direction, constraint, k, query_id, candidate_ids, label,
  seed``. ``direction`` is ``v2f`` (voice query, face candidates) or ``f2v``. One positive
  (same identity, by default from another video than the query) and ``k - 1`` negatives from
  distinct other identities; constraint ``U`` (none), ``G`` (negatives share the query
  identity's gender), ``N`` (nationality) or ``GN`` (both). ``label`` is the positive's
  position, in every split an exactly balanced seeded shuffle over the ``m`` rows of a stream
  (each position ``m // k`` times plus ``m % k`` distinct random positions once more; see
  :func:`pipeline.tupling.sample.balanced_positions`), so a scorer that breaks ties by
  position, or a head that sees slots, gets chance and no more.
- 1:k' tuples for the accuracy-vs-k curve are derived from the 1:k (``multiway_k``) tuples of
  one stream by :func:`pipeline.tupling.truncation.truncate`: the positive plus the first
  ``k' - 1`` negatives (candidate order, skipping the positive); the positive's new positions
  over the ``m`` rows of the stream, in table order, are ``balanced_positions(rng, m, k')`` with
  ``rng = numpy.random.default_rng([seed, k'])`` (``seed`` is the stream's ``seed`` column);
  the negatives fill the other positions in order; ``k' == k`` keeps the stored tuples. A
  stream lies in one split, so each split's ``matching.parquet`` holds whole streams.
- ``pairs.parquet``: ``split, direction, constraint, query_id, candidate_id, same, seed``;
  verification pairs, exactly half positive, constraints ``U``/``G``.
- ``retrieval.parquet``: one row per ``split, direction``: ``exclude_same_video`` and the
  parallel lists ``query_ids, query_identities, query_videos`` and ``gallery_ids,
  gallery_identities, gallery_videos``. The gallery is every candidate-modality item of the
  split, stored once; the gallery of query ``i`` is the items ``j`` with ``not
  (exclude_same_video and gallery_videos[j] == query_videos[i])``: with
  ``retrieval_same_video: false`` (the default, like ``positive_same_video``) items from the
  query's own video are left out, not counted as irrelevant. Relevant items are those of the
  query's identity; a query is listed only when it has at least one.
- ``rejects.parquet`` and ``summary.json`` (counts, rows per split file, feature stores, label
  balance, shortfalls, retrieval exclusions, checks), at the top: they cover every split.

Seeds. Every stream (kind, split, direction, constraint, k) has its own generator,
``numpy.random.default_rng(stream_seed)`` with ::

    stream_seed = seed * 1_000_000 + 100_000 * split + 10_000 * kind
                  + 1_000 * direction + 100 * constraint + k

where split is train 1, val 2, test 3, seen_heard 4; kind is matching 1, pairs 2; direction is
v2f 1, f2v 2; constraint is U 1, G 2, N 3, GN 4. A stream depends only on its own count, the
usable items of its split and the positive-video rule, so e.g. changing the train counts
never changes a test tuple. The value is stored in the ``seed`` column.

Shortfall. A requested tuple whose query cannot be filled (no allowed positive, too few
identities for the constraint, unknown attribute) is not silently replaced: it is counted per
reason in ``summary.json`` and logged as a warning (see :mod:`pipeline.tupling.sample`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import typer
from tqdm.auto import tqdm

from pipeline.common.config import from_params
from pipeline.common.directions import DIRECTIONS
from pipeline.common.io import atomic_dir, write_json
from pipeline.common.rejects import Rejects
from pipeline.tupling import check as tuples_check
from pipeline.tupling import layout
from pipeline.tupling import sample as tuples_sample
from pipeline.tupling.inputs import ITEM_SPLITS, Manifest, load, read_stores

log = logging.getLogger(__name__)

CONSTRAINTS = ("U", "G", "N", "GN")
SPLIT_CODE = {"train": 1, "val": 2, "test": 3, "seen_heard": 4}
KIND_CODE = {"matching": 1, "pairs": 2}
DIRECTION_CODE = {"v2f": 1, "f2v": 2}
CONSTRAINT_CODE = {"U": 1, "G": 2, "N": 3, "GN": 4}
BINARY_K = 2


@dataclass(frozen=True)
class TuplesConfig:
    """Counts are per split x direction x constraint; 0 skips a stream.

    The defaults equal ``params.yaml``'s ``tuples`` section (asserted by the tests).
    """

    seed: int = 0
    positive_same_video: bool = False
    seen_heard_positive_same_video: bool = False
    retrieval_same_video: bool = False
    multiway_k: int = 10
    train_constraints: tuple[str, ...] = ("U", "G")
    eval_constraints: tuple[str, ...] = CONSTRAINTS
    pair_constraints: tuple[str, ...] = ("U", "G")
    train_binary: int = 1500
    train_multiway: int = 250
    val_binary: int = 2000
    val_multiway: int = 500
    test_binary: int = 1000
    test_multiway: int = 250
    seen_heard_binary: int = 500
    seen_heard_multiway: int = 100
    train_pairs: int = 2000
    val_pairs: int = 400
    test_pairs: int = 1000
    seen_heard_pairs: int = 1000
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError("tuples.seed must be >= 0")
        if not BINARY_K < self.multiway_k <= 99:
            raise ValueError("tuples.multiway_k must be in 3..99")
        for name in ("train_constraints", "eval_constraints", "pair_constraints"):
            bad = set(getattr(self, name)) - set(CONSTRAINTS)
            if bad:
                raise ValueError(f"tuples.{name}: unknown constraint(s) {sorted(bad)}; use {CONSTRAINTS}")
        if any(n < 0 for n in self.counts().values()):
            raise ValueError("tuples: counts must be >= 0")

    def counts(self) -> dict[tuple[str, str], int]:
        """Requested count per (split, kind), kind in binary / multiway / pairs."""
        return {
            ("train", "binary"): self.train_binary, ("train", "multiway"): self.train_multiway,
            ("train", "pairs"): self.train_pairs,
            ("val", "binary"): self.val_binary, ("val", "multiway"): self.val_multiway,
            ("val", "pairs"): self.val_pairs,
            ("test", "binary"): self.test_binary, ("test", "multiway"): self.test_multiway,
            ("test", "pairs"): self.test_pairs,
            ("seen_heard", "binary"): self.seen_heard_binary,
            ("seen_heard", "multiway"): self.seen_heard_multiway,
            ("seen_heard", "pairs"): self.seen_heard_pairs,
        }

    def same_video_ok(self, split: str) -> bool:
        """Whether a positive may come from the query's own video in ``split``."""
        return self.seen_heard_positive_same_video if split == "seen_heard" else self.positive_same_video

    def same_video_rules(self) -> dict[str, bool]:
        """:meth:`same_video_ok` for every split (plain values for the validator)."""
        return {split: self.same_video_ok(split) for split in ITEM_SPLITS}


@dataclass(frozen=True)
class Stream:
    """One independently seeded list: ``count`` tuples of one kind/split/direction/constraint/k."""

    kind: str
    split: str
    direction: str
    constraint: str
    k: int
    count: int

    @property
    def name(self) -> str:
        return f"{self.kind}/{self.split}/{self.direction}/{self.constraint}/k{self.k}"

    def seed(self, base: int) -> int:
        return (base * 1_000_000 + 100_000 * SPLIT_CODE[self.split] + 10_000 * KIND_CODE[self.kind]
                + 1_000 * DIRECTION_CODE[self.direction] + 100 * CONSTRAINT_CODE[self.constraint]
                + self.k)


def plan(cfg: TuplesConfig) -> list[Stream]:
    """Every stream the config asks for, in a fixed order."""
    counts = cfg.counts()
    streams = []
    for split in ITEM_SPLITS:
        constraints = cfg.train_constraints if split == "train" else cfg.eval_constraints
        for direction in DIRECTIONS:
            for constraint in constraints:
                for kind, k in (("binary", BINARY_K), ("multiway", cfg.multiway_k)):
                    streams.append(Stream("matching", split, direction, constraint, k, counts[split, kind]))
            for constraint in cfg.pair_constraints:
                streams.append(Stream("pairs", split, direction, constraint, BINARY_K, counts[split, "pairs"]))
    return [s for s in streams if s.count > 0]


@dataclass(frozen=True)
class SplitView:
    """Query and candidate items of one split and direction, with the sampling structures."""

    queries: pl.DataFrame
    candidates: pl.DataFrame
    pool: tuples_sample.Pool


def split_view(manifest: Manifest, split: str, direction: str) -> SplitView:
    q_mod, c_mod = DIRECTIONS[direction]
    queries, candidates = manifest.split_items(q_mod, split), manifest.split_items(c_mod, split)
    pool = tuples_sample.make_pool(candidates["ident"].to_numpy(), candidates["video_code"].to_numpy(),
                                   manifest.identities.height, manifest.n_videos)
    return SplitView(queries=queries, candidates=candidates, pool=pool)


def draw_stream(stream: Stream, view: SplitView, manifest: Manifest, cfg: TuplesConfig
                ) -> tuple[np.random.Generator, tuples_sample.Draw]:
    rng = np.random.default_rng(stream.seed(cfg.seed))
    key = tuples_sample.constraint_key(stream.constraint, manifest.gender, manifest.nationality)
    groups = tuples_sample.make_groups(key, view.pool.count > 0)
    drawn = tuples_sample.draw(rng, view.queries["ident"].to_numpy(), view.queries["video_code"].to_numpy(),
                               view.pool, groups, stream.k, stream.count, cfg.same_video_ok(stream.split))
    return rng, drawn


def _header(stream: Stream, m: int, seed: int) -> dict[str, pl.Series]:
    return {"split": pl.Series([stream.split] * m, dtype=pl.Utf8),
            "direction": pl.Series([stream.direction] * m, dtype=pl.Utf8),
            "constraint": pl.Series([stream.constraint] * m, dtype=pl.Utf8),
            "k": pl.Series([stream.k] * m, dtype=pl.Int32),
            "seed": pl.Series([seed] * m, dtype=pl.Int64)}


def matching_frame(stream: Stream, view: SplitView, drawn: tuples_sample.Draw,
                   rng: np.random.Generator, seed: int) -> pl.DataFrame:
    candidates, label = tuples_sample.place(rng, drawn, stream.k)
    m = len(label)
    ids = view.candidates["id"].gather(candidates.ravel()).reshape((m, stream.k))  # (m, k) array
    return pl.DataFrame({**_header(stream, m, seed),
                         "query_id": view.queries["id"].gather(drawn.query),
                         "candidate_ids": ids.cast(pl.List(pl.Utf8)),
                         "label": pl.Series(label, dtype=pl.Int32)}).select(MATCHING_COLUMNS)


def pairs_frame(stream: Stream, view: SplitView, drawn: tuples_sample.Draw,
                rng: np.random.Generator, seed: int) -> pl.DataFrame:
    m = len(drawn.query)
    same = rng.permutation(np.arange(m) % 2 == 0)  # exactly balanced
    candidate = np.where(same, drawn.positive, drawn.negatives[:, 0] if m else drawn.positive)
    return pl.DataFrame({**_header(stream, m, seed),
                         "query_id": view.queries["id"].gather(drawn.query),
                         "candidate_id": view.candidates["id"].gather(candidate),
                         "same": pl.Series(same, dtype=pl.Boolean)}).select(PAIRS_COLUMNS)


MATCHING_COLUMNS = ("split", "direction", "constraint", "k", "query_id", "candidate_ids", "label", "seed")
PAIRS_COLUMNS = ("split", "direction", "constraint", "query_id", "candidate_id", "same", "seed")


def stream_summary(stream: Stream, frame: pl.DataFrame, drawn: tuples_sample.Draw) -> dict:
    written = frame.height
    out = {"requested": stream.count, "written": written, "shortfall": stream.count - written,
           "shortfall_reasons": drawn.shortfall, "same_video_positives": drawn.same_video,
           "unique_queries": frame["query_id"].n_unique()}
    if stream.kind == "matching":
        counts = dict(frame.group_by("label").len().iter_rows())
        out["label_counts"] = [int(counts.get(i, 0)) for i in range(stream.k)]
    else:
        out["positive_fraction"] = round(float(frame["same"].mean()), 6) if written else None
    return out


RETRIEVAL_SCHEMA = {"split": pl.Utf8, "direction": pl.Utf8, "exclude_same_video": pl.Boolean,
                    "query_ids": pl.List(pl.Utf8), "query_identities": pl.List(pl.Utf8),
                    "query_videos": pl.List(pl.Utf8), "gallery_ids": pl.List(pl.Utf8),
                    "gallery_identities": pl.List(pl.Utf8), "gallery_videos": pl.List(pl.Utf8)}


def retrieval_row(view: SplitView, split: str, direction: str, same_video: bool) -> tuple[dict, dict]:
    """One retrieval row (queries with a relevant item, whole gallery) and its summary."""
    q_ident, q_video = view.queries["ident"].to_numpy(), view.queries["video_code"].to_numpy()
    relevant = tuples_sample.positive_count(view.pool, q_ident, q_video, same_video)  # (n_queries,)
    own = tuples_sample.positive_count(view.pool, q_ident, q_video, True) - relevant
    keep = relevant > 0
    queries = view.queries.filter(pl.Series(keep))
    per_video = np.bincount(view.candidates["video_code"].to_numpy(), minlength=view.pool.n_videos)
    excluded = 0 if same_video else int(per_video[queries["video_code"].to_numpy()].sum())
    row = {"split": split, "direction": direction, "exclude_same_video": not same_video,
           "query_ids": queries["id"].to_list(), "query_identities": queries["identity"].to_list(),
           "query_videos": queries["video"].to_list(), "gallery_ids": view.candidates["id"].to_list(),
           "gallery_identities": view.candidates["identity"].to_list(),
           "gallery_videos": view.candidates["video"].to_list()}
    summary = {"queries": queries.height, "gallery": view.candidates.height,
               "queries_without_relevant": int((~keep).sum()),
               "excluded_pairs": excluded,
               "excluded_relevant_pairs": 0 if same_video else int(own[keep].sum())}
    return row, summary


def retrieval_frame(manifest: Manifest, same_video: bool) -> tuple[pl.DataFrame, dict]:
    """Per split and direction: the queries with a relevant gallery item, and the gallery."""
    rows, summary = [], {}
    for split in ITEM_SPLITS:
        for direction in DIRECTIONS:
            row, summary[f"{split}/{direction}"] = retrieval_row(split_view(manifest, split, direction),
                                                                 split, direction, same_video)
            rows.append(row)
    return pl.DataFrame(rows, schema=RETRIEVAL_SCHEMA), summary


def draw_all(manifest: Manifest, cfg: TuplesConfig) -> tuple[dict[str, pl.DataFrame], dict]:
    """Draw every planned stream; return the matching and pairs tables and per-stream stats."""
    frames: dict[str, list[pl.DataFrame]] = {"matching": [], "pairs": []}
    stats, views = {}, {}
    for stream in tqdm(plan(cfg), desc="tuples", unit="stream", mininterval=1.0):
        key = (stream.split, stream.direction)
        if key not in views:
            views[key] = split_view(manifest, *key)
        view = views[key]
        rng, drawn = draw_stream(stream, view, manifest, cfg)
        build = matching_frame if stream.kind == "matching" else pairs_frame
        frame = build(stream, view, drawn, rng, stream.seed(cfg.seed))
        frames[stream.kind].append(frame)
        stats[stream.name] = stream_summary(stream, frame, drawn)
    tables = {
        "matching": pl.concat(frames["matching"]) if frames["matching"] else _empty(MATCHING_SCHEMA),
        "pairs": pl.concat(frames["pairs"]) if frames["pairs"] else _empty(PAIRS_SCHEMA),
    }
    return tables, stats


MATCHING_SCHEMA = {"split": pl.Utf8, "direction": pl.Utf8, "constraint": pl.Utf8, "k": pl.Int32,
                   "query_id": pl.Utf8, "candidate_ids": pl.List(pl.Utf8), "label": pl.Int32,
                   "seed": pl.Int64}
PAIRS_SCHEMA = {"split": pl.Utf8, "direction": pl.Utf8, "constraint": pl.Utf8, "query_id": pl.Utf8,
                "candidate_id": pl.Utf8, "same": pl.Boolean, "seed": pl.Int64}


def _empty(schema: dict) -> pl.DataFrame:
    return pl.DataFrame(schema=schema)


def shortfall_messages(stats: dict) -> list[str]:
    """One readable line per stream that could not be filled completely."""
    lines = []
    for name, s in stats.items():
        if s["shortfall"]:
            reasons = ", ".join(f"{r}: {n}" for r, n in s["shortfall_reasons"].items())
            lines.append(f"{name}: wrote {s['written']} of {s['requested']} "
                         f"(short {s['shortfall']}; {reasons})")
    return lines


def summarize(manifest: Manifest, cfg: TuplesConfig, tables: dict[str, pl.DataFrame], stats: dict,
              retrieval: dict, rejects: Rejects, total: int, features: dict,
              checks: dict[str, int], rows_by_split: dict[str, dict[str, int]]) -> dict:
    identities = dict(manifest.identities.group_by("split").len().iter_rows())
    inputs = {"rows_read": total, "identities": {s: int(n) for s, n in sorted(identities.items())},
              "utterances": manifest.items["voice"].height, "faces": manifest.items["face"].height}
    return {
        "seed": cfg.seed,
        "positive_same_video": cfg.positive_same_video,
        "seen_heard_positive_same_video": cfg.seen_heard_positive_same_video,
        "retrieval_same_video": cfg.retrieval_same_video,
        "inputs": inputs,
        "features": features,
        "rejected": len(rejects.dropped), "recorded_anomalies": len(rejects) - len(rejects.dropped),
        "rejects_by_reason": rejects.counts(),
        "rows": {name: frame.height for name, frame in tables.items()},
        "rows_by_split": rows_by_split,
        "streams": stats,
        "retrieval": retrieval,
        "shortfalls": shortfall_messages(stats),
        "checks": checks,
    }


def build_tables(manifest: Manifest, cfg: TuplesConfig) -> tuple[dict[str, pl.DataFrame], dict, dict]:
    """Every table, whole (all splits, in :data:`~pipeline.tupling.layout.SPLITS` order), in memory:
    ``({"matching", "pairs", "retrieval"} -> frame, per-stream stats, retrieval stats)``."""
    tables, stats = draw_all(manifest, cfg)
    tables["retrieval"], retrieval = retrieval_frame(manifest, cfg.retrieval_same_video)
    return tables, stats, retrieval


def run(manifest_dir: Path, features_dir: Path, out_dir: Path, cfg: TuplesConfig) -> dict:
    """Draw, check and write all tuple tables into ``out_dir`` (atomically, as one directory).

    Only items held by every feature store of their modality under ``features_dir`` are used
    (see :mod:`pipeline.tupling.inputs`). The checks run on the whole tables (every split)
    before they are cut into ``out_dir/<split>/`` files (see :mod:`pipeline.tupling.layout`).
    """
    rejects = Rejects("tuples")
    stores = read_stores(Path(features_dir))
    manifest, total, features = load(Path(manifest_dir), rejects, stores)
    with atomic_dir(out_dir) as tmp:
        rejects.write(tmp / layout.REJECTS)
        rejects.check(total, cfg.max_reject_fraction)
        tables, stats, retrieval = build_tables(manifest, cfg)
        checks = tuples_check.validate(manifest, tables, same_video_ok=cfg.same_video_rules(),
                                       retrieval_same_video=cfg.retrieval_same_video)
        rows_by_split = layout.write_tables(tmp, tables)
        summary = summarize(manifest, cfg, tables, stats, retrieval, rejects, total, features, checks,
                            rows_by_split)
        write_json(tmp / layout.SUMMARY, summary)
    for line in summary["shortfalls"]:
        log.warning("tuples shortfall: %s", line)
    log.info("tuples: %s", summary["rows"])
    return summary


def cli(
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    features_dir: Path = typer.Argument(..., help="The feature stores (data/features): "
                                        "spectrograms.h5, audio_attributes.parquet, faces.h5, "
                                        "face_attributes.parquet."),
    out_dir: Path = typer.Argument(..., help="Where to write the tuple tables (data/tuples): "
                                   "<split>/{matching,pairs,retrieval}.parquet per split, "
                                   "rejects.parquet, summary.json."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `tuples` section."),
) -> None:
    """Draw fixed matching tuples, verification pairs and retrieval lists from the manifest items
    that every feature store holds."""
    run(manifest_dir, features_dir, out_dir, from_params(TuplesConfig, params, "tuples"))
