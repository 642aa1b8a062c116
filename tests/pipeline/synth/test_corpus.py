"""The synthetic corpus writes the real VoxCeleb1 / CelebA layouts, deterministically."""

from __future__ import annotations

import csv
import hashlib
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.common.config import ConfigError, build
from pipeline.synth.corpus import SynthConfig, small_config, synthesize
from pipeline.synth.names import split_initials, split_sizes
from tests.params import default_mismatches, shipped_config

YTID = r"[A-Za-z0-9_-]{11}"
PATTERNS = [
    rf"voxceleb1/wav/id1\d{{4}}/{YTID}/\d{{5}}\.wav",
    rf"voxceleb1/unzippedFaces/[A-Za-z]+_[A-Za-z]+/1\.6/{YTID}/\d{{7}}\.jpg",
    r"voxceleb1/vox1_meta\.csv",
    r"celeba/img_align_celeba/\d{6}\.jpg",
    r"celeba/(list_attr_celeba|identity_CelebA|list_eval_partition)\.txt",
    r"synthetic/(identities|videos|celeba_identities)\.csv",
    r"synthetic/corpus\.json",
]
HEADER = b"VoxCeleb1 ID\tVGGFace1 ID\tGender\tNationality\tSet\n"
CELEBA_40 = ("5_o_Clock_Shadow Arched_Eyebrows Attractive Bags_Under_Eyes Bald Bangs Big_Lips Big_Nose "
             "Black_Hair Blond_Hair Blurry Brown_Hair Bushy_Eyebrows Chubby Double_Chin Eyeglasses Goatee "
             "Gray_Hair Heavy_Makeup High_Cheekbones Male Mouth_Slightly_Open Mustache Narrow_Eyes No_Beard "
             "Oval_Face Pale_Skin Pointy_Nose Receding_Hairline Rosy_Cheeks Sideburns Smiling Straight_Hair "
             "Wavy_Hair Wearing_Earrings Wearing_Hat Wearing_Lipstick Wearing_Necklace Wearing_Necktie "
             "Young").split()
PRIVATE_12 = ("Male", "Big_Nose", "Pointy_Nose", "Big_Lips", "Narrow_Eyes", "Arched_Eyebrows",
              "Bushy_Eyebrows", "High_Cheekbones", "Oval_Face", "Chubby", "Double_Chin", "Receding_Hairline")

CFG = small_config(seed=1)


