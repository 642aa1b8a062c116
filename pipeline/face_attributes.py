"""``face_attributes`` stage: the 12 visual private attributes of every stored face.

Runs the classifier trained by ``face_attributes_train`` over ``faces.h5`` in batches (CUDA when
present) and writes ``face_attributes.parquet``: one row per manifest face id in manifest order,
column ``id``, then for each attribute ``<name>`` (int8, 1 when the probability is at least
``threshold``) and ``<name>_prob`` (float32 sigmoid probability). Faces of the manifest that are
not in ``faces.h5`` (rejected by the ``faces`` stage) are listed in
``face_attributes_rejects.parquet`` with reason ``no_face_features``. The table, the rejects and
``face_attributes_summary.json`` are committed together after the reject check: a run that fails
on too many rejects leaves the previous three files as they were.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import typer

from model.attributes import load_classifier, predict
from model.runtime import device, torch_runtime
from pipeline.common.config import ConfigError, from_params
from pipeline.common.io import output_group, write_json, write_parquet
from pipeline.common.rejects import Rejects

log = logging.getLogger(__name__)

STAGE = "face_attributes"
PROB_SUFFIX = "_prob"


@dataclass(frozen=True)
class FaceAttributesConfig:
    batch_size: int = 256
    threshold: float = 0.5
    threads: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.batch_size <= 0:
            raise ConfigError("face_attributes.batch_size must be positive")
        if not 0.0 < self.threshold < 1.0:
            raise ConfigError("face_attributes.threshold must be in (0, 1)")


def manifest_ids(manifest_dir: Path) -> list[str]:
    return pl.read_parquet(Path(manifest_dir) / "faces.parquet", columns=["id"])["id"].to_list()


def attribute_frame(ids: list[str], probs: np.ndarray, names: list[str],
                    threshold: float) -> pl.DataFrame:
    cols: dict[str, Any] = {"id": pl.Series("id", ids, dtype=pl.Utf8)}
    for j, name in enumerate(names):
        cols[name] = pl.Series(name, (probs[:, j] >= threshold).astype(np.int8), dtype=pl.Int8)
    for j, name in enumerate(names):
        cols[name + PROB_SUFFIX] = pl.Series(name + PROB_SUFFIX, probs[:, j].astype(np.float32),
                                             dtype=pl.Float32)
    return pl.DataFrame(cols)


def _store_rows(store: Any, ids: list[str], rejects: Rejects) -> tuple[list[str], np.ndarray]:
    """Manifest ids present in the store and their store rows; the others are rejected."""
    kept, rows = [], []
    for uid in ids:
        if uid in store:
            kept.append(uid)
            rows.append(store.index(uid))
        else:
            rejects.add("no_face_features", id=uid, detail="not in faces.h5 (see faces_rejects)")
    return kept, np.asarray(rows, dtype=np.int64)


def run(faces_h5: Path, manifest_dir: Path, checkpoint: Path, out_path: Path,
        cfg: FaceAttributesConfig) -> dict[str, Any]:
    """Predict the attributes of every manifest face into ``out_path`` (Parquet)."""
    from model.stores import FaceStore

    out_path = Path(out_path)
    rejects = Rejects(STAGE)
    ids = manifest_ids(manifest_dir)
    with torch_runtime(cfg.threads), FaceStore(faces_h5) as store:
        net, meta = load_classifier(checkpoint, device())
        if meta["size"] != store.size:
            raise ValueError(f"{checkpoint} was trained on {meta['size']} px faces but {faces_h5} "
                             f"holds {store.size} px; retrain face_attributes_train (its input "
                             f"size is faces.size)")
        kept, rows = _store_rows(store, ids, rejects)
        order = np.argsort(rows, kind="stable")  # read the store in increasing row order
        sorted_rows = rows[order]

        def read(start: int, stop: int) -> np.ndarray:
            block = sorted_rows[start:stop]
            return store.images[block[0]:block[-1] + 1][block - block[0]]  # (k, S, S, 3)

        probs = np.empty((len(kept), len(meta["attributes"])), np.float32)
        probs[order] = predict(net, read, len(kept), cfg.batch_size, tuple(meta["mean"]),
                               tuple(meta["std"]), desc=STAGE).reshape(len(kept), -1)
    names = list(meta["attributes"])
    frame = attribute_frame(kept, probs, names, cfg.threshold)
    summary = {"stage": STAGE, "manifest_faces": len(ids), "predicted": len(kept),
               "rejected": len(rejects), "rejects_by_reason": rejects.counts(),
               "attributes": names, "threshold": cfg.threshold,
               "positive_rate": {n: round(float(frame[n].mean() or 0.0), 4) for n in names}}
    with output_group() as outputs:
        write_parquet(outputs.file(out_path), frame)
        rejects.write(outputs.file(out_path.with_name(f"{STAGE}_rejects.parquet")))
        write_json(outputs.file(out_path.with_name(f"{STAGE}_summary.json")), summary)
        rejects.check(len(ids), cfg.max_reject_fraction)  # raises: no output is replaced
    log.info("face_attributes: %d faces, %d rejected", len(kept), len(rejects))
    return summary


def cli(
    faces_h5: Path = typer.Argument(..., help="Output of `faces` (data/features/faces.h5)."),
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    checkpoint: Path = typer.Argument(..., help="Output of `face_attributes_train`."),
    out_path: Path = typer.Argument(..., help="Parquet to write (data/features/face_attributes.parquet)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `face_attributes` section."),
) -> None:
    """Predict the 12 visual private attributes of every manifest face (Parquet)."""
    run(faces_h5, manifest_dir, checkpoint, out_path, from_params(FaceAttributesConfig, params, STAGE))
