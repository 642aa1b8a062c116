"""CSWin Transformer (Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with
Cross-Shaped Windows", CVPR 2022), registered in timm's model registry.

P2VANet (section III-C) predicts 12 identity-invariant CelebA attributes with a CSWin Transformer.
This is an independent implementation of the published architecture:

- convolutional patch embedding (7x7, stride 4) followed by LayerNorm;
- cross-shaped window self-attention: the heads are split in two groups (the first and second half
  of the channels); the first group attends inside vertical stripes (full height, ``split_size``
  columns), the second inside horizontal stripes (``split_size`` rows, full width), which is the
  assignment the official checkpoints were trained with (their ``attns.0`` / ``attns.1``);
- LePE (locally-enhanced positional encoding): a depthwise 3x3 convolution on V, added to the
  attention output;
- 3x3 stride-2 convolutional merging between stages; full attention in the last stage;
- MLP ratio 4 and a mean-pooled classification head.

State-dict key names follow the official microsoft/CSWin-Transformer checkpoints
(``stage1_conv_embed.0.weight``, ``stage1.0.attns.0.get_v.weight``, ``merge1.conv.weight``,
``norm.weight``, ``head.weight``), so an ImageNet checkpoint such as ``cswin_tiny_224.pth`` can be
loaded by path with :func:`load_pretrained` (or timm's
``pretrained=True, pretrained_cfg_overlay={"file": path}``). Unlike the official code, the block
structure does not depend on the input size, so a model built for 224 px has the same state dict
as one built for 64 px; any size works when every stage's resolution is divisible by its split
size (the last stage uses full attention and accepts any resolution).
"""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.layers import DropPath, Mlp, to_2tuple, trunc_normal_
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from torch import nn

log = logging.getLogger(__name__)

__all__ = ["CSWinTransformer", "CSWinBlock", "LePEAttention", "MergeBlock", "stage_resolutions",
           "read_checkpoint", "load_pretrained"]


def _stem_size(size: int) -> int:
    """Output length of the 7x7 stride-4 padding-2 stem convolution."""
    return (size + 2 * 2 - 7) // 4 + 1


def _merge_size(size: int) -> int:
    """Output length of a 3x3 stride-2 padding-1 merge convolution."""
    return (size + 2 * 1 - 3) // 2 + 1


def stage_resolutions(img_size: int | Sequence[int], num_stages: int = 4) -> list[tuple[int, int]]:
    """Token-grid ``(H, W)`` of each stage for an input of ``img_size`` pixels."""
    h, w = to_2tuple(img_size)
    sizes = [(_stem_size(h), _stem_size(w))]
    for _ in range(num_stages - 1):
        sizes.append((_merge_size(sizes[-1][0]), _merge_size(sizes[-1][1])))
    return sizes


def check_split_sizes(img_size: int | Sequence[int], split_size: Sequence[int]) -> None:
    """Raise ``ValueError`` unless every windowed stage's resolution is divisible by its split size."""
    sizes = stage_resolutions(img_size, len(split_size))
    bad = [f"stage {i + 1}: {h}x{w} tokens, split_size {s}"
           for i, ((h, w), s) in enumerate(zip(sizes[:-1], split_size[:-1], strict=True))
           if h % s or w % s]
    if bad:
        raise ValueError(
            f"CSWin input size {img_size} is incompatible with split sizes {tuple(split_size)}: "
            f"{'; '.join(bad)} (each stage's token grid must be divisible by its split size; "
            f"stage grids are {sizes}). Choose another img_size or pass split_size=...")


