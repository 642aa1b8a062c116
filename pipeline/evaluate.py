"""``evaluate`` stage: the val-selected checkpoint on ``test`` and ``seen_heard``, both directions.

Reads the checkpoint (``models/avmatch/best``), the feature stores, the manifest and the tuples
of the evaluated splits (``tuples/test``, ``tuples/seen_heard``) plus the **val pairs** (for the
verification threshold only; never a train tuple), and writes into ``OUT_DIR`` (``reports/``):

- ``metrics.json``: flat keys (README "Metrics", :mod:`model.evaluation`): 1:2 and 1:K matching
  per constraint, the accuracy-vs-k curve (k = 2..K from the 1:K U tuples, truncated by
  :func:`pipeline.tupling.truncation.truncate_table`), verification AUC / EER (U, G),
  retrieval mAP and R@1/5/10 over the full gallery (same-video items left out as
  ``retrieval.parquet`` says), 1:2 U accuracy by whether the negatives share the query's gender
  and nationality, each under the model's declared score and again per scoring rule (``head``,
  ``cosine``), with 95% bootstrap intervals over query identities and the counts behind them;
  and ``val.<dir>.verify.<C>.threshold``, the EER threshold on the val pairs;
- ``summary.md``: the headline table laid out like P2VANet Table I, and the detail tables;
- ``plots/``: ``accuracy_vs_k/<split>_<dir>.csv`` (``k, acc, ...``),
  ``roc/<split>_<dir>_<C>.csv`` (``fpr, tpr, threshold``), ``tsne.png`` and ``montage.png``;
- ``evaluate_summary.json`` (counts, checks, timings) and ``evaluate_rejects.parquet``.

It refuses to run (:class:`EvaluationRefused`, exit code 1, nothing written) when the checkpoint
was not selected on val, when a test or val tuple involves an identity the checkpoint was
trained on, when a seen_heard item comes from a video of the train split, or when any tuple
references an item of another split. Items the stores cannot serve are rejected (the tuples
that use them are dropped and counted); more than ``max_reject_fraction`` fails the stage.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import typer

from model.evaluation import (
    RULES,
    Bootstrap,
    clean,
    detail_table,
    headline_table,
    matching_metrics,
    metric_key,
    retrieval_estimates,
    strata_metrics,
    threshold_metrics,
    verification_metrics,
)
from model.plots import (
    MontageRow,
    accuracy_vs_k_frame,
    montage_figure,
    roc_frame,
    save_figure,
    tsne_figure,
    write_csv,
)
from pipeline.common.config import ConfigError, build, load_params, section
from pipeline.common.directions import DIRECTIONS, MODALITIES
from pipeline.common.io import output_group
from pipeline.common.rejects import Rejects, TooManyRejects
from pipeline.tupling.layout import table_path
from pipeline.tupling.truncation import truncate_table

log = logging.getLogger(__name__)

EVAL_SPLITS = ("test", "seen_heard")
THRESHOLD_SPLIT = "val"
SELECT_SPLIT = "val"
IMPORTED_PREFIX = "imported"  # metric keys imported.<stem>.<dir>...
IMPORTED_SPLIT = "test"  # every item of an imported list must be a test item
IMPORTED_STEM = re.compile(r"[A-Za-z0-9_-]+")
OUTPUTS = {"metrics": "metrics.json", "summary_md": "summary.md",
           "summary": "evaluate_summary.json", "rejects": "evaluate_rejects.parquet",
           "plots": "plots"}


class EvaluationRefused(RuntimeError):
    """The checkpoint or the tuples would make the evaluation leak (nothing is written)."""


@dataclass(frozen=True)
class EvaluateConfig:
    """The ``evaluate`` params section (docs/evaluation.md)."""

    splits: tuple[str, ...] = EVAL_SPLITS  # held-out splits to evaluate
    bootstrap_resamples: int = 1000  # cluster-bootstrap resamples (query identities)
    seed: int = 0  # bootstrap, t-SNE and montage seed
    ci_level: float = 0.95
    tsne_identities: int = 20  # test identities in the t-SNE (<= 20 colours)
    tsne_perplexity: float = 30.0
    montage_queries: int = 6  # v2f test queries in the montage (half right, half wrong if any)
    montage_k: int = 2  # tuple size shown in the montage (P2VANet Fig. 9: k = 2)
    batch_size: int = 256  # items per embedding batch
    threads: int = 0  # torch threads; 0 = every core
    max_reject_fraction: float = 0.05  # referenced items the stores may lack
    imported: tuple[str, ...] = ()  # `avmatch tuples import` tables in the --protocols directory

    def __post_init__(self) -> None:
        check_imported_names(self.imported)
        bad = sorted(set(self.splits) - set(EVAL_SPLITS))
        if bad or not self.splits:
            raise ConfigError(f"evaluate.splits must be a non-empty subset of {EVAL_SPLITS}; "
                              f"got {list(self.splits)}")
        if self.bootstrap_resamples < 1 or not 0.0 < self.ci_level < 1.0:
            raise ConfigError("evaluate.bootstrap_resamples must be >= 1 and ci_level in (0, 1)")
        if not 1 <= self.tsne_identities <= 20:
            raise ConfigError("evaluate.tsne_identities must be in 1..20 (one colour each)")
        if self.montage_queries < 0 or self.montage_k < 2 or self.batch_size < 1:
            raise ConfigError("evaluate: montage_queries >= 0, montage_k >= 2, batch_size >= 1")

    @property
    def bootstrap(self) -> Bootstrap:
        return Bootstrap(self.bootstrap_resamples, self.seed, self.ci_level)


def check_imported_names(names: Sequence[str]) -> None:
    """``evaluate.imported``: Parquet file names (no directories) with distinct, key-safe stems."""
    stems = [Path(n).stem for n in names]
    bad = [n for n in names if Path(n).name != n or Path(n).suffix != ".parquet"
           or not IMPORTED_STEM.fullmatch(Path(n).stem)]
    if bad or len(set(stems)) != len(stems):
        raise ConfigError(
            "evaluate.imported lists Parquet file names in the --protocols directory, each "
            f"`<name>.parquet` with a distinct name of letters, digits, _ or -; got {list(names)}")


# ---- inputs --------------------------------------------------------------------------------------

@dataclass
class ManifestView:
    """What the checks and the metrics need from the manifest (never the train tuples)."""

    items: dict[str, pl.DataFrame]  # modality -> id, identity, video, split
    identities: pl.DataFrame  # id, name, gender, nationality, split

    def __post_init__(self) -> None:
        self.owner = {m: dict(zip(f["id"].to_list(), f["identity"].to_list(), strict=True))
                      for m, f in self.items.items()}
        rows = self.identities.select("id", "gender", "nationality", "name").iter_rows()
        self.person = {i: (g, n, name) for i, g, n, name in rows}

    @classmethod
    def read(cls, manifest_dir: Path) -> ManifestView:
        items = {m: pl.read_parquet(manifest_dir / f, columns=["id", "identity", "video", "split"])
                 for m, f in (("voice", "utterances.parquet"), ("face", "faces.parquet"))}
        identities = pl.read_parquet(manifest_dir / "identities.parquet",
                                     columns=["id", "name", "gender", "nationality", "split"])
        return cls(items, identities)

    def identities_of(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        owner = self.owner[modality]
        return np.asarray([owner[u] for u in ids], dtype=object)

    def attribute(self, identities: np.ndarray, which: int) -> np.ndarray:
        """Gender (``which`` 0) or nationality (1) of each identity (same shape)."""
        flat = [self.person.get(i, (None, None, None))[which] for i in identities.ravel()]
        return np.asarray(flat, dtype=object).reshape(identities.shape)


@dataclass
class SplitTables:
    """The tuples of one split: ``matching``, ``pairs`` and ``retrieval`` frames."""

    split: str
    matching: pl.DataFrame
    pairs: pl.DataFrame
    retrieval: pl.DataFrame

    @classmethod
    def read(cls, tuples_dir: Path, split: str, tables: Iterable[str] = ("matching", "pairs",
                                                                           "retrieval")
             ) -> SplitTables:
        frames = {name: pl.read_parquet(table_path(tuples_dir, split, name)) for name in tables}
        empty = pl.DataFrame()
        return cls(split, frames.get("matching", empty), frames.get("pairs", empty),
                   frames.get("retrieval", empty))

    @classmethod
    def imported(cls, path: Path) -> SplitTables:
        """An ``avmatch tuples import`` table (pairs or retrieval schema), named
        ``imported.<stem>``; its kind is read from its columns."""
        frame = pl.read_parquet(path)
        empty = pl.DataFrame()
        name = f"{IMPORTED_PREFIX}.{path.stem}"
        if {"query_id", "candidate_id", "same"} <= set(frame.columns):
            return cls(name, empty, frame, empty)
        if {"query_ids", "gallery_ids"} <= set(frame.columns):
            return cls(name, empty, empty, frame)
        raise EvaluationRefused(f"{path}: neither a pairs nor a retrieval table (columns "
                                f"{frame.columns}); write it with `avmatch tuples import`")

    def references(self) -> dict[str, list[str]]:
        """Every item id the tables use, per modality (first-seen order, each once)."""
        refs: dict[str, list[str]] = {m: [] for m in MODALITIES}
        for d, (q_mod, c_mod) in DIRECTIONS.items():
            if self.matching.height:
                rows = self.matching.filter(pl.col("direction") == d)
                refs[q_mod] += rows["query_id"].to_list()
                refs[c_mod] += rows["candidate_ids"].explode().to_list()
            if self.pairs.height:
                rows = self.pairs.filter(pl.col("direction") == d)
                refs[q_mod] += rows["query_id"].to_list()
                refs[c_mod] += rows["candidate_id"].to_list()
            if self.retrieval.height:
                for row in self.retrieval.filter(pl.col("direction") == d).iter_rows(named=True):
                    refs[q_mod] += row["query_ids"]
                    refs[c_mod] += row["gallery_ids"]
        return {m: list(dict.fromkeys(ids)) for m, ids in refs.items()}


# ---- leak checks ---------------------------------------------------------------------------------

def check_selection(meta: Mapping[str, Any], checkpoint: Path) -> dict[str, Any]:
    """The checkpoint's ``selection`` block; refuses anything not selected on val."""
    selection = meta.get("selection")
    on = selection.get("selected_on") if isinstance(selection, Mapping) else None
    if on != SELECT_SPLIT:
        raise EvaluationRefused(
            f"{checkpoint}: the checkpoint was selected on {on!r}, not on {SELECT_SPLIT!r}; only a "
            f"val-selected checkpoint may be evaluated on held-out splits")
    return dict(selection)


