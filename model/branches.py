"""Audio and visual sub-networks and the feature generator (AML III-B, III-C, III-G).

- :class:`ConvBranch`: five convolutional layers (conv -> norm -> activation), then adaptive
  average pooling to ``32 x 10 x 10 = 3200`` values (AML III-G: "audio and image features with
  the same size of 10*10*32"). The audio branch takes spectrograms ``(N, 1, F, T)``, the visual
  branch faces ``(N, 3, S, S)``; the pooling makes the output size independent of the input
  size, and the strides (params) set the cost.
- :class:`Generator`: the MLP ``3200 -> 128`` of AML Eq. 1-2 (``phi`` for audio, ``psi`` for
  faces; one shared or two separate networks, ``model.shared_generator``), optionally followed
  by a parameter-free batch normalisation of its output (``model.generator_norm: batch``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch.nn.functional as F
from torch import Tensor, nn

from model.heads import mlp

__all__ = ["ConvBranch", "Generator", "GENERATOR_NORMS"]

GENERATOR_NORMS = ("none", "batch")


class ConvBranch(nn.Module):
    """Five-layer CNN with adaptive pooling to ``channels[-1] x pool_size`` (AML III-B).

    Args:
        in_chans: input channels (1 for spectrograms, 3 for RGB faces).
        channels: output channels of the five layers (the last is 32 in the paper).
        kernel_sizes: square kernel size of each layer (padding ``k // 2``).
        strides: ``(stride_h, stride_w)`` of each layer.
        pool_size: adaptive average pooling output ``(h, w)`` (10 x 10 in the paper).
        norm_layer: normalisation class (called with the channel count) applied after each
            convolution (AML III-G uses batch normalisation).
        act_layer: activation class.
    """

    def __init__(self, in_chans: int, channels: Sequence[int] = (16, 32, 32, 32, 32),
                 kernel_sizes: Sequence[int] = (5, 3, 3, 3, 3),
                 strides: Sequence[Sequence[int]] = ((2, 2), (2, 2), (1, 1), (1, 1), (1, 1)),
                 pool_size: Sequence[int] = (10, 10),
                 norm_layer: Callable[[int], nn.Module] = nn.BatchNorm2d,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        if not len(channels) == len(kernel_sizes) == len(strides):
            raise ValueError(f"channels {tuple(channels)}, kernel_sizes {tuple(kernel_sizes)} and "
                             f"strides {tuple(strides)} must have one entry per layer")
        layers: list[nn.Module] = []
        width = in_chans
        for out, k, s in zip(channels, kernel_sizes, strides, strict=True):
            layers += [nn.Conv2d(width, out, k, stride=tuple(s), padding=k // 2, bias=False),
                       norm_layer(out), act_layer()]
            width = out
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(tuple(pool_size))
        self.num_features = width * pool_size[0] * pool_size[1]

    def forward(self, x: Tensor) -> Tensor:
        """``(N, C, H, W)`` -> ``(N, channels[-1] * pool_h * pool_w)``."""
        x = self.pool(self.features(x))  # (N, 32, 10, 10)
        return x.flatten(1)  # (N, 3200)


class Generator(nn.Module):
    """AML Eq. 1-2: an MLP from the 3200-d branch feature to the 128-d embedding space.

    ``norm="batch"`` standardises each output dimension over the batch (``BatchNorm1d`` without
    affine parameters; running statistics in eval mode). The branch features are non-negative
    (ReLU, then average pooling), so every item shares a large common component; without this
    normalisation Adam's first steps grow that component until the L2-normalised embeddings of
    all items point the same way (docs/model.md, "Without the public classifiers ...").
    """

    def __init__(self, in_features: int = 3200, hidden: Sequence[int] = (256,),
                 out_features: int = 128, act_layer: type[nn.Module] = nn.ReLU,
                 norm: str = "none") -> None:
        super().__init__()
        if norm not in GENERATOR_NORMS:
            raise ValueError(f"generator norm must be one of {GENERATOR_NORMS}, got {norm!r}")
        self.net = mlp(in_features, hidden, out_features, act_layer=act_layer)
        self.norm = nn.BatchNorm1d(out_features, affine=False) if norm == "batch" else None

    def forward(self, x: Tensor) -> Tensor:
        f = self.net(x)  # (N, out_features)
        if self.norm is None:
            return f
        if self.training and f.shape[0] < 2:  # one item has no batch statistics: use the running ones
            return F.batch_norm(f, self.norm.running_mean, self.norm.running_var, training=False,
                                eps=self.norm.eps)
        return self.norm(f)
