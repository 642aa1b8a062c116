"""``tuples`` stage: fixed matching tuples, verification pairs and retrieval lists.

The papers train and evaluate on tuples drawn once before training (AML IV-B: "we randomly
select data tuples before training and fixed them"). This stage draws them from the manifest
and stores them by manifest id only, in ``data/tuples/``:

- ``matching.parquet``: ``split, direction, constraint, k, query_id, candidate_ids, label,
  seed``. ``direction`` is ``v2f`` (voice query, face candidates) or ``f2v``. One positive
  (same identity, by default from another video than the query) and ``k - 1`` negatives from
  distinct other identities; constraint ``U`` (none), ``G`` (negatives share the query
  identity's gender), ``N`` (nationality) or ``GN`` (both). ``label`` is the positive's
  position: an exactly balanced shuffle in ``train`` (for the matching classifier), always 0
  in ``val``/``test``/``seen_heard`` so the first ``k'`` candidates of a 10-candidate tuple are
  a 1:k' tuple (:func:`truncate`).
- ``pairs.parquet``: ``split, direction, constraint, query_id, candidate_id, same, seed``;
  verification pairs, exactly half positive, constraints ``U``/``G``.
- ``retrieval.parquet``: one row per ``split, direction`` with ``query_ids`` and
  ``gallery_ids`` (lists); the relevant items of a query are its identity's gallery items.
- ``rejects.parquet`` and ``summary.json`` (counts, label balance, shortfalls, checks).

Seeds. Every stream (kind, split, direction, constraint, k) has its own generator,
``numpy.random.default_rng(stream_seed)`` with ::

    stream_seed = seed * 1_000_000 + 100_000 * split + 10_000 * kind
                  + 1_000 * direction + 100 * constraint + k

where split is train 1, val 2, test 3, seen_heard 4; kind is matching 1, pairs 2; direction is
v2f 1, f2v 2; constraint is U 1, G 2, N 3, GN 4. A stream depends only on its own count, the
manifest items of its split and the positive-video rule, so e.g. changing the train counts
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
from pipeline.common.io import atomic_dir, write_json
from pipeline.common.rejects import Rejects
from pipeline.tupling import check as tuples_check
from pipeline.tupling import sample as tuples_sample
from pipeline.tupling.inputs import ITEM_SPLITS, Manifest, load

log = logging.getLogger(__name__)

DIRECTIONS = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}  # query, candidate modality
CONSTRAINTS = ("U", "G", "N", "GN")
SPLIT_CODE = {"train": 1, "val": 2, "test": 3, "seen_heard": 4}
KIND_CODE = {"matching": 1, "pairs": 2}
DIRECTION_CODE = {"v2f": 1, "f2v": 2}
CONSTRAINT_CODE = {"U": 1, "G": 2, "N": 3, "GN": 4}
BINARY_K = 2


@dataclass(frozen=True)
class TuplesConfig:
    """Counts are per split x direction x constraint; 0 skips a stream."""

    seed: int = 0
    positive_same_video: bool = False
    seen_heard_positive_same_video: bool = True
    multiway_k: int = 10
    train_constraints: tuple[str, ...] = ("U",)
    eval_constraints: tuple[str, ...] = CONSTRAINTS
    pair_constraints: tuple[str, ...] = ("U", "G")
    train_binary: int = 3000
    train_multiway: int = 500
    val_binary: int = 400
    val_multiway: int = 100
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
    candidates, label = tuples_sample.place(rng, drawn, stream.k, random_label=stream.split == "train")
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


def retrieval_frame(manifest: Manifest) -> tuple[pl.DataFrame, dict]:
    """Per split and direction: every query item with a relevant gallery item, and the gallery."""
    rows, summary = [], {}
    for split in ITEM_SPLITS:
        for direction in DIRECTIONS:
            view = split_view(manifest, split, direction)
            relevant = view.pool.count[view.queries["ident"].to_numpy()] > 0
            queries = view.queries.filter(pl.Series(relevant))
            rows.append({"split": split, "direction": direction, "query_ids": queries["id"].to_list(),
                         "gallery_ids": view.candidates["id"].to_list()})
            summary[f"{split}/{direction}"] = {"queries": queries.height, "gallery": view.candidates.height,
                                               "queries_without_relevant": int((~relevant).sum())}
    schema = {"split": pl.Utf8, "direction": pl.Utf8, "query_ids": pl.List(pl.Utf8),
              "gallery_ids": pl.List(pl.Utf8)}
    return pl.DataFrame(rows, schema=schema), summary


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
              retrieval: dict, rejects: Rejects, total: int, checks: dict[str, int]) -> dict:
    identities = dict(manifest.identities.group_by("split").len().iter_rows())
    inputs = {"rows_read": total, "identities": {s: int(n) for s, n in sorted(identities.items())},
              "utterances": manifest.items["voice"].height, "faces": manifest.items["face"].height}
    return {
        "seed": cfg.seed,
        "positive_same_video": cfg.positive_same_video,
        "seen_heard_positive_same_video": cfg.seen_heard_positive_same_video,
        "inputs": inputs,
        "rejected": len(rejects.dropped), "recorded_anomalies": len(rejects) - len(rejects.dropped),
        "rejects_by_reason": rejects.counts(),
        "rows": {name: frame.height for name, frame in tables.items()},
        "streams": stats,
        "retrieval": retrieval,
        "shortfalls": shortfall_messages(stats),
        "checks": checks,
    }


def run(manifest_dir: Path, out_dir: Path, cfg: TuplesConfig) -> dict:
    """Draw, check and write all tuple tables into ``out_dir`` (atomically)."""
    rejects = Rejects("tuples")
    manifest, total = load(Path(manifest_dir), rejects)
    with atomic_dir(out_dir) as tmp:
        rejects.write(tmp / "rejects.parquet")
        rejects.check(total, cfg.max_reject_fraction)
        tables, stats = draw_all(manifest, cfg)
        tables["retrieval"], retrieval = retrieval_frame(manifest)
        checks = tuples_check.validate(manifest, tables, cfg)
        for name, frame in tables.items():
            frame.write_parquet(tmp / f"{name}.parquet")
        summary = summarize(manifest, cfg, tables, stats, retrieval, rejects, total, checks)
        write_json(tmp / "summary.json", summary)
    for line in summary["shortfalls"]:
        log.warning("tuples shortfall: %s", line)
    log.info("tuples: %s", summary["rows"])
    return summary


def truncate(matching: pl.DataFrame, k: int) -> pl.DataFrame:
    """1:k tuples from longer ones: the first ``k`` candidates of each tuple with ``k`` or more.

    Valid only where the positive is among them (always for evaluation splits, whose positive
    is first); a tuple whose label is ``>= k`` raises ``ValueError``.
    """
    rows = matching.filter(pl.col("k") >= k)
    if rows.filter(pl.col("label") >= k).height:
        raise ValueError(f"cannot truncate to 1:{k}: some positives are at position >= {k}")
    return rows.with_columns(pl.col("candidate_ids").list.head(k), k=pl.lit(k, dtype=pl.Int32))


def cli(
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    out_dir: Path = typer.Argument(..., help="Where to write the tuple tables (data/tuples)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `tuples` section."),
) -> None:
    """Draw fixed matching tuples, verification pairs and retrieval lists from the manifest."""
    run(manifest_dir, out_dir, from_params(TuplesConfig, params, "tuples"))