class LePEAttention(nn.Module):
    """Self-attention inside stripes of one orientation, plus LePE (depthwise conv on V).

    ``orientation`` is ``"horizontal"`` (stripes of ``split_size`` rows spanning the full width),
    ``"vertical"`` (``split_size`` columns spanning the full height) or ``"full"`` (one window
    covering the whole grid, used in the last stage).
    """

    def __init__(self, dim: int, num_heads: int, split_size: int, orientation: str,
                 attn_drop: float = 0.0) -> None:
        super().__init__()
        if orientation not in ("horizontal", "vertical", "full"):
            raise ValueError(f"unknown stripe orientation {orientation!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.dim = dim
        self.num_heads = num_heads
        self.split_size = split_size
        self.orientation = orientation
        self.attn_drop = attn_drop
        self.get_v = nn.Conv2d(dim, dim, kernel_size=3, stride=1, padding=1, groups=dim)

    def window(self, h: int, w: int) -> tuple[int, int]:
        """Window ``(height, width)`` on an ``h x w`` grid; raises if the grid does not tile."""
        if self.orientation == "full":
            return h, w
        if h % self.split_size or w % self.split_size:
            raise ValueError(f"CSWin stage grid {h}x{w} is not divisible by split_size "
                             f"{self.split_size}; choose an input size whose stage grids are")
        return (self.split_size, w) if self.orientation == "horizontal" else (h, self.split_size)

    def to_windows(self, x: torch.Tensor, h: int, w: int, wh: int, ww: int) -> torch.Tensor:
        """``(B, h*w, C)`` tokens -> ``(B*nW, C, wh, ww)`` image windows."""
        b, _, c = x.shape
        x = x.view(b, h // wh, wh, w // ww, ww, c)  # (B, nH, wh, nW, ww, C)
        x = x.permute(0, 1, 3, 5, 2, 4)  # (B, nH, nW, C, wh, ww)
        return x.reshape(-1, c, wh, ww)  # (B*nH*nW, C, wh, ww)

    def to_heads(self, x: torch.Tensor) -> torch.Tensor:
        """``(B', C, wh, ww)`` windows -> ``(B', heads, wh*ww, C/heads)``."""
        bw, c, wh, ww = x.shape
        x = x.reshape(bw, self.num_heads, c // self.num_heads, wh * ww)  # (B', heads, d, L)
        return x.transpose(-2, -1)  # (B', heads, L, d)

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, hw: tuple[int, int]
                ) -> torch.Tensor:
        """``q, k, v``: ``(B, H*W, C)``; returns ``(B, H*W, C)``."""
        h, w = hw
        b, n, c = q.shape
        wh, ww = self.window(h, w)
        qw = self.to_heads(self.to_windows(q, h, w, wh, ww))
        kw = self.to_heads(self.to_windows(k, h, w, wh, ww))
        v_img = self.to_windows(v, h, w, wh, ww)
        lepe = self.to_heads(self.get_v(v_img))
        out = F.scaled_dot_product_attention(
            qw, kw, self.to_heads(v_img), dropout_p=self.attn_drop if self.training else 0.0)
        out = out + lepe  # (B', heads, L, d)
        out = out.transpose(1, 2).reshape(b, h // wh, w // ww, wh, ww, c)  # (B, nH, nW, wh, ww, C)
        out = out.permute(0, 1, 3, 2, 4, 5)  # (B, nH, wh, nW, ww, C)
        return out.reshape(b, n, c)  # (B, H*W, C)


class CSWinBlock(nn.Module):
    """Pre-norm transformer block with cross-shaped window attention (or full attention)."""

    def __init__(self, dim: int, num_heads: int, split_size: int, mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, last_stage: bool = False, proj_drop: float = 0.0,
                 attn_drop: float = 0.0, drop_path: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        if not last_stage and num_heads < 2:
            raise ValueError("cross-shaped attention splits the heads in two; num_heads must be >= 2")
        self.dim = dim
        self.norm1 = norm_layer(dim)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, num_heads, split_size, "full", attn_drop)])
        else:
            self.attns = nn.ModuleList([
                LePEAttention(dim // 2, num_heads // 2, split_size, orientation, attn_drop)
                for orientation in ("vertical", "horizontal")])
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)
        self.drop_path = DropPath(drop_path) if drop_path > 0.0 else nn.Identity()
        self.norm2 = norm_layer(dim)
        self.mlp = Mlp(in_features=dim, hidden_features=int(dim * mlp_ratio), act_layer=act_layer,
                       drop=proj_drop)

    def attention(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        """``(B, N, C)`` normalized tokens -> ``(B, N, C)`` attended tokens (before projection)."""
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, c).unbind(2)  # 3 x (B, N, C)
        if len(self.attns) == 1:
            return self.attns[0](q, k, v, hw)
        half = c // 2
        parts = [attn(q[..., sl], k[..., sl], v[..., sl], hw)
                 for attn, sl in zip(self.attns, (slice(0, half), slice(half, c)), strict=True)]
        return torch.cat(parts, dim=-1)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.proj_drop(self.proj(self.attention(self.norm1(x), hw))))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MergeBlock(nn.Module):
    """3x3 stride-2 convolution halving the token grid, followed by a norm."""

    def __init__(self, dim: int, dim_out: int, norm_layer: type[nn.Module] = nn.LayerNorm) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, kernel_size=3, stride=2, padding=1)
        self.norm = norm_layer(dim_out)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        b, _, c = x.shape
        x = self.conv(x.transpose(1, 2).reshape(b, c, *hw))  # (B, C, H, W) -> (B, C', H/2, W/2)
        new_hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)  # (B, H/2*W/2, C')
        return self.norm(x), new_hw


