"""Replication over corpus draws: the same params trained on several independent draws of the
embedded corpus (``synth.seed``), each scored against its own linear baseline.

One val split of the embedded corpus holds 37 identities, and tuning rounds that choose on it fit
those identities (docs/model.md, "Twenty seeds, test figures over seeds, and a second corpus
draw"). A draw is a whole new corpus: new identities, voices and faces with the same split sizes.
For each ``--draws`` value this command:

1. builds the draw in ``<workdir>/synth_seed_<n>/`` (unless already built with the same feature
   params, recorded in ``draw.json``): it writes ``params.yaml`` with ``synth.seed: n`` and runs
   the commands of every ``dvc.yaml`` stage before ``train``, in order, in that directory;
2. fits the linear CCA baseline on it (:mod:`benchmarks.linear_baseline`, tuned on that draw's val)
   into ``<workdir>/synth_seed_<n>/baselines.json`` (kept for later calls);
3. trains ``--seeds`` seeds of the params (with any ``-S`` overrides) on it with
   :func:`benchmarks.seed_sweep.sweep` (the train stage's own code, val selection) and, with
   ``--test``, scores each selected checkpoint on that draw's test split (reported only).

It reports each draw's seed summary against that draw's baseline, and ``across_draws``: per
figure, each draw's margin (seed mean minus baseline), their mean and how many draws are above;
on val also against the baseline's cross-fitted val figures (``crossfit_margins``), which are not
inflated by tuning on the tuples they score (:mod:`benchmarks.linear_baseline`; they understate
it somewhat instead).
A tuning round can choose on the val margins averaged over draws, then judge its final choice
once on a draw no round has looked at.

Writes section ``corpus_draws`` (or ``--section``) of ``reports/benchmarks.json``.

Usage: ``python -m benchmarks.corpus_draws --draws 2 3 [--seeds 4] [--first-seed 0] [--jobs 2]
[-S key=value ...] [--test] [--workdir data/draws] [--params params.yaml] [--section NAME]``.
``--seeds 0`` builds the draws and their baselines only.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from benchmarks.common import REPORT, update_report
from benchmarks.seed_sweep import TEST_NOTE, apply_overrides, summarise, sweep
from pipeline.common.config import ConfigError, load_params

log = logging.getLogger("benchmarks.corpus_draws")

ROOT = Path(__file__).resolve().parents[1]
DVC_YAML = ROOT / "dvc.yaml"
FIRST_MODEL_STAGE = "train"
MARKER = "draw.json"
BASELINES = "baselines.json"


def feature_stages(dvc_yaml: Path = DVC_YAML) -> dict[str, dict[str, Any]]:
    """The ``dvc.yaml`` stages before ``train``, in file order (the order they run in)."""
    stages = yaml.safe_load(dvc_yaml.read_text())["stages"]
    names = list(stages)
    if FIRST_MODEL_STAGE not in names:
        raise ConfigError(f"{dvc_yaml} has no {FIRST_MODEL_STAGE!r} stage")
    return {name: stages[name] for name in names[:names.index(FIRST_MODEL_STAGE)]}


def _lookup(params: Mapping[str, Any], key: str) -> Any:
    node: Any = params
    for name in key.split("."):
        if not isinstance(node, Mapping) or name not in node:
            raise ConfigError(f"params have no key {key!r} (named in dvc.yaml)")
        node = node[name]
    return node


def fingerprint(params: Mapping[str, Any], stages: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The params the feature stages read (their ``dvc.yaml`` params keys): what defines a draw."""
    keys = sorted({k for stage in stages.values() for k in stage.get("params", [])
                   if isinstance(k, str)})
    return {key: _lookup(params, key) for key in keys}


def stage_argv(cmd: str) -> list[str]:
    """A ``dvc.yaml`` command as argv, ``avmatch`` run by this interpreter's installation."""
    argv = shlex.split(" ".join(cmd.split()))
    if argv and argv[0] == "avmatch":
        exe = shutil.which("avmatch", path=str(Path(sys.executable).parent))
        argv = [exe, *argv[1:]] if exe else [sys.executable, "-m", "pipeline.cli", *argv[1:]]
    return argv


