"""Cheap validity checks for raw files: headers only, no full decode.

Each probe returns basic facts about a file or raises :class:`BadInput` with a short reason
(``empty``, ``truncated``, ``undecodable``, ``too_small`` ...) that goes into a rejects table.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path


class BadInput(Exception):
    """An input file that cannot be used; ``reason`` is a short token, ``detail`` free text."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class AudioInfo:
    duration: float
    sample_rate: int
    channels: int


@dataclass(frozen=True)
class ImageInfo:
    format: str
    width: int
    height: int


def _nonempty(path: Path) -> int:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise BadInput("unreadable", str(exc)) from exc
    if size == 0:
        raise BadInput("empty", "zero-byte file")
    return size


def _wav_data_size(path: Path, size: int) -> None:
    """Raise ``truncated`` when a RIFF/WAVE data chunk claims more bytes than the file holds."""
    with open(path, "rb") as fh:
        head = fh.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return  # not RIFF (e.g. RF64 or another container): leave it to libsndfile
        pos = 12
        while pos + 8 <= size:
            fh.seek(pos)
            chunk_id, chunk_size = struct.unpack("<4sI", fh.read(8))
            if chunk_id == b"data":
                if pos + 8 + chunk_size > size:
                    raise BadInput("truncated", f"data chunk declares {chunk_size} bytes, "
                                                f"file has {size - pos - 8}")
                return
            pos += 8 + chunk_size + (chunk_size & 1)
        raise BadInput("truncated", "no data chunk")


def probe_audio(path: str | os.PathLike) -> AudioInfo:
    """Header facts of an audio file (wav/flac/ogg via libsndfile, m4a/aac via PyAV)."""
    path = Path(path)
    size = _nonempty(path)
    if path.suffix.lower() in {".m4a", ".aac", ".mp4"}:
        return _probe_av(path)
    import soundfile as sf

    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises RuntimeError / LibsndfileError
        raise BadInput("undecodable", str(exc).strip()) from exc
    if path.suffix.lower() == ".wav":
        _wav_data_size(path, size)
    if info.frames <= 0 or info.samplerate <= 0:
        raise BadInput("empty", "no audio frames")
    return AudioInfo(info.frames / info.samplerate, int(info.samplerate), int(info.channels))


def _probe_av(path: Path) -> AudioInfo:
    import av

    try:
        with av.open(str(path)) as container:
            streams = container.streams.audio
            if not streams:
                raise BadInput("undecodable", "no audio stream")
            stream = streams[0]
            rate = int(stream.codec_context.sample_rate or stream.rate or 0)
            channels = int(stream.codec_context.channels or 0)
            if stream.duration is not None and stream.time_base is not None:
                duration = float(stream.duration * stream.time_base)
            elif container.duration is not None:
                duration = container.duration / 1_000_000
            else:
                duration = 0.0
    except BadInput:
        raise
    except Exception as exc:
        raise BadInput("undecodable", str(exc).strip()) from exc
    if duration <= 0 or rate <= 0:
        raise BadInput("empty", "no audio frames")
    return AudioInfo(duration, rate, channels)


_JPEG_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def _jpeg_size(data: bytes) -> tuple[int, int]:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            raise BadInput("undecodable", f"bad JPEG marker at byte {pos}")
        marker = data[pos + 1]
        if marker == 0xFF:
            pos += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            pos += 2
            continue
        (length,) = struct.unpack(">H", data[pos + 2:pos + 4])
        if marker in _JPEG_SOF:
            height, width = struct.unpack(">HH", data[pos + 5:pos + 9])
            return width, height
        pos += 2 + length
    raise BadInput("truncated", "JPEG ends before its frame header")


_HEAD_BYTES = 65536


def probe_image(path: str | os.PathLike, min_size: int = 1) -> ImageInfo:
    """Header facts of a JPEG or PNG; ``truncated`` when the end marker is missing."""
    path = Path(path)
    size = _nonempty(path)
    with open(path, "rb") as fh:  # the header and the last bytes, not the whole image
        data = fh.read(_HEAD_BYTES)
        fh.seek(max(size - 64, 0))
        tail = fh.read()
    if data[:2] == b"\xff\xd8":
        try:
            width, height = _jpeg_size(data)
        except BadInput:
            if size <= len(data):
                raise
            width, height = _jpeg_size(path.read_bytes())  # frame header past large APP blocks
        if b"\xff\xd9" not in tail:
            raise BadInput("truncated", "JPEG has no end-of-image marker")
        fmt = "jpeg"
    elif data[:8] == b"\x89PNG\r\n\x1a\n":
        if len(data) < 24 or data[12:16] != b"IHDR":
            raise BadInput("truncated", "PNG ends before IHDR")
        width, height = struct.unpack(">II", data[16:24])
        if b"IEND" not in tail[-16:]:
            raise BadInput("truncated", "PNG has no IEND chunk")
        fmt = "png"
    else:
        raise BadInput("undecodable", "not a JPEG or PNG file")
    if min(width, height) < min_size:
        raise BadInput("too_small", f"{width}x{height} < {min_size}")
    return ImageInfo(fmt, width, height)
