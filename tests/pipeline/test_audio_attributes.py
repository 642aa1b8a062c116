"""``audio_attributes`` stage: 384 openSMILE IS09 columns, train-only statistics, rejects."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest

from pipeline.audio_attributes import AudioAttributesConfig, extract, make_extractor, run
from pipeline.common.config import ConfigError
from pipeline.common.rejects import TooManyRejects
from tests.params import default_mismatches, shipped_config
from tests.pipeline.audio_corpus import bad_corpus, good_corpus, voice, write_manifest
from tests.pipeline.common.snapshots import snapshot

# several row groups on a tiny corpus
CFG = shipped_config(AudioAttributesConfig, "audio_attributes", workers=1, chunk_rows=3)
OUTPUTS = ("audio_attributes.parquet", "audio_attributes_stats.json",
           "audio_attributes_rejects.parquet", "audio_attributes_summary.json")


def test_dataclass_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(AudioAttributesConfig, "audio_attributes") == {}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, list[dict]]:
    root = tmp_path_factory.mktemp("raw")
    rows = good_corpus(root, n=8)
    return root, write_manifest(root.parent / "manifest_attr", rows), rows


@pytest.fixture(scope="module")
def output(tiny_corpus: Path, tiny_manifest: Path,
           tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The stage run on the shared synthetic corpus and its real manifest."""
    out = tmp_path_factory.mktemp("features")
    return out, run(tiny_corpus, tiny_manifest, out, CFG)


def utterances(manifest: Path) -> pl.DataFrame:
    return pl.read_parquet(manifest / "utterances.parquet")


def test_384_is09_columns_named_by_opensmile(tiny_manifest: Path, output) -> None:
    out, summary = output
    table = pl.read_parquet(out / "audio_attributes.parquet")
    names = list(make_extractor("IS09").feature_names)
    assert len(names) == 384 and table.columns == ["id", *names]
    assert "pcm_RMSenergy_sma_max" in names and "F0_sma_de_kurtosis" in names
    assert table.schema["id"] == pl.Utf8 and all(table.schema[n] == pl.Float32 for n in names)
    manifest = utterances(tiny_manifest)
    assert table["id"].to_list() == manifest["id"].to_list() and summary["stored"] == manifest.height
    values = table.drop("id").to_numpy()
    assert np.isfinite(values).all() and values.std(axis=0).max() > 0  # clips differ


def test_features_are_the_extractors_output(tiny_corpus: Path, tiny_manifest: Path, output) -> None:
    from pipeline.common.audio import load_audio

    out, _ = output
    smile = make_extractor("IS09")
    row = pl.read_parquet(out / "audio_attributes.parquet").row(5)
    path = utterances(tiny_manifest)["path"][5]
    expected = extract(smile, load_audio(tiny_corpus / path, 16000), 16000)
    np.testing.assert_array_equal(np.asarray(row[1:], dtype=np.float32), expected)


