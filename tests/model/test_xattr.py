"""Cross-modal private-attribute regression (model/xattr.py): identity-level targets from train
items only, standardised per attribute, and the loss against them."""

import numpy as np
import pytest
import torch

from model.xattr import CrossAttributeRegression, identity_targets, other_modality


def test_targets_are_standardised_identity_means_of_train_items():
    attr = np.array([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0], [100.0, -1.0], [7.0, 10.0]])
    identity = np.array([0, 0, 1, -100, 3])  # -100: a non-train item, left out
    targets, known = identity_targets(attr, identity, n_identity=4)
    assert known.tolist() == [True, True, False, True]
    means = np.array([2.0, 5.0, 7.0])  # identities 0, 1, 3 (column 0); column 1 is constant
    assert targets[known, 0] == pytest.approx((means - means.mean()) / means.std())
    assert targets[known, 1] == pytest.approx([0.0, 0.0, 0.0])  # no spread: zero, not NaN
    assert targets[~known].tolist() == [[0.0, 0.0]]


def test_each_head_predicts_the_other_modalitys_attributes():
    reg = CrossAttributeRegression(dim=8, n_attr={"voice": 6, "face": 3}, n_identity=4)
    assert reg.heads["voice"].out_features == 3 and reg.heads["face"].out_features == 6
    assert other_modality("voice") == "face" and other_modality("face") == "voice"
    rng = np.random.default_rng(0)
    attr = {"voice": rng.normal(size=(8, 6)), "face": rng.normal(size=(8, 3))}
    identity = {"voice": np.array([0, 0, 1, 1, 2, 2, 3, 3]), "face": np.array([0, 1, 1, 2, 2, 2, 0, 1])}
    reg.set_targets(attr, identity)
    face_targets, face_known = identity_targets(attr["face"], identity["face"], 4)
    assert torch.allclose(reg.voice_target, torch.from_numpy(face_targets).float())
    assert reg.voice_known.tolist() == face_known.tolist() == [True, True, True, False]


def test_loss_is_the_mse_over_items_with_a_target():
    torch.manual_seed(0)
    reg = CrossAttributeRegression(dim=4, n_attr={"voice": 5, "face": 2}, n_identity=3)
    reg.voice_target.copy_(torch.tensor([[1.0, -1.0], [0.5, 0.0], [9.0, 9.0]]))
    reg.voice_known.copy_(torch.tensor([True, True, False]))
    h = torch.randn(4, 4, requires_grad=True)
    identity = torch.tensor([0, 2, 1, -100])  # identity 2 has no target, -100 is not train
    loss = reg.loss("voice", h, identity)
    pred = reg.heads["voice"](h[[0, 2]])
    expected = ((pred - reg.voice_target[[0, 1]]) ** 2).mean()
    assert loss.item() == pytest.approx(expected.item())
    loss.backward()
    assert h.grad[[1, 3]].abs().sum() == 0 and h.grad[[0, 2]].abs().sum() > 0
    none = reg.loss("voice", h, torch.tensor([2, -100, 2, 2]))
    assert none.item() == 0.0
