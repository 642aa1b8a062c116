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
    post_mu: Tensor | None = None  # (N, latent): the posterior of Eq. 1-3 when it differs from
    post_logvar: Tensor | None = None  # mu/logvar (detach_input in training); None = mu/logvar

    @property
    def posterior(self) -> tuple[Tensor, Tensor]:
        """``(mu, logvar)`` that Eq. 1's sample and Eq. 3's KL use."""
        if self.post_mu is None or self.post_logvar is None:
            return self.mu, self.logvar
        return self.post_mu, self.post_logvar


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
    kl = kl_standard_normal(*out.posterior).mean(dim=-1)  # (N,)
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
        detach_input: in training, also encode ``f.detach()`` for Eq. 1-4 (the sample, the
            reconstruction and the KL), so that ``L_rec`` trains the VAE alone and never reaches
            the feature extractor through the encoder's input; ``mu`` for downstream still
            comes from the live ``f`` (one extra encoder pass in training).
        act_layer: activation class of the MLPs.
    """

    def __init__(self, dim: int = 128, latent: int = 128, hidden: Sequence[int] = (128,),
                 noise: float = 0.0, detach_target: bool = True, detach_input: bool = False,
                 act_layer: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.latent = latent
        self.noise = noise
        self.detach_target = detach_target
        self.detach_input = detach_input
        self.encoder = mlp(dim, hidden, 2 * latent, act_layer=act_layer)
        self.decoder = mlp(latent, hidden, dim, act_layer=act_layer)

    def corrupt(self, f: Tensor) -> Tensor:
        """Denoising input: ``f + noise * RMS(f) * eps`` in training, ``f`` otherwise."""
        if not self.training or self.noise <= 0:
            return f
        scale = f.detach().pow(2).mean().sqrt()
        return f + self.noise * scale * torch.randn_like(f)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``x (N, dim)`` -> ``mu, logvar``, each ``(N, latent)``."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)  # (N, 2*latent) -> 2 x (N, latent)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def forward(self, f: Tensor) -> VAEOutput:
        """``f (N, dim)`` -> :class:`VAEOutput`; ``z`` is sampled in training, ``mu`` in eval."""
        x = self.corrupt(f)
        mu, logvar = self.encode(x)
        if not self.training:
            return VAEOutput(z=mu, mu=mu, logvar=logvar, recon=self.decoder(mu),
                             target=f.detach() if self.detach_target else f)
        eps = torch.randn_like(mu)
        z = mu + eps * torch.exp(0.5 * logvar)  # Eq. 1
        target = f.detach() if self.detach_target else f
        if not self.detach_input:
            return VAEOutput(z=z, mu=mu, logvar=logvar, recon=self.decoder(z), target=target)
        post_mu, post_logvar = self.encode(x.detach())  # the same values, cut from f
        post_z = post_mu + eps * torch.exp(0.5 * post_logvar)  # Eq. 1, for L_rec only
        return VAEOutput(z=z, mu=mu, logvar=logvar, recon=self.decoder(post_z), target=target,
                         post_mu=post_mu, post_logvar=post_logvar)
