"""Evaluation metrics for voice-face matching, verification and retrieval (numpy in, floats out).

Everything here works on score arrays that a model (or any scorer) has already produced; no torch.
scikit-learn provides ROC, AUC and the ROC points; this module adds what no maintained library
provides: 1:k matching accuracy, the equal error rate interpolated on the ROC, R@k and per-query
average precision over a gallery with per-query exclusions, and a cluster (identity) bootstrap.

Conventions
- Scores: higher means "more likely the same identity". They must be finite.
- Matching: ``scores`` is ``(n, k)`` (one row per tuple, one column per candidate) and ``labels``
  ``(n,)`` the position of the positive. A row's hit is ``1 / t`` when the positive is among the
  ``t`` candidates tied at the row's maximum score, else 0: the expected accuracy of breaking
  ties uniformly at random. A scorer that gives every candidate the same score therefore gets
  exactly chance, ``1 / k``, whatever the positive's position.
- Verification: ``same`` is ``(n,)`` bool. EER is read off scikit-learn's ROC, linearly
  interpolated between the two ROC points where ``FNR - FPR`` changes sign.
- Retrieval: ``R@k`` is the fraction of queries with at least one relevant gallery item in the
  top ``k`` (ties at the k-th score broken uniformly at random, in expectation), and mAP is the
  mean over queries of scikit-learn's average precision (ties form one threshold). Relevant
  means same identity; excluded items (e.g. the query's own video) are removed from that
  query's gallery.
- Uncertainty: :func:`cluster_bootstrap` resamples clusters (query identities), not items:
  items of one identity are correlated, so an item-level bootstrap is too narrow.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

Statistic = Callable[..., float]

DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
RETRIEVAL_KS = (1, 5, 10)


def _mean(values: np.ndarray) -> float:
    """Correctly rounded mean, so e.g. fifty hits of 1/10 average to exactly 0.1."""
    return math.fsum(values.tolist()) / values.size


# ---- matching --------------------------------------------------------------------------------

def _finite_2d(scores: np.ndarray, name: str = "scores") -> np.ndarray:
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2:
        raise ValueError(f"{name} must be 2-D, got shape {scores.shape}")
    if not np.isfinite(scores).all():
        raise ValueError(f"{name} contain {int((~np.isfinite(scores)).sum())} non-finite values")
    return scores


def _labels(labels: np.ndarray, n: int, k: int) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer with shape ({n},), got {labels.dtype} {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= k):
        raise ValueError(f"labels must lie in 0..{k - 1}")
    return labels.astype(np.int64)


def match_hits(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per-tuple hit in [0, 1]: ``1 / t`` if the positive is among the ``t`` top-tied candidates."""
    scores = _finite_2d(scores)
    n, k = scores.shape
    labels = _labels(labels, n, k)
    at_max = scores == scores.max(axis=1, keepdims=True) if n else np.zeros((0, k), bool)  # (n, k)
    positive_on_top = at_max[np.arange(n), labels]
    return np.where(positive_on_top, 1.0 / np.maximum(at_max.sum(axis=1), 1), 0.0)


