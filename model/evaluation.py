"""The evaluation metric table: scores and tuple tables in, flat ``metrics.json`` keys out.

Pure functions (numpy and polars, no torch), shared by the ``evaluate`` stage, the inference
commands and the ablation report. :mod:`model.metrics` computes the single numbers; this module
names them, attaches the identity-level bootstrap interval and the counts behind each, and
formats the headline table.

Key scheme (README "Metrics", docs/evaluation.md)::

    <split>.<dir>[.<rule>].match.k<k>.<C>.acc            1:k matching, constraint C in U/G/N/GN
    <split>.<dir>[.<rule>].match.curve.k<k>.acc          1:k from the 1:K U tuples, k = 2..K
    <split>.<dir>[.<rule>].match.k2.U.strata.<s>.acc     1:2 U by the negatives' gender/nationality
    <split>.<dir>[.<rule>].verify.<C>.auc / .eer         verification, C in U/G
    <split>.<dir>[.<rule>].retrieval.map / .r1 / .r5 / .r10
    val.<dir>[.<rule>].verify.<C>.threshold / .eer       the val-chosen EER threshold

``<rule>`` is absent for the model's declared score (``model.score``) and ``head`` or ``cosine``
for each scoring rule. Every estimate ``K`` comes with ``K.ci_low``, ``K.ci_high`` (percentile
bootstrap resampling query identities), ``K.n_identities`` and ``K.n_tuples`` (matching),
``K.n_pairs`` (verification) or ``K.n_queries`` (retrieval).

The bootstrap of AUC and EER is vectorised here (:func:`bootstrap_verification`): a resample
that draws a cluster twice is the same as weighting its items by two, so every resample's ROC
comes from cumulative sums of weights over the items sorted once by score. It uses the draws of
:func:`model.metrics.cluster_bootstrap` (same seed, same resamples) and gives its intervals.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from model.metrics import (
    DEFAULT_LEVEL,
    DEFAULT_RESAMPLES,
    RETRIEVAL_KS,
    Estimate,
    RetrievalResult,
    bootstrap_mean,
    equal_error_rate,
    match_hits,
    percentile_interval,
    relation,
    retrieval,
    roc_auc,
    strata,
    stratified_accuracy,
)

__all__ = ["Bootstrap", "COUNTS", "RULES", "metric_key", "estimate_keys", "matching_metrics",
           "verification_metrics", "retrieval_metrics", "strata_metrics", "threshold_metrics",
           "bootstrap_verification", "cluster_weights", "roc_points", "format_estimate",
           "headline_table", "detail_table", "clean"]

RULES = ("head", "cosine")  # scoring rules reported separately; the model's own has no segment
COUNTS = {"match": "n_tuples", "verify": "n_pairs", "retrieval": "n_queries"}
ESTIMATE_SUFFIXES = ("ci_low", "ci_high", "n_identities", *COUNTS.values())


@dataclass(frozen=True)
class Bootstrap:
    """Cluster-bootstrap settings: resamples, seed and interval level."""

    n_resamples: int = DEFAULT_RESAMPLES
    seed: int = 0
    level: float = DEFAULT_LEVEL


def metric_key(split: str, direction: str, rule: str | None, *parts: str) -> str:
    """``<split>.<dir>[.<rule>].<parts...>``; ``rule`` ``None`` (or ``"model"``) is the model's
    declared score, which has no rule segment."""
    head = [split, direction] + ([] if rule in (None, "model") else [rule])
    return ".".join([*head, *parts])


def estimate_keys(key: str, est: Estimate, count: str) -> dict[str, float | int]:
    """``key``, ``key.ci_low``, ``key.ci_high``, ``key.n_identities``, ``key.<count>``."""
    return {key: est.point, f"{key}.ci_low": est.ci_low, f"{key}.ci_high": est.ci_high,
            f"{key}.n_identities": est.n_identities, f"{key}.{count}": est.n_items}


# ---- matching ----------------------------------------------------------------------------------

def matching_metrics(key: str, scores: np.ndarray, labels: np.ndarray, clusters: np.ndarray,
                     boot: Bootstrap = Bootstrap()) -> tuple[dict[str, float | int], np.ndarray]:
    """1:k accuracy of ``scores (n, k)`` with its identity-bootstrap interval, keyed ``key``
    (e.g. ``test.v2f.match.k2.U.acc``); also returns the per-tuple hits ``(n,)``."""
    hits = match_hits(scores, labels)
    est = bootstrap_mean(hits, clusters, n_resamples=boot.n_resamples, seed=boot.seed,
                         level=boot.level)
    return estimate_keys(key, est, COUNTS["match"]), hits


def strata_metrics(prefix: str, hits: np.ndarray, labels: np.ndarray,
                   query_gender: np.ndarray, candidate_gender: np.ndarray,
                   query_nation: np.ndarray, candidate_nation: np.ndarray,
                   clusters: np.ndarray, boot: Bootstrap = Bootstrap()) -> dict[str, float | int]:
    """Accuracy within each stratum of whether the negatives share the query identity's gender
    and nationality (:func:`model.metrics.strata`): ``<prefix>.<stratum>.acc`` and its interval
    and counts, e.g. ``test.v2f.match.k2.U.strata.gender_same_nationality_diff.acc``."""
    stratum = strata(relation(query_gender, candidate_gender, labels),
                     relation(query_nation, candidate_nation, labels))
    out: dict[str, float | int] = {}
    for name, est in stratified_accuracy(hits, stratum, clusters, n_resamples=boot.n_resamples,
                                         seed=boot.seed, level=boot.level).items():
        out.update(estimate_keys(f"{prefix}.{name}.acc", est, COUNTS["match"]))
    return out


# ---- verification ------------------------------------------------------------------------------

def cluster_weights(clusters: np.ndarray, n_resamples: int, seed: int
                    ) -> tuple[np.ndarray, np.ndarray]:
    """``(multiplicity (B, C), codes (n,))``: how often each cluster is drawn in each resample,
    with the draws of :func:`model.metrics.cluster_bootstrap` (clusters sorted, then
    ``default_rng(seed).integers(0, C, (B, C))``), and each item's cluster index."""
    clusters = np.asarray(clusters)
    if clusters.ndim != 1 or clusters.size == 0:
        raise ValueError("clusters must be a non-empty 1-D array")
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    _, codes = np.unique(clusters, return_inverse=True)
    codes = codes.ravel()
    n_clusters = int(codes.max()) + 1
    draws = np.random.default_rng(seed).integers(0, n_clusters, size=(n_resamples, n_clusters))
    multiplicity = np.zeros((n_resamples, n_clusters))
    np.add.at(multiplicity, (np.arange(n_resamples)[:, None], draws), 1.0)  # (B, C)
    return multiplicity, codes


