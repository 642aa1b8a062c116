"""A linear scoring back-end on the network's embeddings: correlation-weighted ridge CCA.

Not in the papers (docs/model.md, "A CCA back-end on the embeddings"). Before each validation,
the 128-d voice and face embeddings of the train items are related by a ridge-regularised
canonical correlation analysis fitted on cross-video (voice, face) pairs of one identity; each
modality's embedding is then projected onto the canonical directions and each direction is
scaled by its canonical correlation, and the ``cosine`` score is taken in that space. Cosine on
the raw embeddings weighs every direction by its variance, shared or not; the back-end weighs
each by how well the other modality predicts it.
The network and its losses are unchanged: the back-end holds buffers only, no parameters, and
is fitted on train-split embeddings only (:func:`fit_backend` in the trainer, before each
validation), so val, test and seen_heard never shape it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.common.directions import MODALITIES

log = logging.getLogger(__name__)

__all__ = ["CCA", "PairMoments", "CrossVideoGroups", "ridge_cca", "cca_from_moments", "cross_video_moments",
           "CCABackend", "cross_video_pairs", "cross_video_pair_count", "BACKENDS", "MIN_PAIRS"]

BACKENDS = ("none", "cca")
MIN_PAIRS = 2  # fewer paired rows leave no covariance to fit


@dataclass
class CCA:
    """Canonical directions: ``(x - mean_x) @ a`` and ``(y - mean_y) @ b``."""

    mean_x: np.ndarray
    a: np.ndarray
    mean_y: np.ndarray
    b: np.ndarray
    correlations: np.ndarray

    def project_x(self, x: np.ndarray) -> np.ndarray:
        return (x - self.mean_x) @ self.a

    def project_y(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean_y) @ self.b


def _inv_sqrt(c: np.ndarray) -> np.ndarray:
    w, u = np.linalg.eigh(c)
    return (u / np.sqrt(w)) @ u.T


def ridge_cca(x: np.ndarray, y: np.ndarray, ridge: float, n_components: int) -> CCA:
    """Ridge CCA of paired rows ``x (n, p)``, ``y (n, q)``: SVD of
    ``(C_xx + r I)^-1/2 C_xy (C_yy + r I)^-1/2``, keeping ``n_components`` directions."""
    mx, my = x.mean(0), y.mean(0)
    xc, yc = x - mx, y - my
    n = len(x)
    return cca_from_moments(PairMoments(mx, my, xc.T @ xc / n, yc.T @ yc / n, xc.T @ yc / n, n),
                            ridge, n_components)


@dataclass
class PairMoments:
    """Means and (cross-)covariances of the paired rows ``(x_i, y_i)``, ``n`` pairs."""

    mean_x: np.ndarray  # (p,)
    mean_y: np.ndarray  # (q,)
    cov_xx: np.ndarray  # (p, p)
    cov_yy: np.ndarray  # (q, q)
    cov_xy: np.ndarray  # (p, q)
    n: int


def cca_from_moments(m: PairMoments, ridge: float, n_components: int) -> CCA:
    """:func:`ridge_cca` from the pairs' moments."""
    wx = _inv_sqrt(m.cov_xx + ridge * np.eye(len(m.mean_x)))
    wy = _inv_sqrt(m.cov_yy + ridge * np.eye(len(m.mean_y)))
    u, s, vt = np.linalg.svd(wx @ m.cov_xy @ wy)
    d = min(n_components, len(s))
    return CCA(m.mean_x, wx @ u[:, :d], m.mean_y, wy @ vt[:d].T, s[:d])


def _group_sums(codes: np.ndarray, values: np.ndarray, groups: int) -> np.ndarray:
    """``(groups, d)`` sums of ``values (n, d)`` by ``codes (n,)``."""
    out = np.zeros((groups, values.shape[1]))
    np.add.at(out, codes, values)
    return out


@dataclass
class CrossVideoGroups:
    """Each item's identity code and (identity, video) code, and how many cross-video pairs of
    its identity it is in (the other modality's items of its identity outside its video)."""

    x_identity: np.ndarray  # (n_x,) int64
    y_identity: np.ndarray  # (n_y,) int64
    x_scene: np.ndarray  # (n_x,) int64
    y_scene: np.ndarray  # (n_y,) int64
    x_pairs: np.ndarray  # (n_x,) int64
    y_pairs: np.ndarray  # (n_y,) int64
    n_identities: int
    n_scenes: int

    @classmethod
    def of(cls, x_identity: Sequence[str], x_video: Sequence[str], y_identity: Sequence[str],
           y_video: Sequence[str]) -> CrossVideoGroups:
        x_keys = list(zip(x_identity, x_video, strict=True))
        y_keys = list(zip(y_identity, y_video, strict=True))
        ident = {u: i for i, u in enumerate(dict.fromkeys([*x_identity, *y_identity]))}
        scene = {u: i for i, u in enumerate(dict.fromkeys([*x_keys, *y_keys]))}
        xi = np.fromiter((ident[u] for u in x_identity), np.int64, len(x_keys))
        yi = np.fromiter((ident[u] for u in y_identity), np.int64, len(y_keys))
        xs = np.fromiter((scene[k] for k in x_keys), np.int64, len(x_keys))
        ys = np.fromiter((scene[k] for k in y_keys), np.int64, len(y_keys))
        ni, ns = len(ident), len(scene)
        wx = np.bincount(yi, minlength=ni)[xi] - np.bincount(ys, minlength=ns)[xs]
        wy = np.bincount(xi, minlength=ni)[yi] - np.bincount(xs, minlength=ns)[ys]
        return cls(xi, yi, xs, ys, wx, wy, ni, ns)

    @property
    def n_pairs(self) -> int:
        return int(self.x_pairs.sum())


