"""Inference on users' files (``avmatch match / verify / retrieve``) with a tiny trained model.

The model is trained for one epoch on the shared tiny data tree (``tests/conftest.py``)
with private attributes on, so every preprocessing step runs: spectrogram, IS09 standardised
with the train statistics, face detection and framing, the face-attribute classifier. User files
are real bytes: corpus voices re-encoded (stereo WAV, FLAC, M4A, other sample rates) and corpus
face crops placed off-centre in bigger photos. The last section checks the ``tuples`` group of
the CLI (the stage form and ``tuples import``).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import polars as pl
import pytest
import soundfile as sf
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.common.audio import resample
from pipeline.common.userfiles import detect_faces
from pipeline.sources.layout import resolve_root
from tests.pipeline.audio_corpus import write_m4a, write_wav

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
TINY = dict(embed_dim=16, audio_channels=[4, 4, 4, 4, 4], face_channels=[4, 4, 4, 4, 4],
            audio_strides=[[4, 4], [2, 2], [1, 1], [1, 1], [1, 1]],
            face_strides=[[2, 2], [2, 2], [1, 1], [1, 1], [1, 1]], pool_size=[3, 3],
            generator_hidden=[16], head_hidden=[16], retrieval_hidden=[8], vae_hidden=[16],
            audio_attr_tokens=4, face_attr_tokens=12, match_ks=[2, 4], disc_steps=1,
            vae="both", private="concat", public="none",
            score="head")  # head scores (not the default cosine): the tests follow its fallbacks
SCORE_RULES = {"match", "verify", "distance", "cosine"}
runner = CliRunner()


# ---- fixtures --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def trained(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A one-epoch model with private attributes and an (untrained) face-attribute classifier."""
    import timm
    import torch

    import model.cswin  # noqa: F401  (registers the CSWin variants)
    from model.attributes import save_classifier
    from model.trainer import run
    from pipeline.face_attributes_train import PRIVATE_ATTRIBUTES

    out = tmp_path_factory.mktemp("infer_model")
    run(tiny_data, out / "avmatch", out / "live",
        {"train": {"epochs": 1, "batch_size": 16, "threads": 1,
                   "select_metric": ["match.k2.U.acc"]},  # the tiny val tuples hold U only
         "model": TINY, "lambdas": {}})
    torch.manual_seed(0)
    net = timm.create_model("cswin_nano_64", num_classes=12, img_size=64)
    with torch.no_grad():
        net.head.bias.copy_(torch.linspace(-3, 3, 12))  # spread the probabilities
    save_classifier(out / "face_attributes.pt", net, {
        "model_name": "cswin_nano_64", "model_args": {"num_classes": 12, "img_size": 64},
        "attributes": list(PRIVATE_ATTRIBUTES), "size": 64, "mean": [0.5] * 3, "std": [0.5] * 3,
        "threshold": 0.5})
    return {"model": out / "avmatch" / "best", "attributes": out / "face_attributes.pt",
            "features": tiny_data / "features", "manifest": tiny_data / "manifest"}


def options(trained: dict[str, Path]) -> list[str]:
    return ["--model", str(trained["model"]), "--attributes-model", str(trained["attributes"]),
            "--features", str(trained["features"]), "--params", str(PARAMS)]


def corpus_files(tiny_corpus: Path, tiny_manifest: Path, table: str, n: int,
                 split: str = "test") -> list[tuple[str, Path]]:
    """``(id, absolute path)`` of the first ``n`` manifest items of ``split``."""
    root = resolve_root(tiny_corpus)
    frame = pl.read_parquet(tiny_manifest / table).filter(pl.col("split") == split).sort("id")
    return [(uid, root / rel) for uid, rel in frame.select("id", "path").head(n).iter_rows()]


def place(crop: np.ndarray, rng: np.random.Generator, size: tuple[int, int] = (480, 360),
          at: tuple[int, int] = (300, 60), scale: int = 2) -> np.ndarray:
    """A face crop enlarged ``scale`` x and pasted at ``at`` (x, y) on a textured photo."""
    width, height = size
    canvas = rng.integers(90, 160, (height, width, 3), dtype=np.uint8)
    canvas = cv2.GaussianBlur(canvas, (0, 0), 6)
    face = cv2.resize(crop, None, fx=scale, fy=scale, interpolation=cv2.INTER_LINEAR)
    x, y = at
    canvas[y:y + face.shape[0], x:x + face.shape[1]] = face
    return canvas


