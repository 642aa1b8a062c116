"""``faces`` stage: one square uint8 RGB face crop per manifest face, stored once in HDF5.

Per image (``pipeline.common.images``): decode JPEG/PNG, convert grayscale / palette / CMYK / alpha to
RGB, crop (the square around the bounding box when the manifest has one, as for VGGFace v1
lists; the centred square for VoxCeleb face-track crops), resize to ``faces.size`` with area
interpolation. Normalization and flip augmentation belong to the training loaders.

Store layout (``faces.h5``, read it with :class:`model.stores.FaceStore`): ``images`` uint8
``(n, size, size, 3)`` RGB, chunked one image per chunk (random access for training), optionally
compressed; ``ids`` (manifest face ids, UTF-8) in manifest order. File attributes record every
output-shaping parameter (``params`` JSON plus one attribute per key) and a SHA-256 of the ids.
Only the parent process writes, in manifest order and in fixed-size blocks, so 1 and N workers
give byte-identical files. Unusable images go to ``faces_rejects.parquet`` (``unreadable``,
``empty``, ``truncated``, ``undecodable``, ``too_small``, ``bad_box``). The store, the rejects
table and ``faces_summary.json`` are committed together after the reject check: a run that fails
on too many rejects leaves the previous three files as they were. ``faces.size`` is also the
input size of the face-attribute classifier (``face_attributes_train`` reads it).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.common.config import ConfigError, from_params
from pipeline.common.images import DEFAULT_FACE_SIZE, load_face
from pipeline.common.io import output_group, write_json
from pipeline.common.parallel import imap_ordered, resolve_workers
from pipeline.common.probe import BadInput
from pipeline.common.rejects import Rejects
from pipeline.sources.layout import resolve_root

log = logging.getLogger(__name__)

STAGE = "faces"
STORE_FILE = "faces.h5"
REJECTS_FILE = "faces_rejects.parquet"
SUMMARY_FILE = "faces_summary.json"
MANIFEST_FILE = "faces.parquet"
FORMAT_VERSION = 1
BOX_COLUMNS = ("left", "top", "right", "bottom")
COMPRESSIONS = ("none", "gzip", "lzf")
TASK_SIZE = 16  # images per worker task (amortizes inter-process overhead; no effect on output)
FLUSH_IMAGES = 256  # images per HDF5 write (fixed, so the file bytes do not depend on workers)
READ_BATCH = 4096  # manifest rows read at a time
# How the work is done (workers) and the tolerance that only decides whether the stage fails:
# neither changes a stored value, so neither is recorded in the store.
RUNTIME_KEYS = ("workers", "max_reject_fraction")

Item = tuple[str, str, str, tuple[float, float, float, float] | None]  # id, rel path, abs path, box
Result = tuple[str, str, str, np.ndarray | None, str]  # id, rel path, status, image, detail


@dataclass(frozen=True)
class FacesConfig:
    size: int = DEFAULT_FACE_SIZE
    min_size: int = 32
    compression: str = "gzip"
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.size <= 0 or self.min_size <= 0:
            raise ConfigError("faces.size and faces.min_size must be positive")
        if self.compression not in COMPRESSIONS:
            raise ConfigError(f"faces.compression must be one of {COMPRESSIONS}")

    def recorded(self) -> dict[str, Any]:
        """Every parameter that shapes the output."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}


def _box(row: dict[str, Any]) -> tuple[float, float, float, float] | None:
    values = [row.get(c) for c in BOX_COLUMNS]
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        return (float("nan"),) * 4  # partial box: rejected as bad_box by the worker
    return tuple(float(v) for v in values)  # type: ignore[return-value]


def iter_manifest(manifest_dir: Path) -> tuple[int, Iterator[tuple[str, str, Any]]]:
    """Row count and a streaming iterator of ``(id, path, box)`` over ``faces.parquet``."""
    import pyarrow.parquet as pq

    path = Path(manifest_dir) / MANIFEST_FILE
    pf = pq.ParquetFile(path)
    names = set(pf.schema_arrow.names)
    missing = {"id", "path"} - names
    if missing:
        raise ValueError(f"{path}: missing column(s) {sorted(missing)}")
    columns = ["id", "path", *[c for c in BOX_COLUMNS if c in names]]

    def rows() -> Iterator[tuple[str, str, Any]]:
        for batch in pf.iter_batches(batch_size=READ_BATCH, columns=columns):
            for row in batch.to_pylist():
                yield row["id"], row["path"], _box(row)

    return pf.metadata.num_rows, rows()


