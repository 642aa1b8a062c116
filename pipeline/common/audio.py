"""Audio decoding shared by the audio feature stages: wav/flac via soundfile, m4a/aac via PyAV.

``load_audio(path, sample_rate)`` returns a mono float32 waveform in [-1, 1] at ``sample_rate``:
it decodes, downmixes (channel mean) and resamples (polyphase, ``scipy.signal.resample_poly``)
only when the file's rate differs. Every failure raises :class:`pipeline.common.probe.BadInput` with
one of the reject reasons shared by the stages:

- ``missing``: the file does not exist (the manifest is stale);
- ``empty``: zero bytes, or no audio samples;
- ``undecodable``: not a readable audio container/codec;
- ``corrupt``: a valid header but truncated or broken data;
- ``nan``: the decoded samples contain NaN or inf (float wavs);
- ``too_short`` / ``silent``: see :func:`check_signal`.

AAC note: PyAV returns the encoder's priming samples (typically 1024 at the start), so an m4a
clip decodes ~64 ms (at 16 kHz) longer than its source; features are unaffected in practice.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl

from pipeline.common.probe import BadInput, probe_audio

AV_SUFFIXES = frozenset({".m4a", ".aac", ".mp4"})


def _stat(path: Path) -> None:
    if not path.exists():
        raise BadInput("missing", f"no such file: {path}")
    if path.stat().st_size == 0:
        raise BadInput("empty", "zero-byte file")


def _decode_soundfile(path: Path) -> tuple[np.ndarray, int]:
    """Read wav/flac/ogg as float32 ``(channels, samples)``."""
    import soundfile as sf

    try:
        probe_audio(path)  # header checks, incl. a wav data chunk longer than the file
    except BadInput as exc:
        reason = "corrupt" if exc.reason == "truncated" else exc.reason
        raise BadInput(reason, exc.detail) from exc
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except Exception as exc:  # libsndfile errors on broken data after a valid header
        raise BadInput("corrupt", str(exc).strip()) from exc
    return np.ascontiguousarray(data.T), int(rate)  # (channels, samples)


def _decode_av(path: Path) -> tuple[np.ndarray, int]:
    """Decode the first audio stream of an m4a/aac/mp4 file as float32 ``(channels, samples)``."""
    import av

    try:
        container = av.open(str(path))
    except Exception as exc:
        raise BadInput("undecodable", str(exc).strip()) from exc
    with container:
        if not container.streams.audio:
            raise BadInput("undecodable", "no audio stream")
        stream = container.streams.audio[0]
        rate = int(stream.codec_context.sample_rate or stream.rate or 0)
        # Converts any sample format (s16, fltp, ...) to planar float, keeping rate and layout.
        converter = av.AudioResampler(format="fltp")
        chunks: list[np.ndarray] = []
        try:
            for frame in container.decode(stream):
                for out in converter.resample(frame):
                    chunks.append(out.to_ndarray())  # (channels, samples)
            for out in converter.resample(None):
                chunks.append(out.to_ndarray())
        except Exception as exc:
            if not chunks:
                raise BadInput("undecodable", str(exc).strip()) from exc
            raise BadInput("corrupt", f"decoding stopped after {len(chunks)} frames: "
                                      f"{str(exc).strip()}") from exc
    if not chunks or rate <= 0:
        raise BadInput("empty", "no audio frames")
    return np.concatenate(chunks, axis=1).astype(np.float32, copy=False), rate


def decode(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """Decode ``path`` to float32 ``(channels, samples)`` and its sample rate."""
    path = Path(path)
    _stat(path)
    if path.suffix.lower() in AV_SUFFIXES:
        data, rate = _decode_av(path)
    else:
        data, rate = _decode_soundfile(path)
    if data.shape[1] == 0:
        raise BadInput("empty", "no audio samples")
    if not np.isfinite(data).all():
        raise BadInput("nan", f"{int((~np.isfinite(data)).sum())} non-finite samples")
    return data, rate


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average ``(channels, samples)`` into ``(samples,)``."""
    return data.mean(axis=0, dtype=np.float32) if data.shape[0] > 1 else data[0]


def resample(signal: np.ndarray, rate_in: int, rate_out: int) -> np.ndarray:
    """Polyphase resampling of a 1-D float32 signal (identity when the rates match)."""
    if rate_in == rate_out:
        return signal
    from scipy.signal import resample_poly

    g = math.gcd(int(rate_in), int(rate_out))
    out = resample_poly(signal.astype(np.float64), rate_out // g, rate_in // g)
    return out.astype(np.float32)


def load_audio(path: str | os.PathLike, sample_rate: int) -> np.ndarray:
    """Decode, downmix and resample ``path`` into a mono float32 signal at ``sample_rate``."""
    data, rate = decode(path)
    return resample(to_mono(data), rate, sample_rate)


def dbfs(signal: np.ndarray) -> float:
    """RMS level in dB relative to full scale (``-inf`` for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(signal, dtype=np.float64)))) if signal.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


def check_signal(signal: np.ndarray, sample_rate: int, *, min_duration: float,
                 silence_dbfs: float) -> None:
    """Raise ``too_short`` below ``min_duration`` seconds and ``silent`` below ``silence_dbfs``."""
    seconds = signal.size / sample_rate
    if seconds < min_duration:
        raise BadInput("too_short", f"{seconds:.3f} s < min_duration {min_duration} s")
    level = dbfs(signal)
    if level < silence_dbfs:
        raise BadInput("silent", f"RMS {level:.1f} dBFS < silence_dbfs {silence_dbfs}")


def read_utterances(manifest_dir: str | os.PathLike) -> pl.DataFrame:
    """The manifest's ``utterances.parquet`` (``id``, ``path``, ``split``), in manifest order."""
    path = Path(manifest_dir) / "utterances.parquet"
    table = pl.read_parquet(path, columns=["id", "path", "split"])
    if table["id"].n_unique() != table.height:
        dupes = table.filter(pl.col("id").is_duplicated())["id"].unique().sort().head(5).to_list()
        raise ValueError(f"{path}: duplicate utterance ids, e.g. {dupes}")
    return table


def iter_columns(table: pl.DataFrame, *columns: str, batch: int = 1024) -> Iterator[tuple]:
    """Yield row tuples of ``columns`` lazily, ``batch`` rows of Python objects at a time."""
    for frame in table.select(columns).iter_slices(batch):
        yield from zip(*(frame[c].to_list() for c in columns), strict=True)
