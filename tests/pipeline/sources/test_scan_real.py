"""Real-data layouts: VoxCeleb2 + VGGFace2 (BOM, trailing spaces, names from identity_meta),
and VoxCeleb1 + VGGFace v1 lists with bounding boxes, on real m4a / JPEG / WAV bytes."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest

from model.stores import FaceStore
from pipeline.common.rejects import Rejects
from pipeline.manifest import ManifestConfig, run
from pipeline.sources import layout as L
from pipeline.sources import layouts
from pipeline.sources.scan_real import read_vggface2_names, read_vox2_meta
from tests.vox_tree import write_jpg, write_meta, write_wav


def write_m4a(path: Path, seconds: float = 0.5, rate: int = 16000, seed: int = 0) -> Path:
    """Real AAC-in-MP4 bytes, as VoxCeleb2 ships them, encoded with PyAV."""
    import av

    samples = (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * rate))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(samples[None, :], format="fltp", layout="mono")  # (1, n)
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return path


# (vox2 id, VGGFace2 class, name, gender, set); the names drive the split: A-B val, C-E test.
VOX2_PEOPLE = [("id00012", "n000012", "Abby_Adams", "f", "dev"),
               ("id00015", "n000015", "Ben_Burr", "m", "dev"),
               ("id00017", "n000017", "Cleo_Cruz", "f", "test"),
               ("id00019", "n000019", "Ed_Eno", "m", "test"),
               ("id00020", "n000020", "Fay_Fox", "f", "dev"),
               ("id00021", "n000021", "Zed_Zola", "m", "dev")]


def make_vox2_tree(root: Path) -> None:
    meta = "\ufeffVoxCeleb2 ID ,VGGFace2 ID ,Gender ,Set \n" + "".join(
        f"{i} ,{c} ,{g} ,{s} \n" for i, c, _, g, s in VOX2_PEOPLE)
    meta += "id00030 ,n000030 ,m ,dev \n"  # no name in identity_meta -> rejected
    meta += "id00031 ,n000031 ,x ,dev \n"  # bad gender -> rejected
    (root / "voxceleb2").mkdir(parents=True)
    (root / L.VOX2_META).write_bytes(meta.encode("utf-8"))
    names = "Class_ID, Name, Sample_Num, Flag, Gender\n" + "".join(
        f'{c}, "{n}", 300, {int(s == "dev")}, {g}\n' for _, c, n, g, s in VOX2_PEOPLE)
    names += 'n009999, "Other_Person", 120, 1, m\n'
    (root / L.VGGFACE2).mkdir(parents=True)
    (root / L.VGGFACE2_META).write_text(names, encoding="utf-8")
    for k, (ident, cls, _, _, dset) in enumerate(VOX2_PEOPLE):
        for v in range(2):
            write_m4a(root / "voxceleb2" / "dev" / "aac" / ident / f"yt{k}vid{v}xxx" / "00001.m4a",
                      seed=k * 10 + v)
        split = "train" if dset == "dev" else "test"
        for f in range(2):
            write_jpg(root / L.VGGFACE2 / split / cls / f"{f + 1:04d}_01.jpg", seed=f)
    write_jpg(root / L.VGGFACE2 / "train" / "n009999" / "0001_01.jpg")  # not a VoxCeleb2 speaker
    write_jpg(root / L.VGGFACE2 / "train" / "n000021" / "cover.jpg")  # bad file name


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
    with pytest.raises(ValueError, match="unexpected header"):
        read_vox2_meta(bad, Rejects("manifest"))


def test_voxceleb2_manifest_splits_by_vggface2_name(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_vox2_tree(root)
    out = tmp_path / "manifest"
    summary = run(root, out, ManifestConfig(layout="voxceleb2", workers=1,
                                            max_reject_fraction=0.2))
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

RED, GREEN = (0, 0, 255), (0, 255, 0)  # BGR


def write_boxed_jpg(path: Path, box: tuple[int, int, int, int], size=(120, 100)) -> Path:
    """A green image with a red square at ``box`` (left, top, right, bottom)."""
    image = np.zeros((size[1], size[0], 3), np.uint8)  # (height, width, BGR)
    image[:] = GREEN
    left, top, right, bottom = box
    image[top:bottom, left:right] = RED
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    return path


def make_vggface_tree(root: Path) -> None:
    people = [("id10001", "Anna_Abbot", "f", "USA"), ("id10002", "Carl_Cole", "m", "Norway"),
              ("id10003", "Harry_Connick_Jr.", "m", "USA"), ("id10004", "Zoe_Zane", "f", "UK")]
    write_meta(root, [(i, n, g, nat, "dev") for i, n, g, nat in people])
    lists = root / L.VOX1_VGGFACE_LISTS
    lists.mkdir(parents=True)
    for k, (ident, name, _, _) in enumerate(people):
        for v in range(2):
            write_wav(root / L.VOX1_WAV / ident / f"yt{k}vid{v}xxx" / "00001.wav", seconds=0.5)
        lines = []
        for img in range(1, 4):
            left, top = 10 * img, 5 * img
            box = (left, top, left + 40, top + 40)
            # the published lists use float boxes; curation is 1 except on image 3
            lines.append(f"{img} http://example.invalid/{name}/{img}.jpg {left}.4 {top}.2 "
                         f"{left + 39}.6 {top + 39}.7 1 3.14 {int(img != 3)}")
            write_boxed_jpg(root / L.VOX1_VGGFACE_IMAGES / name / f"{img:08d}.jpg", box)
        lines.append(f"9 http://example.invalid/{name}/9.jpg 1 2 3 4 1 2.0 1")  # never fetched
        (lists / f"{name}.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    # Carl: a box with right < left, and an image that no list line names
    with open(lists / "Carl_Cole.txt", "a", encoding="utf-8") as fh:
        fh.write("4 http://example.invalid/x.jpg 50 10 20 40 1 1.0 1\nnot a valid line\n")
    write_boxed_jpg(root / L.VOX1_VGGFACE_IMAGES / "Carl_Cole" / "00000004.jpg", (0, 0, 40, 40))
    write_jpg(root / L.VOX1_VGGFACE_IMAGES / "Carl_Cole" / "00000077.jpg")
    (lists / "Someone_Else.txt").write_text("1 http://x 1 1 9 9 1 1 1\n")  # not in VoxCeleb1


@pytest.mark.parametrize(("layout", "per_person"), [("vggface1", 3), ("vggface1_curated", 2)])
def test_vggface1_lists_give_boxes(tmp_path: Path, layout: str, per_person: int) -> None:
    root = tmp_path / "raw"
    make_vggface_tree(root)
    out = tmp_path / "manifest"
    run(root, out, ManifestConfig(layout=layout, workers=1, max_reject_fraction=0.2,
                                  seen_heard_fraction=0.0))
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
    reasons = sorted(pl.read_parquet(out / "rejects.parquet")["reason"])
    assert reasons == ["bad_box", "metadata_invalid", "no_metadata"]


def test_vggface1_box_cropping_through_the_faces_stage(tmp_path: Path) -> None:
    faces_mod = pytest.importorskip("pipeline.faces")
    root = tmp_path / "raw"
    make_vggface_tree(root)
    manifest = tmp_path / "manifest"
    run(root, manifest, ManifestConfig(layout="vggface1", workers=1, max_reject_fraction=0.2))
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
    run(root, manifest, ManifestConfig(layout="voxceleb2", workers=1, max_reject_fraction=0.2))
    out = tmp_path / "features"
    spec = spectrograms.run(root, manifest, out, spectrograms.SpectrogramConfig(workers=1))
    attrs = audio_attributes.run(root, manifest, out,
                                 audio_attributes.AudioAttributesConfig(workers=1))
    assert spec["stored"] == attrs["stored"] == 12
    assert spec["rejected"] == attrs["rejected"] == 0
    table = pl.read_parquet(out / "audio_attributes.parquet")
    utt = pl.read_parquet(manifest / "utterances.parquet")
    assert sorted(table["id"]) == sorted(utt["id"]) and table.width == 385
