"""Seed spread of the val figures that choose the checkpoint, against the linear baseline.

One training run is one draw. On the embedded corpus val has 37 identities (2,000 tuples per
1:2 figure by default), so one run's val figure moves by 0.015-0.025 from seed to seed, and a
single run cannot tell whether a configuration beats the linear baseline by a point or two. This sweep
trains the same params once per seed (``train.seed`` = 0 .. N-1, or from ``--first-seed`` on to
extend an earlier sweep; optionally with ``-S``
overrides, read as DVC reads them), each in its own temporary directory (never ``models/`` or
``reports/train``), and reads each run's selected epoch: the val figures of
``train.select_metric`` in both directions, under ``train.select_score``. It reports, per figure,
the seeds' values, their mean, standard deviation and standard error of the mean, the linear
baseline's val value (``reports/baselines.json``, section ``linear_cca``), the margin in
standard errors, and how many seeds beat the baseline (on that figure, and on all at once). When
the baseline report holds its cross-fitted val figures (``val_crossfit.*``: tuned on other val
identities than those scored), each figure is also compared with those (``baseline_crossfit``,
``margin_crossfit``): the in-sample val figure is the best of the baseline's whole tuning grid on
the very tuples scored and overstates it, the cross-fitted one understates it somewhat.

Training and selection read only the train and val splits (the train stage's own code). With
``--test``, each run's val-selected checkpoint is then scored on the test split by the evaluate
stage's own code (under ``model.score``, as the evaluate stage headlines it), and the same figures
are summarised under ``test``, against the baseline's test values: reported, never used for a
choice, to show how far one committed run's test figures sit from a seed mean.

Runs go ``--jobs`` at a time, in spawned processes, each with ``train.threads`` = cores // jobs:
CPU results depend a little on the thread count, so a seed's figures can differ from the
stage's (every core).

Writes section ``seed_sweep`` (or ``--section``) of ``reports/benchmarks.json``.

Usage: ``python -m benchmarks.seed_sweep [--data data] [--params params.yaml] [--seeds 8]
[--first-seed 0] [--jobs 2] [-S key=value ...] [--test] [--section NAME]``.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import os
import tempfile
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from benchmarks.common import REPORT, update_report
from pipeline.common.config import ConfigError, build, load_params

if TYPE_CHECKING:
    from pipeline.evaluate import EvaluateConfig

log = logging.getLogger("benchmarks.seed_sweep")

BASELINES = Path(__file__).resolve().parents[1] / "reports" / "baselines.json"
BASELINE_SECTION = "linear_cca"
TEST_NOTE = ("test figures of each val-selected checkpoint (model.score): reported only, never "
             "used to choose a seed, an epoch or a param")


def apply_overrides(params: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """``params`` with each ``key.path=value`` set (the value read as YAML, as ``dvc exp run -S``
    reads it); a key that is not already in ``params`` raises :class:`ConfigError`."""
    out = json.loads(json.dumps(params))  # a deep copy of plain YAML data
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"override {item!r} is not key=value")
        *parents, leaf = key.split(".")
        node = out
        for name in parents:
            node = node.get(name) if isinstance(node, dict) else None
        if not isinstance(node, dict) or leaf not in node:
            raise ConfigError(f"override {item!r}: params have no key {key!r}")
        node[leaf] = yaml.safe_load(text)
    return out


def seed_params(params: Mapping[str, Any], seed: int, threads: int) -> dict[str, Any]:
    """The train stage's params for one seed: a fresh run (no resume) on ``threads`` threads."""
    from pipeline.train import stage_params

    staged = stage_params(dict(params))
    staged["train"] = {**staged["train"], "seed": seed, "threads": threads, "resume": False}
    return staged


def figure_keys(params: Mapping[str, Any]) -> list[str]:
    """The val keys the train stage selects on (``train.select_metric`` x ``train.directions``)."""
    from model.trainer import TrainConfig, selection_keys

    cfg = build(TrainConfig, params["train"], name="train")
    return [key for name in cfg.select_metric for key in selection_keys(cfg, name)]


def selected_figures(summary: Mapping[str, Any], keys: Sequence[str]) -> dict[str, float]:
    """The val figures ``keys`` of the epoch a train run selected."""
    row = next(h for h in summary["history"] if h["epoch"] == summary["best_epoch"])
    return {key: float(row[key]) for key in keys}


def test_figures(data: Path, checkpoint: Path, out: Path, evaluate: EvaluateConfig,
                 keys: Sequence[str]) -> dict[str, float]:
    """The test figures ``keys`` (val key names) of ``checkpoint``, from the evaluate stage's
    own run, under the model's declared score."""
    from pipeline.evaluate import run

    run(data, checkpoint, out, evaluate)
    metrics = json.loads((out / "metrics.json").read_text())
    return {key: float(metrics[split_key(key, "test")]) for key in keys}


def train_seed(data: str, params: dict[str, Any], keys: list[str],
               evaluate: EvaluateConfig | None = None) -> dict[str, Any]:
    """Train one seed in a temporary directory; its selected epoch and val figures, and its test
    figures when ``evaluate`` is given."""
    from model.trainer import run

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="avmatch-seed-") as tmp:
        summary = run(Path(data), Path(tmp) / "models", Path(tmp) / "live", params)
        out = {"seed": params["train"]["seed"], "best_epoch": summary["best_epoch"],
               "seconds": summary["seconds"], "val": selected_figures(summary, keys)}
        if evaluate is not None:
            out["test"] = test_figures(Path(data), Path(tmp) / "models" / "best",
                                       Path(tmp) / "evaluate", evaluate, keys)
    return out


