"""``acquire`` for the real sources: archives from a loopback server or local paths, MD5 lists,
split parts (one corrupt, one interrupted), quarantine, resume, extraction, the access key."""

from __future__ import annotations

import hashlib
import io
import json
import logging
import shutil
import tarfile
import zipfile
from pathlib import Path

import polars as pl
import pytest
import yaml
from typer.testing import CliRunner

from pipeline.acquire import DataConfig, parse_archives
from pipeline.cli import app
from pipeline.common.config import ConfigError
from pipeline.sources.download import ChecksumError, DownloadError
from pipeline.sources.layout import resolve_root
from tests.pipeline.loopback import Loopback
from tests.vox_tree import make_tree, write_jpg

KEY_ENV = "AVMATCH_TEST_KEY"
PEOPLE = [("Anna_Abbot", "f", "USA"), ("Carl_Cole", "m", "Norway"), ("Eve_Evans", "f", "USA"),
          ("Frank_Fox", "m", "USA"), ("Harry_Connick_Jr.", "m", "USA"), ("Zoe_Zane", "f", "UK")]


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _zip_dir(base: Path, prefix: str) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for f in sorted((base / prefix).rglob("*")):
            if f.is_file():
                zf.write(f, f.relative_to(base).as_posix())
    return buf.getvalue()


