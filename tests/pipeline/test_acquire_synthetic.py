"""``acquire`` with ``data.source: synthetic``: the shipped data config, and the manifest's split
letters (stated once, in the manifest section) passed into the generator."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from pipeline.acquire import DataConfig
from pipeline.cli import app
from tests.params import default_mismatches, shipped_section

# a fast corpus: small_config's sizes, as params
SMALL = {"identities": 12, "videos_per_identity": 2, "utterance_seconds": [1.0, 1.2],
         "frames_per_video": 1, "face_size": 64, "celeba_identities": 6,
         "celeba_images_per_identity": 1}


def test_data_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(DataConfig, "data") == {}


def test_acquire_gives_the_manifest_split_letters_to_the_generator(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    manifest = {"val_initials": "M", "test_initials": "ST", "workers": 1}
    params.write_text(yaml.safe_dump({"data": shipped_section("data"), "synth": SMALL,
                                      "manifest": manifest, "faces": {"min_size": 32}}))
    raw, out = tmp_path / "raw", tmp_path / "manifest"
    runner = CliRunner()
    result = runner.invoke(app, ["acquire", str(raw), "--params", str(params)])
    assert result.exit_code == 0, result.output
    result = runner.invoke(app, ["manifest", str(raw), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    ids = pl.read_parquet(out / "identities.parquet")
    for split, letters in (("val", "M"), ("test", "ST")):
        members = ids.filter(pl.col("split") == split)
        assert set(members["name"].str.slice(0, 1)) <= set(letters)
        assert set(members["gender"]) == {"m", "f"}, split  # the generator knew the letters
    assert set(ids["split"]) == {"train", "val", "test"}
