"""``train`` stage: AML / P2VANet on the train tuples, the checkpoint chosen on val.

Reads the feature stores, the attribute tables, the manifest and the **train and val** matching
tuples under ``DATA_DIR`` (``features/``, ``manifest/``, ``tuples/train``, ``tuples/val``; never
``tuples/test`` or ``tuples/seen_heard``), and writes

- ``MODEL_DIR/best/``: the val-selected weights (safetensors) and their JSON (model config,
  params, spectrogram statistics, class maps, ``selection.selected_on = "val"``);
- ``MODEL_DIR/last/``: the resume state (weights, optimiser and RNG states, epoch and step);
- ``LIVE_DIR/``: DVCLive's per-epoch logs of every loss term, the discriminator's accuracy and
  the val metrics (``metrics.json`` and ``plots/metrics/``).

Params: the ``train`` and ``model`` sections and the top-level ``lambda1..lambda4`` (P2VANet
Eq. 18), so ``dvc exp run -S lambda1=1.0`` retrains with another weight. Several processes:
``torchrun --nproc_per_node=N -m pipeline.train DATA_DIR MODEL_DIR LIVE_DIR`` (README).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import typer

from pipeline.common.config import ConfigError, load_params, section

log = logging.getLogger(__name__)

LAMBDAS = ("lambda1", "lambda2", "lambda3", "lambda4")


def stage_params(params: dict[str, Any]) -> dict[str, Any]:
    """The params this stage reads: ``train``, ``model`` and ``lambdas`` (top-level lambda1..4)."""
    return {"train": section(params, "train"), "model": section(params, "model"),
            "lambdas": {k: params[k] for k in LAMBDAS if k in params}}


def run(data_dir: Path, model_dir: Path, live_dir: Path, params: dict[str, Any]) -> dict[str, Any]:
    from model.trainer import run as train

    summary = train(data_dir, model_dir, live_dir, stage_params(params))
    log.info("train: best val %.4f at epoch %d of %d (%.0f s)", summary["best"],
             summary["best_epoch"], summary["epochs"], summary["seconds"])
    return summary


def cli(
    data_dir: Path = typer.Argument(..., help="The data/ directory (features, manifest, tuples)."),
    model_dir: Path = typer.Argument(..., help="Output: best/ and last/ checkpoints."),
    live_dir: Path = typer.Argument(..., help="Output: DVCLive logs (metrics and plots)."),
    params: Path = typer.Option(Path("params.yaml"), "--params", help="params.yaml to read."),
) -> None:
    """Train AML / P2VANet; select the checkpoint on val (see ``pipeline/train.py``)."""
    from model.checkpoint import CheckpointError
    from model.data import HeldOutSplitError, MissingItemsError

    try:
        run(data_dir, model_dir, live_dir, load_params(params))
    except (ConfigError, CheckpointError, HeldOutSplitError, MissingItemsError,
            FileNotFoundError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None


def main() -> None:  # pragma: no cover - ``torchrun -m pipeline.train``
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    typer.run(cli)


if __name__ == "__main__":  # pragma: no cover
    main()