def _tar_dir(src: Path, arcname: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        tf.add(src, arcname=arcname)
    return buf.getvalue()


@pytest.fixture(scope="module")
def vox1_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    """VoxCeleb1 as published: a zip of wav/ in 4 parts, vox1_meta.csv, a face-track tarball."""
    tree = tmp_path_factory.mktemp("vox1src")
    make_tree(tree, people=PEOPLE, videos=2)
    # face tracks as zippedFaces.tar.gz ships them, under unzippedIntervalFaces/data/;
    # Harry's folder drops the trailing dot, as on the real site
    faces = tree / "voxceleb1" / "unzippedFaces"
    (faces / "Harry_Connick_Jr.").rename(faces / "Harry_Connick_Jr")
    whole = _zip_dir(tree / "voxceleb1", "wav")
    n = -(-len(whole) // 4)
    files = {f"vox1_dev_wav_parta{c}": whole[i * n:(i + 1) * n] for i, c in enumerate("abcd")}
    files["vox1_meta.csv"] = (tree / "voxceleb1" / "vox1_meta.csv").read_bytes()
    files["zippedFaces.tar.gz"] = _tar_dir(faces, "unzippedIntervalFaces/data")
    files["MD5SUMS"] = "".join(f"{md5(v)}  {k}\n" for k, v in files.items()).encode()
    files["MD5SUMS"] += f"{md5(whole)}  vox1_dev_wav.zip\n".encode()
    return files


def vox1_params(tmp_path: Path, srv: Loopback, **data: object) -> Path:
    archives = [{"url": srv.url(f"vox1_dev_wav_parta{c}"), "group": "vox1_dev_wav.zip"}
                for c in "abcd"]
    archives += [{"name": "vox1_dev_wav.zip", "into": "voxceleb1"},
                 {"url": srv.url("vox1_meta.csv"), "into": "voxceleb1"},
                 {"url": srv.url("zippedFaces.tar.gz"), "into": "voxceleb1/unzippedFaces",
                  "strip": 2}]
    params = {"data": {"source": "voxceleb1", "root": str(tmp_path / "extracted"),
                       "downloads": str(tmp_path / "downloads"), "checksums": srv.url("MD5SUMS"),
                       "archives": archives, "retries": 2, "backoff": 0.01, "timeout": 5.0,
                       **data},
              "synth": {}, "manifest": {"workers": 1, "seen_heard_fraction": 0.0}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def acquire(tmp_path: Path, params: Path, *extra: str):
    return CliRunner().invoke(app, ["acquire", str(tmp_path / "raw"), "--params", str(params),
                                    *extra])


def test_split_parts_md5_list_corrupt_part_and_interrupted_transfer(
        tmp_path: Path, vox1_files: dict[str, bytes]) -> None:
    good_c = vox1_files["vox1_dev_wav_partac"]
    with Loopback(dict(vox1_files),
                  cut_once={"vox1_dev_wav_partab": 1000},
                  corrupt={"vox1_dev_wav_partac": bytes(reversed(good_c))}) as srv:
        params = vox1_params(tmp_path, srv)
        first = acquire(tmp_path, params)
        assert first.exit_code != 0
        assert isinstance(first.exception, ChecksumError)
        assert "vox1_dev_wav_partac: MD5" in str(first.exception)
        assert "quarantine" in str(first.exception) and "again" in str(first.exception)
        dl = tmp_path / "downloads"
        assert (dl / "quarantine" / f"vox1_dev_wav_partac.{md5(bytes(reversed(good_c)))}").is_file()
        # part b was cut after 1,000 bytes and resumed with a Range request in the same run
        assert [r.range for r in srv.requests if r.path == "vox1_dev_wav_partab"] == [
            None, "bytes=1000-"]
        assert (dl / "vox1_dev_wav_partab").read_bytes() == vox1_files["vox1_dev_wav_partab"]
        assert not (tmp_path / "raw").exists()
        assert {"vox1_dev_wav_partad", "vox1_meta.csv", "zippedFaces.tar.gz"} <= set(srv.paths())

        del srv.corrupt["vox1_dev_wav_partac"]  # the server copy is repaired
        seen = len(srv.requests)
        second = acquire(tmp_path, params, "--summary", str(tmp_path / "acquire.json"))
        assert second.exit_code == 0, second.output
        # the first run fetched everything else before failing; only the bad part is fetched again
        assert srv.paths()[seen:] == ["MD5SUMS", "vox1_dev_wav_partac"]
        assert not list(dl.glob("vox1_dev_wav_parta?"))  # parts dropped once the whole verified
        whole = b"".join(vox1_files[f"vox1_dev_wav_parta{c}"] for c in "abcd")
        assert (dl / "vox1_dev_wav.zip").read_bytes() == whole

        pointer = (tmp_path / "raw" / "source.json").read_text()
        assert json.loads(pointer)["archives"][0] == {"name": "vox1_dev_wav.zip",
                                                      "md5": md5(whole), "into": "voxceleb1"}
        seen = len(srv.requests)
        third = acquire(tmp_path, params, "--summary", str(tmp_path / "again.json"))
        assert third.exit_code == 0, third.output
        assert srv.paths()[seen:] == ["MD5SUMS"]  # nothing re-downloaded
    # an unchanged re-run leaves data/raw byte-identical, so DVC sees no change downstream
    assert (tmp_path / "raw" / "source.json").read_text() == pointer
    again = json.loads((tmp_path / "again.json").read_text())
    assert [a["skipped"] for a in again["archives"]] == [True, False, True]  # the csv is re-copied
    assert again["archives"][0]["md5"] == md5(whole)

    root = resolve_root(tmp_path / "raw")
    assert root == (tmp_path / "extracted").resolve()
    assert (root / "voxceleb1/wav/id10001").is_dir()
    assert (root / "voxceleb1/unzippedFaces/Anna_Abbot/1.6").is_dir()
    out = tmp_path / "manifest"
    result = CliRunner().invoke(app, ["manifest", str(tmp_path / "raw"), str(out),
                                      "--params", str(params)])
    assert result.exit_code == 0, result.output
    ids = pl.read_parquet(out / "identities.parquet")
    assert dict(zip(ids["name"], ids["split"], strict=True)) == {
        "Anna_Abbot": "val", "Carl_Cole": "test", "Eve_Evans": "test", "Frank_Fox": "train",
        "Harry_Connick_Jr.": "train", "Zoe_Zane": "train"}
    assert dict(zip(ids["name"], ids["set"], strict=True))["Eve_Evans"] == "test"
    assert dict(zip(ids["name"], ids["nationality"], strict=True))["Carl_Cole"] == "Norway"
    assert pl.read_parquet(out / "utterances.parquet").height == 6 * 2 * 2


def test_whole_md5_mismatch_without_part_md5s(tmp_path: Path) -> None:
    parts = []
    for c in "ab":
        parts.append(tmp_path / f"x.zip.parta{c}")
        parts[-1].write_bytes(c.encode() * 100)
    data = DataConfig(source="celeba", root=str(tmp_path / "root"),
                      downloads=str(tmp_path / "dl"),
                      archives=({"path": str(parts[0]), "group": "x.zip"},
                                {"path": str(parts[1]), "group": "x.zip"},
                                {"name": "x.zip", "md5": md5(b"something else")}))
    from pipeline.acquire import run

    with pytest.raises(ChecksumError, match="one of the parts is damaged.*would name the bad one"):
        run(tmp_path / "raw", data, None)  # type: ignore[arg-type]
    assert all(p.is_file() for p in parts)  # the user's parts are never deleted or moved
    assert list((tmp_path / "dl" / "quarantine").iterdir())[0].name.startswith("x.zip.")


def _celeba_files(tmp_path: Path) -> dict[str, bytes]:
    src = tmp_path / "celeba_src"
    for i in range(1, 4):
        write_jpg(src / "img_align_celeba" / f"{i:06d}.jpg", seed=i)
    files = {"img_align_celeba.zip": _zip_dir(src, "img_align_celeba")}
    files["list_attr_celeba.txt"] = b"3\n5_o_Clock_Shadow Male\n" + b"".join(
        f"{i:06d}.jpg  1 -1\n".encode() for i in range(1, 4))
    files["list_eval_partition.txt"] = b"000001.jpg 0\n000002.jpg 1\n000003.jpg 2\n"
    files["identity_CelebA.txt"] = b"000001.jpg 1\n000002.jpg 1\n000003.jpg 2\n"
    return files


def test_access_key_is_sent_but_never_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              caplog: pytest.LogCaptureFixture) -> None:
    secret = "carol:k3y-THAT-must-not-leak"
    files = _celeba_files(tmp_path)
    caplog.set_level(logging.DEBUG)
    with Loopback(files, basic_auth=secret, cut_once={"img_align_celeba.zip": 500}) as srv:
        archives = [{"url": srv.url(name), "md5": md5(body), "into": "celeba"}
                    for name, body in files.items()]
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"data": {
            "source": "celeba", "root": str(tmp_path / "root"), "downloads": str(tmp_path / "dl"),
            "archives": archives, "auth_hosts": ["127.0.0.1"], "key_env": KEY_ENV,
            "retries": 1, "backoff": 0.01, "timeout": 5.0}, "synth": {}}))
        monkeypatch.delenv(KEY_ENV, raising=False)
        denied = acquire(tmp_path, params)
        assert denied.exit_code != 0 and f"set the environment variable {KEY_ENV}" in str(
            denied.exception)
        monkeypatch.setenv(KEY_ENV, secret)
        ok = acquire(tmp_path, params, "--summary", str(tmp_path / "summary.json"))
        assert ok.exit_code == 0, ok.output
    # without the key every file was refused (all four reported), then each request carried it
    assert "4 files failed" in str(denied.exception)
    assert not any(r.authorization for r in srv.requests[:4])
    assert all(r.authorization for r in srv.requests[4:]) and len(srv.requests) == 9
    root = resolve_root(tmp_path / "raw")
    assert sorted(p.name for p in (root / "celeba/img_align_celeba").iterdir()) == [
        "000001.jpg", "000002.jpg", "000003.jpg"]
    assert (root / "celeba/list_attr_celeba.txt").read_bytes() == files["list_attr_celeba.txt"]
    import base64

    for form in (secret, "k3y-THAT-must-not-leak", base64.b64encode(secret.encode()).decode()):
        assert form not in caplog.text and form not in ok.output and form not in denied.output
        for f in tmp_path.rglob("*"):
            assert not f.is_file() or form.encode() not in f.read_bytes(), f


