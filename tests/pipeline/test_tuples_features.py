"""The ``tuples`` stage after the real feature stages, on a generated corpus with bad items.

A copy of the session corpus gets one silent clip and one too-short clip (both kept by the
manifest, which does not decode audio) and, after the manifest indexed it, one truncated face.
``spectrograms``, ``audio_attributes``, ``faces`` and ``face_attributes`` (with an untrained
classifier) then drop those items, and ``avmatch tuples`` must use only what every store holds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from model.stores import FaceStore, SpectrogramStore
from pipeline.audio_attributes import AudioAttributesConfig
from pipeline.audio_attributes import run as run_audio_attributes
from pipeline.face_attributes import FaceAttributesConfig
from pipeline.face_attributes import run as run_face_attributes
from pipeline.faces import FacesConfig
from pipeline.faces import run as run_faces
from pipeline.manifest import ManifestConfig
from pipeline.manifest import run as run_manifest
from pipeline.spectrograms import SpectrogramConfig
from pipeline.spectrograms import run as run_spectrograms
from pipeline.tupling.layout import SPLITS, TABLES, read_table, read_tables

COUNTS = {"train_binary": 40, "train_multiway": 10, "train_pairs": 20, "val_binary": 20,
          "val_multiway": 0, "val_pairs": 10, "test_binary": 30, "test_multiway": 10,
          "test_pairs": 20, "seen_heard_binary": 0, "seen_heard_multiway": 0,
          "seen_heard_pairs": 0, "eval_constraints": ["U"], "pair_constraints": ["U"]}


def untrained_checkpoint(path: Path, size: int) -> Path:
    """A randomly initialised face-attribute classifier saved like the training stage saves it."""
    import timm
    import torch

    import model.cswin  # noqa: F401  (registers the CSWin variants)
    from model.attributes import save_classifier
    from pipeline.face_attributes_train import PRIVATE_ATTRIBUTES

    torch.manual_seed(0)
    net = timm.create_model("cswin_nano_64", num_classes=len(PRIVATE_ATTRIBUTES))
    save_classifier(path, net, {
        "model_name": "cswin_nano_64", "model_args": {"num_classes": len(PRIVATE_ATTRIBUTES), "img_size": size},
        "attributes": list(PRIVATE_ATTRIBUTES), "size": size, "mean": [0.5] * 3, "std": [0.5] * 3,
        "threshold": 0.5})
    return path


@pytest.fixture(scope="module")
def pipeline_run(tiny_corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    base = tmp_path_factory.mktemp("tuples_features")
    raw, manifest, features, out = base / "raw", base / "manifest", base / "features", base / "tuples"
    shutil.copytree(tiny_corpus, raw)
    wavs = sorted((raw / "voxceleb1" / "wav").rglob("*.wav"))
    silent, short = wavs[4], wavs[13]
    sf.write(str(silent), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    audio, rate = sf.read(str(short), dtype="float32")
    sf.write(str(short), audio[: int(0.2 * rate)], rate, subtype="PCM_16")
    run_manifest(raw, manifest, ManifestConfig(workers=1))
    faces = pl.read_parquet(manifest / "faces.parquet")
    truncated = faces.row(7, named=True)
    jpeg = raw / truncated["path"]
    jpeg.write_bytes(jpeg.read_bytes()[: jpeg.stat().st_size // 2])  # damaged after indexing
    size = 64
    run_spectrograms(raw, manifest, features, SpectrogramConfig(workers=1))
    run_audio_attributes(raw, manifest, features, AudioAttributesConfig(workers=1))
    run_faces(raw, manifest, features, FacesConfig(size=size, workers=1))
    run_face_attributes(features / "faces.h5", manifest, untrained_checkpoint(base / "fa.pt", size),
                        features / "face_attributes.parquet", FaceAttributesConfig(threads=2))
    params = base / "params.yaml"
    params.write_text(json.dumps({"tuples": COUNTS}))  # JSON is YAML
    from pipeline.cli import app

    result = CliRunner().invoke(app, ["tuples", str(manifest), str(features), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output

    def item_id(path: Path) -> str:
        rel = path.relative_to(raw / "voxceleb1" / "wav").with_suffix("")
        return rel.as_posix()

    return {"features": features, "out": out, "manifest": manifest,
            "dropped": {item_id(silent): "spectrograms: silent; audio_attributes: silent",
                        item_id(short): "spectrograms: too_short; audio_attributes: too_short",
                        truncated["id"]: "faces: truncated; face_attributes: no_face_features"}}


def store_ids(features: Path) -> dict[str, list[set[str]]]:
    """Per modality, the id sets of every store a model may read, through their readers."""
    with SpectrogramStore(features / "spectrograms.h5") as spec, FaceStore(features / "faces.h5") as faces:
        voice = [set(spec.ids), set(pl.read_parquet(features / "audio_attributes.parquet")["id"])]
        face = [set(faces.ids), set(pl.read_parquet(features / "face_attributes.parquet")["id"])]
    return {"voice": voice, "face": face}


def used_ids(out: Path) -> dict[str, set[str]]:
    """Every id that any tuple table references, by modality."""
    used: dict[str, set[str]] = {"voice": set(), "face": set()}
    sides = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}
    tables = read_tables(out)
    matching, pairs, retrieval = tables["matching"], tables["pairs"], tables["retrieval"]
    for direction, (q_mod, c_mod) in sides.items():
        where = pl.col("direction") == direction
        used[q_mod] |= set(matching.filter(where)["query_id"]) | set(pairs.filter(where)["query_id"])
        used[q_mod] |= set(retrieval.filter(where)["query_ids"].explode().drop_nulls())
        used[c_mod] |= set(matching.filter(where)["candidate_ids"].explode()) | set(pairs.filter(where)["candidate_id"])
        used[c_mod] |= set(retrieval.filter(where)["gallery_ids"].explode().drop_nulls())
    return used


def test_every_tuple_id_is_in_every_feature_store(pipeline_run: dict) -> None:
    stores, used = store_ids(pipeline_run["features"]), used_ids(pipeline_run["out"])
    for modality, ids in used.items():
        assert ids, modality
        for held in stores[modality]:
            assert ids <= held, (modality, sorted(ids - held)[:3])
    assert not (used["voice"] | used["face"]) & set(pipeline_run["dropped"])
    manifest = {m: set(pl.read_parquet(pipeline_run["manifest"] / f"{t}.parquet")["id"])
                for m, t in (("voice", "utterances"), ("face", "faces"))}
    for modality in used:  # the galleries list every usable item: all but the dropped ones
        assert used[modality] == manifest[modality] - set(pipeline_run["dropped"])


def test_the_three_dropped_items_are_listed_with_their_stages(pipeline_run: dict) -> None:
    rejects = pl.read_parquet(pipeline_run["out"] / "rejects.parquet")
    assert rejects["reason"].to_list() == ["missing_features"] * 3 and not rejects["kept"].any()
    assert dict(zip(rejects["id"], rejects["detail"], strict=True)) == pipeline_run["dropped"]
    summary = json.loads((pipeline_run["out"] / "summary.json").read_text())
    assert summary["rejected"] == 3 and summary["rejects_by_reason"] == {"missing_features": 3}
    assert summary["features"]["voice"]["missing_features"] == {"spectrograms": 2, "audio_attributes": 2,
                                                                "dropped": 2}
    assert summary["features"]["face"]["missing_features"] == {"faces": 1, "face_attributes": 1, "dropped": 1}
    assert all(v == 0 for v in summary["checks"].values())


def test_a_tie_breaking_scorer_gets_chance(pipeline_run: dict) -> None:
    """The corpus's val/test splits are too small for 1:10 tuples; test_tuples.py covers 1:k'."""
    matching = read_table(pipeline_run["out"], "matching")
    evaluation = matching.filter((pl.col("split") != "train") & (pl.col("k") == 2))
    assert evaluation.height
    for (_,), stream in evaluation.group_by("seed"):
        hits = float((stream["label"] == 0).mean())  # argmax of equal scores picks position 0
        assert abs(hits - 0.5) < 1 / stream.height + 1e-12, hits


def test_the_cli_writes_one_directory_per_split(pipeline_run: dict) -> None:
    """seen_heard has no tuples requested here: its files exist anyway, empty, with the schema."""
    out = pipeline_run["out"]
    written = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert written == {f"{split}/{name}.parquet" for split in SPLITS for name in TABLES} | {
        "rejects.parquet", "summary.json"}
    summary = json.loads((out / "summary.json").read_text())
    for name in TABLES:
        for split in SPLITS:
            part = pl.read_parquet(out / split / f"{name}.parquet")
            assert set(part["split"]) <= {split} and part.height == summary["rows_by_split"][split][name]
            assert part.schema == pl.read_parquet(out / "train" / f"{name}.parquet").schema
    assert summary["rows_by_split"]["seen_heard"]["matching"] == 0
    assert summary["rows_by_split"]["train"]["matching"] > 0
