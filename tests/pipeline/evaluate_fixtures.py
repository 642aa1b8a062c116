"""Session fixtures for the evaluate-stage tests: a tiny data tree and a checkpoint trained on it.

Import the names into a test module (pytest registers fixtures found in its namespace)::

    from tests.pipeline.evaluate_fixtures import eval_data, tiny_checkpoint  # noqa: F401

``tiny_data`` is the shared session fixture (``tests/conftest.py``: the real feature
stages on the generated corpus). Its test split has only three identities and its seen_heard
split one held-out video per identity, so :func:`eval_data` redraws the tuples with the real
tuples stage over the same manifest and stores: ``multiway_k`` 3, constraints U and G, and
seen_heard positives from the query's own (held-out) video, so that every list the evaluate
stage reports exists. The checkpoint comes from the real trainer (one epoch, a few-channel
model) on that tree, so its JSON is what the train stage writes: ``selection.selected_on`` is
``val`` and the label maps hold the train identities.
"""

from __future__ import annotations

from pathlib import Path

import pytest

__all__ = ["TINY_MODEL", "TINY_TRAIN", "TINY_TUPLES", "eval_data", "tiny_checkpoint"]

TINY_MODEL = {"embed_dim": 16, "audio_channels": [4, 4, 4, 4, 4],
              "face_channels": [4, 4, 4, 4, 4],
              "audio_strides": [[4, 2], [2, 2], [2, 2], [1, 1], [1, 1]],
              "face_strides": [[2, 2], [2, 2], [1, 1], [1, 1], [1, 1]], "pool_size": [3, 3],
              "generator_hidden": [16], "head_hidden": [16], "retrieval_hidden": [8],
              "vae_hidden": [16], "audio_attr_tokens": 4, "face_attr_tokens": 12, "ct_heads": 2,
              "match_ks": [2, 3], "disc_steps": 1}
# the tiny val split is too small for G tuples (it holds U only): select on U
TINY_TRAIN = {"epochs": 1, "batch_size": 16, "seed": 0, "threads": 1, "resume": False,
              "select_metric": ["match.k2.U.acc"]}
TINY_TUPLES = {"train_binary": 40, "train_multiway": 12, "val_binary": 12, "val_multiway": 6,
               "test_binary": 16, "test_multiway": 9, "seen_heard_binary": 12,
               "seen_heard_multiway": 6, "train_pairs": 8, "val_pairs": 8, "test_pairs": 12,
               "seen_heard_pairs": 12, "multiway_k": 3, "eval_constraints": ("U", "G"),
               "seen_heard_positive_same_video": True}


@pytest.fixture(scope="session")
def eval_data(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``data/`` tree: :func:`tiny_data`'s manifest and stores, tuples drawn anew."""
    from pipeline.tuples import TuplesConfig
    from pipeline.tuples import run as run_tuples

    data = tmp_path_factory.mktemp("eval_data")
    for name in ("manifest", "features"):
        (data / name).symlink_to((tiny_data / name).resolve(), target_is_directory=True)
    run_tuples(data / "manifest", data / "features", data / "tuples", TuplesConfig(**TINY_TUPLES))
    return data


@pytest.fixture(scope="session")
def tiny_checkpoint(eval_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``models/avmatch/best`` of a one-epoch run on :func:`eval_data` (val-selected)."""
    from model.trainer import run

    out = tmp_path_factory.mktemp("tiny_model")
    run(eval_data, out / "avmatch", out / "live",
        {"train": TINY_TRAIN, "model": TINY_MODEL, "lambdas": {}})
    return out / "avmatch" / "best"