def match_accuracy(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mean of :func:`match_hits`: 1:k matching accuracy with fractional ties."""
    hits = match_hits(scores, labels)
    if hits.size == 0:
        raise ValueError("no tuples")
    return _mean(hits)


# ---- verification ----------------------------------------------------------------------------

def _pairs(scores: np.ndarray, same: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    scores = np.asarray(scores, dtype=np.float64).ravel()
    same = np.asarray(same).ravel()
    if same.dtype != bool:
        if not np.isin(same, (0, 1)).all():
            raise ValueError("same must be boolean or 0/1")
        same = same.astype(bool)
    if scores.shape != same.shape:
        raise ValueError(f"scores {scores.shape} and same {same.shape} differ in length")
    if not np.isfinite(scores).all():
        raise ValueError("scores contain non-finite values")
    if same.all() or not same.any():
        raise ValueError("verification needs both same and different pairs")
    return scores, same


def roc_auc(scores: np.ndarray, same: np.ndarray) -> float:
    """Area under the ROC curve (scikit-learn)."""
    from sklearn.metrics import roc_auc_score

    scores, same = _pairs(scores, same)
    return float(roc_auc_score(same, scores))


def equal_error_rate(scores: np.ndarray, same: np.ndarray) -> tuple[float, float]:
    """``(eer, threshold)``: where FPR = FNR on the ROC, interpolated between ROC points.

    The threshold is interpolated the same way (accept a pair when ``score >= threshold``).
    """
    from sklearn.metrics import roc_curve

    scores, same = _pairs(scores, same)
    fpr, tpr, thresholds = roc_curve(same, scores, drop_intermediate=False)
    gap = (1.0 - tpr) - fpr  # FNR - FPR: +1 at the first point (reject all), -1 at the last
    i = int(np.flatnonzero(gap <= 0.0)[0])
    if gap[i] == 0.0:
        return float(fpr[i]), float(thresholds[i])
    t = gap[i - 1] / (gap[i - 1] - gap[i])
    eer = fpr[i - 1] + t * (fpr[i] - fpr[i - 1])
    lo, hi = thresholds[i - 1], thresholds[i]
    threshold = hi if not np.isfinite(lo) else lo + t * (hi - lo)
    return float(eer), float(threshold)


def verification(scores: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """``{"auc", "eer", "threshold"}`` of one list of scored pairs."""
    eer, threshold = equal_error_rate(scores, same)
    return {"auc": roc_auc(scores, same), "eer": eer, "threshold": threshold}


def auc_statistic(scores: np.ndarray, same: np.ndarray) -> float:
    """:func:`roc_auc` for bootstrap resamples: NaN when a resample has only one class."""
    same = np.asarray(same, dtype=bool)
    return roc_auc(scores, same) if 0 < same.sum() < same.size else math.nan


def eer_statistic(scores: np.ndarray, same: np.ndarray) -> float:
    """:func:`equal_error_rate` (the EER only) for bootstrap resamples; NaN on one class."""
    same = np.asarray(same, dtype=bool)
    return equal_error_rate(scores, same)[0] if 0 < same.sum() < same.size else math.nan


# ---- retrieval -------------------------------------------------------------------------------

def average_precision(scores: np.ndarray, relevant: np.ndarray) -> float:
    """scikit-learn's average precision for one ranked list (tied scores form one threshold)."""
    scores = np.asarray(scores, dtype=np.float64)
    relevant = np.asarray(relevant, dtype=bool)
    order = np.argsort(-scores, kind="stable")
    return _average_precision_sorted(scores[order], relevant[order])


def _average_precision_sorted(s: np.ndarray, rel: np.ndarray) -> float:
    n_rel = int(rel.sum())
    if n_rel == 0:
        return math.nan
    last = np.flatnonzero(np.r_[s[1:] != s[:-1], True])  # last index of each tie group
    tp = np.cumsum(rel)[last]
    precision = tp / (last + 1.0)
    recall = tp / n_rel
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def _hit_at_k_sorted(s: np.ndarray, rel: np.ndarray, k: int) -> float:
    """P(a relevant item is in the top ``k``) with ties at the k-th score broken at random."""
    if not rel.any():
        return math.nan
    if k >= s.size:
        return 1.0
    kth = s[k - 1]
    above = s > kth
    if rel[above].any():
        return 1.0
    tied = s == kth
    t, t_rel, m = int(tied.sum()), int(rel[tied].sum()), k - int(above.sum())
    miss = 1.0
    for j in range(m):  # probability that m random picks among the tied miss every relevant one
        miss *= max(t - t_rel - j, 0) / (t - j)
    return 1.0 - miss


@dataclass(frozen=True)
class RetrievalResult:
    """Per-query values: ``per_query["r1"]`` ... and ``per_query["ap"]``; ``valid`` marks queries
    with at least one relevant gallery item (the others are NaN and belong in no mean)."""

    per_query: dict[str, np.ndarray]
    valid: np.ndarray
    gallery_sizes: np.ndarray

    def means(self) -> dict[str, float]:
        """``{"r1": ..., "r5": ..., "r10": ..., "map": ...}`` over the valid queries."""
        if not self.valid.any():
            raise ValueError("no query has a relevant gallery item")
        return {("map" if key == "ap" else key): _mean(values[self.valid])
                for key, values in self.per_query.items()}


def merge_retrieval(results: Sequence[RetrievalResult]) -> RetrievalResult:
    """One result holding the queries of several (each query against its own gallery)."""
    if not results:
        raise ValueError("nothing to merge")
    keys = results[0].per_query.keys()
    return RetrievalResult({k: np.concatenate([r.per_query[k] for r in results]) for k in keys},
                           np.concatenate([r.valid for r in results]),
                           np.concatenate([r.gallery_sizes for r in results]))


def retrieval(scores: np.ndarray, query_identity: np.ndarray, gallery_identity: np.ndarray, *,
              exclude: np.ndarray | None = None, query_group: np.ndarray | None = None,
              gallery_group: np.ndarray | None = None,
              ks: Sequence[int] = RETRIEVAL_KS) -> RetrievalResult:
    """R@k and average precision of every query against the full gallery.

    ``scores`` is ``(Q, G)``. Gallery item ``j`` is relevant to query ``i`` when
    ``gallery_identity[j] == query_identity[i]``. Items are removed from a query's gallery when
    ``exclude[i, j]`` is true (bool ``(Q, G)``) or when ``gallery_group[j] == query_group[i]``
    (the same-video rule with video ids, without a ``(Q, G)`` mask).
    """
    scores = _finite_2d(scores)
    q, g = scores.shape
    query_identity, gallery_identity = np.asarray(query_identity), np.asarray(gallery_identity)
    if query_identity.shape != (q,) or gallery_identity.shape != (g,):
        raise ValueError(f"identities must have shapes ({q},) and ({g},)")
    if exclude is not None and np.asarray(exclude).shape != (q, g):
        raise ValueError(f"exclude must have shape ({q}, {g})")
    if (query_group is None) != (gallery_group is None):
        raise ValueError("give both query_group and gallery_group, or neither")
    if any(k < 1 for k in ks):
        raise ValueError("ks must be >= 1")
    out = {f"r{k}": np.full(q, math.nan) for k in ks} | {"ap": np.full(q, math.nan)}
    sizes = np.zeros(q, dtype=np.int64)
    for i in range(q):
        keep = np.ones(g, dtype=bool)
        if exclude is not None:
            keep &= ~np.asarray(exclude[i], dtype=bool)
        if query_group is not None:
            keep &= np.asarray(gallery_group) != np.asarray(query_group)[i]
        s, rel = scores[i, keep], gallery_identity[keep] == query_identity[i]
        sizes[i] = s.size
        if not rel.any():
            continue
        order = np.argsort(-s, kind="stable")
        s, rel = s[order], rel[order]
        for k in ks:
            out[f"r{k}"][i] = _hit_at_k_sorted(s, rel, k)
        out["ap"][i] = _average_precision_sorted(s, rel)
    valid = np.isfinite(out["ap"])
    return RetrievalResult(per_query=out, valid=valid, gallery_sizes=sizes)


# ---- cluster bootstrap ----------------------------------------------------------------------

@dataclass(frozen=True)
class Estimate:
    """A point estimate with its percentile bootstrap interval and what it rests on."""

    point: float
    ci_low: float
    ci_high: float
    n_identities: int
    n_items: int
    n_resamples: int
    level: float
    n_invalid: int = 0  # resamples whose statistic was undefined (e.g. AUC on one class)

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)

    def flat(self, key: str) -> dict[str, float | int]:
        """Flat metrics.json keys: ``key``, ``key.ci_low``, ``key.ci_high``, ``key.n_identities``,
        ``key.n_items``."""
        return {key: self.point, f"{key}.ci_low": self.ci_low, f"{key}.ci_high": self.ci_high,
                f"{key}.n_identities": self.n_identities, f"{key}.n_items": self.n_items}


