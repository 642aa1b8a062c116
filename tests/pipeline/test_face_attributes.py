"""face_attributes stage: Parquet schema, one row per stored face, probabilities match the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import timm
import torch
from PIL import Image

import model.cswin  # noqa: F401  (registers the CSWin variants)
from model.attributes import load_classifier, save_classifier, to_input
from model.stores import FaceStore
from pipeline.common.rejects import TooManyRejects
from pipeline.face_attributes import FaceAttributesConfig, run
from pipeline.face_attributes_train import PRIVATE_ATTRIBUTES
from pipeline.faces import FacesConfig
from pipeline.faces import run as run_faces
from tests.params import default_mismatches, shipped_config
from tests.pipeline.common.snapshots import snapshot

SIZE = 64
OUTPUTS = ("face_attributes.parquet", "face_attributes_rejects.parquet",
           "face_attributes_summary.json")


def config(**overrides: object) -> FaceAttributesConfig:
    return shipped_config(FaceAttributesConfig, "face_attributes", **{"threads": 1, **overrides})


def faces_config(**overrides: object) -> FacesConfig:
    return shipped_config(FacesConfig, "faces", **{"size": SIZE, "workers": 1, **overrides})


def test_dataclass_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(FaceAttributesConfig, "face_attributes") == {}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A manifest of 9 real JPEG faces (one zero-byte), their faces.h5 and an untrained checkpoint."""
    base = tmp_path_factory.mktemp("fa")
    root, manifest, features = base / "raw", base / "manifest", base / "features"
    rng = np.random.default_rng(0)
    ids, paths = [], []
    for i in range(9):
        rel = f"faces/id1000{i % 3}/v{i}/{i:07d}.jpg"
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if i == 4:
            (root / rel).write_bytes(b"")
        else:
            Image.fromarray(rng.integers(0, 255, (80, 80, 3), dtype=np.uint8)).save(root / rel)
        ids.append(f"id1000{i % 3}/v{i}/{i:07d}")
        paths.append(rel)
    manifest.mkdir(parents=True)
    pl.DataFrame({"id": ids, "path": paths, "identity": [i.split("/")[0] for i in ids]}).write_parquet(
        manifest / "faces.parquet")
    run_faces(root, manifest, features, faces_config(max_reject_fraction=0.2))
    torch.manual_seed(0)
    net = timm.create_model("cswin_nano_64", num_classes=12)
    with torch.no_grad():
        net.head.bias.copy_(torch.linspace(-3, 3, 12))  # spread the probabilities around 0.5
    checkpoint = base / "face_attributes.pt"
    save_classifier(checkpoint, net, {
        "model_name": "cswin_nano_64", "model_args": {"num_classes": 12, "img_size": SIZE},
        "attributes": list(PRIVATE_ATTRIBUTES), "size": SIZE, "mean": [0.5] * 3,
        "std": [0.5] * 3, "threshold": 0.5})
    return {"root": root, "manifest": manifest, "features": features, "checkpoint": checkpoint}


@pytest.fixture(scope="module")
def table(inputs: dict[str, Path]) -> pl.DataFrame:
    out = inputs["features"] / "face_attributes.parquet"
    run(inputs["features"] / "faces.h5", inputs["manifest"], inputs["checkpoint"], out,
        config(batch_size=3, max_reject_fraction=0.2))
    return pl.read_parquet(out)


def test_schema(table: pl.DataFrame) -> None:
    expected = {"id": pl.Utf8, **{a: pl.Int8 for a in PRIVATE_ATTRIBUTES},
                **{f"{a}_prob": pl.Float32 for a in PRIVATE_ATTRIBUTES}}
    assert dict(table.schema) == expected
    assert table.columns[:13] == ["id", *PRIVATE_ATTRIBUTES]


def test_one_row_per_stored_face_in_manifest_order(inputs: dict[str, Path], table: pl.DataFrame) -> None:
    manifest = pl.read_parquet(inputs["manifest"] / "faces.parquet")["id"].to_list()
    assert table["id"].to_list() == [m for m in manifest if not m.endswith("0000004")]
    assert table["id"].n_unique() == len(table)
    rejects = pl.read_parquet(inputs["features"] / "face_attributes_rejects.parquet")
    assert rejects["reason"].to_list() == ["no_face_features"]
    summary = json.loads((inputs["features"] / "face_attributes_summary.json").read_text())
    assert summary["predicted"] == 8 and summary["manifest_faces"] == 9


def test_probabilities_match_model_and_binary_is_thresholded(inputs: dict[str, Path],
                                                             table: pl.DataFrame) -> None:
    net, meta = load_classifier(inputs["checkpoint"])
    with FaceStore(inputs["features"] / "faces.h5") as store:
        rows = [store.index(i) for i in table["id"]]
        images = store.images[sorted(rows)]
    with torch.no_grad():
        want = torch.sigmoid(net(to_input(images, tuple(meta["mean"]), tuple(meta["std"])))).numpy()
    got = table.select([f"{a}_prob" for a in PRIVATE_ATTRIBUTES]).to_numpy()
    assert np.allclose(got, want, atol=1e-5)
    binary = table.select(list(PRIVATE_ATTRIBUTES)).to_numpy()
    assert (binary == (got >= 0.5)).all()
    assert 0 < binary.mean() < 1, "the spread head bias gives both values"


def test_size_mismatch_fails_clearly(inputs: dict[str, Path], tmp_path: Path) -> None:
    run_faces(inputs["root"], inputs["manifest"], tmp_path,
              faces_config(size=32, min_size=16, max_reject_fraction=0.2))
    with pytest.raises(ValueError, match="trained on 64 px faces"):
        run(tmp_path / "faces.h5", inputs["manifest"], inputs["checkpoint"],
            tmp_path / "fa.parquet", config())


def test_too_many_missing_faces_leave_the_previous_outputs(inputs: dict[str, Path],
                                                           table: pl.DataFrame,
                                                           tmp_path: Path) -> None:
    for name in OUTPUTS:  # the outputs of the run with max_reject_fraction 0.2
        (tmp_path / name).write_bytes((inputs["features"] / name).read_bytes())
    before = snapshot(tmp_path)
    with pytest.raises(TooManyRejects, match=r"1 of 9.*'no_face_features': 1"):
        run(inputs["features"] / "faces.h5", inputs["manifest"], inputs["checkpoint"],
            tmp_path / "face_attributes.parquet", config(max_reject_fraction=0.05))
    assert snapshot(tmp_path) == before  # same files, same bytes, no temp file left


def test_checkpoint_is_weights_only(inputs: dict[str, Path]) -> None:
    ckpt = torch.load(inputs["checkpoint"], weights_only=True)
    assert ckpt["model_name"] == "cswin_nano_64" and ckpt["size"] == SIZE
    assert ckpt["attributes"] == list(PRIVATE_ATTRIBUTES)