class TokensFromImage(nn.Module):
    """``(B, C, H, W)`` -> ``(B, H*W, C)``; parameter-free slot 1 of ``stage1_conv_embed``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(2).transpose(1, 2)  # (B, C, H*W) -> (B, H*W, C)


class CSWinTransformer(nn.Module):
    """Four-stage CSWin Transformer with a mean-pooled linear head."""

    def __init__(self, img_size: int | tuple[int, int] = 224, in_chans: int = 3,
                 num_classes: int = 1000, embed_dim: int = 64,
                 depth: tuple[int, ...] = (1, 2, 21, 1), num_heads: tuple[int, ...] = (2, 4, 8, 16),
                 split_size: tuple[int, ...] = (1, 2, 7, 7), mlp_ratio: float = 4.0,
                 qkv_bias: bool = True, drop_rate: float = 0.0, proj_drop_rate: float = 0.0,
                 attn_drop_rate: float = 0.0, drop_path_rate: float = 0.0,
                 act_layer: type[nn.Module] = nn.GELU,
                 norm_layer: type[nn.Module] = nn.LayerNorm, global_pool: str = "avg") -> None:
        super().__init__()
        if not len(depth) == len(num_heads) == len(split_size) == 4:
            raise ValueError("depth, num_heads and split_size need one entry per stage (4)")
        if global_pool not in ("avg", ""):
            raise ValueError(f"global_pool must be 'avg' or '', got {global_pool!r}")
        check_split_sizes(img_size, split_size)
        self.img_size = to_2tuple(img_size)
        self.num_classes = num_classes
        self.global_pool = global_pool
        self.split_size = tuple(split_size)
        self.stage1_conv_embed = nn.Sequential(
            nn.Conv2d(in_chans, embed_dim, kernel_size=7, stride=4, padding=2),
            TokensFromImage(),
            norm_layer(embed_dim))
        total = sum(depth)
        rates = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]  # stochastic depth
        dims = [embed_dim * 2 ** i for i in range(4)]
        for i in range(4):
            blocks = [CSWinBlock(dims[i], num_heads[i], split_size[i], mlp_ratio, qkv_bias,
                                 last_stage=i == 3, proj_drop=proj_drop_rate,
                                 attn_drop=attn_drop_rate, drop_path=rates[sum(depth[:i]) + j],
                                 act_layer=act_layer, norm_layer=norm_layer)
                      for j in range(depth[i])]
            setattr(self, f"stage{i + 1}", nn.ModuleList(blocks))
            if i < 3:
                setattr(self, f"merge{i + 1}", MergeBlock(dims[i], dims[i + 1], norm_layer))
        self.num_features = self.head_hidden_size = dims[-1]
        self.norm = norm_layer(dims[-1])
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(dims[-1], num_classes) if num_classes > 0 else nn.Identity()
        self.apply(self._init_weights)

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    def stages(self) -> list[tuple[MergeBlock | None, nn.ModuleList]]:
        return [(None if i == 1 else getattr(self, f"merge{i - 1}"), getattr(self, f"stage{i}"))
                for i in range(1, 5)]

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` images -> ``(B, N, F)`` normalized last-stage tokens."""
        x = self.stage1_conv_embed[0](x)
        hw = (x.shape[2], x.shape[3])
        x = self.stage1_conv_embed[2](self.stage1_conv_embed[1](x))
        for merge, blocks in self.stages():
            if merge is not None:
                x, hw = merge(x, hw)
            for block in blocks:
                x = block(x, hw)
        return self.norm(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == "avg":
            x = x.mean(dim=1)
        x = self.head_drop(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": None,
            "crop_pct": 0.9, "interpolation": "bicubic", "mean": IMAGENET_DEFAULT_MEAN,
            "std": IMAGENET_DEFAULT_STD, "first_conv": "stage1_conv_embed.0",
            "classifier": "head", "license": "mit", **kwargs}


default_cfgs = generate_default_cfgs({
    "cswin_nano_64": _cfg(input_size=(3, 64, 64), num_classes=12),
    "cswin_tiny_224": _cfg(),
    "cswin_small_224": _cfg(),
    "cswin_base_224": _cfg(),
    "cswin_large_224": _cfg(),
})

# Published settings (Dong et al. 2022, Table 1); ``nano`` is avmatch's CPU-sized variant.
VARIANTS: dict[str, dict[str, Any]] = {
    "cswin_nano_64": dict(img_size=64, embed_dim=32, depth=(1, 1, 2, 1), num_heads=(2, 4, 8, 16),
                          split_size=(1, 2, 2, 2)),
    "cswin_tiny_224": dict(embed_dim=64, depth=(1, 2, 21, 1), num_heads=(2, 4, 8, 16),
                           split_size=(1, 2, 7, 7)),
    "cswin_small_224": dict(embed_dim=64, depth=(2, 4, 32, 2), num_heads=(2, 4, 8, 16),
                            split_size=(1, 2, 7, 7)),
    "cswin_base_224": dict(embed_dim=96, depth=(2, 4, 32, 2), num_heads=(4, 8, 16, 32),
                           split_size=(1, 2, 7, 7)),
    "cswin_large_224": dict(embed_dim=144, depth=(2, 4, 32, 2), num_heads=(6, 12, 24, 24),
                            split_size=(1, 2, 7, 7)),
}


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    args = {**VARIANTS[variant], **kwargs}
    return build_model_with_cfg(CSWinTransformer, variant, pretrained, **args)


@register_model
def cswin_nano_64(pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    """CPU-sized CSWin (dim 32, depths 1-1-2-1) for the embedded 64 px corpus."""
    return _create("cswin_nano_64", pretrained, **kwargs)


@register_model
def cswin_tiny_224(pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    """CSWin-T: dim 64, depths 1-2-21-1, heads 2-4-8-16, split sizes 1-2-7-7."""
    return _create("cswin_tiny_224", pretrained, **kwargs)


@register_model
def cswin_small_224(pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    """CSWin-S: dim 64, depths 2-4-32-2, heads 2-4-8-16, split sizes 1-2-7-7."""
    return _create("cswin_small_224", pretrained, **kwargs)


@register_model
def cswin_base_224(pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    """CSWin-B: dim 96, depths 2-4-32-2, heads 4-8-16-32, split sizes 1-2-7-7."""
    return _create("cswin_base_224", pretrained, **kwargs)


@register_model
def cswin_large_224(pretrained: bool = False, **kwargs: Any) -> CSWinTransformer:
    """CSWin-L: dim 144, depths 2-4-32-2, heads 6-12-24-24, split sizes 1-2-7-7."""
    return _create("cswin_large_224", pretrained, **kwargs)


STATE_DICT_KEYS = ("state_dict_ema", "model_ema", "model", "state_dict")


def read_checkpoint(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Read a CSWin state dict from an official or timm-style checkpoint file.

    Uses ``torch.load(..., weights_only=True)``; ``argparse.Namespace`` (the training arguments
    some checkpoints carry) is allowed as a plain container. The weights are taken from the first
    of ``state_dict_ema``, ``model_ema``, ``model``, ``state_dict`` present, else the file itself;
    a ``module.`` prefix (DataParallel) is removed.
    """
    with torch.serialization.safe_globals([argparse.Namespace]):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(ckpt, dict):
        raise ValueError(f"{path}: expected a dict checkpoint, got {type(ckpt).__name__}")
    state = next((ckpt[k] for k in STATE_DICT_KEYS if isinstance(ckpt.get(k), dict)), ckpt)
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()
            if isinstance(v, torch.Tensor)}


def load_pretrained(model: CSWinTransformer, path: str | os.PathLike) -> CSWinTransformer:
    """Initialize ``model`` from a checkpoint file; the head is kept only if its shape matches.

    Every other tensor must be present with the right shape (a strict load apart from the head),
    so a wrong variant fails loudly instead of silently training from scratch.
    """
    state = read_checkpoint(path)
    own = model.state_dict()
    head_keys = {k for k in own if k.startswith("head.")}
    for key in head_keys:
        if key in state and state[key].shape != own[key].shape:
            log.info("dropping %s %s from %s (model has %s)", key, tuple(state[key].shape), path,
                     tuple(own[key].shape))
            del state[key]
    result = model.load_state_dict(state, strict=False)
    missing = sorted(set(result.missing_keys) - head_keys)
    if missing or result.unexpected_keys:
        raise ValueError(f"{path} does not fit {type(model).__name__}: missing {missing[:8]}, "
                         f"unexpected {result.unexpected_keys[:8]}")
    return model
