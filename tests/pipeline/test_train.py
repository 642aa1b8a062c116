"""The ``train`` stage: CLI on generated data, its dvc.yaml wiring, and what a lambda change reruns."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.train import LAMBDAS, stage_params
from tests.model.test_trainer import TINY_MODEL, TINY_TRAIN

ROOT = Path(__file__).resolve().parents[2]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def test_cli_trains_from_a_params_file(tiny_data: Path, tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    shipped["model"].update(TINY_MODEL)
    shipped["train"].update({**TINY_TRAIN, "epochs": 1})
    shipped["lambda1"] = 0.75
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(shipped))
    result = CliRunner().invoke(app, ["train", str(tiny_data), str(tmp_path / "models"),
                                      str(tmp_path / "live"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    meta = json.loads((tmp_path / "models" / "best" / "checkpoint.json").read_text())["meta"]
    assert meta["selection"]["selected_on"] == "val"
    assert meta["params"]["lambdas"]["lambda1"] == 0.75  # top-level params reach the model
    assert (tmp_path / "live" / "metrics.json").exists()


def test_cli_names_a_bad_setting_without_a_traceback(tiny_data: Path, tmp_path: Path) -> None:
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    shipped["model"].update({**TINY_MODEL, "match_ks": [2, 10]})  # tiny_data has 1:4 tuples
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(shipped))
    result = CliRunner().invoke(app, ["train", str(tiny_data), str(tmp_path / "models"),
                                      str(tmp_path / "live"), "--params", str(params)])
    assert result.exit_code == 1
    assert "model.match_ks [2, 10] lacks the tuple size(s) [4]" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "models").exists()


def test_stage_params_take_the_top_level_lambdas() -> None:
    params = {"train": {"epochs": 1}, "model": {}, "lambda1": 1.0, "lambda4": 0.5, "other": 3}
    assert stage_params(params)["lambdas"] == {"lambda1": 1.0, "lambda4": 0.5}
    assert LAMBDAS == ("lambda1", "lambda2", "lambda3", "lambda4")


def test_train_stage_deps_hold_no_held_out_tuples() -> None:
    """The train stage cannot read test or seen_heard: they are not among its dependencies."""
    deps = STAGES["train"]["deps"]
    assert "data/tuples/train/matching.parquet" in deps
    assert "data/tuples/val/matching.parquet" in deps
    assert not [d for d in deps if d.startswith("data/tuples") and
                ("/test/" in d or "/seen_heard/" in d or d.rstrip("/") == "data/tuples")]
    assert set(LAMBDAS) <= set(STAGES["train"]["params"])


def test_changing_lambda1_reruns_only_train_and_its_descendants(tmp_path: Path) -> None:
    """`dvc status` after `lambda1` changes: only the train stage's params differ from dvc.lock,
    and the stages that do not depend on train (all the data stages) see no params change."""
    for name in ("dvc.yaml", "dvc.lock", "params.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    lock = yaml.safe_load((tmp_path / "dvc.lock").read_text())["stages"]
    if "train" not in lock:
        pytest.fail("dvc.lock has no train stage: commit it from a `dvc repro` run")
    subprocess.run(["dvc", "init", "--no-scm", "-q"], cwd=tmp_path, check=True)
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    params["lambda1"] = float(params["lambda1"]) + 0.5
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run(["dvc", "status", "--json"], cwd=tmp_path, check=True,
                         capture_output=True, text=True).stdout
    status = json.loads(out)
    changed_params = {stage for stage, entries in status.items() for entry in entries
                      if isinstance(entry, dict) and "params.yaml" in
                      entry.get("changed deps", {})}
    assert changed_params == {"train"}
