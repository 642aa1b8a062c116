"""Linear sanity floor: ridge-regularised CCA between voice and face features, scored by cosine.

- Voice features: the 384 IS09 functionals standardised with the train-split statistics
  (``audio_attributes_stats.json``), then PCA (whitened) fitted on the train utterances.
- Face features: the face crops block-averaged to ``face_grid`` x ``face_grid`` RGB pixels,
  standardised per pixel on the train faces, PCA (whitened) fitted on the train faces, plus the 12
  attribute probabilities of ``face_attributes.parquet`` (standardised on the train faces).
- Ridge CCA (our numpy code: scikit-learn's CCA is an iterative PLS variant without ridge
  regularisation): ``C_vv + r I`` and ``C_ff + r I`` whitened, then the SVD of the whitened cross
  covariance; the first ``components`` canonical directions of each side, each scaled by its
  canonical correlation to the power ``weight`` (0: the plain CCA space; 1: better-correlated
  directions count more).
- Fitted on train identities only (never seen_heard items), on every cross-video
  (voice, face) pair of one identity: a voice from one video, a face from another.
- The PCA sizes (face PCA size 0: the attributes alone), the ridge, the number of canonical
  components and the weight are chosen on val 1:2 U matching (mean of both directions); test is
  scored once, with the chosen setting.
- Cross-fitted val figures (``val_crossfit.<direction>.match.k<k>.<constraint>.acc``): the val
  figures above are scored with the setting chosen on those very tuples, the best of the whole
  grid, so they overstate what the baseline does on identities it was not tuned on (by up to 0.07
  per figure on the embedded corpus and its draws; docs/model.md, "Corpus draws and the
  baseline's tuning optimism"). Here the val identities are split into ``crossfit_folds`` seeded
  folds, and each fold's tuples are scored with the setting chosen on the other folds' tuples (by
  query identity). Each choice then sees only part of val, so these figures understate the
  baseline somewhat; the in-sample and cross-fitted figures bracket it, and test is the clean
  comparison.
- Scores: cosine similarity in the canonical space, for the val and test matching tuples (both
  directions, every constraint, k = 2 and 10), verification pairs (AUC, EER) and retrieval
  (mAP, R@1/5/10), with identity-bootstrap intervals from :mod:`model.metrics`.

Writes the ``linear_cca`` section of ``reports/baselines.json`` with the evaluate stage's flat
keys, e.g. ``test.v2f.match.k2.U.acc`` (``<split>.<direction>.match.k<k>.<constraint>.acc``,
``<split>.<direction>.verify.<constraint>.auc`` / ``.eer``, ``<split>.<direction>.retrieval.map``
/ ``.r1`` / ``.r5`` / ``.r10``, each with ``.ci_low``, ``.ci_high``, ``.n_identities``, ``.n_items``).

Usage: ``python -m benchmarks.linear_baseline [--data data] [--out reports/baselines.json]``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.decomposition import PCA

from benchmarks.common import update_report
from model import metrics
from model.backend import cross_video_pairs, ridge_cca
from model.data import DataPaths, read_audio_attributes, read_face_attributes
from model.evaluation import COUNTS, estimate_keys
from model.stores import FaceStore
from pipeline.common.directions import DIRECTIONS, MODALITIES
from pipeline.tupling.layout import read_table

log = logging.getLogger("benchmarks.linear_baseline")

REPORT = Path(__file__).resolve().parents[1] / "reports" / "baselines.json"
SECTION = "linear_cca"
SPLITS = ("val", "test")


@dataclass(frozen=True)
class BaselineConfig:
    """The tuning grid and the fixed settings."""

    voice_dims: tuple[int, ...] = (16, 32, 64, 128)  # PCA components of the IS09 vector
    face_dims: tuple[int, ...] = (0, 8, 16, 32, 64)  # PCA components of the face pixels
    ridges: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0)  # added to C_vv and C_ff
    components: tuple[int, ...] = (2, 4, 8, 16, 32)  # canonical directions kept
    weights: tuple[float, ...] = (0.0, 1.0)  # canonical dims scaled by correlation ** w
    face_grid: int = 16  # faces are block-averaged to face_grid x face_grid pixels
    max_pairs: int = 200_000  # cap on cross-video training pairs (random subset beyond it)
    tune_constraint: str = "U"
    tune_k: int = 2
    resamples: int = 1000  # identity-bootstrap resamples
    seed: int = 0
    crossfit_folds: int = 2  # val identity folds of the cross-fitted val figures


# ---- features -----------------------------------------------------------------------------------

@dataclass
class Items:
    """One modality's items: manifest columns and the raw feature matrices."""

    ids: list[str]
    identity: np.ndarray  # (n,) str
    video: np.ndarray  # (n,) str
    split: np.ndarray  # (n,) str
    parts: dict[str, np.ndarray]  # name -> (n, d) float

    def index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.ids)}


