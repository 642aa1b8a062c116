"""``face_attributes`` stage: the 12 visual private attributes of every stored face.

Runs the classifier trained by ``face_attributes_train`` over ``faces.h5`` in batches (CUDA when
present) and writes ``face_attributes.parquet``: one row per manifest face id in manifest order,
column ``id``, then for each attribute ``<name>`` (int8, 1 when the probability is at least
``threshold``) and ``<name>_prob`` (float32 sigmoid probability). Faces of the manifest that are
not in ``faces.h5`` (rejected by the ``faces`` stage) are listed in
``face_attributes_rejects.parquet`` with reason ``no_face_features``.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import typer

from pipeline.config import ConfigError, from_params
from pipeline.io import write_json, write_parquet
from pipeline.parallel import resolve_workers
from pipeline.rejects import Rejects

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

STAGE = "face_attributes"
CHECKPOINT_FORMAT = 1
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


@contextlib.contextmanager
def torch_runtime(threads: int, deterministic: bool = True) -> Iterator[None]:
    """Set torch's intra-op threads (0 = all cores) and deterministic mode; restore afterwards."""
    import torch

    old_threads = torch.get_num_threads()
    old_det = torch.are_deterministic_algorithms_enabled()
    old_warn = torch.is_deterministic_algorithms_warn_only_enabled()
    torch.set_num_threads(resolve_workers(threads))
    torch.use_deterministic_algorithms(deterministic, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det, warn_only=old_warn)


def device() -> str:
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def to_input(batch: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...],
             dev: str | torch.device = "cpu") -> torch.Tensor:
    """``(B, S, S, 3)`` uint8 RGB -> ``(B, 3, S, S)`` float32, ``(x / 255 - mean) / std``."""
    import torch

    x = torch.from_numpy(np.ascontiguousarray(batch)).to(dev)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)  # (B, 3, S, S) in [0, 1]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)  # (1, 3, 1, 1)
    return (x - m) / s


def predict(net: torch.nn.Module, read: Any, n: int, batch_size: int, mean: tuple[float, ...],
            std: tuple[float, ...], desc: str | None = None) -> np.ndarray:
    """Sigmoid probabilities ``(n, classes)`` for rows ``read(start, stop)`` of uint8 images."""
    import torch
    from tqdm.auto import tqdm

    dev = next(net.parameters()).device
    net.eval()
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, unit="batch"):
            logits = net(to_input(read(start, min(start + batch_size, n)), mean, std, dev))
            out.append(torch.sigmoid(logits.float()).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def save_classifier(path: str | os.PathLike, net: torch.nn.Module, meta: dict[str, Any]) -> None:
    """Save weights plus everything needed to rebuild the model (tensors and primitives only)."""
    import torch

    from pipeline.io import atomic_file

    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    buffer = io.BytesIO()  # saving to a file would name the archive after the (random) temp file
    torch.save({"format_version": CHECKPOINT_FORMAT, **meta, "state_dict": state}, buffer)
    with atomic_file(path) as tmp:
        tmp.write_bytes(buffer.getvalue())


def load_classifier(path: str | os.PathLike, dev: str = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild the classifier saved by :func:`save_classifier` (``weights_only=True``)."""
    import timm
    import torch

    import model  # noqa: F401  (registers the CSWin variants)

    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if ckpt.get("format_version") != CHECKPOINT_FORMAT:
        raise ValueError(f"{path}: not a face-attribute checkpoint (format "
                         f"{ckpt.get('format_version')!r}, expected {CHECKPOINT_FORMAT})")
    net = timm.create_model(ckpt["model_name"], **ckpt["model_args"])
    net.load_state_dict(ckpt.pop("state_dict"), strict=True)
    return net.to(dev).eval(), ckpt


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
    from pipeline.faces import FaceStore

    out_path = Path(out_path)
    rejects = Rejects(STAGE)
    ids = manifest_ids(manifest_dir)
    with torch_runtime(cfg.threads), FaceStore(faces_h5) as store:
        net, meta = load_classifier(checkpoint, device())
        if meta["size"] != store.size:
            raise ValueError(f"{checkpoint} was trained on {meta['size']} px faces but {faces_h5} "
                             f"holds {store.size} px; set face_attributes_train.size = faces.size")
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
    rejects.write(out_path.with_name(f"{STAGE}_rejects.parquet"))
    write_json(out_path.with_name(f"{STAGE}_summary.json"), summary)
    rejects.check(len(ids), cfg.max_reject_fraction)
    write_parquet(out_path, frame)
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
