"""``audio_attributes`` stage: openSMILE IS09 functionals, P2VANet's audio private attributes.

For every manifest utterance: decode, downmix and resample to 16 kHz (``pipeline.common.audio``), then
openSMILE's ``IS09_emotion`` functionals (384 values: 16 low-level descriptors and their deltas
x 12 functionals; P2VANet section III-C). One openSMILE extractor is built per worker process
(pool initializer), not per clip.

Outputs in the feature directory:

- ``audio_attributes.parquet``: column ``id`` then the 384 float32 features named as openSMILE
  names them (e.g. ``pcm_RMSenergy_sma_max``), one row per kept utterance, in manifest order,
  streamed in row groups of ``chunk_rows``;
- ``audio_attributes_stats.json``: per-feature mean and std (population, ddof 0) over the
  **train split only**, so the model can standardize without leaking val/test statistics.
  Features constant over the train split get std 1.0 and are listed under ``constant``;
- ``audio_attributes_rejects.parquet`` (reasons ``missing``, ``empty``, ``undecodable``,
  ``corrupt``, ``too_short``, ``silent``, ``nan``) and ``audio_attributes_summary.json``.

The four files are committed together after the reject check: a run that fails on too many
rejects leaves the previous ones as they were.
"""

from __future__ import annotations

import functools
import logging
import warnings
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.common.audio import check_signal, iter_columns, load_audio, read_utterances
from pipeline.common.config import ConfigError, from_params
from pipeline.common.io import output_group, write_json
from pipeline.common.parallel import imap_ordered
from pipeline.common.probe import BadInput
from pipeline.common.rejects import Rejects
from pipeline.sources.layout import resolve_root

log = logging.getLogger(__name__)

STAGE = "audio_attributes"
TABLE_FILE = "audio_attributes.parquet"
STATS_FILE = "audio_attributes_stats.json"
REJECTS_FILE = "audio_attributes_rejects.parquet"
SUMMARY_FILE = "audio_attributes_summary.json"
STATS_SPLIT = "train"
TASK_SIZE = 4  # clips per pool task: fewer, larger messages between the processes
INT16_MAX = 32767 / 32768  # openSMILE's wrapper casts x * 32768 to int16: keep x below this

# Per-process openSMILE extractor, set by the pool initializer (``_init_worker``).
_WORKER: dict[str, Any] = {}


@dataclass(frozen=True)
class AudioAttributesConfig:
    feature_set: str = "IS09"
    sample_rate: int = 16000
    min_duration: float = 0.5
    silence_dbfs: float = -60.0
    chunk_rows: int = 1024
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.sample_rate <= 0 or self.chunk_rows <= 0:
            raise ConfigError("audio_attributes: sample_rate and chunk_rows must be > 0")


def make_extractor(feature_set: str) -> Any:
    """An openSMILE functionals extractor for a ``opensmile.FeatureSet`` member name."""
    import opensmile

    if feature_set not in opensmile.FeatureSet.__members__:
        raise ConfigError(f"audio_attributes.feature_set {feature_set!r} is not an "
                          f"opensmile.FeatureSet ({', '.join(opensmile.FeatureSet.__members__)})")
    return opensmile.Smile(feature_set=opensmile.FeatureSet[feature_set],
                           feature_level=opensmile.FeatureLevel.Functionals)


def _init_worker(feature_set: str) -> None:
    _WORKER["smile"] = make_extractor(feature_set)


def extract(smile: Any, signal: np.ndarray, sample_rate: int) -> np.ndarray:
    """Functionals of one mono signal: float32 ``(num_features,)``."""
    x = np.clip(signal, -1.0, INT16_MAX).astype(np.float32)[None, :]  # (1 channel, samples)
    with warnings.catch_warnings():  # "Segment too short, filling with NaN": rejected as nan
        warnings.simplefilter("ignore", UserWarning)
        out = smile(x, sample_rate)  # (channels, features, windows) = (1, F, 1)
    return np.asarray(out, dtype=np.float32).reshape(-1)  # (1, F, 1) -> (F,)


def _task(cfg: AudioAttributesConfig, item: tuple[str, str]) -> tuple[str, np.ndarray | None, Any]:
    """Worker: ``("ok", float32 (F,), seconds)`` or ``(reason, None, detail)``."""
    _, path = item
    try:
        signal = load_audio(path, cfg.sample_rate)
        check_signal(signal, cfg.sample_rate, min_duration=cfg.min_duration,
                     silence_dbfs=cfg.silence_dbfs)
        feats = extract(_WORKER["smile"], signal, cfg.sample_rate)
        if not np.isfinite(feats).all():
            raise BadInput("nan", f"{int((~np.isfinite(feats)).sum())} non-finite features")
        return "ok", feats, signal.size / cfg.sample_rate
    except BadInput as exc:
        return exc.reason, None, exc.detail
    except Exception as exc:  # any other decoder/extractor failure must not kill the stage
        return "undecodable", None, f"{type(exc).__name__}: {exc}"


