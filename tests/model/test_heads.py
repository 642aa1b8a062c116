"""Task heads and discriminator (model/heads.py)."""

import pytest
import torch
from torch import nn

from model.heads import (
    Discriminator,
    MatchingClassifier,
    RetrievalDistance,
    VerificationClassifier,
    mlp,
)


def test_mlp_widths():
    net = mlp(10, (7, 5), 3)
    shapes = [(m.in_features, m.out_features) for m in net if isinstance(m, nn.Linear)]
    assert shapes == [(10, 7), (7, 5), (5, 3)]
    assert isinstance(mlp(10, (), 3)[0], nn.Linear) and len(mlp(10, (), 3)) == 1


def test_matching_classifier_one_head_per_k():
    head = MatchingClassifier(dim=8, ks=(2, 10), hidden=())
    assert head.ks == (2, 10)
    assert head.heads["2"][0].in_features == 3 * 8 and head.heads["10"][0].in_features == 11 * 8
    assert head(torch.randn(4, 8), torch.randn(4, 10, 8)).shape == (4, 10)
    with pytest.raises(KeyError, match="k=3"):
        head(torch.randn(4, 8), torch.randn(4, 3, 8))


def test_matching_classifier_concatenates_query_first():
    head = MatchingClassifier(dim=2, ks=(2,), hidden=())
    lin = head.heads["2"][0]
    with torch.no_grad():
        lin.weight.zero_()
        lin.bias.zero_()
        lin.weight[0, 0] = 1.0  # logit 0 reads the query's first value
        lin.weight[1, 4] = 1.0  # logit 1 reads the second candidate's first value
    q = torch.tensor([[3.0, 0.0]])
    c = torch.tensor([[[0.0, 0.0], [5.0, 0.0]]])
    assert head(q, c).tolist() == [[3.0, 5.0]]


def test_verification_and_retrieval_shapes():
    v, f = torch.randn(4, 3, 8), torch.randn(4, 3, 8)
    assert VerificationClassifier(8, (16,))(v, f).shape == (4, 3, 2)
    dist = RetrievalDistance(8, (16,))
    assert dist(v, f).shape == (4, 3)
    # a function of the difference only
    torch.testing.assert_close(dist(v + 1.0, f + 1.0), dist(v, f))


def test_discriminator_outputs_two_logits_and_clips():
    disc = Discriminator(8)
    assert disc(torch.randn(5, 8)).shape == (5, 2)
    with torch.no_grad():
        disc.net[0].weight.fill_(1.0)
        disc.net[0].bias.fill_(-1.0)
    disc.clip_(0.01)
    assert disc.net[0].weight.max().item() == pytest.approx(0.01)
    assert disc.net[0].bias.min().item() == pytest.approx(-0.01)
