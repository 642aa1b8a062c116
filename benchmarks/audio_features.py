"""Benchmark the audio feature stages (``spectrograms``, ``audio_attributes``).

Measures, for each stage, clips per second and seconds of audio per second with 1 worker and
with every core, and the peak RSS (largest single process of the stage's process tree) on the
embedded corpus and on a corpus 10x larger. Results go to ``reports/benchmarks.json`` under
``audio_features``.

The embedded corpus is the default synthetic one (``acquire`` with the ``synth`` section of
``params.yaml``, then ``manifest``). The 10x corpus repeats every manifest row ten times with new
ids (``<id>#rK``) pointing at the same files: the stages stream, so their memory must not grow
with the number of rows; the files are decoded again for every copy (the OS page cache serves the
bytes, which favours I/O, not the decoding and feature work that dominate).

Each measurement runs the stage's CLI in a fresh process (``python -m pipeline.cli <stage>``), so
the times include interpreter start-up and imports (about 1-2 s per run).

Usage: ``python -m benchmarks.audio_features [--work DIR] [--factor 10] [--skip-10x-single]``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from benchmarks.common import run_measured, update_report
from pipeline.common.parallel import resolve_workers

ROOT = Path(__file__).resolve().parents[1]
STAGES = {"spectrograms": "spectrograms_summary.json", "audio_attributes": "audio_attributes_summary.json"}
log = logging.getLogger("benchmarks.audio_features")


def cli_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "pipeline.cli", *args]


def write_params(path: Path, workers: int) -> Path:
    """The project's params.yaml with the audio stages' ``workers`` set."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for stage in STAGES:
        params.setdefault(stage, {})["workers"] = workers
    params.setdefault("manifest", {})["workers"] = 0
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def build_corpus(work: Path, factor: int) -> dict[str, Path]:
    """The embedded corpus and its manifest, plus a ``factor``-times repeated manifest."""
    raw, manifest, big = work / "raw", work / "manifest", work / f"manifest_x{factor}"
    work.mkdir(parents=True, exist_ok=True)
    params = write_params(work / "params.yaml", 0)
    if not (manifest / "utterances.parquet").exists():
        for cmd in (cli_cmd("acquire", str(raw), "--params", str(params)),
                    cli_cmd("manifest", str(raw), str(manifest), "--params", str(params))):
            subprocess.run(cmd, check=True, cwd=ROOT)
    big.mkdir(parents=True, exist_ok=True)
    table = pl.read_parquet(manifest / "utterances.parquet")
    copies = [table.with_columns(pl.col("id") + f"#r{k}") if k else table for k in range(factor)]
    pl.concat(copies).write_parquet(big / "utterances.parquet")
    return {"raw": raw, "x1": manifest, f"x{factor}": big}


def measure(stage: str, raw: Path, manifest: Path, out: Path, params: Path) -> dict[str, Any]:
    """Run one stage in a fresh process; return throughput and peak RSS."""
    result = run_measured(cli_cmd(stage, str(raw), str(manifest), str(out), "--params", str(params)))
    summary = json.loads((out / STAGES[stage]).read_text())
    seconds = result["seconds"]
    return {"clips": summary["manifest_rows"], "stored": summary["stored"],
            "audio_seconds": summary["audio_seconds"], "wall_seconds": seconds,
            "clips_per_second": round(summary["manifest_rows"] / seconds, 2),
            "audio_seconds_per_second": round(summary["audio_seconds"] / seconds, 1),
            "peak_rss_mib": result["peak_rss_mib"]}


def bench_stage(stage: str, paths: dict[str, Path], work: Path, factor: int, all_workers: int,
                skip_big_single: bool) -> dict[str, Any]:
    runs: dict[str, Any] = {}
    for corpus in ("x1", f"x{factor}"):
        for workers in (1, all_workers):
            if corpus != "x1" and workers == 1 and skip_big_single:
                continue
            params = write_params(work / f"params_w{workers}.yaml", workers)
            key = f"{corpus}_workers{workers}"
            out_dir = work / f"out_{stage}_{key}"
            runs[key] = measure(stage, paths["raw"], paths[corpus], out_dir, params)
            shutil.rmtree(out_dir)  # the 10x stores are large; only the numbers are kept
            log.info("%s %s: %s", stage, key, runs[key])
    out: dict[str, Any] = {"runs": runs}
    for corpus in ("x1", f"x{factor}"):
        one, many = runs.get(f"{corpus}_workers1"), runs.get(f"{corpus}_workers{all_workers}")
        if one and many:
            out[f"speedup_{corpus}"] = round(one["wall_seconds"] / many["wall_seconds"], 3)
    small, big = runs[f"x1_workers{all_workers}"], runs[f"x{factor}_workers{all_workers}"]
    out[f"peak_rss_ratio_x{factor}_over_x1"] = round(big["peak_rss_mib"] / small["peak_rss_mib"], 3)
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "avmatch_bench_audio")
    parser.add_argument("--factor", type=int, default=10)
    parser.add_argument("--skip-10x-single", action="store_true",
                        help="skip the slow 1-worker runs on the 10x corpus")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    args.work.mkdir(parents=True, exist_ok=True)
    paths = build_corpus(args.work, args.factor)
    all_workers = resolve_workers(0)
    report: dict[str, Any] = {
        "corpus": {"x1": "default synthetic corpus (params.yaml synth section) via acquire + manifest",
                   f"x{args.factor}": f"the x1 manifest repeated {args.factor} times with new ids, "
                                      "same files (decoded again for every copy)"},
        "all_workers": all_workers,
        "note": "wall time of a fresh `python -m pipeline.cli <stage>` process, incl. start-up; "
                "peak RSS is the largest single process of the stage's process tree",
    }
    for stage in STAGES:
        report[stage] = bench_stage(stage, paths, args.work, args.factor, all_workers,
                                    args.skip_10x_single)
    update_report("audio_features", report)
    log.info("%s", json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
