"""benchmarks.corpus_draws: the feature stages it runs are the shipped ``dvc.yaml``'s, a draw's
identity is its feature params, the across-draw arithmetic, and a whole tiny draw built by the
stages' own commands, fitted with the linear baseline and swept with one seed (val, and test
reported), then reused without rebuilding and refused when the feature params differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from benchmarks import corpus_draws as C
from benchmarks import linear_baseline as B
from pipeline.common.config import ConfigError
from tests.test_dvc_pipeline import FEATURE_STAGES, TINY

ROOT = Path(__file__).resolve().parents[2]


def test_the_feature_stages_are_dvc_yaml_s_stages_before_train() -> None:
    stages = C.feature_stages()
    assert tuple(stages) == FEATURE_STAGES
    assert all(stage["cmd"].startswith("avmatch ") for stage in stages.values())
    argv = C.stage_argv(stages["face_attributes_train"]["cmd"])
    assert argv[-2:] == ["--params", "params.yaml"] and "avmatch" not in argv[1:]


def test_a_draw_is_identified_by_the_feature_stages_params() -> None:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = C.feature_stages()
    base = C.fingerprint(params, stages)
    assert base["synth"]["seed"] == params["synth"]["seed"] and base["faces.size"] == 64
    assert "model" not in base and "train" not in base and "lambda1" not in base
    changed = C.fingerprint({**params, "model": {}, "lambda1": 9.0}, stages)
    assert changed == base  # model and loss params do not define a draw
    with pytest.raises(ConfigError, match="faces.min_size"):
        C.fingerprint({**params, "faces": {}}, stages)


def test_margins_across_draws() -> None:
    def draw(margins: list[float], test: list[float]) -> dict:
        return {"figures": {k: {"margin": m} for k, m in zip("ab", margins, strict=True)},
                "test": {"figures": {k: {"margin": m} for k, m in zip("ab", test, strict=True)}}}

    draws = {"2": draw([0.02, -0.01], [0.01, 0.01]), "3": draw([0.04, 0.01], [-0.03, 0.02])}
    val = C.across_draws(draws, "val")
    assert val["figures"]["a"]["margins"] == [0.02, 0.04]
    assert val["figures"]["a"]["mean_margin"] == pytest.approx(0.03)
    assert val["figures"]["a"]["se"] == pytest.approx(0.01)
    assert (val["figures"]["a"]["draws_above"], val["figures"]["b"]["draws_above"]) == (2, 1)
    assert val["draws_above_on_every_figure"] == 1 and val["mean_margin"] == pytest.approx(0.015)
    assert "crossfit_margins" not in val["figures"]["a"]
    for name, m in (("2", 0.05), ("3", -0.01)):
        draws[name]["figures"]["a"]["margin_crossfit"] = m
    crossfit = C.across_draws(draws, "val")["figures"]["a"]
    assert crossfit["crossfit_margins"] == [0.05, -0.01] and crossfit["draws_above_crossfit"] == 1
    assert crossfit["mean_crossfit_margin"] == pytest.approx(0.02)
    test = C.across_draws(draws, "test")
    assert test["figures"]["a"]["mean_margin"] == pytest.approx(-0.01)
    assert test["draws_above_on_every_figure"] == 1


def tiny_params(tmp_path: Path) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def test_a_tiny_draw_is_built_fitted_and_swept(tmp_path: Path) -> None:
    params, work, report = tiny_params(tmp_path), tmp_path / "draws", tmp_path / "bench.json"
    base = ["--draws", "5", "--params", str(params), "--workdir", str(work), "--resamples", "20",
            "--out", str(report)]
    C.main([*base, "--seeds", "1", "--jobs", "1", "--test"])
    root = work / "synth_seed_5"
    built = yaml.safe_load((root / "params.yaml").read_text())
    assert built["synth"]["seed"] == 5 and built["synth"]["identities"] == TINY["synth"]["identities"]
    assert json.loads((root / "draw.json").read_text())["synth"]["seed"] == 5
    for name in ("raw", "manifest", "features/spectrograms.h5", "features/faces.h5",
                 "features/face_attributes.parquet", "tuples/train/matching.parquet"):
        assert (root / "data" / name).exists(), name
    section = json.loads(report.read_text())["corpus_draws"]
    draw = section["draws"]["5"]
    baseline = json.loads((root / "baselines.json").read_text())[B.SECTION]
    keys = ["v2f.match.k2.U.acc", "f2v.match.k2.U.acc"]
    assert [r["seed"] for r in draw["runs"]] == [0]
    for split in ("val", "test"):
        figures = draw["figures"] if split == "val" else draw["test"]["figures"]
        for key in keys:
            value = draw["runs"][0][split][key]
            assert 0.0 <= value <= 1.0
            assert figures[key]["baseline"] == baseline[f"{split}.{key}"]
            assert figures[key]["margin"] == pytest.approx(value - baseline[f"{split}.{key}"])
            if split == "val":  # the draw's baseline is cross-fitted on its val identities too
                assert figures[key]["baseline_crossfit"] == baseline[f"val_crossfit.{key}"]
            across = section["across_draws"][split]["figures"][key]
            assert across["margins"] == [pytest.approx(figures[key]["margin"])]
    stamp = (root / "data" / "features" / "faces.h5").stat().st_mtime_ns
    C.main([*base, "--seeds", "0"])
    assert (root / "data" / "features" / "faces.h5").stat().st_mtime_ns == stamp  # reused
    assert json.loads(report.read_text())["corpus_draws"]["draws"]["5"]["baseline"]
    with pytest.raises(ConfigError, match="other feature params"):
        C.main([*base, "--seeds", "0", "-S", "faces.min_size=16"])
