"""``acquire`` with ``data.source: local`` uses the tree in place, and manifest reads through it."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.acquire import DataConfig
from pipeline.cli import app
from pipeline.sources.layout import resolve_root
from tests.vox_tree import make_tree


def test_local_source_is_used_in_place(tmp_path: Path) -> None:
    tree = tmp_path / "my_voxceleb"
    make_tree(tree)
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: local\n  root: {tree}\nsynth: {{}}\n"
                      "manifest:\n  workers: 1\n")
    runner = CliRunner()
    raw, out = tmp_path / "raw", tmp_path / "manifest"
    result = runner.invoke(app, ["acquire", str(raw), "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in raw.iterdir()) == ["source.json"]  # nothing copied
    assert json.loads((raw / "source.json").read_text())["root"] == str(tree.resolve())
    assert resolve_root(raw) == tree.resolve()
    result = runner.invoke(app, ["manifest", str(raw), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    utt = pl.read_parquet(out / "utterances.parquet")
    assert utt.height == 60 and all((tree / p).is_file() for p in utt["path"])


def test_local_source_needs_an_existing_root(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="data.root"):
        DataConfig(source="local")
    with pytest.raises(ValueError, match="data.source must be one of"):
        DataConfig(source="nowhere")
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  source: local\n  root: {tmp_path / 'missing'}\n")
    result = CliRunner().invoke(app, ["acquire", str(tmp_path / "raw"), "--params", str(params)])
    assert result.exit_code != 0 and "not a directory" in str(result.exception)
    assert not (tmp_path / "raw").exists()