def test_local_paths_layout_check_and_bad_md5(tmp_path: Path) -> None:
    files = _celeba_files(tmp_path)
    local = tmp_path / "mine"
    local.mkdir()
    for name, body in files.items():
        (local / name).write_bytes(body)
    entries = [{"path": str(local / n), "md5": md5(b), "into": "celeba"} for n, b in files.items()]
    params = tmp_path / "params.yaml"

    def write(archives: list[dict]) -> None:
        params.write_text(yaml.safe_dump({"data": {
            "source": "celeba", "root": str(tmp_path / "root"), "downloads": str(tmp_path / "dl"),
            "archives": archives}, "synth": {}}))

    write([*entries[:-1], {"path": str(local / "nowhere.txt"), "into": "celeba"}])
    result = acquire(tmp_path, params)
    assert isinstance(result.exception, DownloadError)
    assert "nowhere.txt does not exist" in str(result.exception)
    write(entries[:-1])  # identity_CelebA.txt missing
    result = acquire(tmp_path, params)
    assert isinstance(result.exception, FileNotFoundError)
    assert "celeba/identity_CelebA.txt" in str(result.exception)
    write([*entries[:-1], {**entries[-1], "md5": md5(b"other")}])
    result = acquire(tmp_path, params)
    assert isinstance(result.exception, ChecksumError) and "fix its md5" in str(result.exception)
    assert (local / "identity_CelebA.txt").read_bytes() == files["identity_CelebA.txt"]
    write(entries)
    result = acquire(tmp_path, params)
    assert result.exit_code == 0, result.output
    assert (resolve_root(tmp_path / "raw") / "celeba/img_align_celeba/000002.jpg").is_file()
    assert not (tmp_path / "dl" / "img_align_celeba.zip").exists()  # local files used in place