def check_split(split: str, refs: Mapping[str, Sequence[str]], manifest: ManifestView,
                train_identities: set[str], rejects: Rejects, name: str | None = None
                ) -> dict[str, int]:
    """Refuse leaks in the items ``refs`` of ``split``; record items unknown to the manifest.
    ``name`` labels the lists in messages (default: ``split``; imported lists are checked as
    ``test``).

    - every item belongs to ``split`` in the manifest;
    - ``test`` / ``val``: no item of an identity the checkpoint was trained on;
    - ``seen_heard``: no item from a video (identity, video) of the manifest's train split.
    """
    name = name or split
    known = {m: [u for u in refs[m] if u in manifest.owner[m]] for m in MODALITIES}
    for m in MODALITIES:
        for uid in refs[m]:
            if uid not in manifest.owner[m]:
                rejects.add("not_in_manifest", id=uid, detail=f"{name} {m} item")
    frames = {m: manifest.items[m].filter(pl.col("id").is_in(known[m])) for m in MODALITIES}
    for m, frame in frames.items():
        other = frame.filter(pl.col("split") != split)
        if other.height:
            raise EvaluationRefused(
                f"{name} tuples reference {other.height} {m} item(s) of splits other than "
                f"{split} "
                f"({sorted(set(other['split'].to_list()))}), e.g. {other['id'].head(3).to_list()}")
    identities = set().union(*(set(f["identity"].to_list()) for f in frames.values()))
    if split == "seen_heard":
        train_items = pl.concat([manifest.items[m].filter(pl.col("split") == "train")
                                 .select("identity", "video") for m in MODALITIES])
        train_videos = set(train_items.iter_rows())
        shared = sorted({(i, v) for f in frames.values()
                         for i, v in f.select("identity", "video").iter_rows()} & train_videos)
        if shared:
            raise EvaluationRefused(
                f"seen_heard items come from {len(shared)} video(s) of the train split, e.g. "
                f"{shared[:3]}: seen_heard must hold videos the model never saw")
    else:
        overlap = sorted(identities & train_identities)
        if overlap:
            raise EvaluationRefused(
                f"{name} tuples involve {len(overlap)} "
                f"identit{'y' if len(overlap) == 1 else 'ies'} the checkpoint was trained on, "
                f"e.g. {overlap[:3]}: {split} identities must be unseen")
    return {"identities": len(identities), **{f"{m}_items": len(known[m]) for m in MODALITIES}}