class RunningStats:
    """Per-feature count, mean and M2 in float64, merged batch by batch (Chan et al.)."""

    def __init__(self, n_features: int) -> None:
        self.n = 0
        self.mean = np.zeros(n_features, dtype=np.float64)
        self.m2 = np.zeros(n_features, dtype=np.float64)

    def update(self, batch: np.ndarray) -> None:
        if batch.shape[0] == 0:
            return
        b = batch.astype(np.float64)
        nb, mb = b.shape[0], b.mean(axis=0)
        m2b = ((b - mb) ** 2).sum(axis=0)
        total = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / total)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / total)
        self.n = total

    def result(self, names: list[str]) -> dict[str, Any]:
        if self.n == 0:
            return {"split": STATS_SPLIT, "n": 0, "ddof": 0, "names": names, "mean": None,
                    "std": None, "constant": []}
        std = np.sqrt(self.m2 / self.n)
        constant = std <= 1e-12 * np.maximum(1.0, np.abs(self.mean))
        std = np.where(constant, 1.0, std)
        return {"split": STATS_SPLIT, "n": self.n, "ddof": 0, "names": names,
                "mean": [float(v) for v in self.mean], "std": [float(v) for v in std],
                "constant": [n for n, c in zip(names, constant, strict=True) if c]}


class TableWriter:
    """Streams ``id`` + float32 feature rows to Parquet, one row group per ``chunk_rows``."""

    def __init__(self, path: Path, names: list[str], chunk_rows: int) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        self.pa = pa
        self.names = names
        self.schema = pa.schema([("id", pa.string())] + [(n, pa.float32()) for n in names])
        self.writer = pq.ParquetWriter(path, self.schema)
        self.chunk_rows = chunk_rows
        self.ids: list[str] = []
        self.rows: list[np.ndarray] = []
        self.written = 0

    def add(self, uid: str, feats: np.ndarray) -> np.ndarray | None:
        """Buffer one row; return the flushed ``(rows, F)`` block when a row group is written."""
        self.ids.append(uid)
        self.rows.append(feats)
        return self.flush() if len(self.rows) >= self.chunk_rows else None

    def flush(self) -> np.ndarray | None:
        if not self.rows:
            return None
        block = np.stack(self.rows)  # (rows, F)
        columns = [self.pa.array(self.ids, self.pa.string())]
        columns += [self.pa.array(block[:, j]) for j in range(block.shape[1])]
        self.writer.write_table(self.pa.Table.from_arrays(columns, schema=self.schema))
        self.written += len(self.ids)
        self.ids, self.rows = [], []
        return block

    def close(self) -> None:
        self.writer.close()


def _write(rows: Iterable[tuple[str, str, str]], results: Iterable[Any], writer: TableWriter,
           rejects: Rejects) -> tuple[RunningStats, float]:
    """Consume ordered worker results into the table, the rejects and the train statistics."""
    stats = RunningStats(len(writer.names))
    is_train: list[bool] = []
    seconds = 0.0
    for (uid, rel, split), (status, feats, extra) in zip(rows, results, strict=True):
        if status != "ok":
            rejects.add(status, id=uid, path=rel, detail=extra)
            continue
        seconds += extra
        is_train.append(split == STATS_SPLIT)
        block = writer.add(uid, feats)
        if block is not None:
            stats.update(block[np.asarray(is_train)])
            is_train = []
    block = writer.flush()
    if block is not None:
        stats.update(block[np.asarray(is_train)])
    return stats, seconds


def run(raw_dir: Path, manifest_dir: Path, out_dir: Path, cfg: AudioAttributesConfig) -> dict[str, Any]:
    """Extract openSMILE functionals for every manifest utterance into ``out_dir``."""
    root = resolve_root(raw_dir)
    table = read_utterances(manifest_dir)
    names = list(make_extractor(cfg.feature_set).feature_names)
    out_dir = Path(out_dir)
    rejects = Rejects(STAGE)
    items = ((uid, str(root / rel)) for uid, rel in iter_columns(table, "id", "path"))
    results = imap_ordered(functools.partial(_task, cfg), items, workers=cfg.workers, desc=STAGE,
                           total=table.height, chunksize=TASK_SIZE, initializer=_init_worker,
                           initargs=(cfg.feature_set,))
    with output_group() as outputs:
        writer = TableWriter(outputs.file(out_dir / TABLE_FILE), names, cfg.chunk_rows)
        try:
            stats, seconds = _write(iter_columns(table, "id", "path", "split"), results, writer, rejects)
        finally:
            writer.close()
        summary = {"stage": STAGE, "manifest_rows": table.height, "stored": writer.written,
                   "rejected": len(rejects), "rejects_by_reason": rejects.counts(),
                   "features": len(names), "train_rows_for_stats": stats.n,
                   "audio_seconds": round(seconds, 3),
                   "params": {k: v for k, v in asdict(cfg).items() if k != "workers"}}
        if stats.n == 0:
            log.warning("audio_attributes: no %r rows; statistics are empty", STATS_SPLIT)
        write_json(outputs.file(out_dir / STATS_FILE),
                   {"feature_set": cfg.feature_set, **stats.result(names)})
        rejects.write(outputs.file(out_dir / REJECTS_FILE))
        write_json(outputs.file(out_dir / SUMMARY_FILE), summary)
        rejects.check(table.height, cfg.max_reject_fraction)  # raises: no output is replaced
    log.info("audio_attributes: %d rows x %d features, %d rejected %s", writer.written,
             len(names), len(rejects), summary["rejects_by_reason"])
    return summary


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw)."),
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    out_dir: Path = typer.Argument(..., help="Feature directory (data/features)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `audio_attributes` section."),
) -> None:
    """Extract openSMILE IS09 functionals (384 per utterance) and train-split statistics."""
    run(raw_dir, manifest_dir, out_dir, from_params(AudioAttributesConfig, params, STAGE))
