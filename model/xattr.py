"""Cross-modal private-attribute regression: each modality's ``h`` predicts what the *other*
modality's private attributes say about its identity (not in the papers; ``model.xattr_weight``).

P2VANet feeds each item its own private attributes (IS09 for a voice, the 12 face attributes for
a face; Eq. 6-12). Here a linear head on a voice's ``h`` regresses its identity's mean face
attributes, and a linear head on a face's ``h`` its identity's mean IS09 functionals. The
targets are identity-level means over the **train** items, standardised per attribute over the
train identities, so every attribute counts alike and no val, test or seen_heard item shapes
them. Only the part of the other modality's attributes that ``h`` can predict lowers the loss:
the shared traits (gender, age, body size, accent) rather than either modality's own ones.
The targets are buffers set by the trainer before the first step
(:meth:`CrossAttributeRegression.set_targets`) and saved with the weights.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import Tensor, nn

from pipeline.common.directions import MODALITIES

__all__ = ["CrossAttributeRegression", "identity_targets", "other_modality"]


def other_modality(modality: str) -> str:
    return MODALITIES[1 - MODALITIES.index(modality)]


def identity_targets(attr: np.ndarray, identity: np.ndarray, n_identity: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """``(targets (n_identity, A), known (n_identity,) bool)``: each train identity's mean of
    ``attr (n, A)`` over its items (``identity (n,)``: train index, negative = not train),
    standardised per column over the identities that have items; unknown rows are zero."""
    keep = identity >= 0
    attr, identity = attr[keep].astype(np.float64), identity[keep]
    sums = np.zeros((n_identity, attr.shape[1]))
    np.add.at(sums, identity, attr)
    counts = np.bincount(identity, minlength=n_identity)
    known = counts > 0
    means = sums[known] / counts[known, None]  # (n_known, A)
    std = means.std(axis=0)
    scaled = (means - means.mean(axis=0)) / np.where(std > 1e-8, std, 1.0)
    targets = np.zeros_like(sums)
    targets[known] = scaled
    return targets, known


class CrossAttributeRegression(nn.Module):
    """Linear heads ``h_m (N, d) -> (N, A_other)`` and their identity-level targets."""

    def __init__(self, dim: int, n_attr: Mapping[str, int], n_identity: int) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({m: nn.Linear(dim, n_attr[other_modality(m)])
                                    for m in MODALITIES})
        for m in MODALITIES:
            self.register_buffer(f"{m}_target", torch.zeros(n_identity, n_attr[other_modality(m)]))
            self.register_buffer(f"{m}_known", torch.zeros(n_identity, dtype=torch.bool))

    @torch.no_grad()
    def set_targets(self, attr: Mapping[str, np.ndarray], identity: Mapping[str, np.ndarray]
                    ) -> None:
        """Targets of modality ``m``'s head from the other modality's train items:
        ``attr[o] (n_o, A_o)`` with train identity indices ``identity[o] (n_o,)``."""
        for m in MODALITIES:
            o = other_modality(m)
            target, known = identity_targets(attr[o], identity[o], len(self.get_buffer(f"{m}_target")))
            self.get_buffer(f"{m}_target").copy_(torch.from_numpy(target))
            self.get_buffer(f"{m}_known").copy_(torch.from_numpy(known))

    def loss(self, modality: str, h: Tensor, identity: Tensor) -> Tensor:
        """Mean squared error of ``h (N, d)``'s prediction over the items whose train identity
        ``identity (N,)`` has a target (0 when none has)."""
        known = self.get_buffer(f"{modality}_known")
        rows = (identity >= 0) & known[identity.clamp(min=0)]  # (N,)
        pred = self.heads[modality](h[rows]).float()  # (n, A)
        target = self.get_buffer(f"{modality}_target")[identity[rows]]  # (n, A)
        if len(pred) == 0:
            return h.sum() * 0.0
        return (pred - target).pow(2).mean()