def test_archive_list_is_validated() -> None:
    ok = parse_archives(({"url": "https://h.example/d/vox1_test_wav.zip",
                          "md5": "185FDC63C3C739954633D50379A3D102", "into": "voxceleb1"},))
    assert ok[0].name == "vox1_test_wav.zip" and ok[0].md5 == "185fdc63c3c739954633d50379a3d102"
    bad = [({"url": "ftp://h/x.zip"},), ({"url": "https://h/a", "path": "/a"},),
           ({"url": "https://h/x.zip", "md5": "abc"},), ({"url": "https://h/"},),
           ({"url": "https://h/p1", "group": "whole.zip"},),
           ({"name": "whole.zip", "md5": "0" * 32},),
           ({"url": "https://h/x.zip"}, {"path": "/tmp/x.zip"}),
           ({"url": "https://h/x.zip", "into": "../out"},),
           ({"url": "https://h/x.zip", "unknown": 1},), ("https://h/x.zip",)]
    for archives in bad:
        with pytest.raises(ConfigError):
            parse_archives(archives)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="key scheme"):
        DataConfig(source="voxceleb1", key_scheme="cookie")


def test_root_inside_raw_is_refused(tmp_path: Path) -> None:
    from pipeline.acquire import run

    data = DataConfig(source="celeba", root=str(tmp_path / "raw" / "x"))
    with pytest.raises(ValueError, match="must not be inside"):
        run(tmp_path / "raw", data, None)  # type: ignore[arg-type]


