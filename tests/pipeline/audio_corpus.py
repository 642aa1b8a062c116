"""Small real-format audio corpora for the audio feature tests: wav/flac/m4a bytes + manifest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import soundfile as sf

SPLITS = ("train", "val", "test", "seen_heard")


def voice(seconds: float, rate: int = 16000, f0: float = 140.0, seed: int = 0) -> np.ndarray:
    """A voiced, syllable-modulated harmonic tone plus a little noise, float32 in [-0.5, 0.5]."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(round(seconds * rate))) / rate
    pitch = f0 * (1.0 + 0.05 * np.sin(2 * np.pi * 0.7 * t))
    phase = 2 * np.pi * np.cumsum(pitch) / rate
    tone = sum(np.sin(k * phase) / k for k in range(1, 12))
    envelope = 0.55 + 0.45 * np.sin(2 * np.pi * 3.0 * t + seed)
    x = 0.12 * tone * envelope + 0.005 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_wav(path: Path, data: np.ndarray, rate: int = 16000, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, rate, subtype=subtype)
    return path


def write_m4a(path: Path, data: np.ndarray, rate: int = 16000) -> Path:
    """Encode a mono float32 signal as AAC in an MP4 (.m4a) container with PyAV."""
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=rate)
        stream.layout = "mono"
        frame = av.AudioFrame.from_ndarray(data[None, :].astype(np.float32), format="fltp",
                                           layout="mono")  # (channels, samples)
        frame.sample_rate = rate
        for packet in stream.encode(frame):
            container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return path


def vox1_rel(i: int, ext: str = "wav") -> tuple[str, str]:
    """``(id, path)`` of utterance ``i`` in VoxCeleb1 layout (4 videos per identity)."""
    uid = f"id{10001 + i // 4}/vid{i % 4:08d}/{i % 3 + 1:05d}"
    return uid, f"voxceleb1/wav/{uid}.{ext}"


def write_manifest(manifest_dir: Path, rows: list[dict]) -> Path:
    """Write ``utterances.parquet`` with the manifest's columns (id, path, identity, split ...)."""
    manifest_dir.mkdir(parents=True, exist_ok=True)
    frame = pl.DataFrame({
        "id": [r["id"] for r in rows], "path": [r["path"] for r in rows],
        "identity": [r["id"].split("/")[0] for r in rows],
        "video": [r["id"].split("/")[1] for r in rows],
        "duration": [float(r.get("duration", 0.0)) for r in rows],
        "sample_rate": [int(r.get("sample_rate", 16000)) for r in rows],
        "channels": [int(r.get("channels", 1)) for r in rows],
        "split": [r["split"] for r in rows],
    })
    frame.write_parquet(manifest_dir / "utterances.parquet")
    return manifest_dir


def good_corpus(root: Path, n: int = 8, seconds: tuple[float, ...] = (1.0, 2.2, 3.4, 1.6)) -> list[dict]:
    """``n`` clean 16 kHz PCM16 wavs; splits cycle through ``SPLITS``."""
    rows = []
    for i in range(n):
        uid, rel = vox1_rel(i)
        dur = seconds[i % len(seconds)]
        write_wav(root / rel, voice(dur, f0=100.0 + 13.0 * i, seed=i))
        rows.append({"id": uid, "path": rel, "split": SPLITS[i % len(SPLITS)], "duration": dur})
    return rows


def bad_corpus(root: Path, start: int = 100) -> list[dict]:
    """One utterance per reject reason; each row carries its ``expected`` reason."""
    rows = []

    def add(reason: str, ext: str = "wav") -> Path:
        uid, rel = vox1_rel(start + len(rows), ext)
        rows.append({"id": uid, "path": rel, "split": "train", "expected": reason})
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        return root / rel

    add("missing")  # listed in the manifest, never written
    add("empty").write_bytes(b"")
    add("undecodable").write_bytes(b"this is not audio at all " * 40)
    truncated = write_wav(add("corrupt"), voice(2.0))
    truncated.write_bytes(truncated.read_bytes()[:20000])  # header promises 64,000 data bytes
    nan = voice(1.0)
    nan[100:110] = np.nan
    write_wav(add("nan"), nan, subtype="FLOAT")
    write_wav(add("too_short"), voice(0.2))
    write_wav(add("silent"), np.zeros(16000, dtype=np.float32))
    add("undecodable", "m4a").write_bytes(b"\x00\x00\x00\x18ftypM4A " + b"\x01" * 500)
    return rows
