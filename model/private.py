"""Private-attribute embedding: the three variants of P2VANet Table VI.

Each module maps the hidden variable ``z (N, d)`` and the private attributes ``p (N, A)`` to the
hidden variable with private attributes ``ZP (N, d)``:

- ``concat`` (:class:`ConcatFusion`): "concatenating the hidden variable and private attributes
  simply", followed by a linear projection back to ``d``.
- ``attention`` (:class:`AttentionFusion`): channel and spatial attention in the manner of CBAM
  (Woo et al., ECCV 2018; P2VANet ref. [47]) over the token sequence ``[z; tokens(p)]``.
- ``cross_transformer`` (:class:`model.cross_transformer.CrossTransformer`): Eq. 6-12.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from model.cross_transformer import AttributeTokenizer, CrossTransformer
from model.heads import mlp

__all__ = ["ConcatFusion", "AttentionFusion", "build_private", "PRIVATE_KINDS"]

PRIVATE_KINDS = ("none", "concat", "attention", "cross_transformer")


class ConcatFusion(nn.Module):
    """Table VI "Concat": ``ZP = W [z; p] + b``."""

    def __init__(self, dim: int, n_attr: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim + n_attr, dim)

    def forward(self, z: Tensor, p: Tensor) -> Tensor:
        return self.proj(torch.cat([z, p], dim=-1))  # (N, d + A) -> (N, d)


class AttentionFusion(nn.Module):
    """Table VI "Attention mechanisms": CBAM-style attention over ``X = [z; tokens(p)]``.

    Channel attention ``a_c = sigmoid(MLP(mean_L X) + MLP(max_L X))`` scales the ``d`` channels
    of every token; spatial attention ``a_s = sigmoid(conv1d([mean_d X; max_d X]))`` scales each
    of the ``L = 1 + T`` tokens; ``ZP = z + W mean_L(X)``.
    """

    def __init__(self, dim: int, n_attr: int, n_tokens: int, reduction: int = 4,
                 kernel_size: int = 3, token_init: str = "glorot") -> None:
        super().__init__()
        self.tokenizer = AttributeTokenizer(n_attr, n_tokens, dim, init=token_init)
        self.channel = mlp(dim, (max(1, dim // reduction),), dim)
        self.spatial = nn.Conv1d(2, 1, kernel_size, padding=kernel_size // 2)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: Tensor, p: Tensor) -> Tensor:
        x = torch.cat([z[:, None], self.tokenizer(p)], dim=1)  # (N, 1 + T, d)
        a_c = torch.sigmoid(self.channel(x.mean(dim=1)) + self.channel(x.amax(dim=1)))  # (N, d)
        x = x * a_c[:, None]  # (N, L, d)
        pooled = torch.stack([x.mean(dim=2), x.amax(dim=2)], dim=1)  # (N, 2, L)
        a_s = torch.sigmoid(self.spatial(pooled))  # (N, 1, L)
        x = x * a_s.transpose(1, 2)  # (N, L, d) * (N, L, 1)
        return z + self.proj(x.mean(dim=1))  # (N, d)


def build_private(kind: str, dim: int, n_attr: int, n_tokens: int, *, num_heads: int = 4,
                  mlp_ratio: float = 2.0, reduction: int = 4, token_init: str = "glorot"
                  ) -> nn.Module | None:
    """The private-attribute module for ``model.private`` (``None`` for ``none``)."""
    if kind == "none":
        return None
    if kind == "concat":
        return ConcatFusion(dim, n_attr)
    if kind == "attention":
        return AttentionFusion(dim, n_attr, n_tokens, reduction=reduction, token_init=token_init)
    if kind == "cross_transformer":
        return CrossTransformer(dim, n_attr, n_tokens, num_heads=num_heads, mlp_ratio=mlp_ratio,
                                token_init=token_init)
    raise ValueError(f"unknown model.private {kind!r}; expected one of {PRIVATE_KINDS}")
