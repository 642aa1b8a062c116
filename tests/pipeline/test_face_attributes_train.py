"""face_attributes_train: CelebA-format parsing, training on a generated CelebA set, checkpoint,
report, determinism, and the trained model applied by the face_attributes stage."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import torch
import yaml
from typer.testing import CliRunner

from model.attributes import load_classifier
from model.celeba import read_attributes, read_partition
from pipeline.common.config import ConfigError
from pipeline.common.rejects import TooManyRejects
from pipeline.face_attributes import FaceAttributesConfig
from pipeline.face_attributes import run as run_attributes
from pipeline.face_attributes_train import (
    PRIVATE_ATTRIBUTES,
    FaceAttributesTrainConfig,
    augment,
    binary_metrics,
    build_model,
    config_from_params,
    run,
)
from pipeline.faces import FacesConfig
from pipeline.faces import run as run_faces
from pipeline.synth.corpus import small_config, synthesize
from tests.params import default_mismatches, shipped_config, shipped_params
from tests.pipeline.common.snapshots import snapshot

SIZE = 32  # 4x cheaper than the default 64 px; the nano CSWin still tiles (grids 8-4-2-1)
EPOCHS = 8
TEST_SETTINGS = {"epochs": EPOCHS, "batch_size": 32, "lr": 3e-3, "threads": 2, "workers": 1}


def train_config(**kw: object) -> FaceAttributesTrainConfig:
    """The shipped params, the test settings, ``size`` = SIZE (as if faces.size were SIZE)."""
    return shipped_config(FaceAttributesTrainConfig, "face_attributes_train",
                          **{**TEST_SETTINGS, "size": SIZE, **kw})


@pytest.fixture(autouse=True)
def outside_the_project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run from a directory that is no git/DVC repo: DVCLive must not need (or touch) one."""
    monkeypatch.chdir(tmp_path)


def tsv_rows(path: Path) -> list[list[str]]:
    return [line.split("\t") for line in path.read_text().splitlines()]


def test_dataclass_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(FaceAttributesTrainConfig, "face_attributes_train") == {}


