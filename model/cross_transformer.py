"""Cross-transformer that embeds private attributes into the hidden variable (P2VANet III-C).

Equations (audio shown; faces alike), with ``Z`` the 128-d hidden variable and ``P`` the private
attribute vector (384 IS09 functionals for voices, 12 face attributes for faces):

- Eq. 6-7: ``Z_SN = SN(Z)``, ``P_SN = SN(P)`` (:class:`SwitchNorm1d`).
- Eq. 8-10: ``Z_CA = CA(Z_SN, P_SN) = LP(softmax(Q K^T / sqrt(d/h)) V + Z_SN)`` with ``Q`` from
  ``Z_SN`` and ``K``, ``V`` from the attribute tokens (:class:`CrossAttention`).
- Eq. 11: ``Z_CA' = CA(Z_CA, P) + Z`` (a second cross-attention block on the raw attributes).
- Eq. 12: ``ZP = LP(FFN(LN(Z_CA')) + Z_CA')``.

Tokens (our design; the paper does not say how a vector becomes a sequence; docs/model.md):
``Z`` is one query token of width ``d = 128``. ``P`` is cut into ``n_tokens`` contiguous chunks
and each chunk gets its own linear map to ``d`` (:class:`AttributeTokenizer`; the per-token
weights also play the role of position embeddings). The defaults give one token per IS09
contour (32 chunks of 12 functionals: openSMILE lists the 12 functionals of each of the 16
low-level descriptors and their 16 deltas contiguously) and one token per face attribute (12).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from timm.layers import Mlp
from torch import Tensor, nn

__all__ = ["SwitchNorm1d", "AttributeTokenizer", "CrossAttention", "CrossTransformer",
           "TOKEN_INITS"]

TOKEN_INITS = ("glorot", "balanced")


class SwitchNorm1d(nn.Module):
    """Switchable normalisation (Luo et al., ICLR 2019) of ``(N, C)`` features (Eq. 6-7).

    The mean and the variance are learned softmax mixtures of layer-norm statistics (over ``C``
    per sample) and batch-norm statistics (over ``N`` per channel; running averages in eval).
    Instance statistics do not exist for a vector (one value per sample and channel), so the 1-d
    form mixes these two, as the reference implementation's ``SwitchNorm1d`` does.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, momentum: float = 0.1) -> None:
        super().__init__()
        self.eps = eps
        self.momentum = momentum
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.mean_weight = nn.Parameter(torch.ones(2))  # softmax over (LN, BN)
        self.var_weight = nn.Parameter(torch.ones(2))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def _batch_stats(self, x: Tensor) -> tuple[Tensor, Tensor]:
        if not self.training:
            return self.running_mean[None], self.running_var[None]
        mean = x.mean(dim=0, keepdim=True)  # (1, C)
        var = x.var(dim=0, unbiased=False, keepdim=True)  # (1, C)
        with torch.no_grad():
            self.running_mean.lerp_(mean[0], self.momentum)
            self.running_var.lerp_(var[0], self.momentum)
        return mean, var

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C)`` -> ``(N, C)``."""
        mean_ln = x.mean(dim=1, keepdim=True)  # (N, 1)
        var_ln = x.var(dim=1, unbiased=False, keepdim=True)  # (N, 1)
        mean_bn, var_bn = self._batch_stats(x)  # (1, C) each
        wm = torch.softmax(self.mean_weight, dim=0)
        wv = torch.softmax(self.var_weight, dim=0)
        mean = wm[0] * mean_ln + wm[1] * mean_bn  # (N, C)
        var = wv[0] * var_ln + wv[1] * var_bn  # (N, C)
        return (x - mean) / torch.sqrt(var + self.eps) * self.weight + self.bias


class AttributeTokenizer(nn.Module):
    """``(N, A)`` attribute vector -> ``(N, T, d)`` tokens: ``T`` contiguous chunks of ``A / T``
    values, each mapped to ``d`` by its own linear layer.

    ``init`` sets the scale of those per-token weights (uniform, zero biases):

    - ``glorot`` (default): Glorot uniform per token. Averaging ``T`` small tokens leaves the
      attributes under 1 % of the cross-transformer's output variance at initialisation.
    - ``balanced``: variance ``T / (A / T)`` per weight, so a token of unit-variance attributes
      has variance ``T`` per channel and the *mean* of the ``T`` tokens (what attention returns
      while its weights are still uniform) has about unit variance, as the residual ``Z`` it is
      added to (Eq. 10) does: the attributes start with about half of the output variance, as
      in ``concat``. Measured on val it does not help (docs/model.md).
    """

    def __init__(self, n_attr: int, n_tokens: int, dim: int, init: str = "glorot") -> None:
        super().__init__()
        if n_tokens < 1 or n_attr % n_tokens:
            raise ValueError(f"{n_attr} attributes cannot be cut into {n_tokens} equal tokens "
                             f"(model.audio_attr_tokens / model.face_attr_tokens must divide it)")
        if init not in TOKEN_INITS:
            raise ValueError(f"token init must be one of {TOKEN_INITS}; got {init!r}")
        self.n_tokens = n_tokens
        self.chunk = n_attr // n_tokens
        self.init = init
        self.weight = nn.Parameter(torch.empty(n_tokens, self.chunk, dim))
        self.bias = nn.Parameter(torch.zeros(n_tokens, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        if self.init == "balanced":
            bound = math.sqrt(3.0 * self.n_tokens / self.chunk)  # variance T / chunk
        else:
            bound = math.sqrt(6.0 / (self.chunk + self.weight.shape[-1]))  # Glorot per token
        nn.init.uniform_(self.weight, -bound, bound)
        nn.init.zeros_(self.bias)

    def forward(self, p: Tensor) -> Tensor:
        p = p.reshape(p.shape[0], self.n_tokens, self.chunk)  # (N, A) -> (N, T, A/T)
        return torch.einsum("ntc,tcd->ntd", p, self.weight) + self.bias  # (N, T, d)


class CrossAttention(nn.Module):
    """P2VANet Eq. 8-10: ``LP(softmax(Q K^T / sqrt(d/h)) V + z)``, ``Q`` from the hidden
    variable ``z`` (one token), ``K`` and ``V`` from the attribute tokens."""

    def __init__(self, dim: int, n_attr: int, n_tokens: int, num_heads: int = 4,
                 token_init: str = "glorot") -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"embedding dim {dim} is not divisible by {num_heads} heads")
        self.num_heads = num_heads
        self.tokenizer = AttributeTokenizer(n_attr, n_tokens, dim, init=token_init)
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)  # LP of Eq. 10

    def attend(self, z: Tensor, p: Tensor) -> Tensor:
        """Eq. 9, ``Z_SA``: ``z (N, d)``, ``p (N, A)`` -> ``(N, d)``."""
        n, d = z.shape
        h = self.num_heads
        tokens = self.tokenizer(p)  # (N, T, d)
        q = self.q(z).reshape(n, h, 1, d // h)  # (N, d) -> (N, h, 1, d/h)
        kv = self.kv(tokens).reshape(n, -1, 2, h, d // h)  # (N, T, 2d) -> (N, T, 2, h, d/h)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # 2 x (N, h, T, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, h, 1, d/h), scale 1/sqrt(d/h)
        return out.reshape(n, d)  # (N, h, 1, d/h) -> (N, d)

    def forward(self, z: Tensor, p: Tensor) -> Tensor:
        return self.proj(self.attend(z, p) + z)  # Eq. 10


class CrossTransformer(nn.Module):
    """P2VANet Eq. 6-12: embeds the private attributes ``p (N, A)`` into ``z (N, d)``.

    Args:
        dim: width ``d`` of the hidden variable (128).
        n_attr: number of private attributes (384 voice, 12 face).
        n_tokens: attribute tokens (see the module docstring).
        num_heads: attention heads ``h`` of Eq. 9.
        mlp_ratio: FFN hidden width as a multiple of ``d`` (Eq. 12).
        token_init: scale of the attribute tokens (:class:`AttributeTokenizer`).
        norm_layer: the LN of Eq. 12.
        act_layer: FFN activation.
    """

    def __init__(self, dim: int, n_attr: int, n_tokens: int, num_heads: int = 4,
                 mlp_ratio: float = 2.0, token_init: str = "glorot",
                 norm_layer: type[nn.Module] = nn.LayerNorm,
                 act_layer: type[nn.Module] = nn.GELU) -> None:
        super().__init__()
        self.norm_z = SwitchNorm1d(dim)  # Eq. 6
        self.norm_p = SwitchNorm1d(n_attr)  # Eq. 7
        self.ca1 = CrossAttention(dim, n_attr, n_tokens, num_heads, token_init)  # Eq. 8-10
        self.ca2 = CrossAttention(dim, n_attr, n_tokens, num_heads, token_init)  # Eq. 11
        self.norm = norm_layer(dim)
        self.ffn = Mlp(dim, int(dim * mlp_ratio), act_layer=act_layer)
        self.proj = nn.Linear(dim, dim)

    def forward(self, z: Tensor, p: Tensor) -> Tensor:
        """``z (N, d)``, ``p (N, A)`` -> ``ZP (N, d)``."""
        z_ca = self.ca1(self.norm_z(z), self.norm_p(p))  # Eq. 6-10
        z_ca2 = self.ca2(z_ca, p) + z  # Eq. 11
        return self.proj(self.ffn(self.norm(z_ca2)) + z_ca2)  # Eq. 12
