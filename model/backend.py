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

__all__ = ["CCA", "ridge_cca", "CCABackend", "cross_video_pairs", "BACKENDS", "MIN_PAIRS"]

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
    wx = _inv_sqrt(xc.T @ xc / n + ridge * np.eye(x.shape[1]))
    wy = _inv_sqrt(yc.T @ yc / n + ridge * np.eye(y.shape[1]))
    u, s, vt = np.linalg.svd(wx @ (xc.T @ yc / n) @ wy)
    d = min(n_components, len(s))
    return CCA(mx, wx @ u[:, :d], my, wy @ vt[:d].T, s[:d])


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
        videos); returns the canonical correlations. Each direction is scaled by its
        correlation, so weakly shared directions fade instead of being cut at a fixed count."""
        if len(voice) < MIN_PAIRS:
            raise ValueError(f"the CCA back-end needs at least {MIN_PAIRS} pairs; got {len(voice)}")
        x = voice.detach().double().cpu().numpy()
        y = face.detach().double().cpu().numpy()
        cca = ridge_cca(x, y, self.ridge, x.shape[1])
        fitted = {"voice": (cca.mean_x, cca.a * cca.correlations),
                  "face": (cca.mean_y, cca.b * cca.correlations)}
        for m, (mean, proj) in fitted.items():
            width = proj.shape[1]
            full = np.zeros((proj.shape[0], self.voice_proj.shape[1]))  # (d, k) -> (d, d): pad
            full[:, :width] = proj
            getattr(self, f"{m}_mean").copy_(torch.from_numpy(mean))
            getattr(self, f"{m}_proj").copy_(torch.from_numpy(full))
        self.fitted.fill_(1.0)
        return cca.correlations

    def fit_items(self, emb: Mapping[str, Tensor], identity: Mapping[str, Sequence[str]],
                  video: Mapping[str, Sequence[str]]) -> int:
        """Fit on every cross-video (voice, face) pair of the items ``emb[m] (N_m, d)``; returns
        the number of pairs."""
        v, f = cross_video_pairs(identity["voice"], video["voice"], identity["face"],
                                 video["face"])
        rho = self.fit(emb["voice"][torch.from_numpy(v)], emb["face"][torch.from_numpy(f)])
        log.info("CCA back-end: %d train pairs, canonical correlations %s ...", len(v),
                 np.array2string(rho[:4], precision=3))
        return len(v)
