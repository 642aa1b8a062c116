"""Loss terms against values computed by hand on tiny tensors (model/losses.py)."""

import math

import pytest
import torch

from model.losses import (
    cross_modal_nce_loss,
    discriminator_accuracy,
    discriminator_loss,
    generator_adversarial_loss,
    lifted_structure_loss,
    per_tuple_ce,
    ranked_list_loss,
    triplet_loss,
    tuple_indices,
)


def two_tuples():
    """Two tuples of k = 3 candidates in 2-d with hand-checkable distances.

    Tuple 0: query (0, 0); candidates (3, 4), (1, 0) [positive], (0, 2).
      d(q, pos) = 1; d(q, negs) = 5, 2; d(pos, negs) = sqrt(20), sqrt(5).
    Tuple 1: query (1, 1); candidates (1, 1) [positive], (1, 4), (5, 1).
      d(q, pos) = 0; d(q, negs) = 3, 4; d(pos, negs) = 3, 4.
    """
    query = torch.tensor([[0.0, 0.0], [1.0, 1.0]], requires_grad=True)
    candidates = torch.tensor([[[3.0, 4.0], [1.0, 0.0], [0.0, 2.0]],
                               [[1.0, 1.0], [1.0, 4.0], [5.0, 1.0]]], requires_grad=True)
    label = torch.tensor([1, 0])
    return query, candidates, label


def test_tuple_indices_rows():
    idx = tuple_indices(torch.tensor([1, 0]), 3)
    # rows: 0, 1 queries; 2..4 candidates of tuple 0; 5..7 candidates of tuple 1
    assert idx["anchor"].tolist() == [0, 1]
    assert idx["positive"].tolist() == [3, 5]
    assert idx["negatives"].tolist() == [[2, 4], [6, 7]]


@pytest.mark.parametrize("margin", [1.0, 2.5])
def test_lifted_matches_aml_eq4_5_by_hand(margin):
    query, candidates, label = two_tuples()
    loss = lifted_structure_loss(query, candidates, label, margin=margin)
    # Eq. 5, tuple 0: anchor negatives at 5 and 2, positive negatives at sqrt(20), sqrt(5)
    j0 = math.log(math.exp(margin - 5) + math.exp(margin - 2) + math.exp(margin - math.sqrt(20))
                  + math.exp(margin - math.sqrt(5))) + 1.0
    # tuple 1: anchor and positive coincide: negatives at 3, 4 twice, d(q, pos) = 0
    j1 = math.log(2 * math.exp(margin - 3) + 2 * math.exp(margin - 4)) + 0.0
    expected = (max(0.0, j0) ** 2 + max(0.0, j1) ** 2) / (2 * 2)  # Eq. 4: 1/(2M) sum
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    assert j0 > 0 and (j1 > 0) == (margin == 2.5)  # margin 1 exercises the hinge at 0


def test_lifted_gradient_finite_with_coincident_points():
    query, candidates, label = two_tuples()  # tuple 1's positive equals its query
    lifted_structure_loss(query, candidates, label, margin=3.0).backward()
    assert torch.isfinite(query.grad).all() and torch.isfinite(candidates.grad).all()
    assert query.grad.abs().sum() > 0


def test_lifted_uses_positive_negatives():
    """Moving only a negative closer to the positive (not to the anchor) raises the loss."""
    query, candidates, label = two_tuples()
    base = lifted_structure_loss(query, candidates, label).item()
    moved = candidates.detach().clone()
    moved[0, 0] = torch.tensor([1.0, 0.5])  # was (3, 4); now 0.5 from the positive, ~1.1 from q
    far = candidates.detach().clone()
    far[0, 0] = torch.tensor([30.0, 40.0])
    assert lifted_structure_loss(query, moved, label).item() > base
    assert lifted_structure_loss(query, far, label).item() < base


def test_lifted_batch_negatives_by_hand():
    """``model.metric_negatives: batch``: Eq. 5's sums run over every candidate of the batch whose
    identity differs from the query's (Song et al.'s lifted structure over the batch)."""
    query, candidates, label = two_tuples()
    q_id = torch.tensor([7, 8])
    c_id = torch.tensor([[1, 7, 8], [8, 2, 7]])  # tuple 0's third candidate is tuple 1's identity
    loss = lifted_structure_loss(query, candidates, label, 1.0, (q_id, c_id))
    flat = candidates.detach().reshape(6, 2)  # (2, 3, 2) -> (6, 2)
    ids = c_id.reshape(6)  # (2, 3) -> (6,)
    expected = 0.0
    for i in range(2):
        anchor, pos = query[i].detach(), candidates[i, label[i]].detach()
        negs = flat[ids != q_id[i]]
        terms = [1.0 - torch.dist(x, n).item() for x in (anchor, pos) for n in negs]
        j = math.log(sum(math.exp(t) for t in terms)) + torch.dist(anchor, pos).item()
        expected += max(0.0, j) ** 2
    assert loss.item() == pytest.approx(expected / 4, rel=1e-5)
    # the tuple scope (Eq. 5) differs: it ignores tuple 1's candidates for tuple 0
    assert lifted_structure_loss(query, candidates, label).item() != pytest.approx(loss.item())


