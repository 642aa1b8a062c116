"""``spectrograms`` stage: one log-magnitude STFT per utterance, stored once in an HDF5 file.

Front end (per utterance): decode, downmix, resample to ``sample_rate``
(``pipeline.common.audio``), optionally remove the DC mean (``remove_dc``), pre-emphasis (the
first sample kept), ``|STFT|`` (periodic Hann window of ``win_length`` centred in ``n_fft``,
``center=True`` zero padding, as librosa), amplitude in dB (``20 log10 max(|S|, 1e-5)``, floored
at ``max - top_db`` over all bins, as ``librosa.amplitude_to_db``), then the lowest ``n_bins``
bins, then optional per-frequency mean/variance normalization over the utterance.

Presets (``spectrograms.preset``; a front-end key left unset (null) takes the preset's value, a
key given in the params section overrides it):

- ``speaker16k`` (default, CPU-friendly): 16 kHz as stored by VoxCeleb (no resampling), n_fft
  512 / window 512 (32 ms), hop 384 (24 ms), lowest 224 of 257 bins (0-7 kHz), 125 frames
  (3.0 s), per-frequency mean/variance normalization. The model sees the papers' 224 x 125
  tensor covering about the same 3 s as AML, but each STFT frame costs a 512-point FFT instead
  of resampling to 22.05 kHz plus a 2048-point one, which keeps the whole default ``dvc repro``
  within its CPU budget.
- ``aml``: AML's public code: 22,050 Hz, no DC removal, pre-emphasis 0.97, n_fft 2048, hop
  512, dB, the lowest 224 bins (0-2.4 kHz), 125 frames (about 2.9 s), no normalization.

Store layout (``spectrograms.h5``, read it with ``model.stores.SpectrogramStore``):
``data`` float16 ``(total_frames, n_bins)``, chunked ``(chunk_frames, n_bins)``, utterances
stored back to back in manifest order (no padding); ``offsets`` int64 ``(n + 1,)`` so utterance
``i`` is ``data[offsets[i]:offsets[i + 1]]``; ``ids`` (manifest ids, fixed-length UTF-8) and ``durations``
(seconds, float32). File attributes record every parameter that shapes the stored values
(``params`` JSON plus one attribute per key; not ``workers`` nor the ``max_reject_fraction``
tolerance, so changing those never changes the store's bytes) and a SHA-256 of the stored ids.
The HDF5 file is written only by the parent process, in manifest order, so 1 and N workers give
byte-identical files. The store, ``spectrograms_rejects.parquet`` and
``spectrograms_summary.json`` are committed together after the reject check: a run that fails
on too many rejects leaves the previous three files as they were.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
from dataclasses import dataclass
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

STAGE = "spectrograms"
STORE_FILE = "spectrograms.h5"
REJECTS_FILE = "spectrograms_rejects.parquet"
SUMMARY_FILE = "spectrograms_summary.json"
FORMAT_VERSION = 1
CHUNK_CACHE_BYTES = 1 << 20  # HDF5 chunk cache per dataset
BLOCK_CHUNKS = 8  # HDF5 chunks per write of spectrogram frames
INDEX_CHUNK = 1024  # HDF5 chunk length of the ids/offsets/durations datasets
TASK_SIZE = 8  # clips per pool task: the per-clip work is a few ms, so batch the messages
AMIN = 1e-5  # amplitude floor before log10, as librosa.amplitude_to_db
NORMALIZATIONS = ("none", "cmvn")
# Keys that change how the work is done (workers) or only whether the stage fails (the reject
# tolerance), never a stored value: kept out of the store's attributes. The summary records the
# tolerance (``summary_params``).
RUNTIME_KEYS = ("workers", "max_reject_fraction")

PRESETS: dict[str, dict[str, Any]] = {
    "speaker16k": {"sample_rate": 16000, "n_fft": 512, "win_length": 512, "hop_length": 384,
                   "n_bins": 224, "frames": 125, "pre_emphasis": 0.97, "remove_dc": True,
                   "top_db": 80.0, "normalization": "cmvn"},
    "aml": {"sample_rate": 22050, "n_fft": 2048, "win_length": 2048, "hop_length": 512,
            "n_bins": 224, "frames": 125, "pre_emphasis": 0.97, "remove_dc": False,
            "top_db": 80.0, "normalization": "none"},
}
DEFAULT_PRESET = "speaker16k"


@dataclass(frozen=True)
class SpectrogramConfig:
    """Front-end params; a key left ``None`` takes its value from ``preset`` (see ``PRESETS``)."""

    preset: str = DEFAULT_PRESET
    sample_rate: int | None = None
    n_fft: int | None = None
    win_length: int | None = None
    hop_length: int | None = None
    n_bins: int | None = None
    frames: int | None = None
    pre_emphasis: float | None = None
    remove_dc: bool | None = None
    top_db: float | None = None  # dB floor below the utterance's maximum; 0 disables it
    normalization: str | None = None
    min_duration: float = 0.5
    silence_dbfs: float = -60.0
    chunk_frames: int = 256
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ConfigError(f"spectrograms.preset must be one of {sorted(PRESETS)}, got {self.preset!r}")
        for key, value in PRESETS[self.preset].items():
            if getattr(self, key) is None:
                object.__setattr__(self, key, value)  # frozen: fill from the preset once
        self._validate()

    def _validate(self) -> None:
        if self.normalization not in NORMALIZATIONS:
            raise ConfigError(f"spectrograms.normalization must be one of {NORMALIZATIONS}")
        if not 0 < self.win_length <= self.n_fft:
            raise ConfigError("spectrograms: need 0 < win_length <= n_fft")
        if not 0 < self.n_bins <= self.n_fft // 2 + 1:
            raise ConfigError(f"spectrograms.n_bins must be in 1..{self.n_fft // 2 + 1} (n_fft // 2 + 1)")
        if min(self.hop_length, self.frames, self.chunk_frames, self.sample_rate) <= 0:
            raise ConfigError("spectrograms: hop_length, frames, chunk_frames, sample_rate must be > 0")
        if not 0.0 <= self.pre_emphasis < 1.0:
            raise ConfigError("spectrograms.pre_emphasis must be in [0, 1)")

    def recorded(self) -> dict[str, Any]:
        """Every parameter that shapes the stored values (all keys but ``RUNTIME_KEYS``)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in RUNTIME_KEYS}

    def summary_params(self) -> dict[str, Any]:
        """The summary's record: every key but ``workers`` (the tolerance included)."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "workers"}


def _window(cfg: SpectrogramConfig) -> np.ndarray:
    """Periodic Hann window of ``win_length`` zero-padded (centred) to ``n_fft``."""
    n = np.arange(cfg.win_length)
    win = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / cfg.win_length)
    left = (cfg.n_fft - cfg.win_length) // 2
    return np.pad(win, (left, cfg.n_fft - cfg.win_length - left))


def _preprocess(signal: np.ndarray, cfg: SpectrogramConfig) -> np.ndarray:
    x = signal.astype(np.float64)
    if cfg.remove_dc:
        x = x - x.mean()
    if cfg.pre_emphasis:
        x = np.concatenate([x[:1], x[1:] - cfg.pre_emphasis * x[:-1]])
    return x


def log_spectrogram(signal: np.ndarray, cfg: SpectrogramConfig) -> np.ndarray:
    """Log-magnitude STFT of a mono signal: float32 ``(1 + len // hop, n_bins)``, time-major."""
    x = np.pad(_preprocess(signal, cfg), cfg.n_fft // 2)  # center=True, zero padding
    # (len + 1, n_fft) overlapping windows, every hop-th kept -> (n_frames, n_fft)
    windows = np.lib.stride_tricks.sliding_window_view(x, cfg.n_fft)[:: cfg.hop_length]
    magnitude = np.abs(np.fft.rfft(windows * _window(cfg), axis=1))  # (n_frames, n_fft // 2 + 1)
    db = 20.0 * np.log10(np.maximum(magnitude, AMIN))
    if cfg.top_db > 0:
        db = np.maximum(db, db.max() - cfg.top_db)
    db = db[:, : cfg.n_bins]  # lowest n_bins frequencies
    if cfg.normalization == "cmvn":
        db = (db - db.mean(axis=0)) / (db.std(axis=0) + 1e-5)
    return db.astype(np.float32)


def _task(cfg: SpectrogramConfig, item: tuple[str, str]) -> tuple[str, np.ndarray | None, Any]:
    """Worker: ``("ok", float16 (frames, n_bins), seconds)`` or ``(reason, None, detail)``."""
    _, path = item
    try:
        signal = load_audio(path, cfg.sample_rate)
        check_signal(signal, cfg.sample_rate, min_duration=cfg.min_duration,
                     silence_dbfs=cfg.silence_dbfs)
        spec = log_spectrogram(signal, cfg).astype(np.float16)
        if not np.isfinite(spec).all():
            raise BadInput("nan", "non-finite spectrogram values")
        return "ok", spec, signal.size / cfg.sample_rate
    except BadInput as exc:
        return exc.reason, None, exc.detail
    except Exception as exc:  # any other decoder failure must not kill the stage
        return "undecodable", None, f"{type(exc).__name__}: {exc}"


def _append(dataset: Any, values: np.ndarray) -> None:
    """Grow a resizable HDF5 dataset along axis 0 and write ``values`` at its end."""
    start = dataset.shape[0]
    dataset.resize(start + values.shape[0], axis=0)
    dataset[start:] = values


class SpectrogramWriter:
    """Streams time-major float16 spectrograms and their index into a chunked HDF5 file.

    Memory stays bounded and steady: frames are copied into one preallocated block of
    ``BLOCK_CHUNKS`` chunks that is written whenever it fills (so every write covers whole,
    aligned chunks), and the index (``ids``, ``offsets``, ``durations``) is written every
    ``INDEX_CHUNK`` items. ``libver="latest"`` gives extensible-array chunk indexes, whose
    in-memory metadata does not grow with the number of chunks (the HDF5 1.8 B-tree's does).
    """

    def __init__(self, path: Path, cfg: SpectrogramConfig, id_bytes: int = 64) -> None:
        import h5py

        self.cfg = cfg
        # An explicit chunk-cache size: with h5py's default, written chunks were seen to pile up.
        self.file = h5py.File(path, "w", libver="latest", rdcc_nbytes=CHUNK_CACHE_BYTES)
        grow = {"maxshape": (None,), "chunks": (INDEX_CHUNK,), "track_times": False}
        self.data = self.file.create_dataset(
            "data", shape=(0, cfg.n_bins), maxshape=(None, cfg.n_bins), dtype="f2",
            chunks=(cfg.chunk_frames, cfg.n_bins), track_times=False)
        # Fixed-length UTF-8 bytes: variable-length strings live in HDF5's global heap, whose
        # cached collections grow with the number of items written.
        self.ids = self.file.create_dataset("ids", shape=(0,), dtype=f"S{max(1, id_bytes)}", **grow)
        self.offsets = self.file.create_dataset("offsets", data=np.zeros(1, np.int64), **grow)
        self.durations = self.file.create_dataset("durations", shape=(0,), dtype="f4", **grow)
        self.block = np.empty((BLOCK_CHUNKS * cfg.chunk_frames, cfg.n_bins), dtype=np.float16)
        self.filled = 0
        self.index: list[tuple[str, int, float]] = []  # (id, end offset, seconds) not yet written
        self.n_items = self.frames_total = self.shorter_than_crop = 0
        self.seconds = 0.0
        self.hasher = hashlib.sha256()

    def add(self, uid: str, spec: np.ndarray, seconds: float) -> None:
        """Append one utterance's ``(frames, n_bins)`` spectrogram."""
        self._put(spec)
        self.frames_total += spec.shape[0]
        self.shorter_than_crop += int(spec.shape[0] < self.cfg.frames)
        self.n_items += 1
        self.seconds += seconds
        self.hasher.update(uid.encode() + b"\n")
        self.index.append((uid, self.frames_total, seconds))
        if len(self.index) >= INDEX_CHUNK:
            self._write_index()

    def _put(self, spec: np.ndarray) -> None:
        pos = 0
        while pos < spec.shape[0]:
            n = min(spec.shape[0] - pos, self.block.shape[0] - self.filled)
            self.block[self.filled:self.filled + n] = spec[pos:pos + n]
            self.filled += n
            pos += n
            if self.filled == self.block.shape[0]:
                _append(self.data, self.block)
                self.filled = 0

    def _write_index(self) -> None:
        if not self.index:
            return
        ids, ends, seconds = zip(*self.index, strict=True)
        _append(self.ids, np.array([uid.encode("utf-8") for uid in ids], dtype=self.ids.dtype))
        _append(self.offsets, np.asarray(ends, dtype=np.int64))
        _append(self.durations, np.asarray(seconds, dtype=np.float32))
        self.index = []

    def flush(self) -> None:
        """Write the partly filled block and index (only at the end: later blocks stay aligned)."""
        if self.filled:
            _append(self.data, self.block[: self.filled])
            self.filled = 0
        self._write_index()

    def finish(self, extra_attrs: dict[str, Any]) -> None:
        self.flush()
        params = self.cfg.recorded()
        attrs = self.file.attrs
        attrs["format_version"] = FORMAT_VERSION
        attrs["layout"] = "time-major; item i is data[offsets[i]:offsets[i+1]], (frames_i, n_bins)"
        attrs["params"] = json.dumps(params, sort_keys=True)
        for key, value in params.items():
            attrs[key] = value
        attrs["n_items"] = self.n_items
        attrs["ids_sha256"] = self.hasher.hexdigest()  # of the ids, each followed by a newline
        for key, value in extra_attrs.items():
            attrs[key] = value

    def close(self) -> None:
        self.file.close()


def _summary(cfg: SpectrogramConfig, total: int, writer: SpectrogramWriter,
             rejects: Rejects) -> dict[str, Any]:
    return {
        "stage": STAGE, "manifest_rows": total, "stored": writer.n_items,
        "rejected": len(rejects), "rejects_by_reason": rejects.counts(),
        "frames_total": writer.frames_total,
        "frames_mean": round(writer.frames_total / writer.n_items, 2) if writer.n_items else 0.0,
        "shorter_than_crop": writer.shorter_than_crop,
        "audio_seconds": round(writer.seconds, 3),
        "params": cfg.summary_params(),
    }


def run(raw_dir: Path, manifest_dir: Path, out_dir: Path, cfg: SpectrogramConfig) -> dict[str, Any]:
    """Compute every manifest utterance's spectrogram into ``out_dir/spectrograms.h5``."""
    root = resolve_root(raw_dir)
    table = read_utterances(manifest_dir)
    rejects = Rejects(STAGE)
    out_dir = Path(out_dir)
    results = imap_ordered(functools.partial(_task, cfg),
                           ((uid, str(root / rel)) for uid, rel in iter_columns(table, "id", "path")),
                           workers=cfg.workers, desc=STAGE, total=table.height, chunksize=TASK_SIZE)
    with output_group() as outputs:
        store = outputs.file(out_dir / STORE_FILE)
        writer = SpectrogramWriter(store, cfg, id_bytes=int(table["id"].str.len_bytes().max() or 1))
        try:
            for (uid, rel), (status, spec, extra) in zip(iter_columns(table, "id", "path"), results,
                                                         strict=True):
                if status == "ok":
                    writer.add(uid, spec, extra)
                else:
                    rejects.add(status, id=uid, path=rel, detail=extra)
            writer.finish({"manifest_rows": table.height})
            summary = _summary(cfg, table.height, writer, rejects)
        finally:
            writer.close()
        rejects.write(outputs.file(out_dir / REJECTS_FILE))
        write_json(outputs.file(out_dir / SUMMARY_FILE), summary)
        rejects.check(table.height, cfg.max_reject_fraction)  # raises: no output is replaced
    log.info("spectrograms: %d stored (%d frames), %d rejected %s", summary["stored"],
             summary["frames_total"], summary["rejected"], summary["rejects_by_reason"])
    return summary


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw)."),
    manifest_dir: Path = typer.Argument(..., help="Output of `manifest` (data/manifest)."),
    out_dir: Path = typer.Argument(..., help="Feature directory (data/features)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its `spectrograms` section."),
) -> None:
    """Compute log-magnitude spectrograms of every utterance into an HDF5 store."""
    run(raw_dir, manifest_dir, out_dir, from_params(SpectrogramConfig, params, STAGE))