def _manifest(paths: DataPaths, modality: str) -> pl.DataFrame:
    return pl.read_parquet(paths.items(modality), columns=["id", "identity", "video", "split"])


def _items(table: pl.DataFrame, parts: Mapping[str, tuple[list[str], np.ndarray]]) -> Items:
    """Manifest rows that every feature part holds, with each part's rows in that order."""
    keep = set(table["id"].to_list())
    for ids, _ in parts.values():
        keep &= set(ids)
    rows = table.filter(pl.col("id").is_in(list(keep))).sort("id")
    dropped = table.height - rows.height
    if dropped:
        log.warning("%d manifest items lack a feature and are left out", dropped)
    ordered = {}
    for name, (ids, values) in parts.items():
        pos = {u: i for i, u in enumerate(ids)}
        ordered[name] = values[[pos[u] for u in rows["id"].to_list()]]
    return Items(rows["id"].to_list(), rows["identity"].to_numpy().astype(str),
                 rows["video"].to_numpy().astype(str), rows["split"].to_numpy().astype(str), ordered)


def block_average(images: np.ndarray, grid: int) -> np.ndarray:
    """``(n, S, S, 3)`` uint8 -> ``(n, grid * grid * 3)`` float32 block means (S % grid == 0)."""
    n, size = images.shape[0], images.shape[1]
    if size % grid:
        raise ValueError(f"face size {size} is not a multiple of face_grid {grid}")
    f = size // grid
    blocks = images.reshape(n, grid, f, grid, f, 3).astype(np.float32)  # (n, g, f, g, f, 3)
    return blocks.mean(axis=(2, 4)).reshape(n, grid * grid * 3)  # (n, g, g, 3) -> (n, g*g*3)


def load_items(paths: DataPaths, cfg: BaselineConfig) -> dict[str, Items]:
    """Voice and face items of every split with their raw features."""
    audio = read_audio_attributes(paths.audio_attributes, paths.audio_stats)
    attrs = read_face_attributes(paths.face_attributes, "prob")
    with FaceStore(paths.faces) as store:
        pixels = np.concatenate([block_average(store.read(a, min(a + 1024, len(store))), cfg.face_grid)
                                 for a in range(0, len(store), 1024)])
        face_ids = store.ids
    return {"voice": _items(_manifest(paths, "voice"), {"is09": (audio.ids, audio.values)}),
            "face": _items(_manifest(paths, "face"), {"pixels": (face_ids, pixels),
                                                      "attributes": (attrs.ids, attrs.values)})}


def _standardise(x: np.ndarray, train: np.ndarray) -> np.ndarray:
    mean, std = x[train].mean(0), x[train].std(0)
    return (x - mean) / np.where(std > 0, std, 1.0)


@dataclass
class Reduced:
    """Whitened PCA scores of every item, at the largest size of the grid (slice for smaller)."""

    voice: np.ndarray  # (n_voice, max voice dims)
    face: np.ndarray  # (n_face, max face dims)
    face_attributes: np.ndarray  # (n_face, 12) standardised on train


def reduce(items: dict[str, Items], cfg: BaselineConfig) -> Reduced:
    """PCA fitted on train items only; PCA components are nested, so one fit serves the grid
    (sizes are capped by the number of train items)."""
    out = {}
    for modality, part, dims in (("voice", "is09", cfg.voice_dims), ("face", "pixels", cfg.face_dims)):
        it = items[modality]
        train = it.split == "train"
        x = _standardise(it.parts[part].astype(np.float64), train)
        size = min(max(dims), int(train.sum()) - 1, x.shape[1])
        pca = PCA(n_components=size, whiten=True, svd_solver="full", random_state=cfg.seed)
        pca.fit(x[train])
        out[modality] = pca.transform(x)
    face_train = items["face"].split == "train"
    attrs = _standardise(items["face"].parts["attributes"].astype(np.float64), face_train)
    return Reduced(out["voice"], out["face"], attrs)


def face_features(reduced: Reduced, dims: int) -> np.ndarray:
    return np.concatenate([reduced.face[:, :dims], reduced.face_attributes], axis=1)


# ---- ridge CCA ----------------------------------------------------------------------------------