def checkpoint_train_identities(meta: Mapping[str, Any], checkpoint: Path) -> set[str]:
    """The identities the checkpoint was trained on (its label maps)."""
    from model.checkpoint import CheckpointError

    try:
        return set(meta["data"]["labels"]["identities"])
    except (KeyError, TypeError) as err:
        raise CheckpointError(f"{checkpoint}: its JSON lacks data.labels.identities (the train "
                              "identities), so the test identities cannot be checked") from err


# ---- the network ---------------------------------------------------------------------------------

def load_network(checkpoint: Path, device: Any = "cpu") -> tuple[Any, dict[str, Any]]:
    """``(AVMatchNet in eval mode, meta)`` of a model checkpoint directory."""
    from model.avnet import AVMatchNet, InputDims, ModelConfig
    from model.checkpoint import CheckpointError, load_model, model_meta

    meta = model_meta(checkpoint)
    try:
        cfg = ModelConfig.from_checkpoint(meta["model"])
        dims = build(InputDims, meta["dims"], name="checkpoint dims")
    except (KeyError, ConfigError) as err:
        raise CheckpointError(f"{checkpoint}: cannot rebuild the model from its JSON ({err})") from err
    net = AVMatchNet(cfg, dims).to(device)
    load_model(checkpoint, net, device=device)
    return net.eval(), meta


def embed_split(net: Any, source: Any, manifest: ManifestView, refs: Mapping[str, Sequence[str]],
                rejects: Rejects, split: str, batch_size: int, device: Any) -> dict[str, Any]:
    """Every usable item of ``refs`` embedded once (sorted ids); items the manifest lists but a
    store or attribute table lacks become ``missing_features`` rejects."""
    from model.scoring import embed_items

    emb = {}
    for m in MODALITIES:
        ids = sorted(u for u in refs[m] if u in manifest.owner[m])
        bank, missing = source.resolve(m, ids)
        for uid, why in missing.items():
            rejects.add("missing_features", id=uid, detail=f"{split} {m} item: {why}")
        emb[m] = embed_items(net, source, m, bank.ids, batch_size=batch_size, device=device)
    return emb


ITEM_COLUMNS = {"matching": ("query_id", "candidate_ids"), "pairs": ("query_id", "candidate_id")}


def embedded_rows(frame: pl.DataFrame, cols: Sequence[str], emb: Mapping[str, Any]) -> np.ndarray:
    """Per row of a matching or pairs frame: whether every item it names has an embedding."""
    index = {m: set(emb[m].ids) for m in MODALITIES}
    keep = np.ones(frame.height, dtype=bool)
    for d, mods in DIRECTIONS.items():
        rows = (frame["direction"] == d).to_numpy()
        for col, m in zip(cols, mods, strict=True):
            ok = np.array([all(v in index[m] for v in (x if isinstance(x, list) else [x]))
                           for x in frame[col].to_list()], dtype=bool)
            keep &= ~rows | ok
    return keep


def usable(tables: SplitTables, emb: Mapping[str, Any]) -> tuple[SplitTables, dict[str, int]]:
    """``tables`` without the rows that reference an item without an embedding."""
    dropped = {}
    parts = {}
    for name, frame in (("matching", tables.matching), ("pairs", tables.pairs)):
        if not frame.height:
            parts[name] = frame
            continue
        keep = embedded_rows(frame, ITEM_COLUMNS[name], emb)
        parts[name] = frame.filter(pl.Series(keep))
        dropped[name] = int((~keep).sum())
    return SplitTables(tables.split, parts["matching"], parts["pairs"], tables.retrieval), dropped


