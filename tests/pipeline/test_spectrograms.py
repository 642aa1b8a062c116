"""``spectrograms`` stage: the front end, the HDF5 store, rejects, determinism and the CLI."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import h5py
import librosa
import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.common.audio import load_audio
from pipeline.common.config import ConfigError, build
from pipeline.common.rejects import TooManyRejects
from pipeline.spectrograms import PRESETS, SpectrogramConfig, log_spectrogram, run
from tests.params import default_mismatches, shipped_config
from tests.pipeline.audio_corpus import (
    bad_corpus,
    good_corpus,
    voice,
    vox1_rel,
    write_manifest,
    write_wav,
)
from tests.pipeline.common.snapshots import snapshot

CFG = shipped_config(SpectrogramConfig, "spectrograms", workers=1)
OUTPUTS = ("spectrograms.h5", "spectrograms_rejects.parquet", "spectrograms_summary.json")


def test_dataclass_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(SpectrogramConfig, "spectrograms") == {}


def test_presets_fill_unset_keys_and_explicit_keys_win() -> None:
    aml = build(SpectrogramConfig, {"preset": "aml"})
    assert (aml.sample_rate, aml.n_fft, aml.hop_length, aml.n_bins, aml.frames) == (22050, 2048, 512, 224, 125)
    assert aml.pre_emphasis == 0.97 and aml.normalization == "none"
    assert aml.remove_dc is False  # AML's front end has no DC removal
    mixed = build(SpectrogramConfig, {"preset": "aml", "hop_length": 256})
    assert mixed.hop_length == 256 and mixed.n_fft == 2048
    default = SpectrogramConfig()
    assert {k: getattr(default, k) for k in PRESETS["speaker16k"]} == PRESETS["speaker16k"]
    with pytest.raises(ConfigError, match="unknown key"):
        build(SpectrogramConfig, {"n_fft_size": 512})
    with pytest.raises(ConfigError, match="n_bins"):
        SpectrogramConfig(n_bins=300)  # 512-point FFT has 257 bins
    with pytest.raises(ConfigError, match="preset"):
        SpectrogramConfig(preset="vggvox")


def aml_reference(x: np.ndarray) -> np.ndarray:
    """AML's recipe written out with librosa, independently of ``SpectrogramConfig``: a 22,050 Hz
    signal, no DC removal, pre-emphasis 0.97 (first sample kept), |STFT| with n_fft 2048 and hop
    512 (Hann window, centred frames), magnitude to dB, the lowest 224 bins: ``(224, frames)``."""
    y = librosa.effects.preemphasis(x.astype(np.float64), coef=0.97, zi=[0.0])
    magnitude = np.abs(librosa.stft(y, n_fft=2048, hop_length=512))
    return librosa.amplitude_to_db(magnitude, ref=1.0, amin=1e-5, top_db=80.0)[:224]


def test_aml_preset_matches_the_librosa_recipe() -> None:
    x = voice(1.7, rate=22050) + 0.05  # a DC offset: the recipe keeps it
    x[:22050 // 4] *= 1e-4  # a quiet start exercises the top_db floor
    ours = log_spectrogram(x, build(SpectrogramConfig, {"preset": "aml"}))
    ref = aml_reference(x)
    assert ours.shape == (1 + x.size // 512, 224) == ref.T.shape
    np.testing.assert_allclose(ours.T, ref, atol=1e-3)


def _librosa_reference(x: np.ndarray, cfg: SpectrogramConfig) -> np.ndarray:
    y = x.astype(np.float64) - (x.mean() if cfg.remove_dc else 0.0)
    y = np.append(y[0], y[1:] - cfg.pre_emphasis * y[:-1])
    stft = librosa.stft(y, n_fft=cfg.n_fft, hop_length=cfg.hop_length, win_length=cfg.win_length,
                        center=True, pad_mode="constant")
    return librosa.amplitude_to_db(np.abs(stft), ref=1.0, amin=1e-5, top_db=cfg.top_db)[: cfg.n_bins]


@pytest.mark.parametrize("overrides", [{"normalization": "none"},
                                       {"normalization": "none", "win_length": 400}])
def test_front_end_options_match_librosa(overrides: dict) -> None:
    cfg = replace(CFG, **overrides)
    x = voice(1.7, rate=cfg.sample_rate) + 0.05
    x[: cfg.sample_rate // 4] *= 1e-4
    ours = log_spectrogram(x, cfg)
    ref = _librosa_reference(x, cfg)
    assert ours.shape == (1 + x.size // cfg.hop_length, cfg.n_bins) == ref.T.shape
    np.testing.assert_allclose(ours.T, ref, atol=1e-3)


def test_cmvn_normalizes_each_frequency_over_time() -> None:
    spec = log_spectrogram(voice(2.0), CFG)
    np.testing.assert_allclose(spec.mean(axis=0), 0.0, atol=1e-3)
    np.testing.assert_allclose(spec.std(axis=0), 1.0, atol=1e-3)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("raw")
    rows = good_corpus(root, n=8)
    return root, write_manifest(root.parent / "manifest_spec", rows), rows


def test_store_shape_dtype_and_recorded_params(corpus, tmp_path: Path) -> None:
    root, manifest, rows = corpus
    summary = run(root, manifest, tmp_path, CFG)
    assert summary["stored"] == 8 and summary["rejected"] == 0
    with h5py.File(tmp_path / "spectrograms.h5") as f:
        data, offsets = f["data"], f["offsets"][:]
        assert data.dtype == np.float16 and data.shape == (offsets[-1], 224)
        assert data.chunks == (CFG.chunk_frames, 224)
        assert [s.decode() for s in f["ids"][:]] == [r["id"] for r in rows]
        expected = [1 + int(round(r["duration"] * 16000)) // 384 for r in rows]
        assert np.diff(offsets).tolist() == expected  # stored back to back, no padding
        np.testing.assert_allclose(f["durations"][:], [r["duration"] for r in rows], rtol=1e-6)
        params = json.loads(f.attrs["params"])
        assert params == CFG.recorded() and "workers" not in params
        assert "max_reject_fraction" not in params and "max_reject_fraction" not in f.attrs
        assert f.attrs["n_fft"] == 512 and f.attrs["preset"] == "speaker16k"
        assert f.attrs["n_items"] == 8 and f.attrs["manifest_rows"] == 8
        # The stored float16 rows are the front end's output for that clip.
        x = load_audio(root / rows[2]["path"], 16000)
        np.testing.assert_allclose(data[offsets[2]:offsets[3]], log_spectrogram(x, CFG), atol=0.01)


def test_one_and_two_workers_write_identical_bytes(tiny_corpus: Path, tiny_manifest: Path,
                                                  tmp_path: Path) -> None:
    cfg = replace(CFG, chunk_frames=64)
    summary = run(tiny_corpus, tiny_manifest, tmp_path / "w1", replace(cfg, workers=1))
    run(tiny_corpus, tiny_manifest, tmp_path / "w2", replace(cfg, workers=2))
    for name in ("spectrograms.h5", "spectrograms_rejects.parquet", "spectrograms_summary.json"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name
    manifest = pl.read_parquet(tiny_manifest / "utterances.parquet")
    assert summary["stored"] == manifest.height and summary["rejected"] == 0
    with h5py.File(tmp_path / "w1" / "spectrograms.h5") as f:
        assert [s.decode() for s in f["ids"][:]] == manifest["id"].to_list()
        expected = [1 + int(round(d * 16000)) // 384 for d in manifest["duration"]]
        assert np.abs(np.diff(f["offsets"][:]) - expected).max() <= 1


def test_44k1_stereo_clip_in_the_stage(tmp_path: Path) -> None:
    t = np.arange(44100 * 2) / 44100
    a = voice(2.0, rate=44100)
    uid, rel = vox1_rel(0)
    write_wav(tmp_path / rel, np.stack([a, a * 0.5 + 0.01 * np.sin(t)], axis=1), 44100)
    manifest = write_manifest(tmp_path / "m", [{"id": uid, "path": rel, "split": "train"}])
    run(tmp_path, manifest, tmp_path / "f", CFG)
    with h5py.File(tmp_path / "f" / "spectrograms.h5") as f:
        assert f["offsets"][:].tolist() == [0, 1 + 32000 // 384]  # 2 s at 16 kHz


def test_every_reject_case_is_recorded_and_the_stage_completes(corpus, tmp_path: Path) -> None:
    root, _, good = corpus
    bad = bad_corpus(root)
    manifest = write_manifest(tmp_path / "m", good + bad)
    summary = run(root, manifest, tmp_path, replace(CFG, max_reject_fraction=0.6))
    rejects = pl.read_parquet(tmp_path / "spectrograms_rejects.parquet")
    assert rejects["id"].to_list() == [r["id"] for r in bad]
    assert rejects["reason"].to_list() == [r["expected"] for r in bad]
    assert rejects["path"].to_list() == [r["path"] for r in bad] and set(rejects["stage"]) == {"spectrograms"}
    assert summary["stored"] == len(good) and summary["rejected"] == len(bad)
    assert summary["rejects_by_reason"]["undecodable"] == 2
    assert json.loads((tmp_path / "spectrograms_summary.json").read_text()) == summary
    with h5py.File(tmp_path / "spectrograms.h5") as f:
        assert [s.decode() for s in f["ids"][:]] == [r["id"] for r in good]


def test_reject_tolerance_does_not_change_the_store(corpus, tmp_path: Path) -> None:
    root, _, good = corpus
    manifest = write_manifest(tmp_path / "m", good + bad_corpus(root)[:1])
    low = run(root, manifest, tmp_path / "low", replace(CFG, max_reject_fraction=0.2))
    high = run(root, manifest, tmp_path / "high", replace(CFG, max_reject_fraction=0.9))
    for name in ("spectrograms.h5", "spectrograms_rejects.parquet"):
        assert (tmp_path / "low" / name).read_bytes() == (tmp_path / "high" / name).read_bytes()
    assert low["rejected"] == 1
    assert {**low, "params": None} == {**high, "params": None}  # the summary records the tolerance
    assert low["params"]["max_reject_fraction"] == 0.2
    assert high["params"]["max_reject_fraction"] == 0.9


def test_too_many_rejects_leave_the_previous_outputs(corpus, tmp_path: Path) -> None:
    root, manifest, good = corpus
    out = tmp_path / "f"
    run(root, manifest, out, CFG)
    before = snapshot(out)
    assert set(before) == set(OUTPUTS)
    failing = write_manifest(tmp_path / "m", good[:2] + bad_corpus(root))
    with pytest.raises(TooManyRejects, match=r"spectrograms: 8 of 10 inputs rejected.*"
                                             r"by reason: \{.*'undecodable': 2"):
        run(root, failing, out, replace(CFG, max_reject_fraction=0.5))
    assert snapshot(out) == before  # same files, same bytes, no temp file left


def test_cli_reads_the_params_section(corpus, tmp_path: Path) -> None:
    from pipeline.cli import app

    root, manifest, rows = corpus
    params = tmp_path / "params.yaml"
    params.write_text("spectrograms:\n  preset: aml\n  frames: 64\n  workers: 1\n")
    result = CliRunner().invoke(app, ["spectrograms", str(root), str(manifest), str(tmp_path / "f"),
                                      "--params", str(params)])
    assert result.exit_code == 0, result.output
    with h5py.File(tmp_path / "f" / "spectrograms.h5") as f:
        assert f.attrs["sample_rate"] == 22050 and f.attrs["frames"] == 64
        assert np.diff(f["offsets"][:]).tolist() == [
            1 + int(round(r["duration"] * 16000)) * 22050 // 16000 // 512 for r in rows]
    params.write_text("spectrograms:\n  nbins: 224\n")
    result = CliRunner().invoke(app, ["spectrograms", str(root), str(manifest), str(tmp_path / "g"),
                                      "--params", str(params)])
    assert result.exit_code != 0 and "unknown key(s) in params section 'spectrograms'" in str(result.exception)