def tree_hash(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth") / "raw"
    return out, synthesize(out, CFG, workers=1)


def rel_files(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def read_meta(root: Path) -> list[list[str]]:
    return [line.split("\t") for line in (root / "voxceleb1/vox1_meta.csv").read_text().splitlines()[1:]]


def test_every_file_follows_a_real_layout(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    files = rel_files(root)
    bad = [f for f in files if not any(re.fullmatch(p, f) for p in PATTERNS)]
    assert bad == []
    wavs = [f for f in files if f.endswith(".wav")]
    faces = [f for f in files if f.startswith("voxceleb1/unzippedFaces/")]
    n_videos = CFG.identities * CFG.videos_per_identity
    assert len(wavs) == summary["utterances"] == n_videos * CFG.utterances_per_video
    assert len(faces) == summary["faces"] == n_videos * CFG.frames_per_video


def test_wavs_are_16k_mono_pcm16_of_the_configured_length(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    total = 0.0
    for path in sorted(root.glob("voxceleb1/wav/*/*/*.wav")):
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype, info.format) == (16000, 1, "PCM_16", "WAV")
        assert CFG.utterance_seconds[0] - 1e-3 <= info.duration <= CFG.utterance_seconds[1] + 1e-3
        audio, _ = sf.read(path)
        assert 0.01 < np.abs(audio).max() <= 1.0 and audio.std() > 1e-3
        total += info.duration
    assert total == pytest.approx(summary["audio_seconds"], abs=0.01)


def test_videos_are_shared_by_audio_and_faces_and_numbered_like_voxceleb(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    name_of = {row[0]: row[1] for row in read_meta(root)}
    for ident in sorted((root / "voxceleb1/wav").iterdir()):
        wav_videos = sorted(p.name for p in ident.iterdir())
        face_dir = root / "voxceleb1/unzippedFaces" / name_of[ident.name] / "1.6"
        assert sorted(p.name for p in face_dir.iterdir()) == wav_videos
        assert len(wav_videos) == CFG.videos_per_identity
        for video in wav_videos:
            utts = sorted(p.name for p in (ident / video).iterdir())
            assert utts == [f"{k:05d}.wav" for k in range(1, CFG.utterances_per_video + 1)]
            frames = sorted(int(p.stem) for p in (face_dir / video).iterdir())
            assert len(frames) == CFG.frames_per_video and len(set(frames)) == len(frames)


def test_face_crops_and_celeba_images_have_their_sizes(corpus: tuple[Path, dict]) -> None:
    import cv2

    root, _ = corpus
    for path in sorted(root.glob("voxceleb1/unzippedFaces/*/1.6/*/*.jpg"))[:10]:
        assert cv2.imread(str(path)).shape == (CFG.face_size, CFG.face_size, 3)
    for path in sorted(root.glob("celeba/img_align_celeba/*.jpg"))[:10]:
        assert cv2.imread(str(path)).shape == (218, 178, 3)


def test_vox1_meta_matches_the_real_format(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    raw = (root / "voxceleb1/vox1_meta.csv").read_bytes()
    assert raw.startswith(HEADER) and b"\r" not in raw and raw.endswith(b"\n")
    rows = read_meta(root)
    assert all(len(r) == 5 for r in rows)
    assert [r[0] for r in rows] == [f"id{10001 + i}" for i in range(CFG.identities)]
    names = [r[1] for r in rows]
    assert names == sorted(names) and len(set(names)) == len(names)
    assert {r[2] for r in rows} == {"m", "f"}
    assert any(n.startswith("E") for n in names)
    for _, name, _, _, dset in rows:
        assert dset == ("test" if name.startswith("E") else "dev")
    for letters in ("AB", "CDE", "FGHIJKLMNOPQRSTUVWXYZ"):
        assert {r[2] for r in rows if r[1][0] in letters} == {"m", "f"}


def test_celeba_lists_match_the_real_format(corpus: tuple[Path, dict]) -> None:
    root, summary = corpus
    attr = (root / "celeba/list_attr_celeba.txt").read_text().splitlines()
    n = int(attr[0])
    images = sorted(p.name for p in (root / "celeba/img_align_celeba").iterdir())
    assert n == len(images) == summary["celeba_images"] == CFG.celeba_identities * CFG.celeba_images_per_identity
    assert images == [f"{i:06d}.jpg" for i in range(1, n + 1)]
    assert attr[1].split() == CELEBA_40
    rows = [line.split() for line in attr[2:]]
    assert [r[0] for r in rows] == images
    assert all(len(r) == 41 and set(r[1:]) <= {"1", "-1"} for r in rows)
    ident = [line.split() for line in (root / "celeba/identity_CelebA.txt").read_text().splitlines()]
    part = [line.split() for line in (root / "celeba/list_eval_partition.txt").read_text().splitlines()]
    assert [r[0] for r in ident] == [r[0] for r in part] == images
    partitions_of: dict[str, set[str]] = defaultdict(set)
    for (_, celeb), (_, p) in zip(ident, part, strict=True):
        partitions_of[celeb].add(p)
    assert all(len(ps) == 1 for ps in partitions_of.values())
    assert {p for _, p in part} == {"0", "1", "2"}
    assert [p for _, p in part] == sorted(p for _, p in part)  # CelebA numbers train, then val, then test


def test_private_attributes_are_identity_level_and_match_the_sidecar(corpus: tuple[Path, dict]) -> None:
    root, _ = corpus
    attr = (root / "celeba/list_attr_celeba.txt").read_text().splitlines()
    cols = [CELEBA_40.index(a) + 1 for a in PRIVATE_12]
    labels = {r.split()[0]: [int(r.split()[c]) for c in cols] for r in attr[2:]}
    ident = dict(line.split() for line in (root / "celeba/identity_CelebA.txt").read_text().splitlines())
    truth = {row["celeb_id"]: row for row in csv.DictReader((root / "synthetic/celeba_identities.csv").open())}
    for image, values in labels.items():
        row = truth[ident[image]]
        assert values == [1 if row[a] == "1" else -1 for a in PRIVATE_12]
    vox_truth = list(csv.DictReader((root / "synthetic/identities.csv").open()))
    meta = read_meta(root)
    assert [r["voxceleb_id"] for r in vox_truth] == [r[0] for r in meta]
    assert all((r["Male"] == "1") == (m[2] == "m") for r, m in zip(vox_truth, meta, strict=True))
    corpus_json = json.loads((root / "synthetic/corpus.json").read_text())
    assert corpus_json["config"]["seed"] == CFG.seed and corpus_json["version"]


def test_same_seed_is_byte_identical_for_1_and_2_workers(corpus: tuple[Path, dict], tmp_path: Path) -> None:
    root, summary = corpus
    again = synthesize(tmp_path / "w2", CFG, workers=2)
    assert again == summary
    assert tree_hash(tmp_path / "w2") == tree_hash(root)
    synthesize(tmp_path / "seed2", small_config(seed=2), workers=1)
    assert tree_hash(tmp_path / "seed2") != tree_hash(root)
    assert read_meta(tmp_path / "seed2") != read_meta(root)


def test_cli_writes_the_corpus_with_params_defaults_and_overrides(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  identities: 30\n  seed: 0\n  videos_per_identity: 2\n"
                      "  utterances_per_video: 1\n  utterance_seconds: [1.0, 1.2]\n  frames_per_video: 1\n"
                      "  face_size: 64\n  celeba_identities: 6\n  celeba_images_per_identity: 1\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", str(out), "--identities", "12", "--seed", "1",
                                      "--params", str(params), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert len(read_meta(out)) == 12
    config = json.loads((out / "synthetic/corpus.json").read_text())["config"]
    assert (config["identities"], config["seed"], config["face_size"]) == (12, 1, 64)
    assert not any(p.name.startswith(".out.") for p in tmp_path.iterdir())  # atomic: no temp left


def test_bad_config_fails_loudly(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="identitiez"):
        build(SynthConfig, {"identitiez": 3})
    with pytest.raises(ValueError, match="difficulty"):
        SynthConfig(difficulty=1.5)
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  identities: 3\n")
    result = CliRunner().invoke(app, ["synth", str(tmp_path / "out"), "--params", str(params)])
    assert result.exit_code != 0 and not (tmp_path / "out").exists()


def test_defaults_are_the_shipped_params() -> None:
    assert default_mismatches(SynthConfig, "synth") == {}
    small = small_config()  # fast test corpora: explicit overrides of the shipped configuration
    assert small == shipped_config(SynthConfig, "synth", identities=20, videos_per_identity=2,
                                   utterances_per_video=1, utterance_seconds=(1.0, 1.5),
                                   frames_per_video=2, face_size=64, celeba_identities=12,
                                   celeba_images_per_identity=2)


def test_names_follow_the_split_letters_given(tmp_path: Path) -> None:
    cfg = small_config(identities=12, celeba_identities=6, celeba_images_per_identity=1,
                       videos_per_identity=1, frames_per_video=1)
    initials = split_initials("M", "S")
    summary = synthesize(tmp_path / "ms", cfg, workers=1, initials=initials)
    rows = read_meta(tmp_path / "ms")
    for letters in initials.values():
        assert {r[2] for r in rows if r[1][0] in letters} == {"m", "f"}
    assert summary["initial_splits"] == {s: sum(r[1][0] in letters for r in rows)
                                         for s, letters in initials.items()}
    default = synthesize(tmp_path / "ab", cfg, workers=1)
    assert default["initial_splits"]["val"] == sum(r[1][0] in "AB" for r in read_meta(tmp_path / "ab"))


def test_cli_takes_the_split_letters_from_the_manifest_section(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("synth:\n  identities: 12\n  videos_per_identity: 1\n"
                      "  utterance_seconds: [1.0, 1.2]\n  frames_per_video: 1\n  face_size: 64\n"
                      "  celeba_identities: 6\n  celeba_images_per_identity: 1\n"
                      "manifest:\n  val_initials: X\n  test_initials: Y\n")
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["synth", str(out), "--params", str(params), "--workers", "1"])
    assert result.exit_code == 0, result.output
    initials = [r[1][0] for r in read_meta(out)]
    sizes = split_sizes(12, split_initials("X", "Y"))  # X and Y are rare: 2 each, the minimum
    assert (initials.count("X"), initials.count("Y")) == (sizes["val"], sizes["test"]) == (2, 2)