# ---- metrics -------------------------------------------------------------------------------------

@dataclass
class Context:
    """What every metric block shares."""

    net: Any
    manifest: ManifestView
    boot: Bootstrap
    model_rule: str
    notes: list[str]

    def rules(self, scores: Mapping[str, np.ndarray]) -> dict[str | None, np.ndarray]:
        """The model's declared score (key ``None``) and each scoring rule's."""
        return {None: scores[self.model_rule], **{r: scores[r] for r in RULES}}


def _groups(frame: pl.DataFrame, keys: Sequence[str]) -> list[tuple[tuple, pl.DataFrame]]:
    if not frame.height:
        return []
    out = [(tuple(k), g) for k, g in frame.group_by(list(keys), maintain_order=True)]
    return sorted(out, key=lambda item: item[0])


def matching_block(ctx: Context, split: str, frame: pl.DataFrame, emb: Mapping[str, Any]
                   ) -> tuple[dict[str, Any], dict[tuple, tuple[pl.DataFrame, np.ndarray]]]:
    """1:k accuracy per direction, constraint and k (every rule), 1:2 U strata (model rule).

    Returns the metrics and, per ``(direction, constraint, k)``, the rows and the model's
    scores (for the montage)."""
    from model.scoring import score_matching

    metrics: dict[str, Any] = {}
    scored = {}
    for (direction, constraint, k), rows in _groups(frame, ("direction", "constraint", "k")):
        q_mod, c_mod = DIRECTIONS[direction]
        scores = score_matching(ctx.net, rows, emb)
        labels = rows["label"].to_numpy().astype(np.int64)
        query_ident = ctx.manifest.identities_of(q_mod, rows["query_id"].to_list())
        for rule, values in ctx.rules(scores).items():
            key = metric_key(split, direction, rule, "match", f"k{k}", constraint, "acc")
            found, hits = matching_metrics(key, values, labels, query_ident, ctx.boot)
            metrics.update(found)
            if rule is None and k == 2 and constraint == "U":
                cand = np.array([ctx.manifest.identities_of(c_mod, c)
                                 for c in rows["candidate_ids"].to_list()], dtype=object)
                metrics.update(strata_metrics(
                    metric_key(split, direction, None, "match", "k2", "U", "strata"), hits, labels,
                    ctx.manifest.attribute(query_ident, 0), ctx.manifest.attribute(cand, 0),
                    ctx.manifest.attribute(query_ident, 1), ctx.manifest.attribute(cand, 1),
                    query_ident, ctx.boot))
        scored[(direction, constraint, int(k))] = (rows, scores[ctx.model_rule])
    return metrics, scored


def curve_block(ctx: Context, split: str, frame: pl.DataFrame, emb: Mapping[str, Any]
                ) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """Accuracy for k = 2..K from the 1:K U tuples of each direction (K: their largest k).

    ``frame`` is the split's whole matching table: the positions of a truncated tuple are
    balanced over its whole stream, so rows with an item lacking an embedding are dropped after
    the truncation, not before."""
    from model.scoring import score_matching

    metrics: dict[str, Any] = {}
    ks: dict[str, list[int]] = {}
    if not frame.height:
        return metrics, ks
    for direction in DIRECTIONS:
        rows = frame.filter((pl.col("direction") == direction) & (pl.col("constraint") == "U"))
        if not rows.height:
            continue
        top = int(rows["k"].max())
        base = rows.filter(pl.col("k") == top)
        ks[direction] = list(range(2, top + 1))
        q_mod = DIRECTIONS[direction][0]
        keep = pl.Series(embedded_rows(base, ITEM_COLUMNS["matching"], emb))
        query_ident = ctx.manifest.identities_of(q_mod, base.filter(keep)["query_id"].to_list())
        for k in ks[direction]:
            cut = truncate_table(base, k).filter(keep)
            scores = score_matching(ctx.net, cut, emb)
            labels = cut["label"].to_numpy().astype(np.int64)
            for rule, values in ctx.rules(scores).items():
                key = metric_key(split, direction, rule, "match", "curve", f"k{k}", "acc")
                metrics.update(matching_metrics(key, values, labels, query_ident, ctx.boot)[0])
    return metrics, ks


def pairs_block(ctx: Context, split: str, frame: pl.DataFrame, emb: Mapping[str, Any],
                threshold_only: bool = False
                ) -> tuple[dict[str, Any], dict[tuple, tuple[np.ndarray, np.ndarray]]]:
    """Verification AUC / EER per direction and constraint (every rule), or with
    ``threshold_only`` the EER threshold (val). Also returns the model's scores per list."""
    from model.scoring import score_pairs

    metrics: dict[str, Any] = {}
    scored = {}
    for (direction, constraint), rows in _groups(frame, ("direction", "constraint")):
        same = rows["same"].to_numpy().astype(bool)
        if same.all() or not same.any():
            ctx.notes.append(f"{split} {direction} {constraint} pairs: one class only, skipped")
            continue
        scores = score_pairs(ctx.net, rows, emb)
        q_mod = DIRECTIONS[direction][0]
        query_ident = ctx.manifest.identities_of(q_mod, rows["query_id"].to_list())
        for rule, values in ctx.rules(scores).items():
            prefix = metric_key(split, direction, rule, "verify", constraint)
            if threshold_only:
                metrics.update(threshold_metrics(prefix, values, same))
            else:
                metrics.update(verification_metrics(prefix, values, same, query_ident, ctx.boot))
        scored[(direction, constraint)] = (scores[ctx.model_rule], same)
    return metrics, scored


