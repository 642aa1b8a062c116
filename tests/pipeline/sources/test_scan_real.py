"""Real-data layouts: VoxCeleb2 + VGGFace2 (BOM, trailing spaces, names from identity_meta),
and VoxCeleb1 + VGGFace v1 lists with bounding boxes, on real m4a / JPEG / WAV bytes."""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pytest

from model.stores import FaceStore
from pipeline.common.rejects import Rejects
from pipeline.manifest import ManifestConfig, run
from pipeline.sources import layout as L
from pipeline.sources import layouts
from pipeline.sources.scan_real import read_vggface2_names, read_vox2_meta
from tests.params import shipped_config
from tests.vox_tree import VOX2_PEOPLE, make_vggface_tree, make_vox2_tree


def config(**overrides: object) -> ManifestConfig:
    """The shipped manifest config, one worker, and the test trees' few known rejects allowed."""
    return shipped_config(ManifestConfig, "manifest", **{"workers": 1, "max_reject_fraction": 0.2,
                                                        **overrides})


def test_vox2_meta_with_bom_and_trailing_spaces(tmp_path: Path) -> None:
    make_vox2_tree(tmp_path)
    raw = (tmp_path / L.VOX2_META).read_bytes()
    assert raw.startswith(b"\xef\xbb\xbf") and b"id00012 ,n000012 ,f ,dev \n" in raw
    rejects = Rejects("manifest")
    rows = read_vox2_meta(tmp_path / L.VOX2_META, rejects)
    assert rows[0] == {"id": "id00012", "vggface2": "n000012", "gender": "f", "set": "dev"}
    assert [r["id"] for r in rows] == [p[0] for p in VOX2_PEOPLE] + ["id00030"]
    assert rejects.counts() == {"metadata_invalid": 1}
    names = read_vggface2_names(tmp_path / L.VGGFACE2_META)
    assert names["n000012"] == "Abby_Adams" and names["n009999"] == "Other_Person"


def test_vox2_meta_header_is_checked(tmp_path: Path) -> None:
    bad = tmp_path / "vox2_meta.csv"
    bad.write_text("id,class,gender,set\n")
    with pytest.raises(L.TreeError, match="unexpected header"):
        read_vox2_meta(bad, Rejects("manifest"))


