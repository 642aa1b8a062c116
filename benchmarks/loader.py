"""Benchmark the training data loader alone: tuples/s and items/s with 0 and 2 worker processes.

Builds the train stage's inputs with :func:`model.data.prepare_training` (label maps, spectrogram
statistics, the train tuples of both directions) and iterates the training DataLoader (random
crops and flips, one HDF5 read per store per batch) without any model. The first batch of a
pass is timed separately (``first_batch_seconds``: worker start-up and file opening); the rates
cover the remaining batches of ``--epochs`` epochs. Items are the spectrograms plus faces read,
``B * (k + 1)`` per batch.

Usage: ``python -m benchmarks.loader [--data data] [--batch-size 64] [--workers 0 2]`` (writes
the ``loader`` section of reports/benchmarks.json).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPORT, self_peak_rss_mib, update_report
from model.data import DataConfig, DataPaths, TrainData, make_loader, prepare_training

log = logging.getLogger("benchmarks.loader")


def measure(data: TrainData, workers: int, epochs: int) -> dict[str, Any]:
    """Iterate ``epochs`` training epochs through a DataLoader with ``workers`` processes."""
    sampler = data.sampler()
    tuples = items = batches = 0
    first = elapsed = 0.0
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        start = time.perf_counter()
        for i, batch in enumerate(make_loader(data.train, sampler, num_workers=workers)):
            now = time.perf_counter()
            if i == 0:
                first += now - start
                start = now
                continue
            b = batch["label"].shape[0]
            tuples += b
            items += b * (batch["voice"].shape[1] + batch["face"].shape[1])
            batches += 1
        elapsed += time.perf_counter() - start
    return {"workers": workers, "epochs": epochs, "batches_timed": batches,
            "tuples": tuples, "items": items, "seconds": round(elapsed, 3),
            "tuples_per_s": round(tuples / elapsed, 1), "items_per_s": round(items / elapsed, 1),
            "first_batch_seconds": round(first / epochs, 3)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"),
                        help="data root holding manifest/, features/ and tuples/")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)  # the loader does numpy and HDF5 work; keep torch out of the way
    start = time.perf_counter()
    data = prepare_training(DataPaths.under(args.data), DataConfig(batch_size=args.batch_size))
    setup = time.perf_counter() - start
    runs = []
    for workers in args.workers:
        runs.append(measure(data, workers, args.epochs))
        log.info("%d worker(s): %.0f tuples/s, %.0f items/s", workers, runs[-1]["tuples_per_s"],
                 runs[-1]["items_per_s"])
    update_report("loader", {
        "what": "training DataLoader alone (random crops + flips, both directions, k = 2 and "
                "multiway), no model", "data": str(args.data), "batch_size": args.batch_size,
        "train_tuples": len(data.train), "groups": {f"{d}/k{k}": len(r) for (d, k), r
                                                    in data.train.groups().items()},
        "setup_seconds": round(setup, 3), "runs": runs,
        "peak_rss_mib": round(self_peak_rss_mib(), 1)}, path=args.out)
    log.info("wrote the loader section of %s", args.out)


if __name__ == "__main__":
    main()
