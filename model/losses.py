"""Loss terms of AML and P2VANet, on matching tuples (one query, ``k`` candidates).

Tuple convention (AML III, P2VANet III-A): tuple ``i`` has a query ``h_i0`` in one modality and
``k`` candidates ``h_i1..h_ik`` in the other; ``label[i]`` is the position of the positive among
the candidates (the papers write it as ``h_i1``; our training tuples randomise its position).

- :func:`lifted_structure_loss`: AML Eq. 4-5 / P2VANet Eq. 15-16, through
  ``pytorch_metric_learning.losses.LiftedStructureLoss`` with explicit per-tuple index pairs.
- :func:`triplet_loss`: AML Table IX "Triplet", ``k - 1`` triplets per tuple, through
  ``pytorch_metric_learning.losses.TripletMarginLoss``.
- :func:`ranked_list_loss`: AML Table IX "RankList", through
  ``pytorch_metric_learning.losses.RankedListLoss`` over the whole batch with identity labels.
- :func:`discriminator_loss` / :func:`generator_adversarial_loss`: AML Eq. 3, 10-11 and
  P2VANet Eq. 5 in the GAN, LSGAN and WGAN forms of AML Table VIII.
- :func:`per_tuple_ce`: the cross-entropy sums over the items of a tuple of P2VANet Eq. 13-14.

Distances are Euclidean on the embeddings as given (``LpDistance(normalize_embeddings=False)``),
as in Eq. 5; the model L2-normalises them first only when ``model.normalize_embedding`` is set.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from pytorch_metric_learning.distances import LpDistance
from pytorch_metric_learning.losses import (
    LiftedStructureLoss,
    NTXentLoss,
    RankedListLoss,
    TripletMarginLoss,
)
from pytorch_metric_learning.reducers import MeanReducer
from torch import Tensor

__all__ = ["tuple_indices", "lifted_structure_loss", "triplet_loss", "ranked_list_loss",
           "cross_modal_nce_loss",
           "discriminator_loss", "generator_adversarial_loss", "discriminator_accuracy",
           "per_tuple_ce", "ADVERSARIAL_KINDS", "ITEM_REDUCTIONS"]

ITEM_REDUCTIONS = ("sum", "mean")  # per_tuple_ce over a tuple's items (model.public_reduction)

ADVERSARIAL_KINDS = ("gan", "lsgan", "wgan")


def _flatten_tuples(query: Tensor, candidates: Tensor) -> Tensor:
    """Stack queries ``(B, d)`` and candidates ``(B, k, d)`` into one ``(B + B*k, d)`` matrix.

    Row ``i`` is query ``i``; row ``B + i*k + j`` is candidate ``j`` of tuple ``i``.
    """
    b, k, d = candidates.shape
    return torch.cat([query, candidates.reshape(b * k, d)], dim=0)  # (B + B*k, d)


def tuple_indices(label: Tensor, k: int) -> dict[str, Tensor]:
    """Row indices (into :func:`_flatten_tuples`) of each tuple's anchor, positive and negatives.

    Returns ``anchor (B,)``, ``positive (B,)`` and ``negatives (B, k-1)`` (candidates other than
    the positive, in candidate order).
    """
    b = label.shape[0]
    device = label.device
    anchor = torch.arange(b, device=device)
    cand = b + anchor[:, None] * k + torch.arange(k, device=device)[None, :]  # (B, k)
    positive = cand.gather(1, label[:, None]).squeeze(1)  # (B,)
    keep = torch.arange(k, device=device)[None, :] != label[:, None]  # (B, k)
    negatives = cand[keep].view(b, k - 1)  # (B, k-1)
    return {"anchor": anchor, "positive": positive, "negatives": negatives}


def _distance() -> LpDistance:
    return LpDistance(normalize_embeddings=False, p=2, power=1)


def lifted_structure_loss(query: Tensor, candidates: Tensor, label: Tensor,
                          margin: float = 1.0, identities: tuple[Tensor, Tensor] | None = None
                          ) -> Tensor:
    """Lifted structured loss of AML Eq. 4-5 (P2VANet Eq. 15-16).

    ``J_i = log(sum_j exp(margin - d(h_i0, h_ij)) + sum_q exp(margin - d(h_i1, h_iq))) + d(h_i0,
    h_i1)`` over the negatives ``j, q`` of tuple ``i``, and ``L = 1/(2M) sum_i max(0, J_i)^2``.
    The anchor (query) and the positive are in different modalities; the positive's negatives
    are in its own modality (``d(h_i1, h_iq)``), exactly as Eq. 5 writes them.

    pytorch-metric-learning's ``LiftedStructureLoss`` computes this equation when it is given, per
    tuple, the positive pair ``(anchor, positive)`` and the negative pairs ``(anchor, n)`` and
    ``(positive, n)``: it takes the log-sum-exp over the negative pairs whose first index is the
    anchor or the positive, adds the positive distance, squares the hinge, halves and averages
    over positive pairs. Its ``ref_emb`` mode cannot be used: it only holds query-to-reference
    distances (no positive-to-negative ones) and compares the positive's index in the reference
    set with anchor indices. Tuples with ``k < 2`` have no negatives; the loss is 0 for them
    (``log`` of an empty sum is ``-inf``).

    ``identities = (query_ids (B,), candidate_ids (B, k))`` (``model.metric_negatives: batch``)
    widens both sums from the tuple's negatives to every candidate of the batch whose identity
    differs from the query's (Song et al.'s lifted structure over the batch); ``None``: Eq. 5.
    """
    b, k, _ = candidates.shape
    if k < 2:
        return candidates.sum() * 0.0
    idx = tuple_indices(label, k)
    if identities is None:
        neg = idx["negatives"]  # (B, k-1)
        a2 = torch.cat([idx["anchor"][:, None].expand_as(neg),
                        idx["positive"][:, None].expand_as(neg)], dim=1).reshape(-1)  # (B*2(k-1),)
        n = torch.cat([neg, neg], dim=1).reshape(-1)  # (B * 2(k-1),)
    else:
        q_id, c_id = identities
        other = c_id.reshape(1, b * k) != q_id[:, None]  # (B, B*k)
        row, col = other.nonzero(as_tuple=True)  # (P,) tuple and candidate of each negative
        n = (b + col).repeat(2)  # (2P,): rows of the negatives, for the anchor then the positive
        a2 = torch.cat([idx["anchor"][row], idx["positive"][row]])  # (2P,)
    loss = LiftedStructureLoss(neg_margin=margin, pos_margin=0.0, distance=_distance(),
                               reducer=MeanReducer())
    return loss(_flatten_tuples(query, candidates), None,
                indices_tuple=(idx["anchor"], idx["positive"], a2, n))


def triplet_loss(query: Tensor, candidates: Tensor, label: Tensor, margin: float = 1.0) -> Tensor:
    """Triplet loss with the ``k - 1`` triplets ``(h_i0, h_i1, h_ij)`` of each tuple (AML IV-E).

    ``L = mean over triplets of max(0, d(h_i0, h_i1) - d(h_i0, h_ij) + margin)`` (FaceNet's
    hinge), through pytorch-metric-learning's ``TripletMarginLoss`` with a plain mean
    (``MeanReducer``; the library's default averages over non-zero triplets only).
    """
    b, k, _ = candidates.shape
    if k < 2:
        return candidates.sum() * 0.0
    idx = tuple_indices(label, k)
    neg = idx["negatives"]  # (B, k-1)
    anchor = idx["anchor"][:, None].expand_as(neg).reshape(-1)  # (B*(k-1),)
    positive = idx["positive"][:, None].expand_as(neg).reshape(-1)  # (B*(k-1),)
    loss = TripletMarginLoss(margin=margin, distance=_distance(), reducer=MeanReducer())
    return loss(_flatten_tuples(query, candidates), None,
                indices_tuple=(anchor, positive, neg.reshape(-1)))  # negatives (B*(k-1),)


def _world() -> int:
    """Processes in the default group (1 outside ``torch.distributed``)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1


def _gather(x: Tensor) -> Tensor:
    """``x`` of every process, concatenated in rank order. This process's own part keeps its
    gradient; the others arrive as constants. Every process must hold the same shape (the tuple
    sampler gives each an equal share of the global batch)."""
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


def cross_modal_nce_loss(query: Tensor, candidates: Tensor, query_ids: Tensor,
                         candidate_ids: Tensor, temperature: float = 0.1) -> Tensor:
    """Cross-modal InfoNCE over a batch of tuples (not in the papers; ``model.nce_weight``).

    Each query ``(B, d)`` is an anchor against every candidate of the batch ``(B, k, d)``: the
    candidates of its own identity are its positives, all others its negatives, scored by cosine
    similarity over ``temperature`` (CLIP's and NT-Xent's form, one direction per batch). This is
    pytorch-metric-learning's ``NTXentLoss`` with the candidates as its reference set.

    Under ``torch.distributed`` the batch is the global one: queries, candidates and identities
    are gathered from every process, so the value equals one process's on the whole batch. The
    returned term has that value and ``world_size`` times this process's share of its gradient,
    so that DistributedDataParallel's mean over processes gives the whole batch's gradient.
    """
    world = _world()
    if world > 1:
        query, candidates = _gather(query), _gather(candidates)  # (W*B, d), (W*B, k, d)
        query_ids, candidate_ids = _gather(query_ids), _gather(candidate_ids)
    b, k, d = candidates.shape
    loss = NTXentLoss(temperature=temperature)(
        query, query_ids, ref_emb=candidates.reshape(b * k, d),  # (B, k, d) -> (B*k, d)
        ref_labels=candidate_ids.reshape(b * k))  # (B, k) -> (B*k,)
    if world > 1:
        loss = loss + (world - 1) * (loss - loss.detach())  # same value, world x the gradient
    return loss


def ranked_list_loss(embeddings: Tensor, identities: Tensor, margin: float = 0.4,
                     alpha: float = 1.2, tn: float = 5.0) -> Tensor:
    """Ranked list loss (Wang et al., CVPR 2019; AML Table IX "RankList") over a whole batch.

    The loss is defined on a batch ranked by identity: every item (voice or face) is an anchor,
    items of the same identity are its positives (pulled inside ``alpha - margin``), all others
    its negatives (pushed beyond ``alpha``, weighted by ``exp(tn * (alpha - d))``). This is
    pytorch-metric-learning's ``RankedListLoss`` (positive/negative balance 0.5, ``Tp = 0``) on
    L2-normalised embeddings, the setting of the RLL paper.
    """
    loss = RankedListLoss(margin=margin, Tn=tn, alpha=alpha, imbalance=0.5,
                          distance=LpDistance(normalize_embeddings=True),
                          reducer=MeanReducer())
    return loss(embeddings, identities)


def per_tuple_ce(logits: Tensor, target: Tensor, reduction: str = "sum") -> Tensor:
    """``-1/M sum_i sum_j y_ij log p(h_ij)``: cross-entropy summed over the items of each tuple
    and averaged over tuples (the form of AML Eq. 3 and P2VANet Eq. 5, 13, 14); with
    ``reduction="mean"`` averaged over the items of each tuple instead of summed.

    ``logits (B, n, C)``, ``target (B, n)``.
    """
    if reduction not in ITEM_REDUCTIONS:
        raise ValueError(f"reduction must be sum or mean; got {reduction!r}")
    b, n, c = logits.shape
    ce = F.cross_entropy(logits.reshape(b * n, c), target.reshape(b * n),  # (B*n, C), (B*n,)
                         reduction="none")
    per_tuple = ce.view(b, n)  # (B*n,) -> (B, n)
    per_tuple = per_tuple.sum(dim=1) if reduction == "sum" else per_tuple.mean(dim=1)  # (B,)
    return per_tuple.mean()


def _critic(logits: Tensor) -> Tensor:
    """WGAN critic score from the 2-way discriminator output: ``D_face(h) - D_voice(h)``."""
    return logits[..., 1] - logits[..., 0]


def discriminator_loss(logits: Tensor, modality: Tensor, kind: str) -> Tensor:
    """Discriminator loss ``L_dis`` (AML Eq. 3, P2VANet Eq. 5), minimised by the discriminator.

    ``logits (B, n, 2)``: discriminator outputs for the ``n = k + 1`` items of each tuple;
    ``modality (B, n)``: 0 voice, 1 face.

    - ``gan``: Eq. 3, cross-entropy summed over the tuple's items, averaged over tuples.
    - ``lsgan``: least squares (Mao et al., ICCV 2017): ``1/2 ||D(h) - onehot(y)||^2`` with the
      same per-tuple sum and mean.
    - ``wgan``: Wasserstein critic (Arjovsky et al., ICML 2017) with ``c(h) = D_face - D_voice``:
      ``L_dis = E_voice[c] - E_face[c]`` (means over the items of each modality); its weights are
      clipped after every step (:meth:`AVMatchNet.clip_discriminator`).
    """
    if kind == "gan":
        return per_tuple_ce(logits, modality)
    if kind == "lsgan":
        target = F.one_hot(modality, 2).to(logits.dtype)  # (B, n, 2)
        return 0.5 * (logits - target).pow(2).sum(dim=-1).sum(dim=1).mean()
    if kind == "wgan":
        critic = _critic(logits)  # (B, n)
        voice, face = modality == 0, modality == 1
        return critic[voice].mean() - critic[face].mean()
    raise ValueError(f"unknown adversarial kind {kind!r}; expected one of {ADVERSARIAL_KINDS}")


def generator_adversarial_loss(logits: Tensor, modality: Tensor, kind: str, mode: str) -> Tensor:
    """The generator's adversarial term (AML Eq. 10: the generator minimises ``L_total - L_dis``).

    - ``negate`` (Eq. 10 as written): ``-L_dis``.
    - ``flip``: ``L_dis`` with the modality labels swapped (the non-saturating form of Goodfellow
      et al.; for ``wgan`` it equals ``-L_dis``).
    """
    if mode == "negate":
        return -discriminator_loss(logits, modality, kind)
    if mode == "flip":
        return discriminator_loss(logits, 1 - modality, kind)
    raise ValueError(f"unknown generator_adv {mode!r}; expected negate or flip")


def discriminator_accuracy(logits: Tensor, modality: Tensor) -> Tensor:
    """Fraction of items whose modality the discriminator gets right (argmax of its 2 outputs)."""
    return (logits.argmax(dim=-1) == modality).float().mean()