def split_key(key: str, split: str = "val") -> str:
    """The evaluate and baseline reports' name of a train-stage val key on ``split``
    (``v2f.match.k2.U.acc`` -> ``val.v2f.match.k2.U.acc``; a scoring suffix such as ``.cosine``
    is dropped, leaving the model's declared score)."""
    parts = key.split(".")
    if parts[-1] in ("cosine", "head"):
        parts = parts[:-1]
    return f"{split}." + ".".join(parts)


def summarise(runs: Sequence[Mapping[str, Any]], baseline: Mapping[str, float] | None,
              split: str = "val") -> dict[str, Any]:
    """Per figure of ``split``: values by seed, mean, sd, se of the mean, and against the
    baseline (if any) the margin, the margin in se and the seeds above it; plus the seeds above
    it on every figure."""
    keys = list(runs[0][split])
    table = np.array([[r[split][k] for k in keys] for r in runs])  # (seeds, figures)
    out: dict[str, Any] = {}
    for j, key in enumerate(keys):
        values = table[:, j]
        sd = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        se = sd / np.sqrt(len(values))
        row = {"values": values.tolist(), "mean": float(values.mean()), "sd": sd, "se": se}
        if baseline is not None:
            base = float(baseline[split_key(key, split)])
            margin = float(values.mean()) - base
            row.update(baseline=base, margin=margin,
                       margin_in_se=margin / se if se > 0 else None,
                       seeds_above=int((values > base).sum()))
            crossfit = baseline.get(split_key(key, f"{split}_crossfit"))
            if crossfit is not None:
                row.update(baseline_crossfit=float(crossfit),
                           margin_crossfit=float(values.mean()) - float(crossfit),
                           seeds_above_crossfit=int((values > crossfit).sum()))
        out[key] = row
    summary: dict[str, Any] = {"figures": out, "seeds": len(runs)}
    if baseline is not None:
        base = np.array([out[k]["baseline"] for k in keys])
        summary["seeds_above_on_every_figure"] = int((table > base).all(axis=1).sum())
        summary["mean_above_on_every_figure"] = bool((table.mean(axis=0) > base).all())
        if all("baseline_crossfit" in out[k] for k in keys):
            summary["mean_above_crossfit_on_every_figure"] = bool(
                all(out[k]["margin_crossfit"] > 0 for k in keys))
    return summary


def read_baseline(path: Path) -> dict[str, float] | None:
    """The linear baseline's report section, or None when it has not been run."""
    if not path.exists():
        log.warning("%s is missing: no baseline comparison (python -m benchmarks.linear_baseline)",
                    path)
        return None
    return json.loads(path.read_text())[BASELINE_SECTION]


def threads_per_job(jobs: int) -> int:
    """Torch threads of each of ``jobs`` concurrent runs: the cores shared out."""
    return max(1, (os.cpu_count() or 1) // jobs)


def test_config(params: Mapping[str, Any], threads: int) -> EvaluateConfig:
    """The evaluate stage's config from ``params``, on the test split alone, on ``threads``."""
    from pipeline.evaluate import stage_config

    return replace(stage_config(params), splits=("test",), imported=(), threads=threads)


def sweep(data: Path, params: Mapping[str, Any], seeds: int, jobs: int, first: int = 0,
          test: bool = False) -> list[dict[str, Any]]:
    """Train seeds ``first .. first+seeds-1``, ``jobs`` at a time (each then scored on test when
    ``test``); their results in seed order."""
    threads = threads_per_job(jobs)
    keys = figure_keys(seed_params(params, first, threads))
    work = [seed_params(params, s, threads) for s in range(first, first + seeds)]
    evaluate = test_config(params, threads) if test else None
    if jobs == 1:
        return [train_seed(str(data), p, keys, evaluate) for p in work]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        return list(pool.map(train_seed, [str(data)] * seeds, work, [keys] * seeds,
                             [evaluate] * seeds))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--seeds", type=int, default=8)
    parser.add_argument("--first-seed", type=int, default=0,
                        help="train seeds FIRST .. FIRST+SEEDS-1 (extend an earlier sweep)")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a params override, as dvc exp run -S")
    parser.add_argument("--test", action="store_true",
                        help="also score each val-selected checkpoint on test (reported only)")
    parser.add_argument("--baselines", type=Path, default=BASELINES)
    parser.add_argument("--section", default="seed_sweep")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.jobs < 1 or args.first_seed < 0:
        parser.error("--seeds and --jobs must be at least 1, --first-seed at least 0")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = apply_overrides(load_params(args.params), args.overrides)
    start = time.perf_counter()
    runs = sweep(args.data, params, args.seeds, args.jobs, args.first_seed, args.test)
    baseline = read_baseline(args.baselines)
    result = {"overrides": list(args.overrides), "jobs": args.jobs, "runs": runs,
              "seconds": round(time.perf_counter() - start, 1), **summarise(runs, baseline)}
    if args.test:
        result["test"] = {"note": TEST_NOTE, **summarise(runs, baseline, "test")}
    update_report(args.section, result, args.out)
    for key, row in result["figures"].items():
        log.info("%s: mean %.4f (se %.4f) baseline %s, %s of %d seeds above", key, row["mean"],
                 row["se"], row.get("baseline"), row.get("seeds_above"), len(runs))
    return result


if __name__ == "__main__":
    main()
