"""Benchmark the ``faces`` stage: images/s with 1 worker vs every core, peak RSS, store size.

Writes ``n`` face-track-like JPEGs (224 x 224, VoxCeleb1's crop size, smooth random content
saved at quality 90) and a ``faces.parquet`` manifest into a temporary directory, then runs
``avmatch faces`` in a child process for each setting and merges the results into
``reports/benchmarks.json`` under ``faces``.

    python -m benchmarks.faces [--n 2000] [--size 64]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

from benchmarks.common import run_measured, update_report
from pipeline.common.parallel import resolve_workers

log = logging.getLogger(__name__)


def write_corpus(root: Path, n: int, side: int = 224, seed: int = 0) -> Path:
    """``n`` JPEG faces and ``manifest/faces.parquet``; returns the manifest directory."""
    import cv2
    import polars as pl

    rng = np.random.default_rng(seed)
    ids, paths = [], []
    for i in range(n):
        small = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)
        image = cv2.resize(small, (side, side), interpolation=cv2.INTER_CUBIC)
        image = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
        rel = f"faces/id{10001 + i // 50}/vid{i // 10:05d}/{i:07d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / rel), image, [cv2.IMWRITE_JPEG_QUALITY, 90])
        ids.append(rel[len("faces/"):-len(".jpg")])
        paths.append(rel)
    manifest = root.parent / "manifest"
    manifest.mkdir(parents=True, exist_ok=True)
    pl.DataFrame({"id": ids, "path": paths}).write_parquet(manifest / "faces.parquet")
    return manifest


def measure(root: Path, manifest: Path, out: Path, size: int, workers: int,
            compression: str, n: int) -> dict[str, float]:
    params = out.parent / f"params_{workers}_{compression}.yaml"
    params.write_text(f"faces:\n  size: {size}\n  workers: {workers}\n  compression: {compression}\n")
    cmd = [sys.executable, "-m", "pipeline.cli", "faces", str(root), str(manifest), str(out),
           "--params", str(params)]
    result = run_measured(cmd)
    result["images_per_s"] = round(n / result["seconds"], 1)
    result["store_mib"] = round((out / "faces.h5").stat().st_size / 2**20, 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="number of images")
    parser.add_argument("--size", type=int, default=64, help="faces.size")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    cores = resolve_workers(0)
    with tempfile.TemporaryDirectory(prefix="avmatch-bench-faces-") as tmp:
        root = Path(tmp) / "raw"
        manifest = write_corpus(root, args.n)
        runs = {}
        for workers, compression in ((1, "gzip"), (cores, "gzip"), (cores, "none"), (cores, "lzf")):
            key = f"workers_{workers}_{compression}"
            runs[key] = measure(root, manifest, Path(tmp) / key, args.size, workers, compression,
                                args.n)
            log.info("%s: %s", key, runs[key])
    one, all_ = runs["workers_1_gzip"], runs[f"workers_{cores}_gzip"]
    update_report("faces", {
        "images": args.n, "input": "224x224 JPEG q90", "size": args.size, "cores": cores,
        "runs": runs, "speedup_all_cores": round(all_["images_per_s"] / one["images_per_s"], 2),
        "note": "seconds include process start-up and imports (~1-2 s); shared 2-core machine",
    })


if __name__ == "__main__":
    main()
