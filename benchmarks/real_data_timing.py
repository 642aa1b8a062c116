"""Seconds per 1,000 clips/images for the data stages, for the real-data guide (docs/real-data.md).

Runs ``manifest``, ``spectrograms``, ``audio_attributes`` and ``faces`` once each on the embedded
synthetic corpus (same formats as VoxCeleb1: 16 kHz PCM wav, JPEG face crops), with the
paper settings of ``configs/voxceleb1.yaml`` (spectrogram preset ``aml``, 224 px faces) and with
the ``params.yaml`` defaults, every stage in a fresh process using every core. Reports seconds
per 1,000 items and per hour of audio, since real VoxCeleb utterances are longer (~8 s) than the
synthetic ones. Results go to ``reports/benchmarks.json`` under ``real_data_timing``.

Usage: ``python -m benchmarks.real_data_timing [--identities 200] [--work DIR]``
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import tempfile
from pathlib import Path

import polars as pl
import yaml

from benchmarks.common import run_measured, update_report
from pipeline.common.parallel import resolve_workers

ROOT = Path(__file__).resolve().parents[1]
log = logging.getLogger("benchmarks.real_data_timing")
SETTINGS = {
    "paper": {"spectrograms": {"preset": "aml"}, "faces": {"size": 224}},
    "default": {},
}


def _params(work: Path, identities: int, overrides: dict) -> Path:
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"] = {"source": "synthetic"}
    params["synth"]["identities"] = identities
    for name, values in overrides.items():
        params[name].update(values)
    path = work / f"params-{abs(hash(json.dumps(overrides, sort_keys=True)))}.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


def _stage(name: str, *args: str | Path) -> dict:
    return run_measured([sys.executable, "-m", "pipeline.cli", name, *map(str, args)])


def measure(work: Path, identities: int) -> dict:
    raw, manifest, features = work / "raw", work / "manifest", work / "features"
    base = _params(work, identities, {})
    _stage("acquire", raw, "--params", base)
    m = _stage("manifest", raw, manifest, "--params", base)
    utt = pl.read_parquet(manifest / "utterances.parquet")
    n_faces = pl.read_parquet(manifest / "faces.parquet").height
    hours = float(utt["duration"].sum()) / 3600
    out = {"identities": identities, "utterances": utt.height, "faces": n_faces,
           "mean_utterance_seconds": round(float(utt["duration"].mean()), 3),
           "workers": resolve_workers(0),
           "manifest": {**m, "per_1000_files": round(m["seconds"] * 1000 / (utt.height + n_faces), 2)}}
    for label, overrides in SETTINGS.items():
        params = _params(work, identities, overrides)
        for stage, n in (("spectrograms", utt.height), ("audio_attributes", utt.height),
                         ("faces", n_faces)):
            if label == "paper" and stage == "audio_attributes":
                continue  # no paper-specific setting: same run as default
            shutil.rmtree(features, ignore_errors=True)
            r = _stage(stage, raw, manifest, features, "--params", params)
            r["per_1000"] = round(r["seconds"] * 1000 / n, 2)
            store = features / ("faces.h5" if stage == "faces" else f"{stage}.h5")
            if store.is_file():
                r["store_mib_per_1000"] = round(store.stat().st_size / 2**20 * 1000 / n, 2)
            if stage != "faces":
                r["per_audio_hour"] = round(r["seconds"] / hours, 1)
                if store.is_file():
                    r["store_mib_per_audio_hour"] = round(store.stat().st_size / 2**20 / hours, 1)
            out.setdefault(label, {})[stage] = r
            log.info("%s %s: %s", label, stage, r)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--work", type=Path, default=None)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    work = args.work or Path(tempfile.mkdtemp(prefix="avmatch-timing-"))
    try:
        result = measure(work, args.identities)
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result["note"] = ("seconds include process start-up and imports; the machine's 2 cores were "
                      "shared with other jobs, so treat these as upper bounds")
    update_report("real_data_timing", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