def cross_video_moments(x: np.ndarray, x_identity: Sequence[str], x_video: Sequence[str],
                        y: np.ndarray, y_identity: Sequence[str], y_video: Sequence[str]
                        ) -> PairMoments:
    """The moments of every cross-video pair ``(x_i, y_j)`` of one identity (what
    :func:`cross_video_pairs` lists), from per-identity and per-video sums: memory and time grow
    with the items, not with the pairs (a VoxCeleb identity has thousands of them)."""
    g = CrossVideoGroups.of(x_identity, x_video, y_identity, y_video)
    n = g.n_pairs
    if n == 0:
        raise ValueError("no cross-video pair of one identity among the items")
    mx, my = g.x_pairs @ x / n, g.y_pairs @ y / n
    xc, yc = x - mx, y - my
    cross = (_group_sums(g.x_identity, xc, g.n_identities).T
             @ _group_sums(g.y_identity, yc, g.n_identities)
             - _group_sums(g.x_scene, xc, g.n_scenes).T @ _group_sums(g.y_scene, yc, g.n_scenes))
    return PairMoments(mx, my, (xc * g.x_pairs[:, None]).T @ xc / n,
                       (yc * g.y_pairs[:, None]).T @ yc / n, cross / n, n)


def cross_video_pairs(identity: Sequence[str], video: Sequence[str], other_identity: Sequence[str],
                      other_video: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` index pair of one identity from two different videos: ``i`` indexes the
    first modality's items, ``j`` the other's."""
    rows_of: dict[str, list[int]] = {}
    for j, who in enumerate(other_identity):
        rows_of.setdefault(who, []).append(j)
    first, second = [], []
    for i, (who, vid) in enumerate(zip(identity, video, strict=True)):
        others = [j for j in rows_of.get(who, []) if other_video[j] != vid]
        first += [i] * len(others)
        second += others
    return np.asarray(first, np.int64), np.asarray(second, np.int64)


def cross_video_pair_count(identity: Sequence[str], video: Sequence[str],
                           other_identity: Sequence[str], other_video: Sequence[str]) -> int:
    """``len(cross_video_pairs(...)[0])`` from counts, without listing the pairs."""
    return CrossVideoGroups.of(identity, video, other_identity, other_video).n_pairs


class CCABackend(nn.Module):
    """Per-modality affine maps ``(h - mean) @ proj`` (buffers, saved with the weights).

    Unfitted, each map is the identity (``cosine`` is then the plain cosine); :meth:`fit` sets
    them from paired train embeddings and marks the back-end fitted.
    """

    def __init__(self, dim: int, ridge: float = 0.003) -> None:
        super().__init__()
        if ridge <= 0:
            raise ValueError(f"the CCA back-end needs a positive ridge; got {ridge}")
        self.ridge = ridge
        for m in MODALITIES:
            self.register_buffer(f"{m}_mean", torch.zeros(dim))
            self.register_buffer(f"{m}_proj", torch.eye(dim))
        self.register_buffer("fitted", torch.zeros(()))

    @property
    def is_fitted(self) -> bool:
        return bool(self.fitted.item())

    def project(self, modality: str, h: Tensor) -> Tensor:
        """``h (..., d)`` -> ``(..., d)`` in the weighted canonical space."""
        mean, proj = getattr(self, f"{modality}_mean"), getattr(self, f"{modality}_proj")
        return (h - mean.to(h.dtype)) @ proj.to(h.dtype)

    @torch.no_grad()
    def fit(self, voice: Tensor, face: Tensor) -> np.ndarray:
        """Fit on paired rows ``voice (n, d)``, ``face (n, d)`` (one identity per row, two
        videos); returns the canonical correlations."""
        if len(voice) < MIN_PAIRS:
            raise ValueError(f"the CCA back-end needs at least {MIN_PAIRS} pairs; got {len(voice)}")
        x, y = (t.detach().double().cpu().numpy() for t in (voice, face))
        return self._set(ridge_cca(x, y, self.ridge, x.shape[1]))

    @torch.no_grad()
    def fit_items(self, emb: Mapping[str, Tensor], identity: Mapping[str, Sequence[str]],
                  video: Mapping[str, Sequence[str]]) -> int:
        """Fit on every cross-video (voice, face) pair of one identity among the items
        ``emb[m] (N_m, d)`` (from their moments, :func:`cross_video_moments`); returns the
        number of pairs."""
        x, y = (emb[m].detach().double().cpu().numpy() for m in MODALITIES)
        moments = cross_video_moments(x, identity["voice"], video["voice"],
                                      y, identity["face"], video["face"])
        if moments.n < MIN_PAIRS:
            raise ValueError(f"the CCA back-end needs at least {MIN_PAIRS} pairs; got {moments.n}")
        rho = self._set(cca_from_moments(moments, self.ridge, x.shape[1]))
        log.info("CCA back-end: %d train pairs, canonical correlations %s ...", moments.n,
                 np.array2string(rho[:4], precision=3))
        return moments.n

    def _set(self, cca: CCA) -> np.ndarray:
        """Store ``cca``'s maps, each direction scaled by its correlation (weakly shared
        directions fade instead of being cut at a fixed count); returns the correlations."""
        fitted = {"voice": (cca.mean_x, cca.a * cca.correlations),
                  "face": (cca.mean_y, cca.b * cca.correlations)}
        for m, (mean, proj) in fitted.items():
            full = np.zeros((proj.shape[0], self.voice_proj.shape[1]))  # (d, k) -> (d, d): pad
            full[:, :proj.shape[1]] = proj
            getattr(self, f"{m}_mean").copy_(torch.from_numpy(mean))
            getattr(self, f"{m}_proj").copy_(torch.from_numpy(full))
        self.fitted.fill_(1.0)
        return cca.correlations