def write_jpeg(path: Path, rgb: np.ndarray) -> Path:
    assert cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    return path


@pytest.fixture(scope="module")
def user_files(tiny_corpus: Path, tiny_manifest: Path, tmp_path_factory: pytest.TempPathFactory
               ) -> dict[str, list[Path]]:
    """Voices in several containers and rates, and photos with a findable face off-centre."""
    from pipeline.common.images import decode_rgb, read_bytes

    out = tmp_path_factory.mktemp("user_files")
    voices = []
    for i, (_, path) in enumerate(corpus_files(tiny_corpus, tiny_manifest, "utterances.parquet", 4)):
        signal, rate = sf.read(str(path), dtype="float32")
        kind = i % 4
        if kind == 0:  # stereo WAV at 44.1 kHz
            up = resample(signal, rate, 44100)
            voices.append(write_wav(out / f"voice{i}.wav", np.stack([up, up], axis=1), rate=44100))
        elif kind == 1:
            voices.append(write_wav(out / f"voice{i}.flac", resample(signal, rate, 22050),
                                    rate=22050, subtype="PCM_24"))
        elif kind == 2:
            voices.append(write_m4a(out / f"voice{i}.m4a", resample(signal, rate, 24000), rate=24000))
        else:
            voices.append(write_wav(out / f"voice{i}.wav", signal, rate=rate))
    photos, rng = [], np.random.default_rng(0)
    (x, y), scale = (300, 60), 2
    for uid, path in corpus_files(tiny_corpus, tiny_manifest, "faces.parquet", 18):
        crop = decode_rgb(read_bytes(path))
        rgb = place(crop, rng, at=(x, y), scale=scale)
        boxes = detect_faces(rgb)  # keep photos whose largest detection is the placed face
        side = scale * crop.shape[0]
        if boxes and x < boxes[0].centre[0] < x + side and y < boxes[0].centre[1] < y + side:
            photos.append(write_jpeg(out / f"photo_{uid.replace('/', '_')}.jpg", rgb))
        if len(photos) == 4:
            break
    assert len(photos) == 4, "the Haar cascade finds too few of the placed corpus faces"
    png = out / "photo_png.png"
    cv2.imwrite(str(png), cv2.imread(str(photos[0])))  # the same photo as PNG
    return {"voices": voices, "photos": [*photos, png]}


def invoke(args: list[str]) -> tuple[int, str, str]:
    result = runner.invoke(app, args)
    return result.exit_code, result.stdout, result.stderr


# ---- the preprocessing is the pipeline's -------------------------------------------------------

def test_voice_inputs_equal_the_stored_features(trained: dict[str, Path], tiny_corpus: Path,
                                                tiny_manifest: Path, tmp_path: Path) -> None:
    """A corpus clip (and its two-channel copy) gives exactly the model input the train and
    evaluate stages read from the stores: the evaluation's spectrogram crops (the model's
    ``eval_voice_crops``, evenly spaced) and standardised IS09."""
    from model.data import DataPaths, FeatureSource, LabelMaps, eval_views, read_audio_attributes
    from pipeline.infer import Preprocessor, build_front_end, load_matcher

    matcher = load_matcher(trained["model"], "cpu")
    crops = matcher.net.cfg.eval_voice_crops
    assert crops == 5  # the shipped default
    front = build_front_end(matcher, trained["features"], PARAMS)
    assert front.audio is not None and front.spec_norm is None  # CMVN store: no global stats
    pre = Preprocessor(matcher, front, trained["attributes"])
    paths = DataPaths.under(trained["features"].parent)
    source = FeatureSource(paths, LabelMaps.from_dict(matcher.meta["data"]["labels"]), None)
    for uid, path in corpus_files(tiny_corpus, tiny_manifest, "utterances.parquet", 3):
        signal, rate = sf.read(str(path), dtype="float32")
        stereo = write_wav(tmp_path / "stereo.wav", np.stack([signal, signal], axis=1), rate=rate)
        row = np.asarray([source.voice_store.index(uid)])
        stored = np.stack([source.read_voices(row, position=p)[0]
                           for p in eval_views("voice", crops)])  # (V, 1, F, T)
        table = read_audio_attributes(paths.audio_attributes, paths.audio_stats, [uid])
        for file in (path, stereo):
            item = pre.voice(file)
            assert item.x.shape == stored.shape == (crops, 1, 224, 125)
            np.testing.assert_array_equal(item.x, stored)
            np.testing.assert_allclose(item.attr, table.take([uid])[0], rtol=1e-5, atol=1e-5)