def test_cross_modal_nce_by_hand():
    """InfoNCE: each query against every candidate of the batch; its own identity's candidates
    are the positives (one term each), the other identities' candidates the negatives."""
    query, candidates, _ = two_tuples()
    q = torch.nn.functional.normalize(query.detach() + 0.5, dim=-1)  # no zero vector
    c = torch.nn.functional.normalize(candidates.detach(), dim=-1)
    q_id = torch.tensor([7, 8])
    c_id = torch.tensor([[1, 7, 8], [8, 2, 7]])  # tuple 0's third candidate is identity 8
    loss = cross_modal_nce_loss(q, c, q_id, c_id, temperature=0.5)
    flat, ids = c.reshape(6, 2), c_id.reshape(6)  # (2, 3, 2) -> (6, 2); (2, 3) -> (6,)
    terms = []
    for i in range(2):
        sims = [(torch.dot(q[i], flat[j]).item() / 0.5, ids[j].item() == q_id[i].item())
                for j in range(6)]
        negs = [math.exp(s) for s, same in sims if not same]
        terms += [-(s - math.log(math.exp(s) + sum(negs))) for s, same in sims if same]
    assert len(terms) == 4  # identity 7 twice, identity 8 twice
    assert loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-5)


def test_lifted_zero_without_negatives():
    query, candidates, label = two_tuples()
    loss = lifted_structure_loss(query, candidates[:, :1], torch.zeros(2, dtype=torch.long))
    assert loss.item() == 0.0


def test_triplet_by_hand():
    query, candidates, label = two_tuples()
    loss = triplet_loss(query, candidates, label, margin=1.5)
    # triplets: (1 - 5 + 1.5)+, (1 - 2 + 1.5)+, (0 - 3 + 1.5)+, (0 - 4 + 1.5)+ -> 0, 0.5, 0, 0
    assert loss.item() == pytest.approx(0.5 / 4)


def test_ranked_list_by_hand():
    emb = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.6, 0.8]])  # already unit length
    ids = torch.tensor([0, 0, 1])
    alpha, m, tn, eps = 1.2, 0.4, 5.0, 1e-5
    loss = ranked_list_loss(emb, ids, margin=m, alpha=alpha, tn=tn).item()
    d_ab, d_ac, d_bc = math.sqrt(2), math.sqrt(0.8), math.sqrt(0.4)
    lp = (d_ab - (alpha - m)) / (1 + 3 * eps)  # one positive beyond alpha - m, Tp = 0

    def ln(ds):  # negatives inside alpha, weighted by exp(tn * (alpha - d))
        w = [math.exp(tn * (alpha - d)) for d in ds]
        return sum(wi * (alpha - d) for wi, d in zip(w, ds, strict=True)) / (sum(w) + 3 * eps)

    per_anchor = [0.5 * lp + 0.5 * ln([d_ac]), 0.5 * lp + 0.5 * ln([d_bc]),
                  0.5 * 0.0 + 0.5 * ln([d_ac, d_bc])]
    assert loss == pytest.approx(sum(per_anchor) / 3, rel=1e-4)


def test_per_tuple_ce_sums_items_and_averages_tuples():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]])
    target = torch.tensor([[0, 1], [1, 1]])
    expected = ((math.log(1 + math.exp(-2)) + math.log(2)) + 2 * math.log(2)) / 2
    assert per_tuple_ce(logits, target).item() == pytest.approx(expected)
    # model.public_reduction: mean averages over each tuple's two items instead of summing them
    assert per_tuple_ce(logits, target, "mean").item() == pytest.approx(expected / 2)
    with pytest.raises(ValueError, match="sum or mean"):
        per_tuple_ce(logits, target, "max")


LOGITS = torch.tensor([[[2.0, 0.0], [0.0, 0.0]]])  # one tuple: a voice item, a face item
MODALITY = torch.tensor([[0, 1]])


def test_gan_discriminator_loss_is_eq3():
    expected = math.log(1 + math.exp(-2)) + math.log(2)
    assert discriminator_loss(LOGITS, MODALITY, "gan").item() == pytest.approx(expected)


def test_lsgan_discriminator_loss():
    # 1/2 ||(2, 0) - (1, 0)||^2 + 1/2 ||(0, 0) - (0, 1)||^2
    assert discriminator_loss(LOGITS, MODALITY, "lsgan").item() == pytest.approx(1.0)


def test_wgan_discriminator_loss():
    # critic c = D_face - D_voice: -2 for the voice, 0 for the face; E_voice[c] - E_face[c]
    assert discriminator_loss(LOGITS, MODALITY, "wgan").item() == pytest.approx(-2.0)


@pytest.mark.parametrize("kind", ["gan", "lsgan", "wgan"])
def test_generator_negate_is_minus_ldis(kind):
    got = generator_adversarial_loss(LOGITS, MODALITY, kind, "negate")
    assert got.item() == pytest.approx(-discriminator_loss(LOGITS, MODALITY, kind).item())


def test_generator_flip_swaps_labels():
    expected = math.log(1 + math.exp(2)) + math.log(2)
    assert generator_adversarial_loss(LOGITS, MODALITY, "gan", "flip").item() == \
        pytest.approx(expected)
    wgan_flip = generator_adversarial_loss(LOGITS, MODALITY, "wgan", "flip").item()
    assert wgan_flip == pytest.approx(2.0)  # = -L_dis for the linear critic


def test_unknown_kinds_raise():
    with pytest.raises(ValueError, match="adversarial"):
        discriminator_loss(LOGITS, MODALITY, "hinge")
    with pytest.raises(ValueError, match="generator_adv"):
        generator_adversarial_loss(LOGITS, MODALITY, "gan", "maximise")


def test_discriminator_accuracy():
    logits = torch.tensor([[[2.0, 0.0], [0.0, 1.0], [3.0, 0.0]]])
    assert discriminator_accuracy(logits, torch.tensor([[0, 1, 1]])).item() == pytest.approx(2 / 3)