def training_pairs(items: dict[str, Items], cfg: BaselineConfig) -> tuple[np.ndarray, np.ndarray]:
    """Every (voice, face) index pair of one train identity from two different videos."""
    voice, face = items["voice"], items["face"]
    vi, fi = np.flatnonzero(voice.split == "train"), np.flatnonzero(face.split == "train")
    v, f = cross_video_pairs(voice.identity[vi], voice.video[vi], face.identity[fi],
                             face.video[fi])
    v, f = vi[v], fi[f]
    if len(v) > cfg.max_pairs:
        keep = np.sort(np.random.default_rng(cfg.seed).choice(len(v), cfg.max_pairs, replace=False))
        v, f = v[keep], f[keep]
    if len(v) == 0:
        raise ValueError("no cross-video (voice, face) pair among the train identities")
    return v, f


def _unit(z: np.ndarray) -> np.ndarray:
    return z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)


# ---- scoring ------------------------------------------------------------------------------------

@dataclass
class Space:
    """Unit-norm canonical embeddings of every item, by id."""

    voice: np.ndarray
    face: np.ndarray
    index: dict[str, dict[str, int]]

    def rows(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        pos = self.index[modality]
        return np.fromiter((pos[u] for u in ids), np.int64, count=len(ids))

    def get(self, modality: str, ids: Sequence[str]) -> np.ndarray:
        return getattr(self, modality)[self.rows(modality, ids)]


def fit_space(items: dict[str, Items], reduced: Reduced, pairs: tuple[np.ndarray, np.ndarray],
              voice_dims: int, face_dims: int, ridge: float, components: int,
              weight: float) -> Space:
    """Fit the ridge CCA on the training pairs; embed every item (dims scaled by rho ** weight)."""
    xv = reduced.voice[:, :voice_dims]
    yf = face_features(reduced, face_dims)
    cca = ridge_cca(xv[pairs[0]], yf[pairs[1]], ridge, components)
    scale = cca.correlations ** weight
    return Space(_unit(cca.project_x(xv) * scale), _unit(cca.project_y(yf) * scale),
                 {m: items[m].index() for m in MODALITIES})


def match_scores(space: Space, tuples: pl.DataFrame, direction: str) -> np.ndarray:
    """Cosine of the query with each candidate: ``(n, k)``."""
    q_mod, c_mod = DIRECTIONS[direction]
    query = space.get(q_mod, tuples["query_id"].to_list())  # (n, d)
    k = int(tuples["k"][0])
    cands = space.get(c_mod, tuples["candidate_ids"].explode().to_list())
    cands = cands.reshape(len(query), k, -1)  # (n * k, d) -> (n, k, d)
    return np.einsum("nd,nkd->nk", query, cands)


def _usable(tuples: pl.DataFrame, index: Mapping[str, Mapping[str, int]],
            direction: str) -> pl.DataFrame:
    """The ``direction`` tuples whose items all have features (are in ``index``)."""
    q_mod, c_mod = DIRECTIONS[direction]
    q_ok = pl.col("query_id").is_in(list(index[q_mod]))
    c_ok = pl.col("candidate_ids").list.eval(pl.element().is_in(list(index[c_mod]))).list.all()
    kept = tuples.filter(q_ok & c_ok)
    if kept.height < tuples.height:
        log.warning("%d %s tuples reference items without features and are skipped",
                    tuples.height - kept.height, direction)
    return kept


def tune_accuracy(space: Space, tuples: Mapping[str, pl.DataFrame]) -> float:
    """Mean over directions of the matching accuracy on the tuning tuples."""
    return float(np.mean([metrics.match_accuracy(match_scores(space, t, d), t["label"].to_numpy())
                          for d, t in tuples.items()]))


def tune(items: dict[str, Items], reduced: Reduced, pairs: tuple[np.ndarray, np.ndarray],
         tuples: pl.DataFrame, cfg: BaselineConfig) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Grid search on val ``tune_k`` ``tune_constraint`` matching; returns the best setting."""
    val = {d: tuples.filter((pl.col("split") == "val") & (pl.col("direction") == d)
                            & (pl.col("constraint") == cfg.tune_constraint)
                            & (pl.col("k") == cfg.tune_k)) for d in DIRECTIONS}
    if any(t.height == 0 for t in val.values()):
        raise ValueError(f"no val 1:{cfg.tune_k} {cfg.tune_constraint} tuples to tune on")
    grid = []
    voice_dims = sorted({min(d, reduced.voice.shape[1]) for d in cfg.voice_dims})
    face_dims = sorted({min(d, reduced.face.shape[1]) for d in cfg.face_dims})
    for vd, fd, ridge, comp, w in itertools.product(voice_dims, face_dims, cfg.ridges,
                                                    cfg.components, cfg.weights):
        if comp > min(vd, fd + reduced.face_attributes.shape[1]):
            continue
        space = fit_space(items, reduced, pairs, vd, fd, ridge, comp, w)
        grid.append({"voice_dims": vd, "face_dims": fd, "ridge": ridge, "components": comp,
                     "weight": w,
                     "val_acc": tune_accuracy(space, {d: _usable(t, space.index, d)
                                                         for d, t in val.items()})})
    best = max(grid, key=lambda g: g["val_acc"])  # first of equals: grid order breaks ties
    return best, grid


def identity_folds(identities: Sequence[str], folds: int, seed: int) -> list[set[str]]:
    """The distinct ``identities`` dealt into ``folds`` seeded folds of (nearly) equal size."""
    names = np.array(sorted(set(identities)))
    if len(names) < folds:
        raise ValueError(f"{len(names)} identities cannot fill {folds} cross-fitting folds")
    names = names[np.random.default_rng(seed).permutation(len(names))]
    return [set(names[f::folds].tolist()) for f in range(folds)]


def query_identity(items: dict[str, Items], tuples: pl.DataFrame) -> np.ndarray:
    """The identity of each tuple's query ``(n,)``."""
    out = np.empty(tuples.height, dtype=object)
    for direction in DIRECTIONS:
        rows = np.flatnonzero((tuples["direction"] == direction).to_numpy())
        q_mod = DIRECTIONS[direction][0]
        pos = items[q_mod].index()
        ids = tuples["query_id"].to_numpy()[rows]
        out[rows] = items[q_mod].identity[[pos[u] for u in ids]]
    return out.astype(str)


def crossfit_val(items: dict[str, Items], reduced: Reduced, pairs: tuple[np.ndarray, np.ndarray],
                 tuples: pl.DataFrame, cfg: BaselineConfig) -> dict[str, Any]:
    """Val matching accuracies, each fold's tuples scored with the setting tuned on the other
    folds' (by query identity): ``val_crossfit.<direction>.match.k<k>.<constraint>.acc``, and
    each fold's choice (``crossfit_selected``)."""
    val = tuples.filter(pl.col("split") == "val")
    index = {m: items[m].index() for m in MODALITIES}
    val = pl.concat([_usable(val.filter(pl.col("direction") == d), index, d) for d in DIRECTIONS])
    owner = query_identity(items, val)
    hits: dict[str, list[np.ndarray]] = {}
    chosen = []
    for fold in identity_folds(owner.tolist(), cfg.crossfit_folds, cfg.seed):
        inside = np.isin(owner, list(fold))
        best, _ = tune(items, reduced, pairs, val.filter(pl.Series(~inside)), cfg)
        chosen.append({**best, "scored_identities": len(fold)})
        space = fit_space(items, reduced, pairs, best["voice_dims"], best["face_dims"],
                          best["ridge"], best["components"], best["weight"])
        held = val.filter(pl.Series(inside))
        for (direction, constraint, k), group in held.group_by(["direction", "constraint", "k"]):
            key = f"val_crossfit.{direction}.match.k{k}.{constraint}.acc"
            scores = match_scores(space, group, direction)
            hits.setdefault(key, []).append(metrics.match_hits(scores, group["label"].to_numpy()))
    out: dict[str, Any] = {key: float(np.concatenate(h).mean()) for key, h in sorted(hits.items())}
    return {**out, "crossfit_selected": chosen}


def _ci(values: np.ndarray, clusters: np.ndarray, key: str, cfg: BaselineConfig,
        task: str) -> dict[str, Any]:
    """``key`` and its interval / count keys, named as the evaluate stage names them."""
    est = metrics.bootstrap_mean(values, clusters, n_resamples=cfg.resamples, seed=cfg.seed)
    return estimate_keys(key, est, COUNTS[task])


def evaluate_matching(space: Space, items: dict[str, Items], tuples: pl.DataFrame, split: str,
                      cfg: BaselineConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = tuples.filter(pl.col("split") == split)
    for (direction, constraint, k), group in sorted(rows.group_by(["direction", "constraint", "k"]),
                                                    key=lambda g: g[0]):
        group = _usable(group, space.index, direction)
        if group.height == 0:
            continue
        hits = metrics.match_hits(match_scores(space, group, direction), group["label"].to_numpy())
        q_mod = DIRECTIONS[direction][0]
        owner = items[q_mod].identity[space.rows(q_mod, group["query_id"].to_list())]
        out.update(_ci(hits, owner, f"{split}.{direction}.match.k{k}.{constraint}.acc", cfg, "match"))
    return out


def evaluate_pairs(space: Space, items: dict[str, Items], pairs: pl.DataFrame, split: str,
                   cfg: BaselineConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    rows = pairs.filter(pl.col("split") == split)
    for (direction, constraint), group in sorted(rows.group_by(["direction", "constraint"]),
                                                 key=lambda g: g[0]):
        q_mod, c_mod = DIRECTIONS[direction]
        q = space.get(q_mod, group["query_id"].to_list())
        c = space.get(c_mod, group["candidate_id"].to_list())
        scores, same = (q * c).sum(1), group["same"].to_numpy()
        owner = items[q_mod].identity[space.rows(q_mod, group["query_id"].to_list())]
        key = f"{split}.{direction}.verify.{constraint}"
        for name, stat in (("auc", metrics.auc_statistic), ("eer", metrics.eer_statistic)):
            est = metrics.cluster_bootstrap(stat, [scores, same], owner,
                                            n_resamples=cfg.resamples, seed=cfg.seed)
            out.update(estimate_keys(f"{key}.{name}", est, COUNTS["verify"]))
    return out


def evaluate_retrieval(space: Space, items: dict[str, Items], retrieval: pl.DataFrame, split: str,
                       cfg: BaselineConfig) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for row in retrieval.filter(pl.col("split") == split).iter_rows(named=True):
        direction = row["direction"]
        q_mod, c_mod = DIRECTIONS[direction]
        q_rows = space.rows(q_mod, row["query_ids"])
        g_rows = space.rows(c_mod, row["gallery_ids"])
        scores = getattr(space, q_mod)[q_rows] @ getattr(space, c_mod)[g_rows].T  # (Q, G)
        q_id, g_id = items[q_mod].identity[q_rows], items[c_mod].identity[g_rows]
        exclude = row["exclude_same_video"]
        groups = ({"query_group": items[q_mod].video[q_rows],
                   "gallery_group": items[c_mod].video[g_rows]} if exclude else {})
        result = metrics.retrieval(scores, q_id, g_id, **groups)
        for name, values in result.per_query.items():
            key = f"{split}.{direction}.retrieval.{'map' if name == 'ap' else name}"
            out.update(_ci(values[result.valid], q_id[result.valid], key, cfg, "retrieval"))
    return out


def run(paths: DataPaths, cfg: BaselineConfig) -> dict[str, Any]:
    """Fit, tune on val, score val and test; return the report section."""
    start = time.perf_counter()
    items = load_items(paths, cfg)
    reduced = reduce(items, cfg)
    pairs = training_pairs(items, cfg)
    matching = read_table(paths.tuples, "matching", SPLITS)
    best, grid = tune(items, reduced, pairs, matching, cfg)
    log.info("chosen on val: %s", best)
    space = fit_space(items, reduced, pairs, best["voice_dims"], best["face_dims"], best["ridge"],
                      best["components"], best["weight"])
    report: dict[str, Any] = crossfit_val(items, reduced, pairs, matching, cfg)
    pairs_table = read_table(paths.tuples, "pairs", SPLITS)
    retrieval = read_table(paths.tuples, "retrieval", SPLITS)
    for split in SPLITS:
        report.update(evaluate_matching(space, items, matching, split, cfg))
        report.update(evaluate_pairs(space, items, pairs_table, split, cfg))
        report.update(evaluate_retrieval(space, items, retrieval, split, cfg))
    top = sorted(grid, key=lambda g: -g["val_acc"])[:10]
    report.update({
        "selected": {**best, "selected_on": f"val 1:{cfg.tune_k} {cfg.tune_constraint} matching"},
        "tuning_top10": top, "grid_size": len(grid), "train_pairs": int(len(pairs[0])),
        "train_identities": int(len(set(items["voice"].identity[pairs[0]].tolist()))),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(cfg).items()},
        "data": str(paths.tuples.parent), "seconds": round(time.perf_counter() - start, 1)})
    return report


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="data root holding manifest/, features/ and tuples/")
    parser.add_argument("--out", type=Path, default=REPORT, help="report to merge into")
    parser.add_argument("--resamples", type=int, default=BaselineConfig.resamples)
    parser.add_argument("--seed", type=int, default=BaselineConfig.seed)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    cfg = BaselineConfig(resamples=args.resamples, seed=args.seed)
    report = run(DataPaths.under(args.data), cfg)
    update_report(SECTION, report, path=args.out)
    for key in sorted(k for k in report if k.endswith(".acc") and ".k2." in k):
        log.info("%s = %.4f", key, report[key])
    log.info("wrote section %r of %s", SECTION, args.out)


if __name__ == "__main__":
    main()
