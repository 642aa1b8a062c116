"""model/data.py on the tiny corpus's real stores: labels, attributes, normalisation, batches."""

from __future__ import annotations

import dataclasses
import json
import logging
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch

from model.data import (
    IGNORE,
    OTHER,
    BatchKey,
    DataConfig,
    DataPaths,
    FeatureSource,
    HeldOutSplitError,
    ItemDataset,
    LabelMaps,
    MissingItemsError,
    SpecNorm,
    TupleBatchSampler,
    TupleDataset,
    eval_views,
    iter_items,
    load_tuples,
    make_loader,
    prepare_training,
    read_audio_attributes,
    read_face_attributes,
    spectrogram_normalization,
    train_utterance_ids,
)
from model.stores import FaceStore, SpectrogramStore

CFG = DataConfig(batch_size=4, min_nation_count=2)
BATCH_KEYS = {"direction", "voice", "voice_attr", "face", "face_attr", "label",
              *(f"{m}_{n}" for m in ("voice", "face") for n in ("identity", "gender", "nation"))}


@pytest.fixture(scope="module")
def paths(tiny_data: Path) -> DataPaths:
    return DataPaths.under(tiny_data)


@pytest.fixture(scope="module")
def data(paths: DataPaths):
    return prepare_training(paths, CFG)


def identities_frame() -> pl.DataFrame:
    rows = [("id1", "m", "USA", "train"), ("id2", "f", "USA", "train"), ("id3", "f", "UK", "train"),
            ("id4", "m", "UK", "train"), ("id5", "m", "Chile", "train"), ("id6", "x", None, "train"),
            ("id7", "f", "Peru", "val"), ("id8", "m", "USA", "test")]
    return pl.DataFrame(rows, schema=["id", "gender", "nationality", "split"], orient="row")


# ---- labels and attributes ----------------------------------------------------------------------

def test_label_maps_come_from_train_and_pool_rare_nationalities() -> None:
    maps = LabelMaps.from_identities(identities_frame(), min_nation_count=2)
    assert maps.identities == ("id1", "id2", "id3", "id4", "id5", "id6")
    assert maps.nations == ("UK", "USA", OTHER) and maps.pooled == ("Chile",)
    assert [maps.gender_index(g) for g in ("f", "m", "x", None)] == [0, 1, IGNORE, IGNORE]
    assert maps.nation_index("USA") == 1 and maps.nation_index("Chile") == 2
    assert maps.nation_index("Peru") == 2  # val-only nationality -> other
    assert maps.nation_index(None) == IGNORE
    assert maps.identity_index("id7") == IGNORE and maps.identity_index("id3") == 2
    restored = LabelMaps.from_dict(json.loads(json.dumps(maps.to_dict())))
    assert restored == maps and restored.nation_index("Chile") == 2
    assert LabelMaps.from_identities(identities_frame(), 1).nations == ("Chile", "UK", "USA", OTHER)