def test_size_is_read_from_faces_size_only() -> None:
    params = shipped_params()
    params["faces"]["size"] = 96
    assert config_from_params(params).size == 96
    assert "size" not in params["face_attributes_train"]
    params["face_attributes_train"]["size"] = 96
    with pytest.raises(ConfigError, match="set faces.size"):
        config_from_params(params)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A generated corpus whose CelebA-format set has 120 celebrities x 3 images (8:1:1 split)."""
    root = tmp_path_factory.mktemp("synth")
    synthesize(root, small_config(identities=6, celeba_identities=120, celeba_images_per_identity=3),
               workers=2)
    return root


@pytest.fixture(scope="module")
def trained(corpus: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Path]]:
    """Trained through the CLI with the shipped params.yaml plus the test settings."""
    from pipeline.cli import app

    out = tmp_path_factory.mktemp("trained")
    paths = {"model": out / "face_attributes.pt", "report": out / "face_attributes.json",
             "rejects": out / "rejects.parquet", "live": out / "live"}
    params = shipped_params()
    params["faces"]["size"] = SIZE
    params["face_attributes_train"].update(TEST_SETTINGS)
    (out / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(out)  # no git/DVC repo here
        result = CliRunner().invoke(app, [
            "face_attributes_train", str(corpus), str(paths["model"]), str(paths["report"]),
            str(paths["rejects"]), "--live-dir", str(paths["live"]),
            "--params", str(out / "params.yaml")])
    assert result.exit_code == 0, result.output
    yield paths


def test_reads_generated_celeba_files(corpus: Path) -> None:
    table = read_attributes(corpus / "celeba/list_attr_celeba.txt")
    assert len(table.names) == 40 and not table.problems
    assert table.labels.shape == (360, 40)
    sub = table.select(PRIVATE_ATTRIBUTES)
    assert sub.names == PRIVATE_ATTRIBUTES and set(np.unique(sub.labels)) == {0, 1}
    partition, problems = read_partition(corpus / "celeba/list_eval_partition.txt")
    assert not problems and set(partition.values()) == {"train", "val", "test"}


def test_balanced_accuracy_clearly_above_chance(trained: dict[str, Path]) -> None:
    report = json.loads(trained["report"].read_text())
    test = report["test"]
    assert report["images"] == {"train": 288, "val": 36, "test": 36}
    assert set(test["attributes"]) == set(PRIVATE_ATTRIBUTES)
    assert test["mean_balanced_accuracy"] > 0.6, test
    assert test["attributes"]["Male"]["balanced_accuracy"] > 0.6, test
    history = tsv_rows(trained["live"] / "plots/metrics/val_mean_balanced_accuracy.tsv")[1:]
    best = max(float(value) for _, value in history)
    assert report["val"]["mean_balanced_accuracy"] == pytest.approx(best)  # best-val epoch kept
    assert float(history[report["selected_epoch"] - 1][1]) == pytest.approx(best)


def test_history_is_logged_with_dvclive_one_row_per_epoch(trained: dict[str, Path]) -> None:
    live = trained["live"]
    for name in ("train_loss", "val_mean_balanced_accuracy", "val_mean_accuracy"):
        rows = tsv_rows(live / "plots" / "metrics" / f"{name}.tsv")
        assert rows[0] == ["step", name]
        assert [int(step) for step, _ in rows[1:]] == list(range(1, EPOCHS + 1)), name
    losses = [float(v) for _, v in tsv_rows(live / "plots/metrics/train_loss.tsv")[1:]]
    assert losses[-1] < losses[0]
    summary = json.loads((live / "metrics.json").read_text())
    report = json.loads(trained["report"].read_text())
    assert summary["step"] == EPOCHS and summary["selected_epoch"] == report["selected_epoch"]
    assert summary["train_loss"] == losses[-1]
    assert "history" not in report  # the history lives in DVCLive's files only
    assert not (live / "dvc.yaml").exists() and not (live.parent / "dvc.yaml").exists()


def test_checkpoint_holds_its_model_arguments(trained: dict[str, Path]) -> None:
    ckpt = torch.load(trained["model"], weights_only=True)
    assert ckpt["model_name"] == "cswin_nano_64"
    assert ckpt["model_args"] == {"num_classes": 12, "img_size": SIZE}
    assert ckpt["attributes"] == list(PRIVATE_ATTRIBUTES) and ckpt["size"] == SIZE
    net, _ = load_classifier(trained["model"])
    assert net(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 12)
    assert len(pl.read_parquet(trained["rejects"])) == 0


def test_same_seed_same_outputs(corpus: Path, tmp_path: Path) -> None:
    cfg = train_config(epochs=1, max_train_images=64)
    for i in range(2):
        run(corpus, tmp_path / f"m{i}.pt", tmp_path / f"r{i}.json", tmp_path / f"x{i}.parquet", cfg,
            live_dir=tmp_path / f"live{i}")
    for a, b in (("m0.pt", "m1.pt"), ("r0.json", "r1.json"), ("x0.parquet", "x1.parquet")):
        assert hashlib.sha256((tmp_path / a).read_bytes()).digest() == \
            hashlib.sha256((tmp_path / b).read_bytes()).digest(), a
    assert snapshot(tmp_path / "live0") == snapshot(tmp_path / "live1")


@pytest.fixture
def bad_celeba(corpus: Path, tmp_path: Path) -> Path:
    """40 CelebA images, one zero-byte, a malformed line, an unpartitioned image, a wrong count."""
    celeba = tmp_path / "celeba"
    (celeba / "img_align_celeba").mkdir(parents=True)
    names = sorted((corpus / "celeba/img_align_celeba").iterdir())[:40]
    for p in names:
        (celeba / "img_align_celeba" / p.name).write_bytes(p.read_bytes())
    (celeba / "img_align_celeba" / names[0].name).write_bytes(b"")  # zero-byte
    lines = (corpus / "celeba/list_attr_celeba.txt").read_text().splitlines()[:42]
    lines.append("999999.jpg 1 -1")  # malformed row
    (celeba / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    part = (corpus / "celeba/list_eval_partition.txt").read_text().splitlines()[:39]
    (celeba / "list_eval_partition.txt").write_text("\n".join(part) + "\n")  # last image unlisted
    return celeba


def test_bad_images_and_lines_are_rejected(corpus: Path, bad_celeba: Path, tmp_path: Path) -> None:
    cfg = train_config(celeba_dir=str(bad_celeba), epochs=1, max_reject_fraction=0.2)
    run(corpus, tmp_path / "m.pt", tmp_path / "r.json", tmp_path / "x.parquet", cfg)
    reasons = pl.read_parquet(tmp_path / "x.parquet")["reason"].to_list()
    assert sorted(reasons) == ["bad_annotation", "count_mismatch", "empty", "no_partition"]
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["rejected"] == 3  # the count line is recorded but drops nothing
    assert (tmp_path / "face_attributes_train" / "metrics.json").exists()  # default live_dir


def test_too_many_rejects_leave_the_previous_outputs(corpus: Path, bad_celeba: Path,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = (corpus, out / "m.pt", out / "r.json", out / "x.parquet")
    cfg = train_config(celeba_dir=str(bad_celeba), epochs=1, max_train_images=16,
                       max_reject_fraction=0.2)
    run(*args, cfg, live_dir=out / "live")
    before = snapshot(out)
    assert {"m.pt", "r.json", "x.parquet", "live/metrics.json"} <= set(before)
    with pytest.raises(TooManyRejects, match=r"3 of 41 .*'empty': 1"):
        run(*args, train_config(celeba_dir=str(bad_celeba), epochs=1, max_reject_fraction=0.05),
            live_dir=out / "live")
    assert snapshot(out) == before  # same files, same bytes, no temp file left


def test_binary_metrics_balanced_accuracy() -> None:
    labels = np.array([[1], [0], [0], [0]])
    probs = np.array([[0.9], [0.8], [0.1], [0.2]])
    m = binary_metrics(probs, labels, ("A",))["attributes"]["A"]
    assert m["accuracy"] == 0.75 and m["balanced_accuracy"] == pytest.approx((1.0 + 2 / 3) / 2, abs=1e-4)


def test_cli_then_face_attributes_on_generated_faces(tiny_corpus: Path, tiny_manifest: Path,
                                                     trained: dict[str, Path], tmp_path: Path) -> None:
    """End to end on the shared generated corpus: faces -> face_attributes (through the CLI)."""
    from pipeline.cli import app

    manifest, features = tiny_manifest, tmp_path / "features"
    run_faces(tiny_corpus, manifest, features,
              shipped_config(FacesConfig, "faces", size=SIZE, min_size=16, workers=1))
    params = tmp_path / "params.yaml"
    shipped = shipped_params()
    shipped["face_attributes"].update(batch_size=16, threads=1)
    params.write_text(yaml.safe_dump(shipped))
    out = features / "face_attributes.parquet"
    result = CliRunner().invoke(app, ["face_attributes", str(features / "faces.h5"), str(manifest),
                                      str(trained["model"]), str(out), "--params", str(params)])
    assert result.exit_code == 0, result.output
    table = pl.read_parquet(out)
    faces = pl.read_parquet(manifest / "faces.parquet")
    assert table["id"].to_list() == faces["id"].to_list()
    assert table.width == 1 + 2 * len(PRIVATE_ATTRIBUTES)
    again = tmp_path / "again.parquet"
    run_attributes(features / "faces.h5", manifest, trained["model"], again,
                   shipped_config(FaceAttributesConfig, "face_attributes", batch_size=16, threads=2))
    assert pl.read_parquet(again).equals(table), "1 vs 2 threads give identical output"
    run_attributes(features / "faces.h5", manifest, trained["model"], again,
                   shipped_config(FaceAttributesConfig, "face_attributes", batch_size=7, threads=1))
    probs = [c for c in table.columns if c.endswith("_prob")]
    assert np.allclose(pl.read_parquet(again).select(probs).to_numpy(),
                       table.select(probs).to_numpy(), atol=1e-5)


def test_augment_flips_and_shifts_deterministically() -> None:
    images = np.arange(2 * 8 * 8 * 3, dtype=np.uint8).reshape(2, 8, 8, 3)
    flipped = augment(images, np.random.default_rng(0), flip=True, shift=0)
    first = np.random.default_rng(0).random(2) < 0.5
    for i in range(2):
        want = images[i, :, ::-1] if first[i] else images[i]
        assert np.array_equal(flipped[i], want)
    a = augment(images, np.random.default_rng(1), flip=False, shift=2)
    b = augment(images, np.random.default_rng(1), flip=False, shift=2)
    assert a.shape == images.shape and np.array_equal(a, b)
    # A shifted image is the original moved by at most 2 px: its centre pixel comes from the
    # original's central 5 x 5 block.
    centre = {tuple(p) for p in images[0, 2:7, 2:7].reshape(-1, 3)}
    assert tuple(a[0, 4, 4]) in centre


def test_initializes_from_local_imagenet_checkpoint(tmp_path: Path) -> None:
    """``imagenet_checkpoint``: an official-format file (``state_dict_ema``, 1000 classes)."""
    import timm

    torch.manual_seed(5)
    imagenet = timm.create_model("cswin_nano_64", num_classes=1000, img_size=SIZE)
    path = tmp_path / "cswin_nano_imagenet.pth"
    torch.save({"state_dict_ema": imagenet.state_dict()}, path)
    net, args = build_model(train_config(imagenet_checkpoint=str(path)))
    assert torch.equal(net.stage1_conv_embed[0].weight, imagenet.stage1_conv_embed[0].weight)
    assert torch.equal(net.stage3[1].attns[1].get_v.weight, imagenet.stage3[1].attns[1].get_v.weight)
    assert net.head.weight.shape == (12, 256) and args == {"num_classes": 12, "img_size": SIZE}
