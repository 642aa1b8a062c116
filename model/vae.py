"""Variational auto-encoder on the 128-d modality features (P2VANet III-B, Eq. 1-4).

The encoder maps a feature ``f`` to the mean ``mu`` and log-variance ``log sigma^2`` of a Gaussian
posterior ``q(Z | f)``; the hidden variable is reparameterised (Eq. 1) and decoded back to ``f``.
``L_rec = (R - f)^2 + KL(q(Z | f) || N(0, I))`` (Eq. 2 for audio, Eq. 4 for faces), with the KL
in closed form from the encoder's own ``mu`` and ``log sigma^2`` of the same item.

The audio VAE is denoising (P2VANet I): in training its encoder sees ``f`` plus Gaussian noise
and the decoder is asked for the clean ``f``. In eval mode there is no noise and ``Z = mu``.
What the network passes on downstream in training (``z``, Eq. 1, or ``mu``) is the caller's
choice (``model.vae_downstream``, :meth:`model.avnet.AVMatchNet.embed`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from model.heads import mlp

__all__ = ["FeatureVAE", "VAEOutput", "kl_standard_normal", "reconstruction_loss"]

LOGVAR_RANGE = (-30.0, 20.0)  # keeps exp(logvar) finite; far outside any useful variance


@dataclass
class VAEOutput:
    """One VAE pass: hidden variable ``z``, posterior ``mu``/``logvar``, ``recon``, ``target``."""

    z: Tensor  # (N, latent)
    mu: Tensor  # (N, latent)
    logvar: Tensor  # (N, latent)
    recon: Tensor  # (N, dim)
    target: Tensor  # (N, dim): the clean input the reconstruction is compared with


def kl_standard_normal(mu: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mu, diag(exp(logvar))) || N(0, I))`` per dimension, in closed form (Eq. 2-3).

    ``0.5 * (mu^2 + sigma^2 - 1 - log sigma^2)``; sum over the last dimension for the full KL.
    """
    return 0.5 * (mu.pow(2) + logvar.exp() - 1.0 - logvar)


def reconstruction_loss(out: VAEOutput) -> Tensor:
    """Per-item ``L_rec`` of Eq. 2 / Eq. 4: squared error plus KL, shape ``(N,)``.

    Both terms are averaged over their dimensions (the paper's sums over the 128 dimensions only
    scale ``L_rec`` by 128, a constant absorbed by ``lambda1``), so that ``L_rec`` has the
    magnitude of the other loss terms.
    """
    mse = (out.recon - out.target).pow(2).mean(dim=-1)  # (N,)
    kl = kl_standard_normal(out.mu, out.logvar).mean(dim=-1)  # (N,)
    return mse + kl


class FeatureVAE(nn.Module):
    """MLP VAE on a ``dim``-d feature (P2VANet Eq. 1-4).

    Args:
        dim: feature size (128, the generator output).
        latent: size of the hidden variable ``Z`` (128: it becomes the embedding).
        hidden: hidden widths of the encoder and of the decoder MLPs.
        noise: denoising corruption in training: Gaussian noise of standard deviation
            ``noise * RMS(f)`` (RMS over the batch) is added to the encoder input; 0 = plain VAE.
        detach_target: compare the reconstruction with ``f.detach()`` (the reconstruction then
            trains the VAE without pulling the feature extractor towards easy-to-reconstruct
            features); ``False`` lets ``L_rec`` reach the generator through the target as well.
        act_layer: activation class of the MLPs.
    """

    def __init__(self, dim: int = 128, latent: int = 128, hidden: Sequence[int] = (128,),
                 noise: float = 0.0, detach_target: bool = True,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.latent = latent
        self.noise = noise
        self.detach_target = detach_target
        self.encoder = mlp(dim, hidden, 2 * latent, act_layer=act_layer)
        self.decoder = mlp(latent, hidden, dim, act_layer=act_layer)

    def corrupt(self, f: Tensor) -> Tensor:
        """Denoising input: ``f + noise * RMS(f) * eps`` in training, ``f`` otherwise."""
        if not self.training or self.noise <= 0:
            return f
        scale = f.detach().pow(2).mean().sqrt()
        return f + self.noise * scale * torch.randn_like(f)

    def forward(self, f: Tensor) -> VAEOutput:
        """``f (N, dim)`` -> :class:`VAEOutput`; ``z`` is sampled in training, ``mu`` in eval."""
        mu, logvar = self.encoder(self.corrupt(f)).chunk(2, dim=-1)  # 2 x (N, latent)
        logvar = logvar.clamp(*LOGVAR_RANGE)
        if self.training:
            z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # Eq. 1
        else:
            z = mu
        target = f.detach() if self.detach_target else f
        return VAEOutput(z=z, mu=mu, logvar=logvar, recon=self.decoder(z), target=target)