def test_statistics_use_the_train_split_only(tiny_manifest: Path, output) -> None:
    out, summary = output
    table = pl.read_parquet(out / "audio_attributes.parquet")
    stats = json.loads((out / "audio_attributes_stats.json").read_text())
    names = table.columns[1:]
    assert stats["names"] == names and stats["split"] == "train" and stats["feature_set"] == "IS09"
    manifest = utterances(tiny_manifest)
    assert set(manifest["split"]) == {"train", "val", "test", "seen_heard"}
    train_ids = manifest.filter(pl.col("split") == "train")["id"].to_list()
    assert stats["n"] == len(train_ids) == summary["train_rows_for_stats"] > 0
    train = table.filter(pl.col("id").is_in(train_ids)).drop("id").to_numpy().astype(np.float64)
    others = table.filter(~pl.col("id").is_in(train_ids)).drop("id").to_numpy().astype(np.float64)
    std = train.std(axis=0)
    constant = std <= 1e-12 * np.maximum(1.0, np.abs(train.mean(axis=0)))
    np.testing.assert_allclose(stats["mean"], train.mean(axis=0), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(stats["std"], np.where(constant, 1.0, std), rtol=1e-6, atol=1e-9)
    assert stats["constant"] == [n for n, c in zip(names, constant, strict=True) if c]
    everything = np.concatenate([train, others])
    assert not np.allclose(stats["mean"], everything.mean(axis=0))  # val/test/seen_heard would leak


def test_one_and_two_workers_write_identical_bytes(tiny_corpus: Path, tiny_manifest: Path, output,
                                                  tmp_path: Path) -> None:
    out1, _ = output
    run(tiny_corpus, tiny_manifest, tmp_path, replace(CFG, workers=2))
    for name in OUTPUTS:
        assert (out1 / name).read_bytes() == (tmp_path / name).read_bytes(), name


def test_every_reject_case_is_recorded_and_the_stage_completes(corpus, tmp_path: Path) -> None:
    root, _, good = corpus
    bad = bad_corpus(root)
    manifest = write_manifest(tmp_path / "m", good + bad)
    summary = run(root, manifest, tmp_path, replace(CFG, max_reject_fraction=0.6))
    rejects = pl.read_parquet(tmp_path / "audio_attributes_rejects.parquet")
    assert rejects["id"].to_list() == [r["id"] for r in bad]
    assert rejects["reason"].to_list() == [r["expected"] for r in bad]
    assert summary["rejected"] == len(bad) and summary["stored"] == len(good)
    assert pl.read_parquet(tmp_path / "audio_attributes.parquet")["id"].to_list() == [r["id"] for r in good]
    # The bad rows were all "train": the statistics still count only the good train rows.
    assert json.loads((tmp_path / "audio_attributes_stats.json").read_text())["n"] == 2


def test_nan_features_are_rejected(tmp_path: Path) -> None:
    """A clip too short for openSMILE's windows yields NaN functionals: rejected as ``nan``."""
    from tests.pipeline.audio_corpus import vox1_rel, write_wav

    uid, rel = vox1_rel(0)
    write_wav(tmp_path / rel, voice(0.006))  # 96 samples, below one 25 ms analysis frame
    manifest = write_manifest(tmp_path / "m", [{"id": uid, "path": rel, "split": "train"}])
    summary = run(tmp_path, manifest, tmp_path / "f",
                  replace(CFG, min_duration=0.0, max_reject_fraction=1.0))
    assert summary["rejects_by_reason"] == {"nan": 1} and summary["stored"] == 0
    stats = json.loads((tmp_path / "f" / "audio_attributes_stats.json").read_text())
    assert stats["n"] == 0 and stats["mean"] is None


def test_reject_tolerance_does_not_change_the_table(corpus, tmp_path: Path) -> None:
    root, manifest, _ = corpus
    run(root, manifest, tmp_path / "low", CFG)
    run(root, manifest, tmp_path / "high", replace(CFG, max_reject_fraction=0.9))
    for name in ("audio_attributes.parquet", "audio_attributes_stats.json",
                 "audio_attributes_rejects.parquet"):
        assert (tmp_path / "low" / name).read_bytes() == (tmp_path / "high" / name).read_bytes()


def test_too_many_rejects_leave_the_previous_outputs(corpus, tmp_path: Path) -> None:
    root, manifest, good = corpus
    run(root, manifest, tmp_path, CFG)
    before = snapshot(tmp_path)
    assert set(before) == set(OUTPUTS)
    failing = write_manifest(tmp_path.parent / f"{tmp_path.name}_m", good[:2] + bad_corpus(root))
    with pytest.raises(TooManyRejects, match=r"audio_attributes: 8 of 10.*'silent': 1"):
        run(root, failing, tmp_path, replace(CFG, max_reject_fraction=0.5))
    assert snapshot(tmp_path) == before  # same files, same bytes, no temp file left


def test_unknown_feature_set_fails_loudly() -> None:
    with pytest.raises(ConfigError, match="IS08"):
        make_extractor("IS08")


def test_full_scale_clip_does_not_wrap_around() -> None:
    """openSMILE casts x * 32768 to int16; +1.0 must be clipped, not wrapped to -32768."""
    smile = make_extractor("IS09")
    names = list(smile.feature_names)
    x = np.clip(voice(1.0) * 20, -1.0, 1.0)  # heavily clipped: thousands of samples at +-1.0
    ours, slightly_lower = extract(smile, x, 16000), extract(smile, x * 0.9999, 16000)
    wrapped = np.asarray(smile(x[None, :], 16000)).reshape(-1)  # (1, F, 1) -> (F,)
    for name in ("pcm_RMSenergy_sma_amean", "pcm_zcr_sma_amean"):
        i = names.index(name)
        assert ours[i] == pytest.approx(slightly_lower[i], rel=1e-3), name
        assert abs(wrapped[i] - ours[i]) > 0.2 * ours[i], name  # the wrap-around would show


def test_cli_reads_the_params_section(corpus, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from pipeline.cli import app

    root, manifest, rows = corpus
    params = tmp_path / "params.yaml"
    params.write_text("audio_attributes:\n  min_duration: 2.0\n  workers: 1\n  max_reject_fraction: 0.5\n")
    result = CliRunner().invoke(app, ["audio_attributes", str(root), str(manifest),
                                      str(tmp_path / "f"), "--params", str(params)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "f" / "audio_attributes_summary.json").read_text())
    short = [r["id"] for r in rows if r["duration"] < 2.0]
    assert summary["params"]["min_duration"] == 2.0 and summary["rejects_by_reason"] == {"too_short": len(short)}
    rejects = pl.read_parquet(tmp_path / "f" / "audio_attributes_rejects.parquet")
    assert rejects["id"].to_list() == short
