"""The manifest stage on real-format trees: split, seen-heard hold-out, rejects, atomicity."""

from __future__ import annotations

import json
from pathlib import Path

import polars as pl
import pytest

from pipeline.common.rejects import Rejects, TooManyRejects
from pipeline.manifest import ManifestConfig, held_out_videos, run, split_of
from pipeline.sources import layout as L
from pipeline.sources.scan import read_vox1_meta
from tests.vox_tree import make_identity, make_tree, write_jpg, write_meta, write_wav

CFG = ManifestConfig(workers=1)

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
    other = ManifestConfig(val_initials="A", test_initials="E")
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
        assert set(held["identity"]) == train  # 3 videos x 0.25 -> one video per train identity
        per_id = held.group_by("identity").agg(pl.col("video").n_unique())
        assert per_id["video"].to_list() == [1] * len(train)
    # voices and faces are held out from the same scenes
    hv = t["utterances"].filter(pl.col("split") == "seen_heard").select("identity", "video").unique()
    hf = t["faces"].filter(pl.col("split") == "seen_heard").select("identity", "video").unique()
    assert hv.sort("identity").equals(hf.sort("identity"))


def test_held_out_videos_keeps_one_per_modality() -> None:
    cfg = ManifestConfig(seen_heard_fraction=0.9)
    audio, faces = held_out_videos("id1", {"a", "b", "c", "d"}, {"a", "b", "e"}, cfg)
    assert len(audio) == 3 and len(faces) == 2
    assert faces <= {"a", "b", "e"} and len({"a", "b", "e"} - faces) == 1
    assert held_out_videos("id1", {"a"}, {"a"}, cfg) == (set(), set())
    again = held_out_videos("id1", {"a", "b", "c", "d"}, {"a", "b", "e"}, cfg)
    assert again == (audio, faces)  # deterministic for a seed
    other = [held_out_videos("id1", set("abcdefgh"), set("abcdefgh"),
                             ManifestConfig(seen_heard_fraction=0.5, seed=s))[0] for s in range(6)]
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
    summary = run(root, out, ManifestConfig(workers=2, max_reject_fraction=0.2))
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
        run(root, out, ManifestConfig(workers=1, max_reject_fraction=0.01))
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.")]  # no temp left behind


def test_identity_missing_a_modality_is_excluded_and_counted(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    rows = make_tree(root)
    write_wav(root / L.VOX1_WAV / "id10020" / "onlyaudio01" / "00001.wav")
    make_identity(root, "id10021", "Zoe_Faceonly", videos=1, utts=0)
    rows += [("id10020", "Xavier_Voiceonly", "m", "USA", "dev"), ("id10021", "Zoe_Faceonly", "f", "UK", "dev")]
    write_meta(root, rows)
    summary = run(root, tmp_path / "m", CFG)
    assert summary["excluded_identities"]["no_faces"] == 1
    assert summary["excluded_identities"]["no_audio"] == 1
    ids = set(pl.read_parquet(tmp_path / "m" / "identities.parquet")["id"])
    assert "id10020" not in ids and "id10021" not in ids
    assert "id10020" not in set(pl.read_parquet(tmp_path / "m" / "utterances.parquet")["identity"])


def test_trailing_dot_name_matches_face_folder(tmp_path: Path) -> None:
    root = tmp_path / "raw"
    make_identity(root, "id10001", "Harry_Connick_Jr", videos=1)  # folder drops the dot
    write_meta(root, [("id10001", "Harry_Connick_Jr.", "m", "USA", "dev")])
    run(root, tmp_path / "m", CFG)
    faces = pl.read_parquet(tmp_path / "m" / "faces.parquet")
    assert faces.height == 2 and set(faces["identity"]) == {"id10001"}


def test_manifest_is_deterministic(clean_tree: Path, tmp_path: Path) -> None:
    run(clean_tree, tmp_path / "a", ManifestConfig(workers=1))
    run(clean_tree, tmp_path / "b", ManifestConfig(workers=2))
    for name in ("identities", "utterances", "faces", "rejects"):
        assert (tmp_path / "a" / f"{name}.parquet").read_bytes() == (tmp_path / "b" / f"{name}.parquet").read_bytes()
