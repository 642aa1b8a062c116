"""Audio/visual branches and the generator (model/branches.py)."""

import pytest
import torch
from torch import nn

from model.avnet import ModelConfig
from model.branches import ConvBranch, Generator


@pytest.mark.parametrize("modality,shape", [("voice", (2, 1, 224, 125)), ("face", (2, 3, 64, 64)),
                                            ("face", (1, 3, 224, 224))])
def test_default_branches_give_32x10x10(modality, shape):
    cfg = ModelConfig()
    if modality == "voice":
        branch = ConvBranch(1, cfg.audio_channels, cfg.audio_kernels, cfg.audio_strides,
                            cfg.pool_size)
    else:
        branch = ConvBranch(3, cfg.face_channels, cfg.face_kernels, cfg.face_strides,
                            cfg.pool_size)
    assert sum(isinstance(m, nn.Conv2d) for m in branch.modules()) == 5
    out = branch(torch.randn(shape))
    assert out.shape == (shape[0], 3200) and branch.num_features == 3200


def test_layer_lists_must_agree():
    with pytest.raises(ValueError, match="one entry per layer"):
        ConvBranch(1, channels=(8, 8, 8, 8, 8), kernel_sizes=(3, 3), strides=((1, 1),) * 5)


def test_branch_takes_layer_classes():
    branch = ConvBranch(3, (4,) * 5, (3,) * 5, ((1, 1),) * 5, (2, 2),
                        norm_layer=nn.Identity, act_layer=nn.GELU)
    assert any(isinstance(m, nn.GELU) for m in branch.modules())
    assert not any(isinstance(m, nn.BatchNorm2d) for m in branch.modules())
    assert branch(torch.randn(1, 3, 8, 8)).shape == (1, 16)


def test_generator_maps_3200_to_128():
    gen = Generator(3200, (256,), 128)
    assert gen(torch.randn(4, 3200)).shape == (4, 128)
    linears = [m for m in gen.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3200, 256), (256, 128)]


def test_generator_norm_unknown_raises():
    with pytest.raises(ValueError, match="generator norm"):
        Generator(8, (4,), 4, norm="layer")


def _mean_pairwise_cosine(h):
    h = torch.nn.functional.normalize(h.detach(), dim=-1)
    n = h.shape[0]
    return float(((h @ h.T).sum() - n) / (n * (n - 1)))


def test_generator_batch_norm_removes_the_common_component():
    """Non-negative branch features share a large common part: without the output batch norm the
    L2-normalised embeddings of different items all point the same way (the collapse of the
    rows without public classifiers); with it they are centred and spread over the sphere."""
    torch.manual_seed(0)
    x = 1.0 + 0.5 * torch.rand(64, 3200)  # (N, 3200): common part + smaller item-specific part
    plain, normed = Generator(3200, (256,), 128), Generator(3200, (256,), 128, norm="batch")
    normed.net.load_state_dict(plain.net.state_dict())
    assert _mean_pairwise_cosine(plain(x)) > 0.9
    f = normed(x)  # (N, 128) in training mode: batch statistics
    assert f.mean(0).abs().max() < 1e-4 and torch.allclose(f.std(0, unbiased=False),
                                                           torch.ones(128), atol=0.05)
    assert abs(_mean_pairwise_cosine(f)) < 0.1
    assert not any(p.requires_grad for p in normed.norm.parameters())  # no affine parameters


def test_generator_batch_norm_eval_and_single_item():
    gen = Generator(16, (8,), 4, norm="batch")
    x = torch.randn(10, 16)
    gen(x)  # updates the running statistics
    mean = gen.norm.running_mean.clone()
    one = gen(x[:1])  # one item in training mode: running statistics, no update
    assert torch.equal(gen.norm.running_mean, mean)
    gen.eval()
    assert torch.allclose(one, gen(x[:1]))
    assert torch.allclose(gen(x)[:1], one)  # eval: per item, independent of the batch