def _cluster_codes(clusters: np.ndarray, n: int) -> tuple[np.ndarray, int]:
    clusters = np.asarray(clusters)
    if clusters.shape != (n,):
        raise ValueError(f"clusters must have shape ({n},), got {clusters.shape}")
    if n == 0:
        raise ValueError("no items to bootstrap")
    _, codes = np.unique(clusters, return_inverse=True)  # sorted: independent of item order
    codes = codes.ravel()
    return codes, int(codes.max()) + 1


def _draws(n_clusters: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(n_resamples, n_clusters)`` cluster indices drawn with replacement."""
    if n_resamples < 1:
        raise ValueError("n_resamples must be >= 1")
    return np.random.default_rng(seed).integers(0, n_clusters, size=(n_resamples, n_clusters))


def percentile_interval(stats: np.ndarray, level: float) -> tuple[float, float, int]:
    """``(low, high, n_invalid)``: the percentile interval of the finite resampled ``stats``."""
    if not 0.0 < level < 1.0:
        raise ValueError("level must be in (0, 1)")
    finite = stats[np.isfinite(stats)]
    invalid = int(stats.size - finite.size)
    if finite.size == 0:
        return math.nan, math.nan, invalid
    lo, hi = np.percentile(finite, [50.0 * (1.0 - level), 50.0 * (1.0 + level)])
    return float(lo), float(hi), invalid


def _arrays(arrays: Sequence[np.ndarray] | np.ndarray) -> list[np.ndarray]:
    if isinstance(arrays, np.ndarray):
        arrays = [arrays]
    out = [np.asarray(a) for a in arrays]
    n = len(out[0]) if out else 0
    if not out or any(len(a) != n for a in out):
        raise ValueError("per-item arrays must be non-empty and of equal length")
    return out


def cluster_bootstrap(statistic: Statistic, arrays: Sequence[np.ndarray] | np.ndarray,
                      clusters: np.ndarray, *, n_resamples: int = DEFAULT_RESAMPLES,
                      seed: int = 0, level: float = DEFAULT_LEVEL) -> Estimate:
    """Percentile bootstrap of ``statistic(*arrays)`` resampling whole clusters with replacement.

    ``arrays`` are per-item arrays (first axis = items); ``clusters`` gives each item's cluster
    (the query identity). Each resample draws as many clusters as there are, with replacement,
    and evaluates ``statistic`` on all items of the drawn clusters (a cluster drawn twice counts
    twice). Deterministic for a ``seed``; a statistic may return NaN for an undefined resample,
    which is left out and counted in ``n_invalid``.
    """
    arrays = _arrays(arrays)
    codes, n_clusters = _cluster_codes(clusters, len(arrays[0]))
    order = np.argsort(codes, kind="stable")
    members = np.split(order, np.cumsum(np.bincount(codes, minlength=n_clusters))[:-1])
    point = float(statistic(*arrays))
    stats = np.empty(n_resamples)
    for b, draw in enumerate(_draws(n_clusters, n_resamples, seed)):
        idx = np.concatenate([members[c] for c in draw])
        stats[b] = statistic(*(a[idx] for a in arrays))
    lo, hi, invalid = percentile_interval(stats, level)
    return Estimate(point, lo, hi, n_clusters, len(arrays[0]), n_resamples, level, invalid)


def bootstrap_mean(values: np.ndarray, clusters: np.ndarray, *,
                   n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                   level: float = DEFAULT_LEVEL) -> Estimate:
    """:func:`cluster_bootstrap` of the item mean, vectorized (same resamples for a seed).

    For accuracy (per-tuple hits), R@k (per-query hits) and mAP (per-query AP).
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or not np.isfinite(values).all():
        raise ValueError("values must be a finite 1-D array (drop invalid queries first)")
    codes, n_clusters = _cluster_codes(clusters, values.size)
    sums = np.bincount(codes, weights=values, minlength=n_clusters)
    counts = np.bincount(codes, minlength=n_clusters).astype(np.float64)
    draws = _draws(n_clusters, n_resamples, seed)
    multiplicity = np.zeros((n_resamples, n_clusters))
    np.add.at(multiplicity, (np.arange(n_resamples)[:, None], draws), 1.0)  # (B, C) draw counts
    stats = (multiplicity @ sums) / (multiplicity @ counts)
    lo, hi, invalid = percentile_interval(stats, level)
    return Estimate(_mean(values), lo, hi, n_clusters, values.size, n_resamples, level,
                    invalid)


# ---- stratified accuracy --------------------------------------------------------------------

def _known(values: np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=object)
    return np.array([v is not None and v == v and str(v) != "" for v in values.ravel()],
                    dtype=bool).reshape(values.shape)


def relation(query_values: np.ndarray, candidate_values: np.ndarray,
             labels: np.ndarray) -> np.ndarray:
    """Whether a tuple's negatives share the query's attribute value (e.g. gender).

    ``query_values`` ``(n,)`` and ``candidate_values`` ``(n, k)`` hold the attribute of the
    query's identity and of each candidate's identity. Returns ``(n,)`` strings: ``same`` (every
    negative shares it), ``diff`` (none does), ``mixed``, or ``unknown`` (a value is missing).
    """
    query_values = np.asarray(query_values, dtype=object)
    candidate_values = np.asarray(candidate_values, dtype=object)
    n, k = candidate_values.shape
    if k < 2:
        raise ValueError("tuples need at least one negative")
    labels = _labels(labels, n, k)
    negative = np.ones((n, k), dtype=bool)
    negative[np.arange(n), labels] = False
    negatives = candidate_values[negative].reshape(n, k - 1)  # (n, k - 1)
    equal = negatives == query_values[:, None]
    known = _known(query_values) & _known(negatives).all(axis=1)
    out = np.where(equal.all(axis=1), "same", np.where(equal.any(axis=1), "mixed", "diff"))
    return np.where(known, out, "unknown").astype(object)


def strata(gender: np.ndarray, nationality: np.ndarray) -> np.ndarray:
    """Stratum names from two :func:`relation` results, e.g. ``gender_same_nationality_diff``."""
    return np.array([f"gender_{g}_nationality_{n}" for g, n in zip(gender, nationality, strict=True)],
                    dtype=object)


def stratified_accuracy(hits: np.ndarray, stratum: np.ndarray, clusters: np.ndarray, *,
                        n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                        level: float = DEFAULT_LEVEL) -> dict[str, Estimate]:
    """Accuracy with an identity-bootstrap interval within each stratum (sorted by name)."""
    hits, stratum, clusters = np.asarray(hits, float), np.asarray(stratum), np.asarray(clusters)
    if not hits.shape == stratum.shape == clusters.shape:
        raise ValueError("hits, stratum and clusters must have the same shape")
    return {str(name): bootstrap_mean(hits[stratum == name], clusters[stratum == name],
                                      n_resamples=n_resamples, seed=seed, level=level)
            for name in sorted(set(stratum.tolist()))}


def flatten(estimates: Mapping[str, Estimate]) -> dict[str, float | int]:
    """Merge several :meth:`Estimate.flat` dicts: ``{key: Estimate}`` -> flat metrics keys."""
    out: dict[str, float | int] = {}
    for key, estimate in estimates.items():
        out.update(estimate.flat(key))
    return out
