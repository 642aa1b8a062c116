"""Scores of a trained network on fixed tuples, pairs and galleries (validation and evaluation).

Every item is embedded once (:func:`embed_items`); tuples, pairs and galleries are then scored
from those embeddings, through the network's heads and by cosine similarity
(:meth:`model.avnet.AVMatchNet.score`), so a tuple list costs one head evaluation per tuple and
no extra branch forward passes. The network is in eval mode throughout (the VAE uses ``mu``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
from torch import Tensor

from model.avnet import MODALITIES, AVMatchNet, Embedding, TupleEmbeddings
from model.data import DIRECTIONS, FeatureSource, iter_items


@dataclass
class ItemEmbeddings:
    """Embeddings ``h (N, d)`` of one modality's items, by id."""

    ids: list[str]
    h: Tensor  # (N, d) float32, on the network's device
    identity_ids: list[str]

    def __post_init__(self) -> None:
        self.index = {uid: i for i, uid in enumerate(self.ids)}

    def take(self, ids: Iterable[str]) -> Tensor:
        """``(len(ids), d)`` rows of ``ids``."""
        rows = torch.as_tensor([self.index[u] for u in ids], dtype=torch.long, device=self.h.device)
        return self.h.index_select(0, rows)


@torch.no_grad()
def embed_items(net: AVMatchNet, source: FeatureSource, modality: str, ids: Sequence[str], *,
                batch_size: int = 256, device: torch.device | str = "cpu",
                num_workers: int = 0) -> ItemEmbeddings:
    """Embed every item of ``ids`` once (eval mode), averaged over the fixed views the network's
    config names (``model.eval_voice_crops`` crops per voice, ``model.eval_face_flip``)."""
    net.eval()
    kept: list[str] = []
    parts: list[Tensor] = []
    for batch in iter_items(source, modality, ids, batch_size, num_workers=num_workers,
                            crops=net.cfg.eval_voice_crops, flip=net.cfg.eval_face_flip):
        x = batch["x"].to(device, non_blocking=True)  # (V, N, C, H, W)
        attr = batch["attr"].to(device, non_blocking=True)
        parts.append(net.embed_views(modality, x, attr).float())
        kept += batch["ids"]
    width = net.cfg.embed_dim
    h = torch.cat(parts) if parts else torch.zeros(0, width, device=device)
    bank = source.bank(modality, kept)
    return ItemEmbeddings(kept, h, bank.identity_ids)


def _tuple_embeddings(direction: str, query: Tensor, candidates: Tensor) -> TupleEmbeddings:
    """A :class:`TupleEmbeddings` from precomputed ``query (B, d)`` and ``candidates (B, k, d)``."""
    q_mod, c_mod = DIRECTIONS[direction]
    b, k, d = candidates.shape
    flat = {q_mod: query, c_mod: candidates.reshape(b * k, d)}  # (B, k, d) -> (B*k, d)
    items = {m: Embedding(h=flat[m], feature=flat[m], z=flat[m]) for m in MODALITIES}
    return TupleEmbeddings(direction, b, items, {q_mod: 1, c_mod: k})


@torch.no_grad()
def score_tuples(net: AVMatchNet, direction: str, query_ids: Sequence[str],
                 candidate_ids: Sequence[Sequence[str]], emb: Mapping[str, ItemEmbeddings],
                 chunk: int = 2048) -> dict[str, np.ndarray]:
    """Scores ``(n, k)`` of ``n`` tuples (one direction, one k) for every scoring rule the
    network has (``cosine``, ``head`` and the individual heads; see ``AVMatchNet.score``)."""
    q_mod, c_mod = DIRECTIONS[direction]
    n = len(query_ids)
    k = len(candidate_ids[0]) if n else 0
    out: dict[str, list[np.ndarray]] = {}
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        query = emb[q_mod].take(query_ids[start:stop])  # (b, d)
        flat = [c for row in candidate_ids[start:stop] for c in row]
        cands = emb[c_mod].take(flat).reshape(stop - start, k, -1)  # (b*k, d) -> (b, k, d)
        scores = net.score({}, out=_tuple_embeddings(direction, query, cands))
        for name, value in scores.items():
            out.setdefault(name, []).append(value.float().cpu().numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def score_matching(net: AVMatchNet, frame: pl.DataFrame, emb: Mapping[str, ItemEmbeddings]
                   ) -> dict[str, np.ndarray]:
    """:func:`score_tuples` on the rows of a matching frame of one direction and one ``k``."""
    directions = frame["direction"].unique().to_list()
    if len(directions) != 1 or frame["k"].n_unique() != 1:
        raise ValueError(f"score one direction and one k at a time; got {directions}, "
                         f"k {frame['k'].unique().to_list()}")
    return score_tuples(net, directions[0], frame["query_id"].to_list(),
                        frame["candidate_ids"].to_list(), emb)


def score_pairs(net: AVMatchNet, frame: pl.DataFrame, emb: Mapping[str, ItemEmbeddings]
                ) -> dict[str, np.ndarray]:
    """Scores ``(n,)`` of verification pairs of one direction (a pair is a 1:1 tuple)."""
    directions = frame["direction"].unique().to_list()
    if len(directions) != 1:
        raise ValueError(f"score one direction at a time; got {directions}")
    scores = score_tuples(net, directions[0], frame["query_id"].to_list(),
                          [[c] for c in frame["candidate_id"].to_list()], emb)
    return {name: value[:, 0] for name, value in scores.items()}


def score_gallery(net: AVMatchNet, direction: str, query_ids: Sequence[str],
                  gallery_ids: Sequence[str], emb: Mapping[str, ItemEmbeddings],
                  chunk: int = 64) -> dict[str, np.ndarray]:
    """Scores ``(Q, G)`` of every query against the whole gallery (retrieval).

    Only per-pair rules apply to a gallery: ``head`` is the retrieval distance (AML Eq. 8),
    else the verification head, else cosine, whatever the gallery size (a 1:k matching
    classifier never scores a gallery, even when ``G`` equals one of its ``k``).
    """
    parts: dict[str, list[np.ndarray]] = {}
    for start in range(0, len(query_ids), chunk):
        rows = query_ids[start:start + chunk]
        scores = score_tuples(net, direction, rows, [list(gallery_ids)] * len(rows), emb,
                              chunk=chunk)
        scores.pop("match", None)
        scores["head"] = next(scores[n] for n in ("distance", "verify", "cosine") if n in scores)
        for name, value in scores.items():
            parts.setdefault(name, []).append(value)
    return {name: np.concatenate(v) for name, v in parts.items()}
