"""Safe extraction: escapes are refused before anything lands, re-runs are idempotent."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from pipeline.sources.extract import UnsafeArchive, archive_kind, extract, safe_name


def _tar(path: Path, members: list[tuple[str, str, bytes | str]], mode: str = "w") -> Path:
    """``(kind, name, data)`` with kind file/dir/symlink/hardlink/fifo; data is bytes or link target."""
    with tarfile.open(path, mode) as tf:
        for kind, name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = 1_700_000_000
            if kind == "file":
                assert isinstance(data, bytes)
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
                continue
            info.type = {"dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
                         "hardlink": tarfile.LNKTYPE, "fifo": tarfile.FIFOTYPE}[kind]
            if kind in ("symlink", "hardlink"):
                info.linkname = str(data)
            tf.addfile(info)
    return path


def _zip(path: Path, members: list[tuple[str, bytes]], symlinks: dict[str, str] | None = None) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.create_system = 3
            info.external_attr = (stat.S_IFLNK | 0o777) << 16
            zf.writestr(info, target)
    return path


def _tree(root: Path) -> dict[str, bytes | str]:
    """Relative path -> file bytes (or ``-> target`` for links), for comparing trees."""
    out: dict[str, bytes | str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = p.relative_to(root).as_posix()
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_file():
                out[rel] = p.read_bytes()
    return out


@pytest.mark.parametrize("member", ["../evil.txt", "wav/../../evil.txt", "/tmp/evil.txt",
                                    "C:/evil.txt", "..\\evil.txt"])
def test_tar_member_escaping_by_name_is_refused(tmp_path: Path, member: str) -> None:
    archive = _tar(tmp_path / "bad.tar", [("file", "wav/ok.txt", b"fine"),
                                          ("file", member, b"pwned")])
    dest = tmp_path / "out" / "root"
    with pytest.raises(UnsafeArchive, match="refused to extract"):
        extract(archive, dest)
    assert not (tmp_path / "out" / "evil.txt").exists() and not (tmp_path / "evil.txt").exists()
    assert _tree(dest) == {}  # nothing merged, staging removed, not even the good member


@pytest.mark.parametrize("target", ["../../outside", "/etc", "sub/../../x", "a/b/../../../x"])
def test_tar_symlink_escape_is_refused(tmp_path: Path, target: str) -> None:
    archive = _tar(tmp_path / "link.tar.gz", [("dir", "data", b""),
                                              ("symlink", "data/link", target),
                                              ("file", "data/link/payload", b"x")], mode="w:gz")
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="outside the target|absolute|after a directory"):
        extract(archive, dest)
    assert _tree(dest) == {}
    assert not (tmp_path / "outside").exists()


def test_chained_symlinks_cannot_write_outside(tmp_path: Path) -> None:
    # each link looks inside on its own (a/l1 -> the root; a/l1/l2 -> "a"), but a/l1/l2 really
    # lands at the root and points above it: refused when resolved
    outside = tmp_path / "victim"
    outside.mkdir()
    archive = _tar(tmp_path / "chain.tar", [("symlink", "a/l1", ".."),
                                            ("symlink", "a/l1/l2", ".."),
                                            ("file", "a/l1/l2/x", b"x")])
    dest = tmp_path / "dest"
    with pytest.raises(UnsafeArchive, match="a/l1/l2.*resolves outside"):
        extract(archive, dest)
    assert _tree(dest) == {}
    assert not any(outside.iterdir()) and not (tmp_path / "x").exists()


def test_hardlink_and_special_entries_are_refused(tmp_path: Path) -> None:
    for i, members in enumerate([[("hardlink", "h", "../../etc/passwd")],
                                 [("hardlink", "h", "not/there")],
                                 [("fifo", "pipe", b"")]]):
        archive = _tar(tmp_path / f"h{i}.tar", members)
        with pytest.raises(UnsafeArchive):
            extract(archive, tmp_path / f"d{i}")


def test_zip_escapes_are_refused(tmp_path: Path) -> None:
    for i, kwargs in enumerate([{"members": [("ok", b"1"), ("../evil", b"2")]},
                                {"members": [("/abs/evil", b"2")]},
                                {"members": [("ok", b"1")], "symlinks": {"l": "../../etc"}}]):
        archive = _zip(tmp_path / f"z{i}.zip", **kwargs)
        dest = tmp_path / f"d{i}"
        with pytest.raises(UnsafeArchive):
            extract(archive, dest)
        assert _tree(dest) == {}
    assert not (tmp_path / "evil").exists()


def test_good_tar_with_inside_links_strip_and_idempotent_rerun(tmp_path: Path) -> None:
    archive = _tar(tmp_path / "good.tgz", [
        ("dir", "vgg_face_dataset", b""),
        ("file", "vgg_face_dataset/files/A.txt", b"1 http://x 1 2 3 4 1 1 1\n"),
        ("symlink", "vgg_face_dataset/files/latest", "A.txt"),
        ("hardlink", "vgg_face_dataset/files/B.txt", "vgg_face_dataset/files/A.txt"),
        ("file", "README", b"dropped by strip=1")], mode="w:gz")
    dest = tmp_path / "root" / "voxceleb1" / "vggface"
    marker = tmp_path / "root" / ".avmatch" / "good.tgz.json"
    first = extract(archive, dest, strip=1, marker=marker)
    expected = {"files": b"", "files/A.txt": b"1 http://x 1 2 3 4 1 1 1\n",
                "files/B.txt": b"1 http://x 1 2 3 4 1 1 1\n", "files/latest": "-> A.txt"}
    tree = _tree(dest)
    tree.setdefault("files", b"")
    assert tree == expected
    assert first == {"archive": "good.tgz", "files": 3, "skipped": False}
    # a re-run with the marker does nothing; without the marker it rewrites the same tree
    (dest / "files" / "A.txt").write_bytes(b"user edit")
    assert extract(archive, dest, strip=1, marker=marker)["skipped"] is True
    assert (dest / "files" / "A.txt").read_bytes() == b"user edit"
    marker.unlink()
    again = extract(archive, dest, strip=1, marker=marker)
    assert again["skipped"] is False and (dest / "files" / "A.txt").read_bytes().startswith(b"1 ")
    assert not [p for p in dest.iterdir() if p.name.endswith(".extracting")]


def test_two_archives_merge_into_one_tree(tmp_path: Path) -> None:
    dev = _zip(tmp_path / "vox1_dev_wav.zip", [("wav/id10001/abc/00001.wav", b"dev")])
    test = _zip(tmp_path / "vox1_test_wav.zip", [("wav/id10270/xyz/00001.wav", b"test")])
    dest = tmp_path / "voxceleb1"
    extract(dev, dest)
    extract(test, dest)
    assert _tree(dest)["wav/id10001/abc/00001.wav"] == b"dev"
    assert _tree(dest)["wav/id10270/xyz/00001.wav"] == b"test"


def test_safe_name_and_kind(tmp_path: Path) -> None:
    assert safe_name("./a//b/./c.wav") == "a/b/c.wav"
    assert safe_name("top/a.wav", strip=1) == "a.wav"
    assert safe_name("top/", strip=1) is None
    with pytest.raises(UnsafeArchive):
        safe_name("a/../../b")
    plain = tmp_path / "vox1_meta.csv"
    plain.write_text("VoxCeleb1 ID\tVGGFace1 ID\n")
    assert archive_kind(plain) is None
    assert archive_kind(_zip(tmp_path / "noext", [("a", b"1")])) == "zip"
