"""model.scoring on the tiny generated corpus: items are embedded through their evaluation views."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from model.avnet import AVMatchNet, InputDims, ModelConfig
from model.data import DataConfig, DataPaths, ItemDataset, prepare_training
from model.scoring import embed_items
from pipeline.common.config import build

TINY = dict(embed_dim=16, audio_channels=[4, 4, 4, 4, 4], face_channels=[4, 4, 4, 4, 4],
            audio_strides=[[4, 4], [2, 2], [1, 1], [1, 1], [1, 1]],
            face_strides=[[2, 2], [2, 2], [1, 1], [1, 1], [1, 1]], pool_size=[3, 3],
            generator_hidden=[16], head_hidden=[16], retrieval_hidden=[8], vae_hidden=[16],
            audio_attr_tokens=4, face_attr_tokens=12, match_ks=[2, 4], disc_steps=1)


@pytest.fixture(scope="module")
def data(tiny_data: Path):
    return prepare_training(DataPaths.under(tiny_data), DataConfig(batch_size=4, min_nation_count=2))


def tiny_net(data, **overrides) -> AVMatchNet:
    torch.manual_seed(0)
    cfg = build(ModelConfig, {**TINY, **overrides})
    return AVMatchNet(cfg, InputDims(**data.source.input_dims())).eval()


@pytest.mark.parametrize("crops,flip", [(1, False), (3, True)])
def test_embed_items_averages_the_views_the_config_names(data, crops: int, flip: bool) -> None:
    """``embed_items`` embeds each item through ``model.eval_voice_crops`` crops and, with
    ``model.eval_face_flip``, the mirrored face as well: the normalised mean of the views."""
    net = tiny_net(data, eval_voice_crops=crops, eval_face_flip=flip)
    ids = {m: data.val.banks[m].ids[:7] for m in ("voice", "face")}  # 6 voices, 7 faces
    with torch.no_grad():
        for modality in ("voice", "face"):
            got = embed_items(net, data.source, modality, ids[modality], batch_size=3)
            n = len(ids[modality])
            assert got.ids == ids[modality] and got.h.shape == (n, 16) and n >= 6
            batch = ItemDataset(data.source, modality, ids[modality], batch_size=n,
                                crops=crops, flip=flip)[0]
            views = batch["x"]  # (V, n, C, H, W)
            assert views.shape[0] == (crops if modality == "voice" else 1 + flip)
            per_view = torch.stack([net.embed(modality, x, batch["attr"]).h for x in views])
            want = torch.nn.functional.normalize(per_view.mean(dim=0), dim=-1)
            torch.testing.assert_close(got.h, want, rtol=1e-5, atol=1e-6)
        if flip:  # the mirror image changes the face embedding
            plain = net.embed("face", views[0], batch["attr"]).h
            assert not torch.allclose(got.h, plain, atol=1e-4)
