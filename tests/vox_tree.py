"""Builders for small real-format trees of every manifest layout (real WAV, m4a and JPEG bytes)."""

from __future__ import annotations

import shutil
from pathlib import Path

import cv2
import numpy as np
import soundfile as sf

from pipeline.sources import layout as L

HEADER = "\t".join(L.VOX1_META_HEADER)


def write_wav(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1,
              seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    data = (0.1 * rng.standard_normal((int(seconds * rate), channels))).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data if channels > 1 else data[:, 0], rate, subtype="PCM_16")
    return path


def write_jpg(path: Path, size: int = 48, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


def write_meta(root: Path, rows: list[tuple[str, ...]]) -> Path:
    path = root / L.VOX1_META
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(HEADER + "\n" + "".join("\t".join(r) + "\n" for r in rows), encoding="utf-8")
    return path


def make_identity(root: Path, ident: str, name: str, videos: int = 3, utts: int = 2,
                  frames: int = 2) -> None:
    """Write ``videos`` scenes, each with ``utts`` wavs and ``frames`` face-track JPEGs."""
    for v in range(videos):
        ytid = f"{ident[-3:]}vid{v:02d}xyz"[:11]
        for u in range(utts):
            write_wav(root / L.VOX1_WAV / ident / ytid / f"{u + 1:05d}.wav", seed=v * 10 + u)
        for f in range(frames):
            write_jpg(root / L.VOX1_FACES / name / "1.6" / ytid / f"{(f + 1) * 25:07d}.jpg", seed=f)


DEFAULT_PEOPLE = [
    ("Anna_Abbot", "f", "USA"), ("Bob_Brown", "m", "UK"), ("Carl_Cole", "m", "USA"),
    ("Dana_Dunn", "f", "Canada"), ("Eve_Evans", "f", "USA"), ("Frank_Fox", "m", "USA"),
    ("Gina_Gray", "f", "UK"), ("Hank_Hill", "m", "USA"), ("Jill_Jones", "f", "India"),
    ("Kurt_King", "m", "USA"),
]


def make_tree(root: Path, people=DEFAULT_PEOPLE, videos: int = 3) -> list[tuple[str, ...]]:
    """A clean VoxCeleb1-layout tree; returns the metadata rows written."""
    rows = []
    for i, (name, gender, nat) in enumerate(sorted(people)):
        ident = f"id{10001 + i}"
        dset = "test" if name.startswith("E") else "dev"
        rows.append((ident, name, gender, nat, dset))
        make_identity(root, ident, name, videos=videos)
    write_meta(root, rows)
    return rows


# --- VoxCeleb2 + VGGFace2 ----------------------------------------------------------------

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


# --- VoxCeleb1 audio + VGGFace v1 lists -----------------------------------------------------

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


# --- every layout ---------------------------------------------------------------------------

def make_layout_tree(root: Path, layout: str) -> None:
    """A small tree of ``layout`` (every split has identities; a few known rejects)."""
    if layout == "voxceleb1":
        make_tree(root)
    elif layout in ("vggface1", "vggface1_curated"):
        make_vggface_tree(root)
    elif layout == "voxceleb2":
        make_vox2_tree(root)
    else:
        raise ValueError(f"no test tree for layout {layout!r}")


LAYOUTS = ("voxceleb1", "vggface1", "vggface1_curated", "voxceleb2")
# Where each layout's audio and faces are written by the builders above (folders to move away).
MODALITY_DIRS = {
    "voxceleb1": {"audio": (L.VOX1_WAV,), "faces": (L.VOX1_FACES,)},
    "vggface1": {"audio": (L.VOX1_WAV,), "faces": (L.VOX1_VGGFACE_IMAGES,)},
    "vggface1_curated": {"audio": (L.VOX1_WAV,), "faces": (L.VOX1_VGGFACE_IMAGES,)},
    "voxceleb2": {"audio": ("voxceleb2/dev/aac",),
                  "faces": (f"{L.VGGFACE2}/train", f"{L.VGGFACE2}/test")},
}


def move_into(root: Path, rels: tuple[str, ...], folder: str) -> None:
    """Move each of ``rels`` (relative to ``root``) into ``root/folder/`` (a misplaced tree)."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    for rel in rels:
        shutil.move(root / rel, root / folder / Path(rel).name)


def first_dir(path: Path) -> Path:
    return sorted(p for p in path.iterdir() if p.is_dir())[0]


def add_stray_files(root: Path, layout: str) -> dict[str, str]:
    """Write files the scan must skip and record; returns ``{path: reason}`` expected."""
    dirs = MODALITY_DIRS[layout]
    audio = root / dirs["audio"][0]
    ident = first_dir(audio)
    video = first_dir(ident)
    faces = root / dirs["faces"][0]
    person = first_dir(faces)
    strays = {
        audio / "README.txt": "misplaced",  # outside an identity folder
        ident / "00001.wav": "misplaced",  # outside a video folder
        video / "notes.txt": "wrong_extension",
        faces / "index.html": "misplaced",  # outside a name/class folder
    }
    if layout == "voxceleb1":  # <Name>/1.6/<ytid>/<frame>.jpg
        track = first_dir(person)
        strays[person / "0000001.jpg"] = "misplaced"  # outside 1.6/
        strays[track / "0000002.jpg"] = "misplaced"  # outside a video folder
        strays[first_dir(track) / "Thumbs.db"] = "wrong_extension"
    else:  # <Name or class>/<image>.jpg
        strays[person / "meta.json"] = "wrong_extension"
    for path in strays:
        if path.suffix == ".wav":
            write_wav(path)
        elif path.suffix == ".jpg":
            write_jpg(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("not media\n")
    return {p.relative_to(root).as_posix(): r for p, r in strays.items()}
