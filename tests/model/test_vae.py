"""VAE on the 128-d features (model/vae.py): P2VANet Eq. 1-4."""

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from model.vae import FeatureVAE, VAEOutput, kl_standard_normal, reconstruction_loss


def test_kl_closed_form_by_hand():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(4.0)]])
    kl = kl_standard_normal(mu, logvar)
    # 0.5 (mu^2 + s^2 - 1 - log s^2): (1 + 1 - 1 - 0) / 2 and (0 + 4 - 1 - log 4) / 2
    assert kl.tolist()[0] == pytest.approx([0.5, 0.5 * (3 - math.log(4.0))])


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, logvar = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    ref = kl_divergence(Normal(mu, torch.exp(0.5 * logvar)), Normal(0.0, 1.0))
    torch.testing.assert_close(kl_standard_normal(mu, logvar), ref)


def test_reconstruction_loss_by_hand():
    out = VAEOutput(z=torch.zeros(1, 2), mu=torch.tensor([[1.0, 0.0]]),
                    logvar=torch.zeros(1, 2), recon=torch.tensor([[1.0, 3.0, 0.0]]),
                    target=torch.tensor([[0.0, 1.0, 0.0]]))
    # mean squared error (1 + 4 + 0) / 3 plus mean KL (0.5 + 0) / 2
    assert reconstruction_loss(out).tolist() == pytest.approx([5 / 3 + 0.25])


def test_kl_uses_each_items_own_posterior():
    """The KL of item i depends on item i's mu only (the reference code mixes them up)."""
    vae = FeatureVAE(dim=4, latent=3, hidden=(8,))
    f = torch.randn(5, 4, requires_grad=True)
    out = vae(f)
    kl_standard_normal(out.mu, out.logvar).sum(dim=-1)[2].backward()
    assert f.grad[2].abs().sum() > 0
    assert f.grad[[0, 1, 3, 4]].abs().sum() == 0


def test_train_samples_eval_uses_mu():
    torch.manual_seed(0)
    vae = FeatureVAE(dim=4, latent=3, hidden=(8,))
    f = torch.randn(5, 4)
    out = vae(f)
    assert not torch.equal(out.z, out.mu)
    vae.eval()
    first, second = vae(f), vae(f)
    assert torch.equal(first.z, first.mu) and torch.equal(first.z, second.z)
    assert out.recon.shape == (5, 4) and out.mu.shape == out.logvar.shape == (5, 3)


def test_denoising_corrupts_input_not_target():
    torch.manual_seed(0)
    vae = FeatureVAE(dim=4, latent=3, hidden=(8,), noise=0.5)
    seen = []
    vae.encoder.register_forward_hook(lambda m, inp, out: seen.append(inp[0]))
    f = torch.randn(64, 4)
    out = vae(f)
    assert not torch.allclose(seen[-1], f)
    noise_std = (seen[-1] - f).std().item()
    assert noise_std == pytest.approx(0.5 * f.pow(2).mean().sqrt().item(), rel=0.2)
    assert torch.equal(out.target, f)
    vae.eval()
    vae(f)
    assert torch.equal(seen[-1], f)  # no corruption in eval


def test_detach_target_controls_gradient_through_target():
    for detach in (True, False):
        vae = FeatureVAE(dim=4, latent=3, hidden=(8,), detach_target=detach)
        out = vae(torch.randn(2, 4, requires_grad=True))
        assert out.target.requires_grad is (not detach)


@pytest.mark.parametrize("noise", [0.0, 0.3])
def test_detach_input_gives_the_same_loss_without_reaching_the_input(noise):
    """``detach_input``: same L_rec value and VAE gradients, none into ``f``; ``mu`` stays live."""
    torch.manual_seed(0)
    f0 = torch.randn(6, 4)
    results = {}
    for detach in (False, True):
        torch.manual_seed(1)
        vae = FeatureVAE(dim=4, latent=3, hidden=(8,), noise=noise, detach_input=detach)
        f = f0.clone().requires_grad_(True)
        torch.manual_seed(2)
        out = vae(f)
        loss = reconstruction_loss(out).sum()
        loss.backward()
        grads = [p.grad.clone() for p in vae.parameters()]
        results[detach] = (loss.item(), grads, f.grad, out)
    loss_live, grads_live, f_grad_live, _ = results[False]
    loss_cut, grads_cut, f_grad_cut, out = results[True]
    assert loss_cut == pytest.approx(loss_live, rel=1e-6)
    for a, b in zip(grads_live, grads_cut, strict=True):
        torch.testing.assert_close(a, b)
    assert f_grad_live.abs().sum() > 0 and f_grad_cut is None
    torch.testing.assert_close(out.mu, out.post_mu)  # the same values, one of them cut from f
    f = f0.clone().requires_grad_(True)
    vae(f).mu.sum().backward()  # the downstream path still trains the feature extractor
    assert f.grad.abs().sum() > 0