def retrieval_block(ctx: Context, split: str, frame: pl.DataFrame, emb: Mapping[str, Any]
                    ) -> tuple[dict[str, Any], dict[str, dict[str, int]]]:
    """mAP and R@1/5/10 of every query against its gallery (every rule), per direction.

    The stage's lists have one row per direction (the split's whole gallery); an imported list
    has one row per query, each with its own gallery: the rows of a direction are pooled."""
    from model.metrics import merge_retrieval, retrieval

    metrics: dict[str, Any] = {}
    counts: dict[str, dict[str, int]] = {}
    if not frame.height:
        return metrics, counts
    for (direction,), rows in _groups(frame, ("direction",)):
        parts = [p for p in (_retrieval_part(ctx, split, row, emb) for row in
                             rows.iter_rows(named=True)) if p is not None]
        if not parts:
            continue
        q_ident = np.concatenate([p["query_identity"] for p in parts])
        for rule in parts[0]["scores"]:
            merged = merge_retrieval([retrieval(p["scores"][rule], p["query_identity"],
                                                p["gallery_identity"], **p["groups"])
                                      for p in parts])
            found, lost = retrieval_estimates(metric_key(split, direction, rule, "retrieval"),
                                              merged, q_ident, boot=ctx.boot)
            metrics.update(found)
        counts[direction] = {"queries": int(q_ident.size),
                             "gallery": len({g for p in parts for g in p["gallery_ids"]}),
                             "rows": len(parts), "queries_without_relevant": lost,
                             "exclude_same_video": bool(rows["exclude_same_video"].any())}
    return metrics, counts


def _retrieval_part(ctx: Context, split: str, row: Mapping[str, Any], emb: Mapping[str, Any]
                    ) -> dict[str, Any] | None:
    """One retrieval row's usable queries and gallery, scored under every rule (None, with a
    note, when nothing can be ranked)."""
    from model.scoring import score_gallery

    direction = row["direction"]
    q_mod, c_mod = DIRECTIONS[direction]
    q_ok = [i for i, u in enumerate(row["query_ids"]) if u in emb[q_mod].index]
    g_ok = [j for j, u in enumerate(row["gallery_ids"]) if u in emb[c_mod].index]
    q_ids = _pick(row["query_ids"], q_ok).tolist()
    g_ids = _pick(row["gallery_ids"], g_ok).tolist()
    if not q_ids or not g_ids:
        listed = f"{len(row['query_ids'])} queries, {len(row['gallery_ids'])} gallery items"
        ctx.notes.append(f"{split} {direction} retrieval: nothing to rank ({listed} listed, "
                         f"{len(q_ids)} and {len(g_ids)} usable)")
        return None
    groups = {}
    if row["exclude_same_video"]:
        groups = {"query_group": _pick(row["query_videos"], q_ok),
                  "gallery_group": _pick(row["gallery_videos"], g_ok)}
    q_ident = _pick(row["query_identities"], q_ok)
    g_ident = _pick(row["gallery_identities"], g_ok)
    if not any(_relevant(q_ident, g_ident, groups)):
        ctx.notes.append(f"{split} {direction} retrieval: no usable query has a relevant "
                         "gallery item")
        return None
    scores = score_gallery(ctx.net, direction, q_ids, g_ids, emb)
    return {"scores": ctx.rules(scores), "query_identity": q_ident, "gallery_identity": g_ident,
            "gallery_ids": g_ids, "groups": groups}


def _relevant(query_identity: np.ndarray, gallery_identity: np.ndarray,
              groups: Mapping[str, np.ndarray]) -> list[bool]:
    """Per query: whether its gallery (after the same-video rule) holds a relevant item."""
    out = []
    for i, identity in enumerate(query_identity):
        hit = gallery_identity == identity
        if groups:
            hit &= groups["gallery_group"] != groups["query_group"][i]
        out.append(bool(hit.any()))
    return out


def _pick(values: Sequence[Any], idx: Sequence[int]) -> np.ndarray:
    return np.asarray([values[i] for i in idx], dtype=object)


# ---- figures -------------------------------------------------------------------------------------

def tsne_items(manifest: ManifestView, emb: Mapping[str, Any], n_identities: int
               ) -> dict[str, list[str]]:
    """Items of the first ``n_identities`` identities (sorted ids) that have both modalities:
    every voice, and one face per video (the first by id; frames of a video are near copies)."""
    owners = {m: dict(zip(emb[m].ids, emb[m].identity_ids, strict=True)) for m in MODALITIES}
    both = sorted(set(owners["voice"].values()) & set(owners["face"].values()))[:n_identities]
    chosen = set(both)
    voices = [u for u, i in owners["voice"].items() if i in chosen]
    video = dict(manifest.items["face"].select("id", "video").iter_rows())
    faces, seen = [], set()
    for uid in sorted(u for u, i in owners["face"].items() if i in chosen):
        key = (owners["face"][uid], video[uid])
        if key not in seen:
            seen.add(key)
            faces.append(uid)
    return {"voice": voices, "face": faces}


