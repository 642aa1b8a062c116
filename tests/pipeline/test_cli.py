"""The ``avmatch`` CLI lists every stage and runs them end to end on a generated corpus."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import yaml
from typer.testing import CliRunner

from pipeline.cli import app

ROOT = Path(__file__).resolve().parents[2]


def test_help_lists_every_stage() -> None:
    result = CliRunner().invoke(app, ["--help"])
    assert result.exit_code == 0
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    for name in [*stages, "synth"]:
        assert name in result.output, f"{name} missing from `avmatch --help`"


def test_unknown_params_key_fails_loudly(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("manifest:\n  val_initial: AB\n")
    result = CliRunner().invoke(app, ["manifest", str(tmp_path), str(tmp_path / "m"),
                                      "--params", str(params)])
    assert result.exit_code == 1  # a clear one-line error, no traceback
    assert "unknown key(s) in params section 'manifest': val_initial" in result.output


def test_acquire_then_manifest_on_synthetic_corpus(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("data:\n  source: synthetic\nsynth:\n  identities: 16\n  seed: 5\n"
                      "  videos_per_identity: 2\n  utterances_per_video: 1\n"
                      "  utterance_seconds: [1.0, 1.5]\n  frames_per_video: 1\n  face_size: 64\n"
                      "  celeba_identities: 12\n  celeba_images_per_identity: 1\n"
                      "manifest:\n  workers: 1\n")
    runner = CliRunner()
    raw, out = tmp_path / "raw", tmp_path / "manifest"
    result = runner.invoke(app, ["acquire", str(raw), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert (raw / "voxceleb1" / "vox1_meta.csv").is_file()
    result = runner.invoke(app, ["manifest", str(raw), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    identities = pl.read_parquet(out / "identities.parquet")
    assert identities.height == 16 and set(identities["split"]) == {"train", "val", "test"}
    assert pl.read_parquet(out / "rejects.parquet").height == 0