def test_audio_attributes_standardised_with_train_stats(paths: DataPaths) -> None:
    table = read_audio_attributes(paths.audio_attributes, paths.audio_stats)
    raw = pl.read_parquet(paths.audio_attributes)
    assert table.ids == raw["id"].to_list() and table.values.shape == (raw.height, 384)
    train = table.take(train_utterance_ids(paths))
    varying = raw.filter(pl.col("id").is_in(train_utterance_ids(paths))).drop("id").to_numpy().std(0) > 0
    np.testing.assert_allclose(train.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(train.std(0)[varying], 1.0, rtol=1e-3)
    stats = json.loads(paths.audio_stats.read_text())
    j = 7
    expected = (raw[:, j + 1].to_numpy() - stats["mean"][j]) / stats["std"][j]
    np.testing.assert_allclose(table.values[:, j], expected, rtol=1e-5, atol=1e-6)
    some = table.ids[5:8]
    assert read_audio_attributes(paths.audio_attributes, paths.audio_stats, some).ids == some
    with pytest.raises(MissingItemsError, match="no attribute row"):
        table.take(["nope/x/00001"])


def test_face_attributes_probabilities_or_binary(paths: DataPaths) -> None:
    prob = read_face_attributes(paths.face_attributes, "prob")
    binary = read_face_attributes(paths.face_attributes, "binary")
    assert prob.names == binary.names and len(prob.names) == 12
    assert ((prob.values > 0) & (prob.values < 1)).all()
    np.testing.assert_array_equal(binary.values, (prob.values >= 0.5).astype(np.float32))
    with pytest.raises(ValueError, match="face attribute mode"):
        read_face_attributes(paths.face_attributes, "logits")


def test_spectrogram_normalisation_uses_train_utterances_only(paths: DataPaths, tiny_data: Path) -> None:
    train_ids = train_utterance_ids(paths)
    with SpectrogramStore(paths.spectrograms) as cmvn:
        assert spectrogram_normalization(cmvn, train_ids) is None
    with SpectrogramStore(tiny_data / "features_aml" / "spectrograms.h5") as raw:
        norm = spectrogram_normalization(raw, train_ids)
        frames = np.concatenate([raw.full(u).ravel() for u in train_ids]).astype(np.float64)
        every = np.concatenate([raw.full(u).ravel() for u in raw.ids]).astype(np.float64)
    assert norm is not None and norm.utterances == len(train_ids)
    assert norm.frames * raw.n_bins == frames.size
    assert norm.mean == pytest.approx(frames.mean(), rel=1e-9)
    assert norm.std == pytest.approx(frames.std(), rel=1e-9)
    assert abs(norm.mean - every.mean()) > 1e-6  # val/test/seen_heard utterances are not in it
    assert SpecNorm.from_dict(json.loads(json.dumps(norm.to_dict()))) == norm


# ---- tuples, batches and the held-out guard -------------------------------------------------------

def test_held_out_splits_are_refused(paths: DataPaths, data, tmp_path: Path) -> None:
    for split in ("test", "seen_heard"):
        with pytest.raises(HeldOutSplitError):
            load_tuples(paths.tuples, split)
        with pytest.raises(HeldOutSplitError):  # refused before any file is looked for
            load_tuples(tmp_path, split)
    test_rows = pl.read_parquet(paths.tuple_table("test"))
    assert test_rows.height > 0
    with pytest.raises(HeldOutSplitError):
        TupleDataset(test_rows, data.source, train=False)
    assert set(load_tuples(paths.tuples, "val")["split"].to_list()) == {"val"}


def test_batch_follows_the_contract(data) -> None:
    ds, source = data.train, data.source
    for (direction, k), rows in ds.groups().items():
        batch = ds[BatchKey(0, 0, rows[:3])]
        assert set(batch) == BATCH_KEYS and batch["direction"] == direction
        n_v, n_f = (1, k) if direction == "v2f" else (k, 1)
        F, T, S = source.voice_store.n_bins, source.voice_store.frames, source.face_store.size
        shapes = {"voice": (3, n_v, 1, F, T), "voice_attr": (3, n_v, 384), "face": (3, n_f, 3, S, S),
                  "face_attr": (3, n_f, 12), "voice_identity": (3, n_v), "face_nation": (3, n_f),
                  "label": (3,)}
        for key, shape in shapes.items():
            assert tuple(batch[key].shape) == shape, key
        assert batch["voice"].dtype == batch["face"].dtype == torch.float32
        assert all(batch[f"{m}_{n}"].dtype == torch.int64 for m in ("voice", "face")
                   for n in ("identity", "gender", "nation"))
        assert batch["face"].min() >= -1.0 and batch["face"].max() <= 1.0
        query = batch["voice_identity" if direction == "v2f" else "face_identity"][:, 0]
        cands = batch["face_identity" if direction == "v2f" else "voice_identity"]
        positive = cands[torch.arange(3), batch["label"]]
        assert torch.equal(query, positive) and (query >= 0).all()  # train identities only


def test_eval_batches_are_the_stored_items(data, paths: DataPaths) -> None:
    val = data.val
    rows = val.groups()[("v2f", 2)][:3]
    batch = val[rows]
    frame = val.frame[rows.tolist()]
    with SpectrogramStore(paths.spectrograms) as spec, FaceStore(paths.faces) as faces:
        for i, (query, cands) in enumerate(zip(frame["query_id"], frame["candidate_ids"],
                                               strict=True)):
            np.testing.assert_array_equal(batch["voice"][i, 0, 0].numpy(), spec.fixed_crop(query))
            for j, uid in enumerate(cands):
                expected = faces.get(uid).transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
                np.testing.assert_allclose(batch["face"][i, j].numpy(), expected, atol=1e-6)
    attrs = read_audio_attributes(paths.audio_attributes, paths.audio_stats)
    np.testing.assert_array_equal(batch["voice_attr"][:, 0].numpy(), attrs.take(frame["query_id"]))
    assert (batch["voice_identity"] == IGNORE).all()  # val identities have no train index
    assert torch.equal(val[rows]["voice"], batch["voice"])


def test_each_store_is_read_once_per_batch(data, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = {"voice": 0, "face": 0}
    for m, store in data.source.stores.items():
        original = store.get_many

        def counted(*args, _m=m, _original=original, **kwargs):
            calls[_m] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(store, "get_many", counted)
    rows = data.train.groups()[("f2v", 4)][:4]
    data.train[BatchKey(1, 0, rows)]
    assert calls == {"voice": 1, "face": 1}


def test_training_crops_and_flips_are_seeded_per_tuple(data, paths: DataPaths) -> None:
    ds = data.train
    rows = ds.groups()[("f2v", 2)]
    a, again = ds[BatchKey(3, 0, rows)], ds[BatchKey(3, 9, rows)]
    assert all(torch.equal(a[k], again[k]) for k in BATCH_KEYS - {"direction"})
    alone = ds[BatchKey(3, 0, rows[2:3])]  # the same tuple in another batch: same crops and flips
    assert torch.equal(alone["voice"][0], a["voice"][2]) and torch.equal(alone["face"][0], a["face"][2])
    assert not torch.equal(a["voice"], ds[BatchKey(4, 0, rows)]["voice"])  # new epoch, new crops
    plain = torch.from_numpy(data.source.read(ds.banks["face"], ds.query[rows]))  # unflipped queries
    flipped = [torch.equal(a["face"][i, 0], plain[i].flip(-1)) for i in range(len(rows))]
    same = [torch.equal(a["face"][i, 0], plain[i]) for i in range(len(rows))]
    assert all(f or s for f, s in zip(flipped, same, strict=True))
    assert 0 < sum(flipped) < len(rows) and 0 < sum(same)
    uid = ds.banks["voice"].ids[int(ds.candidates[rows[0], 0])]
    with SpectrogramStore(paths.spectrograms) as spec:
        full, crop = spec.full(uid), a["voice"][0, 0, 0].numpy()
    frames = crop.shape[1]
    tiled = np.tile(full, (1, frames // full.shape[1] + 2))  # short clips are tiled
    assert any(np.array_equal(tiled[:, s:s + frames], crop) for s in range(full.shape[1]))
    no_flip = TupleDataset(load_tuples(paths.tuples, "train", ("f2v",), ks=(2,)), data.source,
                           train=True, flip=False)
    unflipped = no_flip[BatchKey(3, 0, np.arange(len(rows)))]
    assert torch.equal(unflipped["face"][:, 0], plain)


def test_sampler_batches_one_direction_and_k_and_covers_every_tuple(data) -> None:
    groups = data.train.groups()
    sampler = TupleBatchSampler(groups, 4, seed=1)
    sampler.set_epoch(0)
    keys = list(sampler)
    assert len(keys) == len(sampler)
    seen = np.concatenate([k.rows for k in keys])
    np.testing.assert_array_equal(np.sort(seen), np.arange(len(data.train)))
    for key in keys:
        assert len({(data.train.direction[r], data.train.k[r]) for r in key.rows}) == 1
    again = list(sampler)
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(keys, again, strict=True))
    sampler.set_epoch(1)
    assert [k.rows.tolist() for k in sampler] != [k.rows.tolist() for k in keys]
    sampler.set_epoch(0, skip=3)
    resumed = list(sampler)
    assert [k.number for k in resumed] == list(range(3, len(keys)))
    assert all(np.array_equal(a.rows, b.rows) for a, b in zip(keys[3:], resumed, strict=True))
    dropped = TupleBatchSampler(groups, 5, drop_last=True)
    assert all(len(k.rows) == 5 for k in dropped)
    assert len(dropped) == sum(len(r) // 5 for r in groups.values())


def test_distributed_shares_are_disjoint_equal_and_form_the_global_batch(data) -> None:
    groups = data.train.groups()
    single = list(TupleBatchSampler(groups, 6, seed=2))
    ranks = [list(TupleBatchSampler(groups, 3, seed=2, rank=r, world_size=2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for one, r0, r1 in zip(single, *ranks, strict=True):
        assert len(r0.rows) == len(r1.rows)
        if len(one.rows) == 6:  # a full global batch: the ranks split it exactly
            np.testing.assert_array_equal(np.r_[r0.rows, r1.rows], one.rows)
            assert not set(r0.rows) & set(r1.rows)
    covered = np.concatenate([k.rows for keys in ranks for k in keys])
    assert set(covered.tolist()) == set(range(len(data.train)))  # padding only repeats rows
    with pytest.raises(ValueError):
        TupleBatchSampler(groups, 3, rank=2, world_size=2)


def test_dataloader_workers_give_the_same_batches(data) -> None:
    sampler = data.sampler()
    sampler.set_epoch(2)
    direct = [data.train[key] for key in sampler]
    for workers in (0, 2):
        loaded = list(make_loader(data.train, sampler, num_workers=workers))
        assert len(loaded) == len(direct)
        for a, b in zip(direct, loaded, strict=True):
            assert a["direction"] == b["direction"]
            assert all(torch.equal(a[k], b[k]) for k in BATCH_KEYS - {"direction"})


def test_missing_items_are_refused_or_dropped_with_a_count(data, paths: DataPaths,
                                                           caplog: pytest.LogCaptureFixture) -> None:
    tuples = load_tuples(paths.tuples, "train", ("v2f",), ks=(2,))
    broken = tuples.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("id99999/none/00001"))
        .otherwise(pl.col("query_id")).alias("query_id"))
    with pytest.raises(MissingItemsError, match="1 voice item"):
        TupleDataset(broken, data.source, train=True)
    with caplog.at_level(logging.WARNING, logger="model.data"):
        ds = TupleDataset(broken, data.source, train=True, missing="drop")
    assert len(ds) == tuples.height - 1 and "dropped 1 of" in caplog.text


def test_item_reader_embeds_every_item_once_with_fixed_crops(data, paths: DataPaths) -> None:
    ids = pl.read_parquet(paths.items("voice")).filter(pl.col("split") == "test")["id"].to_list()
    batches = list(iter_items(data.source, "voice", ids + ids[:2], batch_size=4))
    assert [u for b in batches for u in b["ids"]] == ids
    with SpectrogramStore(paths.spectrograms) as spec:
        np.testing.assert_array_equal(batches[1]["x"][0, 0, 0].numpy(), spec.fixed_crop(ids[4]))
    assert batches[0]["attr"].shape == (4, 384) and batches[0]["x"].shape[:3] == (1, 4, 1)
    faces = ItemDataset(data.source, "face", ids=read_face_attributes(
        paths.face_attributes).ids[:5], batch_size=2)
    assert len(faces) == 3 and faces[2]["x"].shape == (1, 1, 3, 64, 64)
    np.testing.assert_array_equal(faces[0]["x"].numpy(), faces[0]["x"].numpy())
    with pytest.raises(MissingItemsError):
        ItemDataset(data.source, "face", ["id00000/x/0000001"])


def test_item_views_are_evenly_spaced_crops_and_the_mirrored_face(data, paths: DataPaths) -> None:
    """Evaluation views: ``crops`` fixed crops from the first frame to the last of each voice
    (one crop: the centre), and a face followed by its mirror image; the same on every read."""
    ids = pl.read_parquet(paths.items("voice")).filter(pl.col("split") == "val")["id"].to_list()[:6]
    voices = ItemDataset(data.source, "voice", ids, batch_size=4, crops=3)
    x = voices[0]["x"].numpy()  # (3, 4, 1, F, T)
    assert x.shape[:3] == (3, 4, 1) and voices.views == (0.0, 0.5, 1.0)
    with SpectrogramStore(paths.spectrograms) as spec:  # where each position falls: test_stores
        for j, uid in enumerate(ids[:4]):
            for view, position in enumerate((0.0, 0.5, 1.0)):
                np.testing.assert_array_equal(x[view, j, 0], spec.fixed_crop(uid, position))
    np.testing.assert_array_equal(voices[0]["x"].numpy(), x)
    face_ids = read_face_attributes(paths.face_attributes).ids[:3]
    faces = ItemDataset(data.source, "face", face_ids, batch_size=3, flip=True)[0]["x"].numpy()
    assert faces.shape == (2, 3, 3, 64, 64)
    np.testing.assert_array_equal(faces[1], faces[0][..., ::-1])  # mirrored along the width
    assert eval_views("voice", 1, position="start") == ("start",)
    assert eval_views("face") == (False,)
    with pytest.raises(ValueError, match="modality"):
        eval_views("sound")


def test_raw_db_store_gets_train_statistics_and_the_state_round_trips(paths: DataPaths,
                                                                     tiny_data: Path, data) -> None:
    aml_paths = dataclasses.replace(paths, spectrograms=tiny_data / "features_aml" / "spectrograms.h5")
    aml = prepare_training(aml_paths, CFG)
    assert data.spec_norm is None and aml.spec_norm is not None
    rows = aml.val.groups()[("v2f", 2)][:2]
    with SpectrogramStore(aml_paths.spectrograms) as raw:
        crop = raw.fixed_crop(aml.val.frame["query_id"][int(rows[0])])
    expected = (crop - aml.spec_norm.mean) / aml.spec_norm.std
    np.testing.assert_allclose(aml.val[rows]["voice"][0, 0, 0].numpy(), expected, rtol=1e-5, atol=1e-5)
    state = json.loads(json.dumps(aml.source.state()))
    restored = FeatureSource.from_state(aml_paths, state)
    assert restored.labels == aml.labels and restored.spec_norm == aml.spec_norm
    assert state["input_dims"] == {"n_bins": 224, "frames": 125, "face_size": 64,
                                   "n_audio_attr": 384, "n_face_attr": 12, "n_gender": 2,
                                   "n_nation": aml.labels.n_nation,
                                   "n_identity": aml.labels.n_identities}
    with pytest.raises(ValueError, match="normalization"):
        FeatureSource(aml_paths, aml.labels, None)  # raw dB without statistics