def representations(net: Any, source: Any, modality: str, ids: Sequence[str], batch_size: int,
                    device: Any) -> dict[str, np.ndarray]:
    """``branch`` (the generator input), ``f`` (generator output) and ``h`` of ``ids``, each
    averaged over the item's evaluation views as the scores are (``AVMatchNet.embed_views``)."""
    import torch

    from model.avnet import view_mean
    from model.data import iter_items

    captured: list[Any] = []
    hook = net.branches[modality].register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().float().cpu()))
    parts: dict[str, list[np.ndarray]] = {"branch": [], "f": [], "h": []}
    normalize = net.cfg.normalize_embedding
    try:
        with torch.no_grad():
            for batch in iter_items(source, modality, ids, batch_size,
                                    crops=net.cfg.eval_voice_crops, flip=net.cfg.eval_face_flip):
                x = batch["x"].to(device)  # (V, N, C, H, W)
                v = x.shape[0]
                e = net.embed(modality, x.flatten(0, 1),  # (V, N, C, H, W) -> (V*N, C, H, W)
                              batch["attr"].to(device).repeat(v, 1))  # (N, A) -> (V*N, A)
                parts["branch"].append(view_mean(captured.pop(), v).numpy())
                parts["f"].append(view_mean(e.feature.float().cpu(), v).numpy())
                parts["h"].append(view_mean(e.h.float().cpu(), v, normalize).numpy())
    finally:
        hook.remove()
    return {name: np.concatenate(v) for name, v in parts.items()}


def tsne_plot(net: Any, source: Any, manifest: ManifestView, emb: Mapping[str, Any],
              cfg: EvaluateConfig, device: Any, path: Path) -> dict[str, Any]:
    items = tsne_items(manifest, emb, cfg.tsne_identities)
    if min(len(v) for v in items.values()) == 0:
        return {"skipped": "no identity with both modalities"}
    reps = {m: representations(net, source, m, items[m], cfg.batch_size, device)
            for m in MODALITIES}
    panels: dict[str, np.ndarray] = {}
    if reps["voice"]["branch"].shape[1] == reps["face"]["branch"].shape[1]:
        panels["before: branch features (generator input)"] = np.concatenate(
            [reps[m]["branch"] for m in MODALITIES])
    if net.vaes or net.private or not panels:
        panels["generator output f (before VAE / private)"] = np.concatenate(
            [reps[m]["f"] for m in MODALITIES])
    panels["after: embedding h"] = np.concatenate([reps[m]["h"] for m in MODALITIES])
    identity = [manifest.owner[m][u] for m in MODALITIES for u in items[m]]
    modality = [m for m in MODALITIES for _ in items[m]]
    fig, _ = tsne_figure(panels, identity, modality, seed=cfg.seed,
                         perplexity=cfg.tsne_perplexity,
                         title=f"test: {len(set(identity))} identities (colour), "
                               "voice o / face ^")
    save_figure(fig, path)
    return {"identities": len(set(identity)), "voices": len(items["voice"]),
            "faces": len(items["face"]), "panels": list(panels)}


def montage_plot(source: Any, manifest: ManifestView, scored: Mapping[tuple, Any],
                 cfg: EvaluateConfig, path: Path) -> dict[str, Any]:
    """v2f test queries (a voice's spectrogram) with their candidate faces."""
    key = ("v2f", "U", cfg.montage_k)
    if key not in scored or cfg.montage_queries == 0:
        return {"skipped": f"no v2f U 1:{cfg.montage_k} test tuples"}
    rows, scores = scored[key]
    labels = rows["label"].to_numpy()
    choice = scores.argmax(axis=1)
    right = choice == labels
    order = np.random.default_rng(cfg.seed).permutation(rows.height)
    want_wrong = cfg.montage_queries // 2
    wrong = [i for i in order if not right[i]][:want_wrong]
    picked = sorted(wrong + [i for i in order if right[i]][:cfg.montage_queries - len(wrong)])
    montage = []
    for i in picked:
        query = rows["query_id"][int(i)]
        identity = manifest.owner["voice"][query]
        name = manifest.person.get(identity, (None, None, identity))[2]
        montage.append(MontageRow(
            query=source.voice_store.fixed_crop(query),
            candidates=[source.face_store.get(c) for c in rows["candidate_ids"][int(i)]],
            label=int(labels[i]), choice=int(choice[i]), scores=scores[i].tolist(),
            caption=f"voice: {name}"))
    fig = montage_figure(montage, title=f"test V-F 1:{cfg.montage_k}: green = model's choice "
                                        "right, red = wrong")
    save_figure(fig, path)
    return {"queries": len(picked), "wrong": int(sum(not right[i] for i in picked))}


# ---- the run -------------------------------------------------------------------------------------

def imported_table(metrics: Mapping[str, Any], names: Sequence[str], model_rule: str) -> str:
    """Verification (each constraint the lists carry) and retrieval of the imported lists."""
    columns = []
    for c in ("U", "G", "N", "GN"):
        if any(f".verify.{c}.auc" in k for k in metrics if k.startswith(IMPORTED_PREFIX)):
            columns += [(f"AUC {c}", ("verify", c, "auc")), (f"EER {c}", ("verify", c, "eer"))]
    columns += [(title, ("retrieval", name)) for title, name in
                (("mAP", "map"), ("R@1", "r1"), ("R@5", "r5"), ("R@10", "r10"))]
    return detail_table(metrics, names, model_rule, columns)


