"""benchmarks.linear_baseline on the tiny generated corpus: train-only cross-video pairs, the
setting chosen on val is the grid's best and reproduces its val figure, and the report holds the
evaluate stage's keys with identity-bootstrap intervals for val and test."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import linear_baseline as B
from model.data import DataPaths

SMALL = B.BaselineConfig(voice_dims=(4, 8), face_dims=(0, 4), ridges=(0.1, 1.0),
                         components=(2, 4), weights=(0.0, 1.0), resamples=20)


def test_block_average_takes_the_mean_of_each_block() -> None:
    images = np.arange(4 * 4 * 3, dtype=np.uint8).reshape(1, 4, 4, 3)
    out = B.block_average(images, 2)
    assert out.shape == (1, 2 * 2 * 3)
    top_left = images[0, :2, :2].reshape(4, 3).mean(0)
    np.testing.assert_allclose(out[0, :3], top_left)
    with pytest.raises(ValueError, match="multiple"):
        B.block_average(images, 3)


def test_training_pairs_are_cross_video_pairs_of_train_identities(tiny_data: Path) -> None:
    items = B.load_items(DataPaths.under(tiny_data), SMALL)
    v, f = B.training_pairs(items, SMALL)
    voice, face = items["voice"], items["face"]
    assert len(v) > 0
    assert (voice.split[v] == "train").all() and (face.split[f] == "train").all()
    assert (voice.identity[v] == face.identity[f]).all()
    assert (voice.video[v] != face.video[f]).all()


def test_the_val_choice_is_the_grid_best_and_the_report_has_the_stage_keys(
        tiny_data: Path, tmp_path: Path) -> None:
    report = B.run(DataPaths.under(tiny_data), SMALL)
    chosen = report["selected"]
    assert chosen["val_acc"] == max(g["val_acc"] for g in report["tuning_top10"])
    assert report["grid_size"] >= len(report["tuning_top10"])
    val = [report[f"val.{d}.match.k2.U.acc"] for d in ("v2f", "f2v")]
    assert np.mean(val) == pytest.approx(chosen["val_acc"])  # the chosen setting, rescored
    for split in ("val", "test"):
        for d in ("v2f", "f2v"):
            for key in (f"{split}.{d}.match.k2.U.acc", f"{split}.{d}.verify.U.auc"):
                assert 0.0 <= report[key] <= 1.0, key
                assert report[f"{key}.ci_low"] <= report[key] <= report[f"{key}.ci_high"], key
                assert report[f"{key}.n_identities"] >= 2, key
            assert 0.0 <= report[f"{split}.{d}.retrieval.map"] <= 1.0
    assert report["train_identities"] >= 2
    out = tmp_path / "baselines.json"
    B.main(["--data", str(tiny_data), "--out", str(out), "--resamples", "20"])
    written = json.loads(out.read_text())[B.SECTION]
    assert set(report) - {"seconds", "tuning_top10", "config", "selected", "grid_size"} <= set(written)


def test_identity_folds_partition_the_identities() -> None:
    names = [f"id{i:02d}" for i in range(7)] * 3
    folds = B.identity_folds(names, 2, seed=0)
    assert sorted(map(len, folds)) == [3, 4]
    assert set().union(*folds) == set(names) and not folds[0] & folds[1]
    assert folds == B.identity_folds(list(reversed(names)), 2, seed=0)  # seeded, order-free
    with pytest.raises(ValueError, match="folds"):
        B.identity_folds(["a"], 2, seed=0)


def test_cross_fitted_val_figures_score_every_val_tuple_once(tiny_data: Path) -> None:
    paths = DataPaths.under(tiny_data)
    one = B.BaselineConfig(voice_dims=(4,), face_dims=(4,), ridges=(1.0,), components=(2,),
                           weights=(1.0,), resamples=20)
    report = B.run(paths, one)  # a single setting: tuning chooses nothing, so the folds agree
    keys = [k for k in report if k.startswith("val_crossfit.")]
    assert keys and all(k.endswith(".acc") for k in keys)
    for key in keys:
        assert report[key] == pytest.approx(report[key.replace("val_crossfit.", "val.")])
    assert [c["voice_dims"] for c in report["crossfit_selected"]] == [4, 4]
    tuned = B.run(paths, SMALL)  # a grid: each fold is scored with the other fold's choice
    assert len(tuned["crossfit_selected"]) == SMALL.crossfit_folds
    assert sorted(k for k in tuned if k.startswith("val_crossfit.")) == sorted(keys)
    assert all(0.0 <= tuned[k] <= 1.0 for k in keys)
