"""Session fixtures: one tiny generated corpus and its manifest, shared by the stage smoke tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.manifest import ManifestConfig
from pipeline.manifest import run as run_manifest
from pipeline.synth.corpus import small_config, synthesize


@pytest.fixture(scope="session")
def tiny_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data root written by the synthetic corpus generator (real VoxCeleb1/CelebA layout).

    Three videos per identity: seen-heard holds one out, and training keeps two, so positives
    can come from another video than the query.
    """
    root = tmp_path_factory.mktemp("tiny_corpus")
    synthesize(root, small_config(seed=11, videos_per_identity=3), workers=2)
    return root


@pytest.fixture(scope="session")
def tiny_manifest(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``data/manifest`` for :func:`tiny_corpus`, built by the real manifest stage."""
    out = tmp_path_factory.mktemp("tiny_manifest") / "manifest"
    run_manifest(tiny_corpus, out, ManifestConfig(workers=2))
    return out


@pytest.fixture(scope="session")
def tiny_data(tiny_corpus: Path, tiny_manifest: Path,
              tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``data/``-like tree: ``manifest``, ``features``, ``features_aml``, ``tuples``."""
    from pipeline.spectrograms import SpectrogramConfig
    from pipeline.spectrograms import run as run_spectrograms

    data = build_data_tree(tiny_corpus, tiny_manifest, tmp_path_factory.mktemp("tiny_data"), {
        "train_binary": 40, "train_multiway": 12, "val_binary": 12, "val_multiway": 6,
        "test_binary": 12, "test_multiway": 6, "seen_heard_binary": 8, "seen_heard_multiway": 4,
        "train_pairs": 8, "val_pairs": 8, "test_pairs": 8, "seen_heard_pairs": 8,
        "multiway_k": 4, "eval_constraints": ("U",)})
    run_spectrograms(tiny_corpus, tiny_manifest, data / "features_aml",
                     SpectrogramConfig(preset="aml", workers=1))
    return data


def build_data_tree(corpus: Path, manifest: Path, data: Path, tuples: dict) -> Path:
    """Run the real feature stages and the tuples stage on ``corpus`` into ``data``; the face
    attribute table holds seeded random probabilities (see the module docstring)."""
    import numpy as np
    import polars as pl

    from pipeline.audio_attributes import AudioAttributesConfig
    from pipeline.audio_attributes import run as run_audio_attributes
    from pipeline.face_attributes import attribute_frame
    from pipeline.face_attributes_train import PRIVATE_ATTRIBUTES
    from pipeline.faces import FacesConfig
    from pipeline.faces import run as run_faces
    from pipeline.spectrograms import SpectrogramConfig
    from pipeline.spectrograms import run as run_spectrograms
    from pipeline.tuples import TuplesConfig
    from pipeline.tuples import run as run_tuples

    features = data / "features"
    run_spectrograms(corpus, manifest, features, SpectrogramConfig(workers=2))
    run_faces(corpus, manifest, features, FacesConfig(workers=2))
    run_audio_attributes(corpus, manifest, features, AudioAttributesConfig(workers=2))
    face_ids = pl.read_parquet(manifest / "faces.parquet")["id"].to_list()
    probs = np.random.default_rng(0).random((len(face_ids), len(PRIVATE_ATTRIBUTES)))
    attribute_frame(face_ids, probs, list(PRIVATE_ATTRIBUTES), 0.5).write_parquet(
        features / "face_attributes.parquet")
    run_tuples(manifest, features, data / "tuples", TuplesConfig(**tuples))
    (data / "manifest").symlink_to(manifest, target_is_directory=True)
    return data


@pytest.fixture(scope="session")
def learnable_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small corpus with a strong voice-face signal (``synth.difficulty`` 0) and enough val
    tuples to tell a trained model from chance: 48 identities, 3 videos each."""
    from pipeline.manifest import ManifestConfig
    from pipeline.manifest import run as run_manifest
    from pipeline.synth.corpus import small_config, synthesize

    root = tmp_path_factory.mktemp("learnable_corpus")
    synthesize(root, small_config(identities=48, videos_per_identity=3, difficulty=0.0, seed=3),
               workers=2)
    manifest = tmp_path_factory.mktemp("learnable_manifest") / "manifest"
    run_manifest(root, manifest, ManifestConfig(workers=2))
    data = tmp_path_factory.mktemp("learnable_data")
    return build_data_tree(root, manifest, data, {
        "train_binary": 400, "train_multiway": 40, "val_binary": 200, "val_multiway": 20,
        "test_binary": 20, "test_multiway": 10, "seen_heard_binary": 10,
        "seen_heard_multiway": 6, "train_pairs": 10, "val_pairs": 10, "test_pairs": 10,
        "seen_heard_pairs": 10, "multiway_k": 4, "eval_constraints": ("U",)})
