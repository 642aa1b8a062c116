"""Benchmark the ``tuples`` stage: wall time and peak RSS on the default-size and a 10x manifest.

The manifests are generated directly with polars in the manifest stage's schema, shaped like
the embedded corpus (per identity: 6 videos x 1 utterance and 3 face frames; the last 2 videos
of each training identity held out as seen_heard; VoxCeleb1-like gender and nationality mix).
The 10x run scales both the identities and the requested tuple counts by 10. The feature
stores hold every manifest item; they are written with their id lists only (the HDF5 ``ids``
dataset, the Parquet ``id`` column), which is all the stage reads from them.

Usage: ``python benchmarks/tuples.py`` (writes the ``tuples`` section of reports/benchmarks.json).
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import run_measured, update_report  # noqa: E402
from pipeline.tuples import TuplesConfig  # noqa: E402

NATIONALITIES = {"USA": 0.64, "UK": 0.17, "Canada": 0.05, "Australia": 0.04, "India": 0.03,
                 "Germany": 0.02, "Ireland": 0.02, "Italy": 0.02, "Spain": 0.01}
SPLIT_SHARES = (("train", 0.75), ("val", 0.095), ("test", 0.155))
VIDEOS, UTTERANCES, FRAMES, HELD_OUT = 6, 1, 3, 2  # as params.yaml's synth + manifest
COUNT_KEYS = [f"{s}_{kind}" for s in ("train", "val", "test", "seen_heard") for kind in ("binary", "multiway", "pairs")]


def identities(n: int, rng: np.random.Generator) -> pl.DataFrame:
    bounds = np.cumsum([round(share * n) for _, share in SPLIT_SHARES])
    split = np.select([np.arange(n) < bounds[0], np.arange(n) < bounds[1]], ["train", "val"], "test")
    p = np.array(list(NATIONALITIES.values()))
    return pl.DataFrame({
        "id": [f"id{10001 + i:05d}" for i in range(n)], "name": [f"name{i}" for i in range(n)],
        "gender": rng.choice(["m", "f"], size=n, p=[0.55, 0.45]).tolist(),
        "nationality": rng.choice(list(NATIONALITIES), size=n, p=p / p.sum()).tolist(),
        "set": ["dev"] * n, "split": split.tolist(),
        "n_utterances": [VIDEOS * UTTERANCES] * n, "n_faces": [VIDEOS * FRAMES] * n})


def items(idents: pl.DataFrame, per_video: int, fmt: str) -> pl.DataFrame:
    """One row per (identity, video, item) with the manifest's split rule for held-out videos."""
    grid = idents.select(pl.col("id").alias("identity"), pl.col("split").alias("home")).join(
        pl.DataFrame({"v": list(range(VIDEOS))}), how="cross").join(
        pl.DataFrame({"j": list(range(per_video))}), how="cross")
    video = pl.format("yt{}_{}", pl.col("identity"), pl.col("v"))
    held = (pl.col("home") == "train") & (pl.col("v") >= VIDEOS - HELD_OUT)
    return grid.select(
        id=pl.format(fmt, pl.col("identity"), video, pl.col("j").cast(pl.Utf8).str.zfill(5)),
        path=pl.lit("x"), identity="identity", video=video,
        split=pl.when(held).then(pl.lit("seen_heard")).otherwise(pl.col("home")))


def write_manifest(out: Path, n_identities: int, seed: int = 0) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    idents = identities(n_identities, np.random.default_rng(seed))
    idents.write_parquet(out / "identities.parquet")
    items(idents, UTTERANCES, "{}/{}/{}").write_parquet(out / "utterances.parquet")
    items(idents, FRAMES, "{}/{}/00{}").write_parquet(out / "faces.parquet")
    return out


def write_features(out: Path, manifest: Path) -> Path:
    """Id lists of the four feature stores, each holding every manifest item of its modality."""
    out.mkdir(parents=True, exist_ok=True)
    voices = pl.read_parquet(manifest / "utterances.parquet", columns=["id"])["id"]
    faces = pl.read_parquet(manifest / "faces.parquet", columns=["id"])["id"]
    width = max(1, int(voices.str.len_bytes().max() or 1))
    with h5py.File(out / "spectrograms.h5", "w") as f:
        f.create_dataset("ids", data=np.array(voices.to_list(), dtype=f"S{width}"))
    with h5py.File(out / "faces.h5", "w") as f:
        f.create_dataset("ids", data=np.array(faces.to_list(), dtype=object), dtype=h5py.string_dtype())
    voices.to_frame("id").write_parquet(out / "audio_attributes.parquet")
    faces.to_frame("id").write_parquet(out / "face_attributes.parquet")
    return out


def default_params(root: Path) -> dict:
    params = yaml.safe_load((root / "params.yaml").read_text())
    return params.get("tuples") or {}


def measure(work: Path, name: str, n_identities: int, section: dict) -> dict:
    manifest = write_manifest(work / f"{name}_manifest", n_identities)
    features = write_features(work / f"{name}_features", manifest)
    params = work / f"{name}_params.yaml"
    params.write_text(yaml.safe_dump({"tuples": section}))
    out = work / f"{name}_tuples"
    code = "import sys, typer; from pipeline.tuples import cli; typer.run(cli)"
    result = run_measured([sys.executable, "-c", code, str(manifest), str(features), str(out),
                           "--params", str(params)])
    summary = json.loads((out / "summary.json").read_text())
    return {**result, "identities": n_identities, "utterances": summary["inputs"]["utterances"],
            "faces": summary["inputs"]["faces"], "rows": summary["rows"],
            "shortfall_streams": len(summary["shortfalls"])}


def main() -> None:
    root = Path(__file__).resolve().parents[1]
    section = default_params(root)
    TuplesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})  # fail early
    scaled = {**section, **{k: 10 * int(section.get(k, getattr(TuplesConfig, k))) for k in COUNT_KEYS}}
    with tempfile.TemporaryDirectory(prefix="bench_tuples_") as tmp:
        work = Path(tmp)
        results = {"default": measure(work, "default", 200, section),
                   "x10": measure(work, "x10", 2000, scaled)}
    results["note"] = ("the `avmatch tuples` command function (pipeline.tuples.cli via typer.run) in a child "
                       "process on polars-generated manifests; x10 has "
                       "10x identities/items and 10x every requested count")
    update_report("tuples", results)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