def summary_markdown(metrics: Mapping[str, Any], splits: Sequence[str], model_rule: str,
                     multiway_k: int, info: Mapping[str, Any]) -> str:
    """``summary.md``: the headline table (P2VANet Table I) and the detail tables."""
    sel = info["selection"]
    metric = sel.get("metric")
    if isinstance(metric, (list, tuple)):
        metric = " and ".join(metric) + (" (mean)" if len(metric) > 1 else "")
    lines = [
        "# Evaluation summary",
        "",
        f"Checkpoint `{info['checkpoint']}`, selected on {sel.get('selected_on')} "
        f"({metric} = {sel.get('value', float('nan')):.4f} at epoch "
        f"{sel.get('epoch')}). Model score: `{model_rule}`. Values in %, with 95% bootstrap "
        f"intervals over query identities ({info['bootstrap']['n_resamples']} resamples, "
        f"seed {info['bootstrap']['seed']}). `test` = unseen-unheard identities, "
        "`seen_heard` = train identities, videos held out.",
        "",
        f"## Matching and verification (P2VANet Table I layout; Binary = 1:2, Multi-way = "
        f"1:{multiway_k}, unconstrained)",
        "",
        headline_table(metrics, splits, model_rule, multiway_k=multiway_k),
        "",
        "## Verification EER and retrieval over the full gallery (AML Tables V, VI)",
        "",
        detail_table(metrics, splits, model_rule,
                     [("EER U", ("verify", "U", "eer")), ("AUC G", ("verify", "G", "auc")),
                      ("EER G", ("verify", "G", "eer")), ("mAP", ("retrieval", "map")),
                      ("R@1", ("retrieval", "r1")), ("R@5", ("retrieval", "r5")),
                      ("R@10", ("retrieval", "r10"))]),
        "",
        "## 1:2 matching by constraint (negatives share: G gender, N nationality, GN both)",
        "",
        detail_table(metrics, splits, model_rule,
                     [(f"1:2 {c}", ("match", "k2", c, "acc")) for c in ("U", "G", "N", "GN")]
                     + [(f"1:{multiway_k} {c}", ("match", f"k{multiway_k}", c, "acc"))
                        for c in ("G", "N", "GN")]),
        "",
        "Counts (`n_identities`, `n_tuples`, `n_pairs`, `n_queries`) are in `metrics.json`; "
        "per-stratum accuracy under `<split>.<dir>.match.k2.U.strata.*`; val EER thresholds "
        "for `avmatch verify` under `val.<dir>.verify.<C>.threshold`.",
    ]
    if info.get("imported"):
        lines += ["", "## Imported protocol lists (evaluate.imported; test items only)", "",
                  imported_table(metrics, info["imported"], model_rule)]
    if info.get("notes"):
        lines += ["", "Notes:", *(f"- {n}" for n in info["notes"])]
    return "\n".join(lines) + "\n"


def run(data_dir: Path, checkpoint: Path, out_dir: Path, cfg: EvaluateConfig,
        protocols_dir: Path | None = None) -> dict[str, Any]:
    """Evaluate ``checkpoint`` on ``data_dir``'s held-out tuples, and on the imported lists
    ``cfg.imported`` in ``protocols_dir``; write ``out_dir`` outputs."""
    from model.checkpoint import model_meta
    from model.runtime import torch_runtime

    start = time.perf_counter()
    meta = model_meta(checkpoint)
    selection = check_selection(meta, checkpoint)
    imported = read_imported(protocols_dir, cfg.imported)
    with torch_runtime(cfg.threads):
        return _run(Path(data_dir), Path(checkpoint), Path(out_dir), cfg, meta, selection, start,
                    imported)


def read_imported(protocols_dir: Path | None, names: Sequence[str]) -> dict[str, SplitTables]:
    """``imported.<stem>`` -> the table of each name in ``evaluate.imported``."""
    if names and protocols_dir is None:
        raise ConfigError("evaluate.imported names lists, but no --protocols directory was given")
    out = {}
    for name in names:
        path = Path(protocols_dir) / name
        if not path.is_file():
            raise FileNotFoundError(f"{path}: an imported list named in evaluate.imported does not "
                                    "exist; write it with `avmatch tuples import FORMAT FILE "
                                    f"{path}`")
        tables = SplitTables.imported(path)
        out[tables.split] = tables
    return out


