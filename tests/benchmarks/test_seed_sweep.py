"""benchmarks.seed_sweep: overrides, the summary's arithmetic, and a two-seed sweep (two spawned
processes) on the tiny generated corpus whose figures are the train stage's own selected val
figures, and (``--test``) the evaluate stage's own test figures of that checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import seed_sweep as S
from model import trainer as T
from pipeline import evaluate as E
from pipeline.common.config import ConfigError
from tests.model.test_trainer import TINY_MODEL, TINY_TRAIN

LAMBDAS = {"lambda1": 1.5, "lambda2": 2.0, "lambda3": 1.0, "lambda4": 1.5}


def test_overrides_are_read_as_yaml_into_existing_keys() -> None:
    params = {"lambda1": 1.5, "model": {"backend": "cca", "margin": 1.0}}
    out = S.apply_overrides(params, ["lambda1=1.0", "model.backend=none", "model.margin=0.5"])
    assert out == {"lambda1": 1.0, "model": {"backend": "none", "margin": 0.5}}
    assert params["model"]["backend"] == "cca"  # the input is left alone
    for bad in ("model.nope=1", "nope.margin=1", "model.margin"):
        with pytest.raises(ConfigError):
            S.apply_overrides(params, [bad])


def test_split_keys_drop_the_scoring_suffix() -> None:
    assert S.split_key("f2v.match.k2.G.acc") == "val.f2v.match.k2.G.acc"
    assert S.split_key("v2f.match.k2.U.acc.cosine") == "val.v2f.match.k2.U.acc"
    assert S.split_key("v2f.match.k2.U.acc.head", "test") == "test.v2f.match.k2.U.acc"


def test_the_test_config_is_the_evaluate_stage_s_on_test_alone() -> None:
    params = {"evaluate": {"splits": ["test", "seen_heard"], "bootstrap_resamples": 7,
                           "imported": ["x.parquet"], "threads": 0}}
    cfg = S.test_config(params, threads=3)
    assert (cfg.splits, cfg.imported, cfg.threads) == (("test",), (), 3)
    assert cfg.bootstrap_resamples == 7  # everything else is the stage's own


def test_summary_against_a_baseline() -> None:
    runs = [{"val": {"a": a, "b": b}} for a, b in ((0.8, 0.6), (0.7, 0.5), (0.9, 0.4))]
    out = S.summarise(runs, {"val.a": 0.75, "val.b": 0.45})
    a, b = out["figures"]["a"], out["figures"]["b"]
    assert a["values"] == [0.8, 0.7, 0.9]
    assert a["mean"] == pytest.approx(0.8) and a["sd"] == pytest.approx(0.1)
    assert a["se"] == pytest.approx(0.1 / np.sqrt(3))
    assert a["margin"] == pytest.approx(0.05) and a["margin_in_se"] == pytest.approx(0.5 * np.sqrt(3))
    assert (a["seeds_above"], b["seeds_above"]) == (2, 2)
    assert out["seeds_above_on_every_figure"] == 1  # only the first run is above on both
    assert out["mean_above_on_every_figure"] is True
    assert "baseline" not in S.summarise(runs, None)["figures"]["a"]
    tested = [{**r, "test": {"a": r["val"]["a"] - 0.1}} for r in runs]
    out = S.summarise(tested, {"val.a": 0.0, "test.a": 0.65}, split="test")
    assert out["figures"]["a"]["values"] == pytest.approx([0.7, 0.6, 0.8])
    assert out["figures"]["a"]["seeds_above"] == 2 and out["figures"]["a"]["baseline"] == 0.65


def test_a_two_seed_sweep_reports_the_stage_runs(tiny_data: Path, tmp_path: Path) -> None:
    train = {**TINY_TRAIN, "epochs": 1}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"train": train, "model": TINY_MODEL,
                                                          **LAMBDAS}))
    baselines = tmp_path / "baselines.json"
    baselines.write_text(json.dumps({"linear_cca": {
        f"{split}.{d}.match.k2.U.acc": 0.5 for split in ("val", "test") for d in ("v2f", "f2v")}}))
    report = tmp_path / "benchmarks.json"
    S.main(["--data", str(tiny_data), "--params", str(tmp_path / "params.yaml"), "--seeds", "2",
            "--first-seed", "1", "--jobs", "2", "-S", "lambda1=1.0", "--baselines", str(baselines),
            "--test", "--out", str(report)])
    section = json.loads(report.read_text())["seed_sweep"]
    assert section["overrides"] == ["lambda1=1.0"]
    assert [r["seed"] for r in section["runs"]] == [1, 2]
    keys = ["v2f.match.k2.U.acc", "f2v.match.k2.U.acc"]
    assert all(sorted(r["val"]) == sorted(r["test"]) == sorted(keys) for r in section["runs"])
    # seed 1 is the train stage's own run with train.seed 1 (and the override): same figures
    direct = T.run(tiny_data, tmp_path / "models", tmp_path / "live",
                   {"model": TINY_MODEL, "lambdas": {**LAMBDAS, "lambda1": 1.0},
                    "train": {**train, "seed": 1, "resume": False, "threads": S.threads_per_job(2)}})
    assert section["runs"][0]["val"] == S.selected_figures(direct, keys)
    # ... and its test figures are the evaluate stage's on that checkpoint, model score
    E.run(tiny_data, tmp_path / "models" / "best", tmp_path / "eval",
          S.test_config({}, S.threads_per_job(2)))
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert section["runs"][0]["test"] == {k: metrics[f"test.{k}"] for k in keys}
    assert "never used" in section["test"]["note"]
    assert section["test"]["figures"][keys[0]]["values"] == [r["test"][keys[0]]
                                                             for r in section["runs"]]
    for key in keys:
        row = section["figures"][key]
        values = [r["val"][key] for r in section["runs"]]
        assert row["values"] == values and row["mean"] == pytest.approx(np.mean(values))
        assert row["seeds_above"] == sum(v > 0.5 for v in values)


def test_summary_against_the_baseline_s_cross_fitted_val_figures() -> None:
    runs = [{"val": {"a": a}} for a in (0.70, 0.74)]
    plain = S.summarise(runs, {"val.a": 0.75})
    assert "baseline_crossfit" not in plain["figures"]["a"]
    assert "mean_above_crossfit_on_every_figure" not in plain
    out = S.summarise(runs, {"val.a": 0.75, "val_crossfit.a": 0.71})
    row = out["figures"]["a"]
    assert row["margin"] == pytest.approx(-0.03) and row["margin_crossfit"] == pytest.approx(0.01)
    assert (row["seeds_above"], row["seeds_above_crossfit"]) == (0, 1)
    assert out["mean_above_on_every_figure"] is False
    assert out["mean_above_crossfit_on_every_figure"] is True
