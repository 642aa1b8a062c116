"""Builders for small real-format VoxCeleb1 trees (real WAV and JPEG bytes), for manifest tests."""

from __future__ import annotations

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
