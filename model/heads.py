"""Task heads of AML III-E and the modality discriminator of AML III-C / P2VANet Eq. 5.

Every head works on the 128-d modality-independent embeddings ``h``:

- :class:`MatchingClassifier` (AML Eq. 6, P2VANet Eq. 17): the query and its ``k`` candidates,
  concatenated to ``(k + 1) * 128``, give ``k`` logits (which candidate is the query's). The
  input size depends on ``k``, so there is one classifier per ``k`` in ``ks`` (2 and 10 by
  default: the binary and multi-way tuples).
- :class:`VerificationClassifier` (AML Eq. 7): a (voice, face) pair, concatenated, gives 2 logits
  (different / same identity).
- :class:`RetrievalDistance` (AML Eq. 8): an MLP on ``h_voice - h_face`` gives a scalar distance;
  ``-distance`` over the candidates is trained with cross-entropy.
- :class:`Discriminator` (AML Eq. 3): a fully connected modality classifier ``128 -> 2``.

AML III-G writes every head as "a single layer fully connected network". A single linear layer
on a concatenation (or on a difference) scores each candidate independently of the query
(``w . [h_q; h_j]`` ranks candidates by ``w_j . h_j`` alone), so it cannot match; the heads
therefore take hidden widths (``model.head_hidden``, ``model.retrieval_hidden``; one hidden
layer by default, ``[]`` gives the literal single layer). See docs/model.md.

Pairs are always fed in modality order (voice first, face second) whatever the direction, so a
pair gets the same verification and distance score in V->F and F->V.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["mlp", "MatchingClassifier", "VerificationClassifier", "RetrievalDistance",
           "Discriminator"]


def mlp(in_features: int, hidden: Sequence[int], out_features: int,
        act_layer: type[nn.Module] = nn.ReLU) -> nn.Sequential:
    """``Linear -> act`` for every hidden width, then a final ``Linear`` (no activation)."""
    layers: list[nn.Module] = []
    width = in_features
    for h in hidden:
        layers += [nn.Linear(width, h), act_layer()]
        width = h
    layers.append(nn.Linear(width, out_features))
    return nn.Sequential(*layers)


class MatchingClassifier(nn.Module):
    """AML Eq. 6: ``C_M([h_i0; h_i1; ...; h_ik]) -> k`` logits, one classifier per ``k``."""

    def __init__(self, dim: int = 128, ks: Sequence[int] = (2, 10), hidden: Sequence[int] = (256,),
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.heads = nn.ModuleDict({str(k): mlp((k + 1) * dim, hidden, k, act_layer=act_layer)
                                    for k in ks})

    @property
    def ks(self) -> tuple[int, ...]:
        return tuple(int(k) for k in self.heads)

    def supports(self, k: int) -> bool:
        return str(k) in self.heads

    def forward(self, query: Tensor, candidates: Tensor) -> Tensor:
        """``query (B, d)``, ``candidates (B, k, d)`` -> logits ``(B, k)``."""
        b, k, _ = candidates.shape
        if not self.supports(k):
            raise KeyError(f"no matching classifier for k={k}; model.match_ks is {self.ks} "
                           f"(add {k} to model.match_ks to train one)")
        x = torch.cat([query[:, None], candidates], dim=1).reshape(b, -1)  # (B, (k+1)*d)
        return self.heads[str(k)](x)


class VerificationClassifier(nn.Module):
    """AML Eq. 7: ``C_V([h_voice; h_face]) -> 2`` logits (0 different, 1 same identity)."""

    def __init__(self, dim: int = 128, hidden: Sequence[int] = (256,),
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp(2 * dim, hidden, 2, act_layer=act_layer)

    def forward(self, voice: Tensor, face: Tensor) -> Tensor:
        """``voice (..., d)``, ``face (..., d)`` -> logits ``(..., 2)``."""
        return self.net(torch.cat([voice, face], dim=-1))


class RetrievalDistance(nn.Module):
    """AML Eq. 8: ``C_R(h_voice - h_face) -> distance`` (a scalar per pair)."""

    def __init__(self, dim: int = 128, hidden: Sequence[int] = (128,),
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.net = mlp(dim, hidden, 1, act_layer=act_layer)

    def forward(self, voice: Tensor, face: Tensor) -> Tensor:
        """``voice (..., d)``, ``face (..., d)`` -> distances ``(...)``."""
        return self.net(voice - face).squeeze(-1)


class Discriminator(nn.Module):
    """Modality classifier ``D(h) -> 2`` logits (index 0 voice, 1 face); AML Eq. 3."""

    def __init__(self, dim: int = 128, hidden: Sequence[int] = (),
                 act_layer: type[nn.Module] = nn.LeakyReLU) -> None:
        super().__init__()
        self.net = mlp(dim, hidden, 2, act_layer=act_layer)

    def forward(self, h: Tensor) -> Tensor:
        return self.net(h)

    @torch.no_grad()
    def clip_(self, bound: float) -> None:
        """WGAN weight clipping: every parameter into ``[-bound, bound]`` (Arjovsky et al.)."""
        for p in self.parameters():
            p.clamp_(-bound, bound)