def test_vggface_images_are_fetched_from_the_lists(tmp_path: Path) -> None:
    """voxceleb1 + VGGFace v1: list lines -> images on disk (dead URLs remembered) -> boxes."""
    people = [("Anna_Abbot", "f", "USA"), ("Carl_Cole", "m", "UK"), ("Harry_Connick_Jr.", "m", "USA")]
    src = tmp_path / "src"
    make_tree(src, people=people, videos=2)
    shutil.rmtree(src / "voxceleb1" / "unzippedFaces")
    vox = tmp_path / "vox1.zip"
    vox.write_bytes(_zip_dir(src / "voxceleb1", "wav"))
    jpg = write_jpg(tmp_path / "face.jpg", size=64).read_bytes()
    images = {"img/ok1.jpg": jpg, "img/ok4.jpg": jpg, "img/html3.jpg": b"<html>gone</html>"}
    with Loopback(images) as srv:
        lists = tmp_path / "lists" / "vgg_face_dataset" / "files"
        lists.mkdir(parents=True)
        for name, _, _ in [*people, ("Not_In_Vox", "m", "UK")]:
            lines = [f"1 {srv.url('img/ok1.jpg')} 4.5 6.0 40.2 44.9 1 3.1 1",
                     f"2 {srv.url('img/dead2.jpg')} 1 1 30 30 1 2.0 1",
                     f"3 {srv.url('img/html3.jpg')} 1 1 30 30 1 2.0 0",
                     f"4 {srv.url('img/ok4.jpg')} 0 0 32 32 2 1.0 0"]
            (lists / f"{name}.txt").write_text("\n".join(lines) + "\n")
        tarball = tmp_path / "vgg_face_dataset.tar.gz"
        tarball.write_bytes(_tar_dir(lists.parent, "vgg_face_dataset"))
        meta = src / "voxceleb1" / "vox1_meta.csv"
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"data": {
            "source": "voxceleb1", "root": str(tmp_path / "root"), "downloads": str(tmp_path / "dl"),
            "archives": [{"path": str(vox), "into": "voxceleb1"},
                         {"path": str(meta), "into": "voxceleb1"},
                         {"path": str(tarball), "into": "voxceleb1/vggface", "strip": 1}],
            "vggface_fetch": True, "vggface_workers": 3, "vggface_timeout": 5.0},
            "synth": {}, "manifest": {"layout": "vggface1", "max_reject_fraction": 0.0}}))
        first = acquire(tmp_path, params, "--summary", str(tmp_path / "s1.json"))
        assert first.exit_code == 0, first.output
        assert len(srv.requests) == 12  # 4 lines x 3 VoxCeleb1 people; Not_In_Vox skipped
        second = acquire(tmp_path, params, "--summary", str(tmp_path / "s2.json"))
        assert second.exit_code == 0, second.output
        assert len(srv.requests) == 12  # fetched and dead ones are not tried again
    assert json.loads((tmp_path / "s1.json").read_text())["vggface"] == {
        "tried": 12, "fetched": 6, "failed_total": 6, "images": 6}
    assert json.loads((tmp_path / "s2.json").read_text())["vggface"]["tried"] == 0
    root = resolve_root(tmp_path / "raw")
    pointer = json.loads((tmp_path / "raw" / "source.json").read_text())
    assert pointer["vggface_images"] == 6 and len(pointer["archives"]) == 3
    fetched = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))
    assert fetched == [f"voxceleb1/vggface/images/{n}/{i}.jpg"
                       for n in ("Anna_Abbot", "Carl_Cole", "Harry_Connick_Jr.") for i in (1, 4)]
    failures = (root / "voxceleb1/vggface/fetch_failures.tsv").read_text().splitlines()
    assert failures[0] == "Anna_Abbot/2\tHTTP 404" and failures[1].startswith("Anna_Abbot/3\t")
    out = tmp_path / "manifest"
    result = CliRunner().invoke(app, ["manifest", str(tmp_path / "raw"), str(out),
                                      "--params", str(params)])
    assert result.exit_code == 0, result.output
    faces = pl.read_parquet(out / "faces.parquet").sort("id")
    assert faces["id"].to_list() == [f"id1000{k}/vggface/{i}" for k in (1, 2, 3) for i in (1, 4)]
    # the dead lines are listed as not_on_disk; with max_reject_fraction 0 the stage still passes
    rejects = pl.read_parquet(out / "rejects.parquet")
    assert set(rejects["reason"]) == {"not_on_disk"} and rejects.height == 6
    assert sorted(rejects["id"])[:2] == ["id10001/vggface/2", "id10001/vggface/3"]
    assert faces.row(0, named=True)["left"] == 4 and faces.row(0, named=True)["bottom"] == 45
