"""Benchmark the training step against the data loader: tuples/s and items/s on CPU.

For the AML baseline setting and the full P2VANet (the shipped ``model`` section), times
``--steps`` generator steps of :class:`model.trainer.GeneratorStep` (forward, the discriminator's
``disc_steps`` updates, backward, Adam) on batches read beforehand, so the loader's time is not
counted; then times the training DataLoader alone over the same batches
(:func:`benchmarks.loader.measure`). The loader must deliver at least 5x what a step consumes.

Usage: ``python -m benchmarks.train_throughput [--data data] [--steps 30] [--workers 0 2]``
(writes the ``train_throughput`` section of reports/benchmarks.json).
"""

from __future__ import annotations

import argparse
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import REPORT, update_report
from benchmarks.loader import measure
from model.avnet import AVMatchNet, InputDims, LossWeights, ModelConfig
from model.data import DataPaths, prepare_training
from model.trainer import GeneratorStep, TrainConfig, make_optimizers
from pipeline.common.config import build, load_params

log = logging.getLogger("benchmarks.train_throughput")

AML = {"vae": "none", "private": "none", "public": "none", "loss_weighting": "aml"}


def time_steps(net: AVMatchNet, batches: list[dict], cfg: TrainConfig) -> dict[str, Any]:
    """Seconds, tuples/s and items/s of one training step per batch (after one warm-up step)."""
    step, weights = GeneratorStep(net), LossWeights()
    gen, disc = make_optimizers(net, cfg)
    net.train()

    def one(batch: dict) -> None:
        terms = step(batch, weights, disc)
        gen.zero_grad(set_to_none=True)
        terms["total"].backward()
        gen.step()

    one(batches[0])
    tuples = items = 0
    start = time.perf_counter()
    for batch in batches[1:]:
        one(batch)
        tuples += batch["label"].shape[0]
        items += batch["label"].shape[0] * (batch["voice"].shape[1] + batch["face"].shape[1])
    seconds = time.perf_counter() - start
    return {"steps": len(batches) - 1, "seconds": round(seconds, 3),
            "tuples_per_s": round(tuples / seconds, 1), "items_per_s": round(items / seconds, 1)}


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    params = load_params(args.params)
    cfg = build(TrainConfig, params["train"], name="train")
    torch.set_num_threads(args.threads)
    data = prepare_training(DataPaths.under(args.data), cfg.data)
    sampler = data.sampler()
    sampler.set_epoch(0)
    keys = list(sampler)[:args.steps + 1]
    batches = [data.train[key] for key in keys]  # a representative mix of k = 2 and multiway
    dims = InputDims(**data.source.input_dims())
    steps = {}
    for name, overrides in (("p2vanet", {}), ("aml", AML)):
        torch.manual_seed(0)
        model_cfg = build(ModelConfig, {**params["model"], **overrides}, name="model")
        steps[name] = time_steps(AVMatchNet(model_cfg, dims), batches, cfg)
        log.info("%s: %.0f tuples/s, %.0f items/s", name, steps[name]["tuples_per_s"],
                 steps[name]["items_per_s"])
    loader = [measure(data, workers, 1) for workers in args.workers]
    best_loader = max(run["tuples_per_s"] for run in loader)
    slowest_step = min(s["tuples_per_s"] for s in steps.values())
    update_report("train_throughput", {
        "what": "training steps on pre-read batches (threads as given) vs the DataLoader alone",
        "data": str(args.data), "batch_size": cfg.batch_size, "threads": args.threads,
        "steps": steps, "loader": loader,
        "loader_over_step": round(best_loader / slowest_step, 2),
        "loader_at_least_5x": best_loader >= 5 * slowest_step}, path=args.out)


if __name__ == "__main__":
    main()
