"""pipeline.common.audio: decoding wav/flac/m4a, downmix, resampling and the reject reasons."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from pipeline import audio_attributes, spectrograms
from pipeline.common.audio import check_signal, decode, load_audio, read_utterances
from pipeline.common.probe import BadInput
from tests.pipeline.audio_corpus import bad_corpus, voice, write_m4a, write_manifest, write_wav


def peak_hz(x: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.argmax(spectrum) * rate / x.size)


def band_energy(x: np.ndarray, rate: int, hz: float) -> float:
    spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
    freqs = np.fft.rfftfreq(x.size, 1 / rate)
    return float(spectrum[np.abs(freqs - hz) < 20].sum() / spectrum.sum())


def test_44k1_stereo_is_downmixed_and_resampled(tmp_path: Path) -> None:
    rate, seconds = 44100, 2.0
    t = np.arange(int(rate * seconds)) / rate
    a, b = 0.3 * np.sin(2 * np.pi * 440 * t), 0.3 * np.sin(2 * np.pi * 1000 * t)
    path = write_wav(tmp_path / "st.wav", np.stack([a + b, a - b], axis=1), rate)  # (samples, 2)
    x = load_audio(path, 16000)
    assert x.dtype == np.float32 and x.ndim == 1
    assert x.size == int(rate * seconds) * 16000 // rate  # 32,000 samples at 16 kHz
    # The channel mean keeps the 440 Hz tone and cancels the 1 kHz one (channel 0 would keep both).
    assert abs(peak_hz(x, 16000) - 440) < 2
    assert band_energy(x, 16000, 440) > 0.95 and band_energy(x, 16000, 1000) < 1e-3
    assert np.sqrt(np.mean(x**2)) == pytest.approx(0.3 / np.sqrt(2), rel=0.02)


def test_resample_up_to_aml_rate_keeps_pitch_and_length(tmp_path: Path) -> None:
    path = write_wav(tmp_path / "a.wav", voice(1.5, f0=200.0))
    x = load_audio(path, 22050)
    assert x.size == 24000 * 22050 // 16000
    native = load_audio(path, 16000)
    assert peak_hz(x, 22050) == pytest.approx(peak_hz(native, 16000), abs=3)


@pytest.mark.parametrize("subtype,ext", [("PCM_16", "wav"), ("PCM_24", "wav"), ("FLOAT", "wav"),
                                         ("PCM_16", "flac"), ("PCM_24", "flac")])
def test_formats_decode_to_the_same_float_signal(tmp_path: Path, subtype: str, ext: str) -> None:
    x = voice(0.8, seed=3)
    data, rate = decode(write_wav(tmp_path / f"x.{ext}", x, 16000, subtype))
    assert rate == 16000 and data.shape == (1, x.size) and data.dtype == np.float32
    assert np.abs(data[0] - x).max() < 1.0 / 2**15 + 1e-7


def test_m4a_decodes_with_pyav(tmp_path: Path) -> None:
    x = voice(2.0, f0=180.0)
    data, rate = decode(write_m4a(tmp_path / "a.m4a", x))
    assert rate == 16000 and data.shape[0] == 1
    # AAC adds encoder priming/padding (about one 1024-sample frame) but never drops audio.
    assert x.size <= data.shape[1] <= x.size + 2 * 1024 + 1024
    assert peak_hz(data[0], 16000) == pytest.approx(peak_hz(x, 16000), abs=3)


def test_every_reject_reason(tmp_path: Path) -> None:
    for row in bad_corpus(tmp_path):
        with pytest.raises(BadInput) as info:
            x = load_audio(tmp_path / row["path"], 16000)
            check_signal(x, 16000, min_duration=0.5, silence_dbfs=-60.0)
        assert info.value.reason == row["expected"], (row, info.value.detail)


def test_quiet_but_audible_clip_is_not_silent() -> None:
    x = voice(1.0) * 0.05  # about -40 dBFS
    check_signal(x, 16000, min_duration=0.5, silence_dbfs=-60.0)
    with pytest.raises(BadInput, match="silent"):
        check_signal(x * 1e-2, 16000, min_duration=0.5, silence_dbfs=-60.0)


def test_duplicate_manifest_ids_fail_loudly(tmp_path: Path) -> None:
    rows = [{"id": "id10001/v/00001", "path": "a.wav", "split": "train"}] * 2
    with pytest.raises(ValueError, match="duplicate utterance ids"):
        read_utterances(write_manifest(tmp_path / "m", rows))


def test_m4a_voxceleb2_layout_through_both_stages(tmp_path: Path) -> None:
    """Issue 6: AAC .m4a utterances (``aac/idXXXXX/<ytid>/NNNNN.m4a``) through both stages."""
    root, rows = tmp_path / "raw", []
    for i in range(3):
        rel = f"aac/id0001{i}/yt{i:09d}/00001.m4a"
        write_m4a(root / rel, voice(1.5 + i, f0=110.0 + 40 * i, seed=i))
        rows.append({"id": rel[4:-4], "path": rel, "split": "train"})
    manifest = write_manifest(tmp_path / "manifest", rows)
    out = tmp_path / "features"
    spec = spectrograms.run(root, manifest, out, spectrograms.SpectrogramConfig(workers=1))
    attrs = audio_attributes.run(root, manifest, out,
                                 audio_attributes.AudioAttributesConfig(workers=1))
    assert spec["stored"] == attrs["stored"] == 3 and spec["rejected"] == attrs["rejected"] == 0
    with h5py.File(out / "spectrograms.h5") as f:
        lengths = np.diff(f["offsets"][:])
        assert [s.decode() for s in f["ids"][:]] == [r["id"] for r in rows]
    expected = [1 + int((1.5 + i) * 16000) // 384 for i in range(3)]  # frames of the source
    assert all(e <= n <= e + 6 for e, n in zip(expected, lengths, strict=True))
    table = pl.read_parquet(out / "audio_attributes.parquet")
    assert table["id"].to_list() == [r["id"] for r in rows] and table.width == 385
    assert np.isfinite(table.drop("id").to_numpy()).all()