def build_draw(root: Path, params: Mapping[str, Any],
               stages: Mapping[str, Mapping[str, Any]]) -> Path:
    """Build (or reuse) the draw ``params`` describes in ``root``; return its ``data`` directory.

    The marker ``draw.json`` is written last, so an interrupted build is redone; a directory
    holding another draw (different feature params) is refused rather than overwritten."""
    marker = root / MARKER
    wanted = fingerprint(params, stages)
    if marker.exists():
        if json.loads(marker.read_text()) == wanted:
            log.info("%s: reusing the built draw", root)
            return root / "data"
        raise ConfigError(f"{root} holds a draw built with other feature params; remove it or "
                          "choose another --workdir")
    root.mkdir(parents=True, exist_ok=True)
    (root / BASELINES).unlink(missing_ok=True)
    (root / "params.yaml").write_text(yaml.safe_dump(dict(params), sort_keys=False))
    for name, stage in stages.items():
        log.info("%s: stage %s", root.name, name)
        start = time.perf_counter()
        result = subprocess.run(stage_argv(stage["cmd"]), cwd=root, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"{root}: stage {name} failed:\n{result.stdout[-2000:]}\n"
                               f"{result.stderr[-4000:]}")
        log.info("%s: stage %s took %.0f s", root.name, name, time.perf_counter() - start)
    tmp = marker.with_suffix(".tmp")
    tmp.write_text(json.dumps(wanted, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, marker)
    return root / "data"


def draw_baseline(root: Path, resamples: int) -> dict[str, Any]:
    """The linear CCA baseline of the draw in ``root`` (fitted once, then read back)."""
    from benchmarks import linear_baseline as B
    from model.data import DataPaths

    path = root / BASELINES
    if not path.exists():
        report = B.run(DataPaths.under(root / "data"), B.BaselineConfig(resamples=resamples))
        update_report(B.SECTION, report, path)
    return json.loads(path.read_text())[B.SECTION]


def draw_root(workdir: Path, synth_seed: int) -> Path:
    return workdir / f"synth_seed_{synth_seed}"


def across_draws(draws: Mapping[str, Mapping[str, Any]], split: str) -> dict[str, Any]:
    """Per figure of ``split``: each draw's margin (seed mean - that draw's baseline), their mean
    and standard error over draws, and the draws whose seed mean is above; plus the draws above
    on every figure."""
    summaries = [d[split] if split != "val" else d for d in draws.values()]
    keys = list(summaries[0]["figures"])
    margins = np.array([[s["figures"][k]["margin"] for k in keys] for s in summaries])  # (draws, figures)
    out: dict[str, Any] = {}
    for j, key in enumerate(keys):
        m = margins[:, j]
        se = float(m.std(ddof=1) / np.sqrt(len(m))) if len(m) > 1 else None
        out[key] = {"margins": m.tolist(), "mean_margin": float(m.mean()), "se": se,
                    "draws_above": int((m > 0).sum())}
        crossfit = [s["figures"][key].get("margin_crossfit") for s in summaries]
        if all(c is not None for c in crossfit):
            out[key].update(crossfit_margins=crossfit, mean_crossfit_margin=float(np.mean(crossfit)),
                            draws_above_crossfit=int(sum(c > 0 for c in crossfit)))
    return {"figures": out, "draws": len(summaries),
            "mean_margin": float(margins.mean()),
            "draws_above_on_every_figure": int((margins > 0).all(axis=1).sum())}


def replicate(params: Mapping[str, Any], synth_seeds: Sequence[int], workdir: Path, seeds: int,
              jobs: int, first: int = 0, test: bool = False,
              resamples: int = 1000) -> dict[str, Any]:
    """Build each draw, its baseline and (``seeds`` > 0) its seed sweep; the per-draw summaries
    and, for sweeps, the summary across draws."""
    stages = feature_stages()
    draws: dict[str, Any] = {}
    for synth_seed in synth_seeds:
        root = draw_root(workdir, synth_seed)
        drawn = apply_overrides(params, [f"synth.seed={synth_seed}"])
        data = build_draw(root, drawn, stages)
        baseline = draw_baseline(root, resamples)
        entry: dict[str, Any] = {"synth_seed": synth_seed, "root": str(root)}
        if seeds > 0:
            runs = sweep(data, drawn, seeds, jobs, first, test)
            entry.update(runs=runs, **summarise(runs, baseline))
            if test:
                entry["test"] = {"note": TEST_NOTE, **summarise(runs, baseline, "test")}
        else:
            entry["baseline"] = {k: v for k, v in baseline.items()
                                 if k.endswith(".acc") and ".k2." in k}
        draws[str(synth_seed)] = entry
    out: dict[str, Any] = {"draws": draws}
    if seeds > 0:
        out["across_draws"] = {"val": across_draws(draws, "val")}
        if test:
            out["across_draws"]["test"] = {"note": TEST_NOTE, **across_draws(draws, "test")}
    return out


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--draws", type=int, nargs="+", required=True, metavar="SYNTH_SEED",
                        help="synth.seed of each corpus draw")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--workdir", type=Path, default=Path("data/draws"),
                        help="where each draw is built (synth_seed_<n>/), and reused from")
    parser.add_argument("--seeds", type=int, default=4, help="train seeds per draw (0: build only)")
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("-S", "--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="a params override, as dvc exp run -S")
    parser.add_argument("--test", action="store_true",
                        help="also score each val-selected checkpoint on test (reported only)")
    parser.add_argument("--resamples", type=int, default=1000,
                        help="identity-bootstrap resamples of the baseline's intervals")
    parser.add_argument("--section", default="corpus_draws")
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    if args.seeds < 0 or args.jobs < 1 or args.first_seed < 0:
        parser.error("--seeds and --first-seed must be at least 0, --jobs at least 1")
    if any(o.split("=", 1)[0] == "synth.seed" for o in args.overrides):
        parser.error("set the corpus draws with --draws, not -S synth.seed")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = apply_overrides(load_params(args.params), args.overrides)
    start = time.perf_counter()
    result = replicate(params, args.draws, args.workdir, args.seeds, args.jobs, args.first_seed,
                       args.test, args.resamples)
    result = {"overrides": list(args.overrides), "jobs": args.jobs, **result,
              "seconds": round(time.perf_counter() - start, 1)}
    update_report(args.section, result, args.out)
    for key, row in result.get("across_draws", {}).get("val", {}).get("figures", {}).items():
        log.info("%s: margins by draw %s, mean %+.4f", key,
                 ", ".join(f"{m:+.4f}" for m in row["margins"]), row["mean_margin"])
    return result


if __name__ == "__main__":
    main()