def test_face_inputs_equal_the_stored_crops(trained: dict[str, Path], tiny_corpus: Path,
                                            tiny_manifest: Path) -> None:
    """A face-track crop with --no-detect is the faces stage's crop, followed by its mirror image
    (``eval_face_flip``); attributes are the classifier's probabilities of that crop."""
    from model.attributes import load_classifier, predict
    from model.stores import FaceStore
    from pipeline.infer import Preprocessor, build_front_end, load_matcher

    matcher = load_matcher(trained["model"], "cpu")
    front = build_front_end(matcher, trained["features"], PARAMS)
    pre = Preprocessor(matcher, front, trained["attributes"], no_detect=True)
    assert 1.2 < pre.framing().scale < 1.7, front.sources  # measured on faces.h5, not 2x
    assert front.sources["framing"].startswith("measured on")
    files = corpus_files(tiny_corpus, tiny_manifest, "faces.parquet", 3)
    items, skipped = pre.items("face", [p for _, p in files])
    assert not skipped
    net, meta = load_classifier(trained["attributes"])
    with FaceStore(trained["features"] / "faces.h5") as store:
        stored = np.stack([store.get(uid) for uid, _ in files])  # (3, 64, 64, 3)
    probs = predict(net, lambda a, b: stored[a:b], 3, 8, tuple(meta["mean"]), tuple(meta["std"]))
    for item, crop, prob in zip(items, stored, probs, strict=True):
        np.testing.assert_array_equal(item.image, crop)
        face = crop.transpose(2, 0, 1) / np.float32(127.5) - 1  # (3, S, S)
        np.testing.assert_array_equal(item.x, np.stack([face, face[..., ::-1]]))  # + mirror image
        np.testing.assert_allclose(item.attr, prob, rtol=1e-5, atol=1e-6)
        assert item.info == {"detected": False, "faces_found": 0}


# ---- the commands ------------------------------------------------------------------------------