def _run(data_dir: Path, checkpoint: Path, out_dir: Path, cfg: EvaluateConfig,
         meta: Mapping[str, Any], selection: dict[str, Any], start: float,
         imported: Mapping[str, SplitTables]) -> dict[str, Any]:
    import torch

    from model.data import DataPaths, FeatureSource

    timings: dict[str, float] = {}

    def lap(name: str, since: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - since, 3)
        return now

    paths = DataPaths.under(data_dir)
    manifest = ManifestView.read(paths.manifest)
    train_identities = checkpoint_train_identities(meta, checkpoint)
    rejects = Rejects("evaluate")
    tables = {s: SplitTables.read(paths.tuples, s) for s in cfg.splits}
    tables[THRESHOLD_SPLIT] = SplitTables.read(paths.tuples, THRESHOLD_SPLIT, ("pairs",))
    tables.update(imported)
    refs = {s: t.references() for s, t in tables.items()}
    checks = {s: check_split(IMPORTED_SPLIT if s in imported else s, refs[s], manifest,
                             train_identities, rejects, name=s) for s in tables}
    t = lap("read_and_check", start)

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, _ = load_network(checkpoint, device)
    source = FeatureSource.from_state(paths, meta["data"])
    emb = {s: embed_split(net, source, manifest, refs[s], rejects, s, cfg.batch_size, device)
           for s in tables}
    total = sum(len(r[m]) for r in refs.values() for m in MODALITIES)
    rejects.check(total, cfg.max_reject_fraction)
    kept, dropped = {}, {}
    for s in tables:
        kept[s], dropped[s] = usable(tables[s], emb[s])
    t = lap("embed", t)

    model_rule = net.cfg.score
    ctx = Context(net, manifest, cfg.bootstrap, model_rule, [])
    metrics: dict[str, Any] = {}
    plot_data: dict[str, pl.DataFrame] = {}
    scored_matching: dict[str, dict] = {}
    retrieval_counts, curve_ks = {}, {}
    multiway_k = 2
    for s in (*cfg.splits, *imported):  # imported lists hold pairs or retrieval only
        found, scored_matching[s] = matching_block(ctx, s, kept[s].matching, emb[s])
        metrics.update(found)
        if kept[s].matching.height:
            multiway_k = max(multiway_k, int(kept[s].matching["k"].max()))
        found, curve_ks[s] = curve_block(ctx, s, tables[s].matching, emb[s])
        metrics.update(found)
        found, scored_pairs = pairs_block(ctx, s, kept[s].pairs, emb[s])
        metrics.update(found)
        for (d, c), (scores, same) in scored_pairs.items():
            plot_data[f"roc/{s}_{d}_{c}.csv"] = roc_frame(scores, same)
        found, retrieval_counts[s] = retrieval_block(ctx, s, kept[s].retrieval, emb[s])
        metrics.update(found)
    found, _ = pairs_block(ctx, THRESHOLD_SPLIT, kept[THRESHOLD_SPLIT].pairs,
                           emb[THRESHOLD_SPLIT], threshold_only=True)
    metrics.update(found)
    metrics = clean(metrics)
    for s, by_dir in curve_ks.items():
        for d, ks in by_dir.items():
            plot_data[f"accuracy_vs_k/{s}_{d}.csv"] = accuracy_vs_k_frame(metrics, s, d, ks)
    t = lap("metrics", t)

    info = {"checkpoint": str(checkpoint), "selection": {k: v for k, v in selection.items()
                                                         if k != "val"},
            "model_score": model_rule, "bootstrap": asdict(cfg.bootstrap), "notes": ctx.notes,
            "imported": sorted(imported)}
    with output_group() as group:
        plots_dir = group.dir(out_dir / OUTPUTS["plots"])
        for name, frame in plot_data.items():
            write_csv(plots_dir / name, frame)
        figures = {}
        if "test" in cfg.splits:
            figures["tsne"] = tsne_plot(net, source, manifest, emb["test"], cfg, device,
                                        plots_dir / "tsne.png")
            t = lap("tsne", t)
            figures["montage"] = montage_plot(source, manifest, scored_matching["test"], cfg,
                                              plots_dir / "montage.png")
            t = lap("montage", t)
        summary = {
            **info, "splits": list(cfg.splits), "checks": checks, "multiway_k": multiway_k,
            "items_embedded": {s: {m: len(e[m].ids) for m in MODALITIES} for s, e in emb.items()},
            "lists": _list_counts(kept), "dropped_rows": dropped, "retrieval": retrieval_counts,
            "rejected": len(rejects.dropped), "rejects_by_reason": rejects.counts(),
            "figures": figures, "plots": sorted(plot_data), "n_metrics": len(metrics),
            "timings": timings, "seconds": round(time.perf_counter() - start, 3),
            "device": str(device)}
        _write_json(group.file(out_dir / OUTPUTS["metrics"]), metrics)
        group.file(out_dir / OUTPUTS["summary_md"]).write_text(
            summary_markdown(metrics, cfg.splits, model_rule, multiway_k, info), encoding="utf-8")
        rejects.frame().write_parquet(group.file(out_dir / OUTPUTS["rejects"]))
        _write_json(group.file(out_dir / OUTPUTS["summary"]), summary)
    log.info("evaluate: %d metrics in %.1f s (%s)", len(metrics), summary["seconds"], timings)
    return summary


def _write_json(path: Path, data: Any) -> None:
    import json

    path.write_text(json.dumps(data, indent=2, sort_keys=True, allow_nan=False) + "\n",
                    encoding="utf-8")


def _list_counts(kept: Mapping[str, SplitTables]) -> dict[str, dict[str, int]]:
    out = {}
    for s, t in kept.items():
        counts = {}
        if t.matching.height:
            for (d, c, k), g in _groups(t.matching, ("direction", "constraint", "k")):
                counts[f"matching/{d}/{c}/k{k}"] = g.height
        if t.pairs.height:
            for (d, c), g in _groups(t.pairs, ("direction", "constraint")):
                counts[f"pairs/{d}/{c}"] = g.height
        out[s] = counts
    return out


def stage_config(params: Mapping[str, Any]) -> EvaluateConfig:
    return build(EvaluateConfig, section(params, "evaluate"), name="evaluate")


def cli(
    data_dir: Path = typer.Argument(..., help="The data/ directory (features, manifest, tuples)."),
    checkpoint: Path = typer.Argument(..., help="The val-selected checkpoint (models/avmatch/best)."),
    out_dir: Path = typer.Argument(..., help="Reports directory: metrics.json, summary.md, "
                                   "evaluate_summary.json, evaluate_rejects.parquet, plots/."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read."),
    protocols: Path | None = typer.Option(
        None, "--protocols", help="Directory of imported protocol lists (`avmatch tuples "
        "import`); evaluate.imported names the ones to evaluate."),
) -> None:
    """Evaluate the val-selected checkpoint on test and seen_heard: matching, verification,
    retrieval with identity-bootstrap intervals, plots and summary (see pipeline/evaluate.py)."""
    from model.checkpoint import CheckpointError

    try:
        run(data_dir, checkpoint, out_dir, stage_config(load_params(params)), protocols)
    except (EvaluationRefused, CheckpointError, ConfigError, TooManyRejects,
            FileNotFoundError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
