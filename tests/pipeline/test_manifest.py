"""The manifest stage on real-format trees: split, seen-heard hold-out, rejects, atomicity,
and loud failures on empty or misplaced trees for every layout."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.common.rejects import Rejects, TooManyRejects
from pipeline.manifest import ManifestConfig, held_out_videos, run, split_of
from pipeline.sources import layout as L
from pipeline.sources.layout import TreeError
from pipeline.sources.scan import read_vox1_meta
from tests.params import default_mismatches, shipped_config, shipped_params
from tests.vox_tree import (
    DEFAULT_PEOPLE,
    LAYOUTS,
    MODALITY_DIRS,
    add_stray_files,
    make_identity,
    make_layout_tree,
    make_tree,
    move_into,
    write_jpg,
    write_meta,
    write_wav,
)


def config(**overrides: object) -> ManifestConfig:
    """The shipped manifest configuration with one worker, plus ``overrides``."""
    return shipped_config(ManifestConfig, "manifest", **{"workers": 1, **overrides})


CFG = config()

# Initial counts of the 1,251 names in the real vox1_meta.csv.
REAL_INITIALS = dict(A=76, B=40, C=64, D=89, E=40, F=15, G=32, H=28, I=12, J=185, K=86, L=54,
                     M=126, N=41, O=16, P=40, Q=1, R=76, S=113, T=64, U=2, V=16, W=23, X=1, Y=2,
                     Z=9)


def test_split_on_vox1_meta_shaped_table(tmp_path: Path) -> None:
    names = sorted(f"{c}name{i:03d}_Last" for c, n in REAL_INITIALS.items() for i in range(n))
    rows = [(f"id{10001 + i}", n, "m" if i % 2 else "f", "USA", "test" if n[0] == "E" else "dev")
            for i, n in enumerate(names)]
    write_meta(tmp_path, rows)
    parsed = read_vox1_meta(tmp_path / L.VOX1_META, Rejects("manifest"))
    counts = {s: sum(split_of(r["name"], CFG) == s for r in parsed) for s in ("train", "val", "test")}
    assert len(parsed) == 1251
    assert counts == {"train": 942, "val": 116, "test": 193}
    # the split letters are params
    other = config(val_initials="A", test_initials="E")
    assert sum(split_of(r["name"], other) == "test" for r in parsed) == 40


def test_split_letters_must_not_overlap() -> None:
    with pytest.raises(ValueError, match="both val and test"):
        ManifestConfig(val_initials="AB", test_initials="BC")


@pytest.fixture()
def clean_tree(tmp_path: Path) -> Path:
    root = tmp_path / "raw"
    make_tree(root)
    return root


def read(out: Path) -> dict[str, pl.DataFrame]:
    return {n: pl.read_parquet(out / f"{n}.parquet")
            for n in ("identities", "utterances", "faces", "rejects")}


def test_clean_tree_tables(clean_tree: Path, tmp_path: Path) -> None:
    out = tmp_path / "manifest"
    summary = run(clean_tree, out, CFG)
    t = read(out)
    assert t["identities"].height == 10
    assert dict(zip(t["identities"]["name"], t["identities"]["split"], strict=True))["Eve_Evans"] == "test"
    assert summary["identities"] == {"train": 5, "val": 2, "test": 3}
    assert t["utterances"].height == 10 * 3 * 2 and t["faces"].height == 10 * 3 * 2
    utt = t["utterances"].row(0, named=True)
    assert utt["id"] == "id10001/001vid00xyz/00001"
    assert utt["path"] == "voxceleb1/wav/id10001/001vid00xyz/00001.wav"
    assert utt["sample_rate"] == 16000 and utt["channels"] == 1
    assert utt["duration"] == pytest.approx(1.0)
    face = t["faces"].row(0, named=True)
    assert face["id"] == "id10001/001vid00xyz/0000025" and face["frame"] == 25
    assert (face["width"], face["height"]) == (48, 48) and face["left"] is None
    assert t["rejects"].height == 0
    assert json.loads((out / "summary.json").read_text()) == json.loads(json.dumps(summary))


def test_no_identity_in_two_splits(clean_tree: Path, tmp_path: Path) -> None:
    run(clean_tree, tmp_path / "m", CFG)
    t = read(tmp_path / "m")
    split = dict(zip(t["identities"]["id"], t["identities"]["split"], strict=True))
    for table in ("utterances", "faces"):
        for ident, item_split in zip(t[table]["identity"], t[table]["split"], strict=True):
            expected = {split[ident]} | ({"seen_heard"} if split[ident] == "train" else set())
            assert item_split in expected
    # every identity's non-seen-heard items sit in exactly one split
    both = pl.concat([t["utterances"].select("identity", "split"), t["faces"].select("identity", "split")])
    per = both.filter(pl.col("split") != "seen_heard").group_by("identity").agg(pl.col("split").n_unique())
    assert per["split"].max() == 1


def test_seen_heard_holdout(clean_tree: Path, tmp_path: Path) -> None:
    run(clean_tree, tmp_path / "m", CFG)
    t = read(tmp_path / "m")
    train = set(t["identities"].filter(pl.col("split") == "train")["id"])
    for table in ("utterances", "faces"):
        held = t[table].filter(pl.col("split") == "seen_heard")
        assert set(held["identity"]) == train  # 3 videos x 0.33 -> one video per train identity
        per_id = held.group_by("identity").agg(pl.col("video").n_unique())
        assert per_id["video"].to_list() == [1] * len(train)
    # voices and faces are held out from the same scenes
    hv = t["utterances"].filter(pl.col("split") == "seen_heard").select("identity", "video").unique()
    hf = t["faces"].filter(pl.col("split") == "seen_heard").select("identity", "video").unique()
    assert hv.sort("identity").equals(hf.sort("identity"))


def test_held_out_videos_keeps_one_per_modality() -> None:
    cfg = config(seen_heard_fraction=0.9)
    audio, faces = held_out_videos("id1", {"a", "b", "c", "d"}, {"a", "b", "e"}, cfg)
    assert len(audio) == 3 and len(faces) == 2
    assert faces <= {"a", "b", "e"} and len({"a", "b", "e"} - faces) == 1
    assert held_out_videos("id1", {"a"}, {"a"}, cfg) == (set(), set())
    again = held_out_videos("id1", {"a", "b", "c", "d"}, {"a", "b", "e"}, cfg)
    assert again == (audio, faces)  # deterministic for a seed
    other = [held_out_videos("id1", set("abcdefgh"), set("abcdefgh"),
                             config(seen_heard_fraction=0.5, seed=s))[0] for s in range(6)]
    assert len({frozenset(o) for o in other}) > 1  # the seed matters


def add_bad_inputs(root: Path, rows: list[tuple[str, ...]]) -> None:
    ident, name = rows[5][0], rows[5][1]  # a training identity
    video = root / L.VOX1_WAV / ident / f"{ident[-3:]}vid00xyz"
    wav = write_wav(video / "00091.wav")
    wav.write_bytes(wav.read_bytes()[:-4000])  # truncated
    (video / "00092.wav").write_bytes(b"")  # zero-byte
    (video / "00093.wav").write_bytes(b"RIFF\x00\x00\x00\x00garbage that is not audio")
    write_wav(video / "00094.wav", rate=44100)  # unexpected rate: recorded, kept
    write_wav(video / "00095.wav", channels=2)  # unexpected channels: recorded, kept
    faces = root / L.VOX1_FACES / name / "1.6" / f"{ident[-3:]}vid00xyz"
    jpg = write_jpg(faces / "0000900.jpg")
    jpg.write_bytes(jpg.read_bytes()[: len(jpg.read_bytes()) // 2])  # truncated
    (faces / "0000901.jpg").write_bytes(b"")
    write_jpg(faces / "0000902.jpg", size=8)  # too small
    write_jpg(root / L.VOX1_FACES / "Nobody_Known" / "1.6" / "abcdefghijk" / "0000001.jpg")
    extra = [("id19998", "Zed_Zero", "", "USA", "dev"),  # missing gender
             (rows[0][0], "Other_Name", "m", "USA", "dev")]  # duplicate id
    write_meta(root, rows + extra)


def test_rejects_each_bad_input(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    rows = make_tree(root)
    add_bad_inputs(root, rows)
    out = tmp_path / "m"
    summary = run(root, out, config(workers=2, max_reject_fraction=0.2))
    rej = pl.read_parquet(out / "rejects.parquet")
    reasons = dict(zip(rej["path"], rej["reason"], strict=True))
    def reason(suffix: str) -> str:
        return next(r for p, r in reasons.items() if p.endswith(suffix))
    assert reason("00091.wav") == "truncated"
    assert reason("00092.wav") == "empty"
    assert reason("00093.wav") == "undecodable"
    assert reason("00094.wav") == reason("00095.wav") == "unexpected_format"
    assert reason("0000900.jpg") == "truncated"
    assert reason("0000901.jpg") == "empty"
    assert reason("0000902.jpg") == "too_small"
    assert reason("Nobody_Known") == "no_metadata"
    assert "metadata_missing_fields" in set(rej["reason"]) and "duplicate_id" in set(rej["reason"])
    kept = set(rej.filter(pl.col("kept"))["path"])
    assert {p for p in kept if p.endswith(("00094.wav", "00095.wav"))} == kept and len(kept) == 2
    utt = pl.read_parquet(out / "utterances.parquet")
    paths = set(utt["path"])
    assert not any(p.endswith(("00091.wav", "00092.wav", "00093.wav")) for p in paths)
    stereo = utt.filter(pl.col("path").str.ends_with("00095.wav")).row(0, named=True)
    assert stereo["channels"] == 2
    assert summary["rejected"] == 9 and summary["recorded_anomalies"] == 2
    assert summary["rejects_by_reason"]["unexpected_format"] == 2
    assert summary["identities"]["train"] == 5  # the stage still completed with everyone


def test_too_many_rejects_fails_clearly_and_writes_nothing(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    add_bad_inputs(root, make_tree(root))
    out = tmp_path / "m"
    with pytest.raises(TooManyRejects, match=r"max_reject_fraction.*First offenders: .*(truncated|empty)"):
        run(root, out, config(max_reject_fraction=0.01))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temp left behind


def test_identity_missing_a_modality_is_excluded_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    rows = make_tree(root)
    write_wav(root / L.VOX1_WAV / "id10020" / "onlyaudio01" / "00001.wav")
    make_identity(root, "id10021", "Zoe_Faceonly", videos=1, utts=0)
    rows += [("id10020", "Xavier_Voiceonly", "m", "USA", "dev"), ("id10021", "Zoe_Faceonly", "f", "UK", "dev")]
    write_meta(root, rows)
    summary = run(root, tmp_path / "m", config(max_reject_fraction=0.2))  # 2 of 12 excluded
    assert summary["excluded_identities"]["no_faces"] == 1
    assert summary["excluded_identities"]["no_audio"] == 1
    ids = set(pl.read_parquet(tmp_path / "m" / "identities.parquet")["id"])
    assert "id10020" not in ids and "id10021" not in ids
    assert "id10020" not in set(pl.read_parquet(tmp_path / "m" / "utterances.parquet")["identity"])


def test_trailing_dot_name_matches_face_folder(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    rows = make_tree(root, videos=1)
    make_identity(root, "id10099", "Harry_Connick_Jr", videos=1)  # folder drops the dot
    write_meta(root, [*rows, ("id10099", "Harry_Connick_Jr.", "m", "USA", "dev")])
    run(root, tmp_path / "m", CFG)
    faces = pl.read_parquet(tmp_path / "m" / "faces.parquet")
    assert faces.filter(pl.col("identity") == "id10099").height == 2


def test_manifest_is_deterministic(clean_tree: Path, tmp_path: Path) -> None:
    run(clean_tree, tmp_path / "a", config(workers=1))
    run(clean_tree, tmp_path / "b", config(workers=2))
    for name in ("identities", "utterances", "faces", "rejects"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()


# --- one source of defaults -------------------------------------------------------------------

def test_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(ManifestConfig, "manifest") == {}
    params = shipped_params()
    assert "min_face_size" not in params["manifest"]  # stated once, as faces.min_size
    assert shipped_config(ManifestConfig, "manifest").min_face_size == params["faces"]["min_size"]


def run_cli(raw: Path, out: Path, params: dict, tmp_path: Path):
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return CliRunner().invoke(app, ["manifest", str(raw), str(out), "--params", str(path)])


def test_cli_reads_min_face_size_from_faces_min_size(clean_tree: Path, tmp_path: Path) -> None:
    small = L.VOX1_FACES + "/Frank_Fox/1.6/006vid00xyz/0000900.jpg"
    write_jpg(clean_tree / small, size=24)
    params = {"manifest": {"workers": 1, "max_reject_fraction": 0.1}, "faces": {"min_size": 32}}
    result = run_cli(clean_tree, tmp_path / "a", params, tmp_path)
    assert result.exit_code == 0, result.output
    rejects = pl.read_parquet(tmp_path / "a" / "rejects.parquet")
    assert rejects.select("path", "reason", "detail", "kept").rows() == [
        (small, "too_small", "24x24 < 32", False)]
    params["faces"]["min_size"] = 16
    result = run_cli(clean_tree, tmp_path / "b", params, tmp_path)
    assert result.exit_code == 0, result.output
    assert pl.read_parquet(tmp_path / "b" / "rejects.parquet").height == 0
    assert small in set(pl.read_parquet(tmp_path / "b" / "faces.parquet")["path"])
    params["manifest"]["min_face_size"] = 16  # the removed duplicate knob is refused, not ignored
    result = run_cli(clean_tree, tmp_path / "c", params, tmp_path)
    assert result.exit_code == 1 and "set faces.min_size" in result.output
    assert not (tmp_path / "c").exists()


# --- loud failures on empty or misplaced trees ------------------------------------------------

def test_face_tracks_at_the_root_fail_naming_the_expected_place(tmp_path: Path) -> None:
    """The reported case: <root>/unzippedFaces instead of <root>/voxceleb1/unzippedFaces."""
    root = tmp_path / "raw"
    make_tree(root)
    move_into(root, (L.VOX1_FACES,), ".")
    out = tmp_path / "m"
    with pytest.raises(TreeError) as err:
        run(root, out, CFG)
    message = str(err.value)
    assert "no face images" in message
    assert "`voxceleb1/unzippedFaces/<Name>/1.6/<ytid>/<frame>.jpg`" in message
    assert "Found `unzippedFaces/` at the root: expected under `voxceleb1/`." in message
    assert not out.exists()


def test_cli_exits_non_zero_with_the_message_and_no_traceback(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_tree(root)
    move_into(root, (L.VOX1_FACES,), ".")
    result = run_cli(root, tmp_path / "m", {"manifest": {"workers": 1}}, tmp_path)
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: manifest (layout voxceleb1): no face images under ")
    assert "Found `unzippedFaces/` at the root: expected under `voxceleb1/`." in result.stderr
    assert "Traceback" not in result.output and not (tmp_path / "m").exists()


def test_face_tracks_one_level_too_deep_are_named(tmp_path: Path) -> None:
    """A wrong ``strip``: voxceleb1/unzippedFaces/unzippedFaces/<Name>/..."""
    root = tmp_path / "raw"
    make_tree(root)
    faces = root / L.VOX1_FACES
    faces.rename(root / "extracted")
    faces.mkdir()
    (root / "extracted").rename(faces / "unzippedFaces")
    with pytest.raises(TreeError) as err:
        run(root, tmp_path / "m", CFG)
    message = str(err.value)
    assert "Found `unzippedFaces/` under `voxceleb1/unzippedFaces/`: expected under `voxceleb1/`." \
        in message
    # what the scan passed over at the expected place is named too
    assert "The scan skipped 1 entries there (no_metadata: 1), e.g. " \
        "`voxceleb1/unzippedFaces/unzippedFaces` (face folder with no metadata row)." in message


def test_missing_metadata_names_the_nearest_file(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_tree(root)
    (root / L.VOX1_META).rename(root / "vox1_meta.csv")
    with pytest.raises(TreeError, match=r"voxceleb1/vox1_meta.csv not found .* Found "
                                        r"`vox1_meta.csv` at the root: expected under `voxceleb1/`"):
        run(root, tmp_path / "m", CFG)


def test_metadata_without_a_valid_row_fails(clean_tree: Path, tmp_path: Path) -> None:
    write_meta(clean_tree, [("id10001", "Anna_Abbot", "", "USA", "dev"),
                            ("id10002", "Bob_Brown", "x", "UK", "dev")])
    with pytest.raises(TreeError, match=r"the metadata lists no valid identity "
                                        r"\(metadata_invalid: 1, metadata_missing_fields: 1\)"):
        run(clean_tree, tmp_path / "m", CFG)


# expected (place in the message, hint) when a modality is moved into <root>/misplaced/
ABSENT = {
    ("voxceleb1", "audio"): ("`voxceleb1/wav/idXXXXX/<ytid>/NNNNN.wav`",
                             "Found `wav/` under `misplaced/`: expected under `voxceleb1/`."),
    ("voxceleb1", "faces"): ("`voxceleb1/unzippedFaces/<Name>/1.6/<ytid>/<frame>.jpg`",
                             "Found `unzippedFaces/` under `misplaced/`: expected under "
                             "`voxceleb1/`."),
    ("vggface1", "faces"): ("`voxceleb1/vggface/images/<Name>/<id>.jpg, listed in files/<Name>.txt`",
                            "Found `images/` under `misplaced/`: expected under "
                            "`voxceleb1/vggface/`."),
    ("voxceleb2", "audio"): ("expected one of `voxceleb2/aac/idXXXXX/<ytid>/NNNNN.m4a`, "
                             "`voxceleb2/dev/aac/idXXXXX/<ytid>/NNNNN.m4a`",
                             "Found `aac/` under `misplaced/`: expected under `voxceleb2/`."),
    ("voxceleb2", "faces"): ("expected one of `voxceleb2/vggface2/train/nXXXXXX/NNNN_NN.jpg`, "
                             "`voxceleb2/vggface2/test/nXXXXXX/NNNN_NN.jpg`",
                             "Found `train/` under `misplaced/`: expected under "
                             "`voxceleb2/vggface2/`."),
}
ABSENT[("vggface1", "audio")] = ABSENT[("vggface1_curated", "audio")] = ABSENT[("voxceleb1", "audio")]
ABSENT[("vggface1_curated", "faces")] = ABSENT[("vggface1", "faces")]


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("modality", ["audio", "faces"])
def test_an_absent_modality_fails_in_every_layout(tmp_path: Path, layout: str,
                                                  modality: str) -> None:
    root = tmp_path / "raw"
    make_layout_tree(root, layout)
    move_into(root, MODALITY_DIRS[layout][modality], "misplaced")
    place, hint = ABSENT[(layout, modality)]
    what = "audio files" if modality == "audio" else "face images"
    with pytest.raises(TreeError) as err:
        run(root, tmp_path / "m", config(layout=layout, max_reject_fraction=0.2))
    message = str(err.value)
    assert f"manifest (layout {layout}): no {what} under {root.resolve()}: " in message
    assert place in message and hint in message
    assert not (tmp_path / "m").exists()


def test_every_face_rejected_fails_with_the_reasons(clean_tree: Path, tmp_path: Path) -> None:
    with pytest.raises(TreeError, match=r"all 60 face images were rejected \(too_small: 60\)"):
        run(clean_tree, tmp_path / "m", config(min_face_size=64))


@pytest.mark.parametrize("layout", LAYOUTS)
def test_an_empty_split_fails_in_every_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "raw"
    make_layout_tree(root, layout)
    with pytest.raises(TreeError, match=r"split val \(names starting with Q\) has no identities: "
                                        r"the metadata lists 0 such name\(s\)\."):
        run(root, tmp_path / "m", config(layout=layout, max_reject_fraction=0.2,
                                         val_initials="Q"))
    assert not (tmp_path / "m").exists()


def test_a_tree_without_val_names_fails(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_tree(root, people=[p for p in DEFAULT_PEOPLE if p[0][0] not in "AB"])
    with pytest.raises(TreeError, match=r"split val \(names starting with A, B\) has no identities"):
        run(root, tmp_path / "m", CFG)


def test_a_split_emptied_by_exclusions_names_them(clean_tree: Path, tmp_path: Path) -> None:
    for name in ("Anna_Abbot", "Bob_Brown"):  # the two val identities lose their faces
        for jpg in (clean_tree / L.VOX1_FACES / name).rglob("*.jpg"):
            jpg.unlink()
    with pytest.raises(TreeError, match=r"split val .* the metadata lists 2 such name\(s\); "
                                        r"excluded identities: 2 \(no audio: 0, no faces: 2; "
                                        r"e\.g\. Anna_Abbot, Bob_Brown\)"):
        run(clean_tree, tmp_path / "m", config(max_reject_fraction=0.25))


# one identity of each layout's tree that has no val/test role: remove its faces
EXCLUDED = {"voxceleb1": (L.VOX1_FACES + "/Kurt_King", 10),
            "vggface1": (L.VOX1_VGGFACE_IMAGES + "/Zoe_Zane", 4),
            "vggface1_curated": (L.VOX1_VGGFACE_IMAGES + "/Zoe_Zane", 4),
            "voxceleb2": (L.VGGFACE2 + "/train/n000021", 6)}


@pytest.mark.parametrize("layout", LAYOUTS)
def test_too_many_excluded_identities_fail_in_every_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "raw"
    make_layout_tree(root, layout)
    folder, rows = EXCLUDED[layout]
    for image in sorted((root / folder).rglob("*.jpg")):
        image.unlink()
    limit = 0.5 / rows  # half an identity
    with pytest.raises(TreeError, match=rf"1 of {rows} identities \({100 / rows:.1f}%\) have no "
                                        rf"valid audio or no valid face, above "
                                        rf"max_reject_fraction={100 * limit:.1f}% \(no audio: 0, "
                                        rf"no faces: 1"):
        run(root, tmp_path / "m", config(layout=layout, max_reject_fraction=limit))
    summary = run(root, tmp_path / "m", config(layout=layout, max_reject_fraction=0.3))
    assert summary["excluded_identities"]["no_faces"] == 1


@pytest.mark.parametrize("layout", LAYOUTS)
def test_skipped_files_are_recorded_in_every_layout(tmp_path: Path, layout: str) -> None:
    root = tmp_path / "raw"
    make_layout_tree(root, layout)
    strays = add_stray_files(root, layout)
    out = tmp_path / "m"
    summary = run(root, out, config(layout=layout, max_reject_fraction=0.4))
    rejects = pl.read_parquet(out / "rejects.parquet")
    got = {p: r for p, r, kept in rejects.select("path", "reason", "kept").iter_rows()
           if p in strays}
    assert got == strays
    assert not rejects.filter(pl.col("path").is_in(list(strays)))["kept"].any()
    listed = set(pl.read_parquet(out / "utterances.parquet")["path"]) | \
        set(pl.read_parquet(out / "faces.parquet")["path"])
    assert not listed & set(strays)
    # skipped files count as rejects against max_reject_fraction (not_on_disk lines do not)
    reasons = summary["rejects_by_reason"]
    assert summary["rejected"] == sum(n for r, n in reasons.items() if r != "not_on_disk")
    assert reasons["misplaced"] == sum(r == "misplaced" for r in strays.values())