def _chunks(items: Iterator[Item], n: int) -> Iterator[list[Item]]:
    chunk: list[Item] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _task(cfg: FacesConfig, items: list[Item]) -> list[Result]:
    """Worker: ``(id, rel, "ok", image, "")`` or ``(id, rel, reason, None, detail)``, in order."""
    out: list[Result] = []
    for uid, rel, path, box in items:
        try:
            out.append((uid, rel, "ok", load_face(path, cfg.size, box, cfg.min_size), ""))
        except BadInput as exc:
            out.append((uid, rel, exc.reason, None, exc.detail))
        except Exception as exc:  # any other decoder failure must not kill the stage
            out.append((uid, rel, "undecodable", None, f"{type(exc).__name__}: {exc}"))
    return out


class FaceWriter:
    """Appends ``(size, size, 3)`` uint8 faces to a chunked, resizable HDF5 dataset."""

    def __init__(self, path: Path, cfg: FacesConfig) -> None:
        import h5py

        self.cfg = cfg
        self.file = h5py.File(path, "w")
        shape = (cfg.size, cfg.size, 3)
        compression = None if cfg.compression == "none" else cfg.compression
        self.images = self.file.create_dataset(
            "images", shape=(0, *shape), maxshape=(None, *shape), dtype="u1", chunks=(1, *shape),
            compression=compression, shuffle=compression is not None, track_times=False)
        self.ids: list[str] = []
        self.buffer: list[np.ndarray] = []

    def add(self, uid: str, image: np.ndarray) -> None:
        self.ids.append(uid)
        self.buffer.append(image)
        if len(self.buffer) >= FLUSH_IMAGES:
            self.flush()

    def flush(self) -> None:
        if not self.buffer:
            return
        start = self.images.shape[0]
        self.images.resize(start + len(self.buffer), axis=0)
        self.images[start:] = np.stack(self.buffer)  # (k, size, size, 3)
        self.buffer = []

    def finish(self, manifest_rows: int) -> None:
        import h5py

        self.flush()
        self.file.create_dataset("ids", data=np.array(self.ids, dtype=object),
                                 dtype=h5py.string_dtype("utf-8"), track_times=False)
        params = self.cfg.recorded()
        attrs = self.file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["layout"] = "images[i] is the face of ids[i]: (size, size, 3) uint8 RGB"
        attrs["params"] = json.dumps(params, sort_keys=True)
        for key, value in params.items():
            attrs[key] = value
        attrs["n_items"] = len(self.ids)
        attrs["manifest_rows"] = manifest_rows
        attrs["ids_sha256"] = hashlib.sha256("\n".join(self.ids).encode()).hexdigest()

    def close(self) -> None:
        self.file.close()


def run(raw_dir: Path, manifest_dir: Path, out_dir: Path, cfg: FacesConfig) -> dict[str, Any]:
    """Crop and resize every manifest face into ``out_dir/faces.h5``."""
    root = resolve_root(raw_dir)
    total, rows = iter_manifest(manifest_dir)
    items = ((uid, rel, str(root / rel), box) for uid, rel, box in rows)
    workers = resolve_workers(cfg.workers)
    rejects = Rejects(STAGE)
    out_dir = Path(out_dir)
    log.info("faces: %d manifest faces -> %d px crops with %d worker(s)", total, cfg.size, workers)
    results = imap_ordered(functools.partial(_task, cfg), _chunks(items, TASK_SIZE),
                           workers=workers, desc=STAGE, total=-(-total // TASK_SIZE))
    with output_group() as outputs:
        writer = FaceWriter(outputs.file(out_dir / STORE_FILE), cfg)
        try:
            for batch in results:
                for uid, rel, status, image, detail in batch:
                    if status == "ok":
                        writer.add(uid, image)
                    else:
                        rejects.add(status, id=uid, path=rel, detail=detail)
            writer.finish(total)
        finally:
            writer.close()
        summary = {"stage": STAGE, "manifest_rows": total, "stored": len(writer.ids),
                   "rejected": len(rejects), "rejects_by_reason": rejects.counts(),
                   "params": cfg.recorded()}
        rejects.write(outputs.file(out_dir / REJECTS_FILE))
        write_json(outputs.file(out_dir / SUMMARY_FILE), summary)
        rejects.check(total, cfg.max_reject_fraction)  # raises: no output is replaced
    log.info("faces: %d stored, %d rejected %s", summary["stored"], summary["rejected"],
             summary["rejects_by_reason"])
    return summary


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw)."),
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    out_dir: Path = typer.Argument(..., help="Feature directory (data/features)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `faces` section."),
) -> None:
    """Crop and resize every manifest face into an HDF5 store (uint8 RGB)."""
    run(raw_dir, manifest_dir, out_dir, from_params(FacesConfig, params, STAGE))
