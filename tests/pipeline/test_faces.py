"""faces stage: decoding odd images, cropping, rejects, HDF5 store, determinism, CLI."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest
from PIL import Image
from typer.testing import CliRunner

from model.stores import FaceStore
from pipeline.common.images import prepare_face, square_region
from pipeline.common.probe import BadInput
from pipeline.common.rejects import TooManyRejects
from pipeline.faces import FacesConfig, run
from tests.params import default_mismatches, shipped_config
from tests.pipeline.common.snapshots import snapshot

SIZE = 32
OUTPUTS = ("faces.h5", "faces_rejects.parquet", "faces_summary.json")


def config(**overrides: object) -> FacesConfig:
    """The shipped ``faces`` params with the test corpus's sizes and ``overrides``."""
    return shipped_config(FacesConfig, "faces", **{"size": SIZE, "min_size": 16, "workers": 1,
                                                   "max_reject_fraction": 0.6, **overrides})


def test_dataclass_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(FacesConfig, "faces") == {}


def solid(w: int, h: int, rgb: tuple[int, int, int]) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


def save(img: Image.Image, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)
    return path


def build_inputs(root: Path) -> list[dict]:
    """Real JPEG/PNG files covering every case; returns manifest rows (id, path, box)."""
    d = root / "faces"
    rows = []

    def add(uid: str, rel: str, box: tuple[int, int, int, int] | None = None) -> None:
        rows.append({"id": uid, "path": rel, "box": box})

    # Non-square RGB face-track frame: left/right thirds blue, centre square red.
    rgb = solid(90, 60, (0, 0, 255))
    rgb[:, 15:75] = (255, 0, 0)
    save(Image.fromarray(rgb), d / "rgb.png")
    add("a/rgb", "faces/rgb.png")
    save(Image.new("L", (64, 64), 90), d / "gray.jpg", quality=95)
    add("a/gray", "faces/gray.jpg")
    save(Image.new("CMYK", (64, 64), (0, 255, 255, 0)), d / "cmyk.jpg", quality=95)  # red
    add("a/cmyk", "faces/cmyk.jpg")
    rgba = np.zeros((64, 64, 4), np.uint8)
    rgba[:, :, 1] = 255  # green everywhere ...
    rgba[:, :32, 3] = 255  # ... but only the left half is opaque
    save(Image.fromarray(rgba, "RGBA"), d / "alpha.png")
    add("a/alpha", "faces/alpha.png")
    save(Image.fromarray(np.full((48, 48), 40000, np.uint16)), d / "gray16.png")
    add("a/gray16", "faces/gray16.png")
    # VGGFace-style image with a bounding box around a yellow face on grey.
    boxed = solid(200, 150, (128, 128, 128))
    boxed[40:100, 120:180] = (255, 255, 0)
    save(Image.fromarray(boxed), d / "boxed.png")
    add("b/boxed", "faces/boxed.png", (120, 40, 180, 100))
    # Bad inputs.
    good = (d / "gray.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(good[: len(good) // 2])
    add("c/truncated", "faces/truncated.jpg")
    png = (d / "alpha.png").read_bytes()
    (d / "truncated.png").write_bytes(png[: len(png) // 2])
    add("c/truncated_png", "faces/truncated.png")
    (d / "zero.jpg").write_bytes(b"")
    add("c/zero", "faces/zero.jpg")
    (d / "garbage.jpg").write_bytes(np.random.default_rng(0).bytes(500))
    add("c/garbage", "faces/garbage.jpg")
    save(Image.new("RGB", (10, 10)), d / "tiny.png")
    add("c/tiny", "faces/tiny.png")
    add("c/missing", "faces/missing.jpg")
    add("c/badbox", "faces/boxed.png", (500, 500, 600, 600))
    return rows


def write_manifest(manifest_dir: Path, rows: list[dict]) -> Path:
    manifest_dir.mkdir(parents=True, exist_ok=True)
    box = {c: [None if r["box"] is None else r["box"][i] for r in rows]
           for i, c in enumerate(("left", "top", "right", "bottom"))}
    frame = pl.DataFrame({
        "id": [r["id"] for r in rows], "path": [r["path"] for r in rows],
        "identity": ["id10001"] * len(rows), "video": ["v"] * len(rows),
        "frame": list(range(len(rows))), "width": [0] * len(rows), "height": [0] * len(rows),
        "split": ["train"] * len(rows), **box},
        schema_overrides={c: pl.Int64 for c in box})
    frame.write_parquet(manifest_dir / "faces.parquet")
    return manifest_dir


EXPECTED_REJECTS = {"c/truncated": "truncated", "c/truncated_png": "truncated", "c/zero": "empty", "c/garbage": "undecodable",
                    "c/tiny": "too_small", "c/missing": "unreadable", "c/badbox": "bad_box"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("raw")
    manifest = write_manifest(root.parent / f"{root.name}_manifest", build_inputs(root))
    return root, manifest


@pytest.fixture(scope="module")
def stored(corpus: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    root, manifest = corpus
    out = tmp_path_factory.mktemp("features")
    run(root, manifest, out, config())
    return out


def test_store_layout_and_ids(stored: Path) -> None:
    with FaceStore(stored / "faces.h5") as store:
        assert store.ids == ["a/rgb", "a/gray", "a/cmyk", "a/alpha", "a/gray16", "b/boxed"]
        assert store.images.shape == (6, SIZE, SIZE, 3)
        assert store.images.dtype == np.uint8
        assert store.images.chunks == (1, SIZE, SIZE, 3)
        assert store.size == SIZE
    with h5py.File(stored / "faces.h5") as fh:
        assert json.loads(fh.attrs["params"])["size"] == SIZE


def test_color_conversions(stored: Path) -> None:
    with FaceStore(stored / "faces.h5") as store:
        rgb, gray, cmyk, alpha, gray16, boxed = (store.get(i).astype(int) for i in store.ids)
    assert (rgb == (255, 0, 0)).all(), "centre square of a wide frame is the red part"
    assert np.abs(gray - 90).max() <= 2 and (gray[..., 0] == gray[..., 2]).all()
    assert np.abs(cmyk - (255, 0, 0)).max() <= 8, "CMYK (0,255,255,0) is red"
    assert (alpha[:, :SIZE // 2 - 1] == (0, 255, 0)).all(), "opaque half keeps its color"
    assert (alpha[:, SIZE // 2 + 1:] == 0).all(), "transparent half is composited over black"
    assert (gray16 == round(40000 / 257)).all(), "16-bit grey scaled to 8 bit"
    assert (boxed == (255, 255, 0)).all(), "crop follows the bounding box"


def test_rejects_table_and_summary(stored: Path) -> None:
    rejects = pl.read_parquet(stored / "faces_rejects.parquet")
    assert dict(zip(rejects["id"], rejects["reason"], strict=True)) == EXPECTED_REJECTS
    assert set(rejects["stage"]) == {"faces"}
    assert rejects.filter(pl.col("id") == "c/zero")["path"][0] == "faces/zero.jpg"
    summary = json.loads((stored / "faces_summary.json").read_text())
    assert summary["manifest_rows"] == 13
    assert summary["stored"] == 6 and summary["rejected"] == 7
    assert summary["rejects_by_reason"]["truncated"] == 2


def test_one_and_two_workers_give_identical_bytes(corpus: tuple[Path, Path], stored: Path,
                                                  tmp_path: Path) -> None:
    root, manifest = corpus
    run(root, manifest, tmp_path, config(workers=2))
    for name in OUTPUTS:
        digest = [hashlib.sha256((d / name).read_bytes()).hexdigest() for d in (stored, tmp_path)]
        assert digest[0] == digest[1], name


def test_reject_tolerance_does_not_change_the_outputs(corpus: tuple[Path, Path], stored: Path,
                                                     tmp_path: Path) -> None:
    root, manifest = corpus
    run(root, manifest, tmp_path, config(max_reject_fraction=0.9))
    for name in OUTPUTS:
        assert (stored / name).read_bytes() == (tmp_path / name).read_bytes(), name
    with h5py.File(tmp_path / "faces.h5") as fh:
        assert "max_reject_fraction" not in fh.attrs
        assert "max_reject_fraction" not in json.loads(fh.attrs["params"])


def test_too_many_rejects_leave_the_previous_outputs(corpus: tuple[Path, Path], stored: Path,
                                                     tmp_path: Path) -> None:
    root, manifest = corpus
    for name in OUTPUTS:
        (tmp_path / name).write_bytes((stored / name).read_bytes())
    before = snapshot(tmp_path)
    with pytest.raises(TooManyRejects, match=r"7 of 13.*'truncated': 2"):
        run(root, manifest, tmp_path, config(max_reject_fraction=0.1))
    assert snapshot(tmp_path) == before  # same files, same bytes, no temp file left


def test_cli_writes_outputs(corpus: tuple[Path, Path], tmp_path: Path) -> None:
    from pipeline.cli import app

    root, manifest = corpus
    params = tmp_path / "params.yaml"
    params.write_text("faces:\n  size: 16\n  min_size: 16\n  workers: 1\n"
                      "  compression: none\n  max_reject_fraction: 0.6\n")
    out = tmp_path / "features"
    result = CliRunner().invoke(app, ["faces", str(root), str(manifest), str(out),
                                      "--params", str(params)])
    assert result.exit_code == 0, result.output
    with FaceStore(out / "faces.h5") as store:
        assert store.images.shape == (6, 16, 16, 3)
        assert store.images.compression is None


def test_square_region_keeps_box_inside_image() -> None:
    assert square_region(100, 60) == (20, 0, 60)
    assert square_region(100, 60, (90, 10, 110, 30)) == (80, 10, 20)  # shifted inside
    assert square_region(100, 60, (10, 0, 30, 60)) == (0, 0, 60)  # tall box -> 60 square
    with pytest.raises(BadInput, match="degenerate"):
        square_region(100, 60, (30, 10, 20, 40))


def test_downscale_uses_area_interpolation() -> None:
    # A 1-px checkerboard averages to mid-grey under area interpolation (not aliasing to 0/255).
    board = ((np.indices((64, 64)).sum(0) % 2) * 255).astype(np.uint8)
    img = Image.fromarray(np.repeat(board[:, :, None], 3, axis=2))
    import io

    buf = io.BytesIO()
    img.save(buf, format="PNG")
    out = prepare_face(buf.getvalue(), 16)
    assert np.abs(out.astype(int) - 127).max() <= 1


def test_generated_corpus_faces_all_stored(tiny_corpus: Path, tiny_manifest: Path,
                                           tmp_path: Path) -> None:
    """Every face-track crop of the generated corpus is stored, as a non-constant image."""
    summary = run(tiny_corpus, tiny_manifest, tmp_path,
                  shipped_config(FacesConfig, "faces", workers=2))
    manifest = pl.read_parquet(tiny_manifest / "faces.parquet")
    assert summary["stored"] == len(manifest) and summary["rejected"] == 0
    with FaceStore(tmp_path / "faces.h5") as store:
        assert store.ids == manifest["id"].to_list()
        first = store.get(store.ids[0])
        assert first.shape == (64, 64, 3) and first.std() > 10