def test_voxceleb2_manifest_splits_by_vggface2_name(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_vox2_tree(root)
    out = tmp_path / "manifest"
    summary = run(root, out, config(layout="voxceleb2"))
    ids = pl.read_parquet(out / "identities.parquet")
    split = dict(zip(ids["name"], ids["split"], strict=True))
    assert split == {"Abby_Adams": "val", "Ben_Burr": "val", "Cleo_Cruz": "test", "Ed_Eno": "test",
                     "Fay_Fox": "train", "Zed_Zola": "train"}
    assert ids["nationality"].null_count() == ids.height  # gender is the only attribute
    assert dict(zip(ids["id"], ids["gender"], strict=True))["id00012"] == "f"
    utt = pl.read_parquet(out / "utterances.parquet")
    assert utt.height == 12 and set(utt["sample_rate"]) == {16000} and set(utt["channels"]) == {1}
    assert utt["path"][0].startswith("voxceleb2/dev/aac/id00012/") and utt["path"][0].endswith(".m4a")
    assert (utt["duration"] > 0.4).all()
    faces = pl.read_parquet(out / "faces.parquet")
    assert faces.height == 12 and "n009999" not in " ".join(faces["path"])
    assert faces.filter(pl.col("identity") == "id00017")["path"].to_list() == [
        "voxceleb2/vggface2/test/n000017/0001_01.jpg", "voxceleb2/vggface2/test/n000017/0002_01.jpg"]
    assert faces["id"][0] == "id00012/n000012/0001_01" and faces["left"].null_count() == 12
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert sorted(rejects["reason"]) == ["bad_name", "metadata_invalid", "no_name"]
    assert summary["identities"] == {"train": 2, "val": 2, "test": 2}


# --- VoxCeleb1 audio + VGGFace v1 lists ------------------------------------------------------

@pytest.mark.parametrize(("layout", "per_person"), [("vggface1", 3), ("vggface1_curated", 2)])
def test_vggface1_lists_give_boxes(tmp_path: Path, layout: str, per_person: int) -> None:
    root = tmp_path / "raw"
    make_vggface_tree(root)
    out = tmp_path / "manifest"
    summary = run(root, out, config(layout=layout, seen_heard_fraction=0.0))
    faces = pl.read_parquet(out / "faces.parquet")
    assert faces.height == 4 * per_person
    first = faces.filter(pl.col("id") == "id10001/vggface/1").row(0, named=True)
    assert first["path"] == "voxceleb1/vggface/images/Anna_Abbot/00000001.jpg"
    # floor/ceil of the float box: 10.4 5.2 49.6 44.7 -> 10 5 50 45
    assert (first["left"], first["top"], first["right"], first["bottom"]) == (10, 5, 50, 45)
    assert (first["width"], first["height"]) == (120, 100)
    assert faces["left"].null_count() == 0
    # trailing-dot name: the list is Harry_Connick_Jr..txt (kept verbatim) and matches the meta
    assert faces.filter(pl.col("identity") == "id10003").height == per_person
    ids = pl.read_parquet(out / "identities.parquet")
    assert dict(zip(ids["name"], ids["nationality"], strict=True))["Carl_Cole"] == "Norway"
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert sorted(rejects["reason"]) == ["bad_box", "metadata_invalid", "no_metadata",
                                         *["not_on_disk"] * 4]
    # image 9 of every list was never fetched: listed, dropped, not counted against the limit
    absent = rejects.filter(pl.col("reason") == "not_on_disk")
    assert absent["path"].to_list() == [f"voxceleb1/vggface/images/{n}/9.jpg" for n in
                                        ("Anna_Abbot", "Carl_Cole", "Harry_Connick_Jr.", "Zoe_Zane")]
    assert not absent["kept"].any() and absent["id"][0] == "id10001/vggface/9"
    assert summary["rejected"] == 3 and summary["rejects_by_reason"]["not_on_disk"] == 4


def test_vggface1_box_cropping_through_the_faces_stage(tmp_path: Path) -> None:
    faces_mod = pytest.importorskip("pipeline.faces")
    root = tmp_path / "raw"
    make_vggface_tree(root)
    manifest = tmp_path / "manifest"
    run(root, manifest, config(layout="vggface1"))
    features = tmp_path / "features"
    faces_mod.run(root, manifest, features, faces_mod.FacesConfig(size=32, min_size=16, workers=1))
    with FaceStore(features / "faces.h5") as store:
        assert len(store) == 12
        crop = store.get("id10002/vggface/2").astype(float)  # (32, 32, 3) RGB
    # the crop is the red square, not the green surround (JPEG blurs the edges a little)
    red, green = crop[..., 0].mean(), crop[..., 1].mean()
    assert red > 200 and green < 60, (red, green)


def test_registry_has_real_layouts() -> None:
    assert {"voxceleb1", "voxceleb2", "vggface1", "vggface1_curated"} <= set(layouts.LAYOUTS)
    with pytest.raises(ValueError, match="unknown manifest.layout"):
        layouts.get_layout("vox3")


def test_voxceleb2_manifest_feeds_the_audio_stages(tmp_path: Path) -> None:
    """The m4a rows the voxceleb2 layout lists decode in the spectrogram and IS09 stages."""
    spectrograms = pytest.importorskip("pipeline.spectrograms")
    audio_attributes = pytest.importorskip("pipeline.audio_attributes")
    root = tmp_path / "raw"
    make_vox2_tree(root)
    manifest = tmp_path / "manifest"
    run(root, manifest, config(layout="voxceleb2"))
    out = tmp_path / "features"
    spec = spectrograms.run(root, manifest, out, spectrograms.SpectrogramConfig(workers=1))
    attrs = audio_attributes.run(root, manifest, out,
                                 audio_attributes.AudioAttributesConfig(workers=1))
    assert spec["stored"] == attrs["stored"] == 12
    assert spec["rejected"] == attrs["rejected"] == 0
    table = pl.read_parquet(out / "audio_attributes.parquet")
    utt = pl.read_parquet(manifest / "utterances.parquet")
    assert sorted(table["id"]) == sorted(utt["id"]) and table.width == 385
