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
