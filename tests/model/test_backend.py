"""model.backend: ridge CCA against closed forms, the back-end's buffers and its scores."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from model.avnet import AVMatchNet, InputDims, ModelConfig
from model.backend import (
    CCABackend,
    cross_video_moments,
    cross_video_pair_count,
    cross_video_pairs,
    ridge_cca,
)
from model.checkpoint import CheckpointError, load_model, save_model


def paired(n: int = 20000, noise: tuple[float, ...] = (0.5, 2.0), extra: int = 2,
           seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``x``, ``y`` sharing one latent per ``noise`` entry (``y_i = z_i + noise_i * e``), plus
    ``extra`` unshared dimensions each, mixed by random rotations; returns the true canonical
    correlations ``1 / sqrt(1 + noise^2)`` too."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal((n, len(noise)))
    x = np.concatenate([z, rng.standard_normal((n, extra))], axis=1)
    y = np.concatenate([z + rng.standard_normal(z.shape) * np.asarray(noise),
                        rng.standard_normal((n, extra))], axis=1)
    q1, _ = np.linalg.qr(rng.standard_normal((x.shape[1],) * 2))
    q2, _ = np.linalg.qr(rng.standard_normal((y.shape[1],) * 2))
    return x @ q1 * 3.0 + 1.0, y @ q2 * 0.5 - 2.0, 1.0 / np.sqrt(1.0 + np.square(noise))


def test_ridge_cca_recovers_the_canonical_correlations() -> None:
    x, y, rho = paired()
    cca = ridge_cca(x, y, ridge=1e-9, n_components=4)
    # the two shared latents first, then the unshared dimensions near 0
    np.testing.assert_allclose(cca.correlations[:2], rho, atol=0.01)
    assert np.all(cca.correlations[2:] < 0.03)
    # canonical variates: unit variance, uncorrelated, paired correlations equal to rho
    u, v = cca.project_x(x), cca.project_y(y)
    np.testing.assert_allclose(np.cov(u.T, bias=True), np.eye(4), atol=1e-6)
    cross = (u - u.mean(0)).T @ (v - v.mean(0)) / len(u)
    np.testing.assert_allclose(cross, np.diag(cca.correlations), atol=1e-6)


def test_a_larger_ridge_shrinks_the_correlations() -> None:
    x, y, _ = paired(n=4000)
    small = ridge_cca(x, y, ridge=1e-6, n_components=4).correlations
    large = ridge_cca(x, y, ridge=10.0, n_components=4).correlations
    assert np.all(large < small)


def test_cross_video_pairs_skip_the_same_video_and_other_identities() -> None:
    v, f = cross_video_pairs(["a", "a", "b"], ["v1", "v2", "v3"],
                             ["a", "a", "b", "b"], ["v1", "v2", "v3", "v4"])
    assert list(zip(v.tolist(), f.tolist(), strict=True)) == [(0, 1), (1, 0), (2, 3)]


def items(seed: int = 1) -> tuple[np.ndarray, list, list, np.ndarray, list, list]:
    """Voices and faces of 4 identities over uneven videos; identity ``d`` has one video only
    (no pairs), and one face sits in a video no voice has."""
    rng = np.random.default_rng(seed)
    xv = [("a", "1"), ("a", "1"), ("a", "2"), ("b", "3"), ("b", "4"), ("c", "5"), ("d", "6")]
    yv = [("a", "1"), ("a", "2"), ("a", "2"), ("a", "7"), ("b", "3"), ("b", "4"), ("c", "5"),
          ("c", "8"), ("d", "6")]
    x, y = rng.standard_normal((len(xv), 3)), rng.standard_normal((len(yv), 3))
    return (x, [i for i, _ in xv], [v for _, v in xv], y, [i for i, _ in yv], [v for _, v in yv])


def test_cross_video_moments_equal_the_moments_of_the_listed_pairs() -> None:
    x, xi, xvid, y, yi, yvid = items()
    v, f = cross_video_pairs(xi, xvid, yi, yvid)
    assert cross_video_pair_count(xi, xvid, yi, yvid) == len(v) == 11  # 3+3+2 (a), 1+1 (b), 1 (c)
    px, py = x[v], y[f]
    m = cross_video_moments(x, xi, xvid, y, yi, yvid)
    assert m.n == len(v)
    np.testing.assert_allclose(m.mean_x, px.mean(0), atol=1e-12)
    np.testing.assert_allclose(m.mean_y, py.mean(0), atol=1e-12)
    np.testing.assert_allclose(m.cov_xx, np.cov(px.T, bias=True), atol=1e-12)
    np.testing.assert_allclose(m.cov_yy, np.cov(py.T, bias=True), atol=1e-12)
    cross = (px - px.mean(0)).T @ (py - py.mean(0)) / len(v)
    np.testing.assert_allclose(m.cov_xy, cross, atol=1e-12)


def test_fit_items_equals_fit_on_every_listed_pair() -> None:
    x, xi, xvid, y, yi, yvid = items(seed=2)
    v, f = cross_video_pairs(xi, xvid, yi, yvid)
    tx, ty = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    listed, summed = CCABackend(3, ridge=0.1), CCABackend(3, ridge=0.1)
    listed.fit(tx[torch.from_numpy(v)], ty[torch.from_numpy(f)])
    assert summed.fit_items({"voice": tx, "face": ty}, {"voice": xi, "face": yi},
                            {"voice": xvid, "face": yvid}) == len(v)
    for name, buf in listed.named_buffers():
        assert torch.allclose(buf, dict(summed.named_buffers())[name], atol=1e-5), name


def test_unfitted_backend_is_the_identity_and_fit_weighs_by_correlation() -> None:
    x, y, _ = paired(n=3000, noise=(0.3, 1.0, 3.0), extra=1)
    h_v, h_f = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    backend = CCABackend(4, ridge=1e-6)
    assert not backend.is_fitted
    assert torch.equal(backend.project("voice", h_v), h_v)
    rho = backend.fit(h_v, h_f)
    assert backend.is_fitted
    p_v, p_f = backend.project("voice", h_v), backend.project("face", h_f)
    # each canonical direction scaled by its correlation: variance rho^2, cross-covariance rho^3
    var_v = p_v.double().var(0, unbiased=False).numpy()
    np.testing.assert_allclose(var_v, rho ** 2, atol=1e-3)
    cross = ((p_v - p_v.mean(0)) * (p_f - p_f.mean(0))).double().mean(0).numpy()
    np.testing.assert_allclose(cross, rho ** 3, atol=1e-3)


def test_ridge_must_be_positive() -> None:
    with pytest.raises(ValueError, match="ridge"):
        CCABackend(4, ridge=0.0)


TINY = {"audio_channels": (4, 4, 4, 4, 4), "face_channels": (4, 4, 4, 4, 4), "pool_size": (2, 2),
        "generator_hidden": (8,), "embed_dim": 8, "head_hidden": (8,), "retrieval_hidden": (8,),
        "vae_hidden": (8,), "ct_heads": 2, "match_ks": (2,), "audio_attr_tokens": 4,
        "face_attr_tokens": 2}
DIMS = InputDims(n_bins=32, frames=24, face_size=16, n_audio_attr=8, n_face_attr=4, n_nation=3)


def test_cosine_is_taken_after_the_fitted_backend_and_survives_a_checkpoint(tmp_path) -> None:
    torch.manual_seed(0)
    net = AVMatchNet(ModelConfig(**TINY), DIMS).eval()
    plain = AVMatchNet(ModelConfig(**{**TINY, "backend": "none"}), DIMS).eval()
    plain.load_state_dict({k: v for k, v in net.state_dict().items()
                           if not k.startswith("backend.")})
    voice, face = torch.randn(64, 8), torch.randn(64, 8)
    raw = F.cosine_similarity(voice, face, dim=-1)
    assert torch.allclose(net.pair_scores(voice, face)["cosine"], raw)  # unfitted: identity
    net.backend.fit(voice + 0.1 * torch.randn(64, 8), voice + face)
    fitted = net.pair_scores(voice, face)["cosine"]
    assert not torch.allclose(fitted, raw)
    assert torch.allclose(plain.pair_scores(voice, face)["cosine"], raw)
    # heads see the raw embeddings: the back-end changes cosine only
    assert torch.equal(net.pair_scores(voice, face)["verify"], plain.pair_scores(voice, face)["verify"])
    save_model(tmp_path / "ckpt", net, {"model": {}})
    again = AVMatchNet(ModelConfig(**TINY), DIMS).eval()
    load_model(tmp_path / "ckpt", again)
    assert again.backend.is_fitted
    assert torch.equal(again.pair_scores(voice, face)["cosine"], fitted)


def test_a_checkpoint_from_before_the_backend_loads_with_plain_cosine(tmp_path) -> None:
    """A checkpoint whose config predates ``model.backend`` (and whose tensors have no back-end
    buffers) is rebuilt with ``backend: none``, the plain cosine it was selected with."""
    from pipeline.evaluate import load_network

    torch.manual_seed(0)
    net = AVMatchNet(ModelConfig(**{**TINY, "backend": "none"}), DIMS).eval()
    old = {k: v for k, v in net.cfg.to_dict().items() if k not in ("backend", "backend_ridge")}
    save_model(tmp_path / "old", net, {"model": old, "dims": dataclasses.asdict(DIMS)})
    again, _ = load_network(tmp_path / "old")
    assert again.backend is None and again.cfg.backend == "none"
    voice, face = torch.randn(8, 8), torch.randn(8, 8)
    assert torch.allclose(again.pair_scores(voice, face)["cosine"],
                          F.cosine_similarity(voice, face, dim=-1))
    # the same JSON with the shipped default would expect back-end buffers the file lacks
    with pytest.raises(CheckpointError, match="backend"):
        load_model(tmp_path / "old", AVMatchNet(ModelConfig(**TINY), DIMS))