def _weighted_auc_eer(pos: np.ndarray, neg: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """AUC and EER per row from positive / negative weights ``(B, U)`` per distinct score,
    scores in descending order (ties share a column)."""
    p_total, n_total = pos.sum(axis=1), neg.sum(axis=1)  # (B,)
    valid = (p_total > 0) & (n_total > 0)
    p_safe, n_safe = np.where(valid, p_total, 1.0), np.where(valid, n_total, 1.0)
    neg_below = n_total[:, None] - np.cumsum(neg, axis=1)  # negatives scored strictly lower
    auc = (pos * (neg_below + 0.5 * neg)).sum(axis=1) / (p_safe * n_safe)
    # ROC from the "reject everything" point: FNR - FPR falls from +1 to -1
    tpr = np.cumsum(pos, axis=1) / p_safe[:, None]
    fpr = np.cumsum(neg, axis=1) / n_safe[:, None]
    b = pos.shape[0]
    tpr = np.concatenate([np.zeros((b, 1)), tpr], axis=1)  # (B, U + 1)
    fpr = np.concatenate([np.zeros((b, 1)), fpr], axis=1)
    gap = (1.0 - tpr) - fpr
    i = np.argmax(gap <= 0.0, axis=1)  # the first point at or past the crossing (i >= 1)
    rows = np.arange(b)
    g0, g1 = gap[rows, i - 1], gap[rows, i]
    f0, f1 = fpr[rows, i - 1], fpr[rows, i]
    t = np.divide(g0, g0 - g1, out=np.zeros(b), where=g1 != 0.0)
    eer = np.where(g1 == 0.0, f1, f0 + t * (f1 - f0))
    return np.where(valid, auc, np.nan), np.where(valid, eer, np.nan)


def bootstrap_verification(scores: np.ndarray, same: np.ndarray, clusters: np.ndarray,
                           boot: Bootstrap = Bootstrap(), chunk_cells: int = 4_000_000
                           ) -> dict[str, Estimate]:
    """``{"auc": Estimate, "eer": Estimate}``: ROC AUC and EER with their cluster-bootstrap
    intervals (the resamples of :func:`model.metrics.cluster_bootstrap` for the same seed).

    Resamples are processed ``chunk_cells // distinct scores`` at a time, so memory stays
    bounded for long pair lists.
    """
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same).astype(bool).ravel()
    clusters = np.asarray(clusters)
    if not 0.0 < boot.level < 1.0:
        raise ValueError("level must be in (0, 1)")
    point_auc = roc_auc(scores, same)  # validates scores and labels
    point_eer = equal_error_rate(scores, same)[0]
    multiplicity, codes = cluster_weights(clusters, boot.n_resamples, boot.seed)
    unique, column = np.unique(-scores, return_inverse=True)  # descending scores, ties together
    column = column.ravel()
    n_clusters, n_cols = multiplicity.shape[1], unique.size
    # per (cluster, distinct score): positive and negative item counts
    pos_c = np.zeros((n_clusters, n_cols))
    neg_c = np.zeros((n_clusters, n_cols))
    np.add.at(pos_c, (codes[same], column[same]), 1.0)
    np.add.at(neg_c, (codes[~same], column[~same]), 1.0)
    step = max(1, chunk_cells // max(n_cols, 1))
    aucs, eers = [], []
    for start in range(0, boot.n_resamples, step):
        m = multiplicity[start:start + step]  # (b, C)
        auc, eer = _weighted_auc_eer(m @ pos_c, m @ neg_c)  # (b, C) @ (C, U) -> (b, U)
        aucs.append(auc)
        eers.append(eer)
    out = {}
    for name, point, stats in (("auc", point_auc, np.concatenate(aucs)),
                               ("eer", point_eer, np.concatenate(eers))):
        lo, hi, invalid = percentile_interval(stats, boot.level)
        out[name] = Estimate(float(point), lo, hi, n_clusters, int(scores.size),
                             boot.n_resamples, boot.level, invalid)
    return out


def verification_metrics(prefix: str, scores: np.ndarray, same: np.ndarray,
                         clusters: np.ndarray, boot: Bootstrap = Bootstrap()
                         ) -> dict[str, float | int]:
    """``<prefix>.auc`` and ``<prefix>.eer`` (e.g. ``test.v2f.verify.U``) with intervals and
    counts (``n_pairs``, ``n_identities`` of the query side)."""
    out: dict[str, float | int] = {}
    for name, est in bootstrap_verification(scores, same, clusters, boot).items():
        out.update(estimate_keys(f"{prefix}.{name}", est, COUNTS["verify"]))
    return out


def threshold_metrics(prefix: str, scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """The EER operating point of a (val) pair list: ``<prefix>.threshold`` (accept a pair when
    its score is ``>=`` it) and ``<prefix>.eer``."""
    eer, threshold = equal_error_rate(scores, same)
    return {f"{prefix}.threshold": threshold, f"{prefix}.eer": eer}


def roc_points(scores: np.ndarray, same: np.ndarray) -> dict[str, np.ndarray]:
    """scikit-learn's ROC (``fpr``, ``tpr``, ``threshold``), collinear points dropped; the first
    point's infinite threshold is written as the highest score (JSON and CSV hold no inf)."""
    from sklearn.metrics import roc_curve

    scores = np.asarray(scores, dtype=np.float64)
    fpr, tpr, thresholds = roc_curve(np.asarray(same, dtype=bool), scores)
    thresholds = np.where(np.isfinite(thresholds), thresholds, scores.max())
    return {"fpr": fpr, "tpr": tpr, "threshold": thresholds}


# ---- retrieval -----------------------------------------------------------------------------------

def retrieval_metrics(prefix: str, scores: np.ndarray, query_identity: np.ndarray,
                      gallery_identity: np.ndarray, *, query_group: np.ndarray | None = None,
                      gallery_group: np.ndarray | None = None, boot: Bootstrap = Bootstrap(),
                      ks: Sequence[int] = RETRIEVAL_KS) -> tuple[dict[str, float | int], int]:
    """``<prefix>.map`` and ``<prefix>.r<k>`` over the full gallery ``scores (Q, G)``, gallery
    items of the query's group (its video) left out when groups are given; intervals resample
    query identities. Returns the keys and the number of queries left without a relevant item
    (excluded from every mean)."""
    result = retrieval(scores, query_identity, gallery_identity, query_group=query_group,
                       gallery_group=gallery_group, ks=ks)
    return retrieval_estimates(prefix, result, query_identity, boot=boot, ks=ks)


def retrieval_estimates(prefix: str, result: RetrievalResult, query_identity: np.ndarray, *,
                        boot: Bootstrap = Bootstrap(), ks: Sequence[int] = RETRIEVAL_KS
                        ) -> tuple[dict[str, float | int], int]:
    """The keys of :func:`retrieval_metrics` from per-query values (``result``, e.g. merged
    from queries with galleries of their own); intervals resample query identities."""
    valid = result.valid
    if not valid.any():
        raise ValueError(f"{prefix}: no query has a relevant gallery item")
    clusters = np.asarray(query_identity)[valid]
    out: dict[str, float | int] = {}
    for name, values in (("map", result.per_query["ap"]),
                         *((f"r{k}", result.per_query[f"r{k}"]) for k in ks)):
        est = bootstrap_mean(values[valid], clusters, n_resamples=boot.n_resamples,
                             seed=boot.seed, level=boot.level)
        out.update(estimate_keys(f"{prefix}.{name}", est, COUNTS["retrieval"]))
    return out, int((~valid).sum())


# ---- formatting ----------------------------------------------------------------------------------

def clean(metrics: Mapping[str, float | int], digits: int = 6) -> dict[str, float | int | None]:
    """JSON-ready metrics, keys sorted: floats rounded, NaN and infinities as ``None``."""
    out: dict[str, float | int | None] = {}
    for key in sorted(metrics):
        value = metrics[key]
        if isinstance(value, (bool, np.bool_)):
            out[key] = int(value)
        elif isinstance(value, (int, np.integer)):
            out[key] = int(value)
        else:
            value = float(value)
            out[key] = round(value, digits) if math.isfinite(value) else None
    return out


def format_estimate(metrics: Mapping[str, float | int | None], key: str, *, scale: float = 100.0,
                    digits: int = 1) -> str:
    """``"93.1 [91.0, 95.0]"`` for ``key`` and its interval (``-`` when absent)."""
    value = metrics.get(key)
    if value is None:
        return "-"
    lo, hi = metrics.get(f"{key}.ci_low"), metrics.get(f"{key}.ci_high")
    text = f"{value * scale:.{digits}f}"
    if lo is not None and hi is not None:
        text += f" [{lo * scale:.{digits}f}, {hi * scale:.{digits}f}]"
    return text


def _rule_label(rule: str, model_rule: str) -> str:
    return f"{rule} (model)" if rule == model_rule else rule


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def headline_table(metrics: Mapping[str, float | int | None], splits: Sequence[str],
                   model_rule: str, *, multiway_k: int = 10, rules: Sequence[str] = RULES,
                   directions: Sequence[str] = ("v2f", "f2v")) -> str:
    """P2VANet Table I's layout: one row per split and scoring rule; Binary (1:2) and Multi-way
    (1:``multiway_k``) accuracy and verification AUC, V-F then F-V, in % with 95% intervals
    (unconstrained lists)."""
    names = {"v2f": "V-F", "f2v": "F-V"}
    header = ["Split", "Score"]
    for title in ("Binary (ACC)", "Multi-way (ACC)", "Verification (AUC)"):
        header += [f"{title} {names[d]}" for d in directions]
    rows = []
    for split in splits:
        for rule in rules:
            row = [split, _rule_label(rule, model_rule)]
            for parts in (("match", "k2", "U", "acc"), ("match", f"k{multiway_k}", "U", "acc"),
                          ("verify", "U", "auc")):
                row += [format_estimate(metrics, metric_key(split, d, rule, *parts))
                        for d in directions]
            rows.append(row)
    return _table(header, rows)


def detail_table(metrics: Mapping[str, float | int | None], splits: Sequence[str],
                 model_rule: str, columns: Sequence[tuple[str, tuple[str, ...]]], *,
                 rules: Sequence[str] = RULES, directions: Sequence[str] = ("v2f", "f2v")) -> str:
    """Rows split x direction x rule; ``columns`` are ``(title, key parts)`` pairs, e.g.
    ``("mAP", ("retrieval", "map"))``; values in % with 95% intervals."""
    header = ["Split", "Direction", "Score", *(title for title, _ in columns)]
    rows = []
    for split in splits:
        for d in directions:
            for rule in rules:
                rows.append([split, d, _rule_label(rule, model_rule),
                             *(format_estimate(metrics, metric_key(split, d, rule, *parts))
                               for _, parts in columns)])
    return _table(header, rows)