def test_match_voice_ranks_faces(trained: dict[str, Path], user_files: dict) -> None:
    voice, photos = user_files["voices"][0], user_files["photos"][:3]
    code, out, err = invoke(["match", "--voice", str(voice), "--faces", *map(str, photos),
                             *options(trained), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["direction"] == "v2f" and result["k"] == 3
    assert result["query"]["path"] == str(voice) and result["query"]["seconds"] > 0.5
    assert result["score_rule"] == "distance"  # no 1:3 matching classifier: the retrieval head
    ranking = result["ranking"]
    assert sorted(r["path"] for r in ranking) == sorted(map(str, photos))
    assert [r["rank"] for r in ranking] == [1, 2, 3]
    scores = [r["score"] for r in ranking]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 3
    for row in ranking:  # the face placed at (300, 60), 256 px wide, was the one detected
        x, y, w, h = row["box"]
        assert row["detected"] and 280 < x + w / 2 < 580 and 40 < y + h / 2 < 340
        assert {"cosine_score", "verify_score"} <= set(row)
    again = json.loads(invoke(["match", "--voice", str(voice), "--faces", *map(str, photos),
                               *options(trained), "--json"])[1])
    assert again == result  # deterministic


def test_match_uses_the_matching_classifier_when_k_fits(trained: dict[str, Path],
                                                        user_files: dict) -> None:
    face, voices = user_files["photos"][4], user_files["voices"][:2]  # a PNG; WAV + FLAC
    code, out, err = invoke(["match", "--face", str(face), "--voices", *map(str, voices),
                             *options(trained), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["direction"] == "f2v" and result["score_rule"] == "match"  # 1:2 classifier
    assert {r["path"] for r in result["ranking"]} == set(map(str, voices))
    code, out, _ = invoke(["match", "--face", str(face), "--voices",
                           *map(str, user_files["voices"]), *options(trained)])
    assert code == 0 and "ranked by match score" in out  # 1:4 classifier, text output
    lines = out.splitlines()
    assert lines[1].split() == ["rank", "score", "path"] and len(lines) == 2 + 4
    assert str(user_files["voices"][2]) in out  # the M4A


def test_verify_decides_at_the_val_threshold(trained: dict[str, Path], user_files: dict,
                                             tmp_path: Path) -> None:
    voice, face = user_files["voices"][1], user_files["photos"][1]
    base = ["verify", "--voice", str(voice), "--face", str(face), *options(trained)]
    code, _, err = invoke([*base, "--metrics", str(tmp_path / "none.json")])
    assert code == 1 and "val.v2f.verify.U.threshold" in err and "--threshold" in err
    code, out, err = invoke([*base, "--threshold", "0", "--json"])
    assert code == 0, err
    first = json.loads(out)
    score = first["score"]
    assert first["score_rule"] == "verify" and first["threshold_source"] == "--threshold"
    assert first["same_identity"] is (score >= 0)
    above = tmp_path / "flat.json"  # the evaluate stage's flat keys
    above.write_text(json.dumps({"val.v2f.verify.U.threshold": score + 0.01, "other": 1}))
    code, out, err = invoke([*base, "--metrics", str(above), "--json"])
    assert code == 0, err
    result = json.loads(out)
    assert result["score"] == score and result["threshold"] == score + 0.01
    assert result["same_identity"] is False and str(above) in result["threshold_source"]
    below = tmp_path / "nested.json"  # nested keys are read too
    below.write_text(json.dumps({"val": {"v2f": {"verify": {"U": {"threshold": score - 0.01}}}}}))
    code, out, err = invoke([*base, "--metrics", str(below)])
    assert code == 0, err
    assert f"score {score:.4f} (verify)" in out and ": same identity" in out


def test_retrieve_ranks_a_folder_and_lists_bad_files(trained: dict[str, Path], user_files: dict,
                                                     tmp_path: Path) -> None:
    gallery = tmp_path / "gallery"
    (gallery / "sub").mkdir(parents=True)
    for i, photo in enumerate(user_files["photos"][:4]):
        (gallery / ("sub" if i % 2 else ".") / photo.name).write_bytes(photo.read_bytes())
    (gallery / "broken.jpg").write_text("not an image\n")
    (gallery / "notes.txt").write_text("ignored: not a photo\n")
    code, out, err = invoke(["retrieve", "--voice", str(user_files["voices"][3]), "--gallery",
                             str(gallery), *options(trained), "--json", "--top", "3"])
    assert code == 0, err
    result = json.loads(out)
    assert result["gallery_size"] == 4 and len(result["ranking"]) == 3
    assert result["score_rule"] == "distance"
    assert [s["path"] for s in result["skipped"]] == [str(gallery / "broken.jpg")]
    assert result["skipped"][0]["reason"] == "not_image"
    # a face query ranks a folder of voices
    voices = tmp_path / "voices"
    voices.mkdir()
    for voice in user_files["voices"]:
        (voices / voice.name).write_bytes(voice.read_bytes())
    code, out, err = invoke(["retrieve", "--face", str(user_files["photos"][0]), "--gallery",
                             str(voices), *options(trained)])
    assert code == 0, err
    assert all(v.name in out for v in user_files["voices"])


# ---- bad inputs: one clear line, non-zero exit, no traceback --------------------------------------

def bad_files(folder: Path, good_voice: Path) -> dict[str, tuple[Path, str]]:
    folder.mkdir(exist_ok=True)
    (folder / "empty.wav").write_bytes(b"")
    (folder / "truncated.wav").write_bytes(good_voice.read_bytes()[:3000])
    (folder / "text.wav").write_text("this is not audio\n")
    (folder / "text.jpg").write_text("this is not a photo\n")
    (folder / "empty.png").write_bytes(b"")
    (folder / "folder.wav").mkdir(exist_ok=True)
    return {"empty voice": (folder / "empty.wav", "empty file"),
            "truncated voice": (folder / "truncated.wav", "truncated or corrupt"),
            "not audio": (folder / "text.wav", "not a readable audio file"),
            "missing voice": (folder / "missing.wav", "file not found"),
            "a folder": (folder / "folder.wav", "not a regular file"),
            "not an image": (folder / "text.jpg", "not a readable image"),
            "empty photo": (folder / "empty.png", "empty file"),
            "missing photo": (folder / "missing.jpg", "file not found")}


@pytest.mark.parametrize("case", ["empty voice", "truncated voice", "not audio", "missing voice",
                                  "a folder", "not an image", "empty photo", "missing photo"])
def test_bad_file_is_named_with_its_reason(case: str, trained: dict[str, Path], user_files: dict,
                                           tmp_path: Path) -> None:
    path, reason = bad_files(tmp_path / "bad", user_files["voices"][3])[case]
    voice, face = user_files["voices"][3], user_files["photos"][0]
    if path.suffix == ".wav":  # the bad file is the query: nothing else is computed first
        args = ["match", "--voice", str(path), "--faces", str(face)]
    else:
        args = ["match", "--face", str(path), "--voices", str(voice)]
    code, out, err = invoke([*args, *options(trained)])
    assert code == 1, out
    assert err.startswith(f"error: {path}: {reason}"), err
    assert "Traceback" not in out + err and len(err.strip().splitlines()) == 1


def test_no_face_found_then_no_detect(trained: dict[str, Path], user_files: dict,
                                      tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    blank = write_jpeg(tmp_path / "landscape.jpg",
                       cv2.GaussianBlur(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8), (0, 0), 4))
    args = ["verify", "--voice", str(user_files["voices"][0]), "--face", str(blank),
            "--threshold", "0", *options(trained)]
    code, out, err = invoke(args)
    assert code == 1 and f"{blank}: no face found" in err and "--no-detect" in err
    code, out, err = invoke([*args, "--no-detect", "--json"])
    assert code == 0, err
    assert json.loads(out)["face"]["detected"] is False


def test_setup_errors_are_clear(trained: dict[str, Path], user_files: dict, tmp_path: Path) -> None:
    voice, face = str(user_files["voices"][0]), str(user_files["photos"][0])
    code, _, err = invoke(["match", "--voice", voice, "--faces", face,
                           *options(trained), "--model", str(tmp_path / "nothing")])
    assert code == 1 and "model checkpoint not found" in err
    code, _, err = invoke(["match", "--voice", voice, "--face", face, "--faces", face,
                           *options(trained)])
    assert code == 1 and "exactly one query" in err
    aml = tmp_path / "params.yaml"  # the raw-dB preset, which this CMVN model never saw
    aml.write_text("spectrograms:\n  preset: aml\n")
    code, _, err = invoke(["match", "--voice", voice, "--faces", face, *options(trained),
                           "--features", str(tmp_path / "no_stores"), "--params", str(aml)])
    assert code == 1 and "normalization 'none'" in err
    code, _, err = invoke(["match", "--voice", voice, "--faces", face, *options(trained),
                           "--attributes-model", str(tmp_path / "none.pt")])
    assert code == 1 and "face-attribute classifier not found" in err
    code, _, err = invoke(["retrieve", "--voice", voice, "--gallery", str(tmp_path / "absent"),
                           *options(trained)])
    assert code == 1 and "gallery folder not found" in err


# ---- `avmatch tuples`: the stage and `tuples import` ------------------------------------------------

VERIFICATION = """\
id10003/vEvJqHqFx_H/00001.wav Colin_Allen/00001025.jpg
id10005/qlMwWf_2ORZ/00001.wav Eva_Singh/00001500.jpg
id10004/E0n1W-i9Ipw/00001.wav Colin_Allen/00000250.jpg
"""


def test_tuples_group_runs_the_stage_and_imports_lists(trained: dict[str, Path],
                                                       tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("tuples:\n  multiway_k: 4\n  train_binary: 10\n  train_multiway: 4\n"
                      "  val_binary: 4\n  val_multiway: 2\n  test_binary: 4\n  test_multiway: 2\n"
                      "  seen_heard_binary: 0\n  seen_heard_multiway: 0\n  train_pairs: 4\n"
                      "  val_pairs: 4\n  test_pairs: 4\n  seen_heard_pairs: 0\n"
                      "  eval_constraints: [U]\n  max_reject_fraction: 1.0\n")
    manifest, features = str(trained["manifest"]), str(trained["features"])
    for form in ([], ["draw"]):  # `avmatch tuples M F O` (dvc.yaml's form) and the explicit one
        out = tmp_path / f"tuples{len(form)}"
        result = runner.invoke(app, ["tuples", *form, manifest, features, str(out),
                                     "--params", str(params)])
        assert result.exit_code == 0, result.output
        test = pl.read_parquet(out / "test" / "matching.parquet")
        assert test.filter(pl.col("k") == 2).height == 2 * 4  # both directions
    listing = tmp_path / "sss.txt"
    listing.write_text(VERIFICATION)
    out = tmp_path / "imported" / "pairs.parquet"
    result = runner.invoke(app, ["tuples", "import", "sss-verification", str(listing), str(out),
                                 "--manifest", manifest])
    assert result.exit_code == 0, result.output
    pairs = pl.read_parquet(out)
    assert pairs["same"].to_list() == [True, True, False]
    assert "3 of 3 lines imported" in result.output
    result = runner.invoke(app, ["tuples", "--help"])
    assert result.exit_code == 0 and "import" in result.output and "draw" in result.output
