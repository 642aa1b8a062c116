"""Users' own files for the inference commands (``match``, ``verify``, ``retrieve``).

Voices: any WAV, FLAC or M4A at any sample rate and channel count, decoded, downmixed and
resampled by :mod:`pipeline.common.audio`, exactly as the feature stages do.

Photos: users pass ordinary photos, not face-track crops, and framing decides the result, so
:func:`load_face_photo` finds the largest face with OpenCV's bundled Haar cascade (the weights
ship in the opencv-python(-headless) 4.x wheel: nothing is downloaded; OpenCV 5 dropped them)
and crops it with the framing of the training faces:

- a square of side ``framing.scale`` times the detector box side, centred on the box centre
  moved by ``(framing.dx, framing.dy)`` box sides; where it extends past the photo, the photo's
  border pixels are repeated (the face keeps its place in the crop);
- resized to the model's face size with the same interpolation as the ``faces`` stage.

The default framing, a box enlarged 2x, is the one recommended for real VoxCeleb1 face-track
crops. :func:`measure_framing` measures the framing of any set of training crops with the same
detector (on the synthetic corpus's 128 px face tracks: about 1.6x, centre 0.11 box sides above
the box centre), so the commands can use the framing of the very faces the model was trained on.
With ``no_detect`` the photo's centred square is used instead (as for face-track crops).

Every problem raises a :class:`UserFileError` subclass whose message names the file and the
reason (``missing``, ``not_a_file``, ``unreadable``, ``empty``, ``truncated``, ``not_audio``,
``not_image``, ``no_face``, ``too_short``, ``silent``, ``invalid_samples``).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.audio import check_signal, load_audio
from pipeline.common.images import decode_rgb, read_bytes, resize_square, square_region
from pipeline.common.probe import BadInput

REASONS = {
    "missing": "file not found",
    "not_a_file": "not a regular file",
    "unreadable": "cannot be read",
    "empty": "empty file",
    "truncated": "truncated or corrupt",
    "not_audio": "not a readable audio file (WAV, FLAC, M4A)",
    "not_image": "not a readable image (JPEG, PNG)",
    "no_face": "no face found",
    "too_short": "audio too short",
    "silent": "audio is silent",
    "invalid_samples": "audio contains invalid (NaN/inf) samples",
}
AUDIO_REASONS = {"missing": "missing", "empty": "empty", "undecodable": "not_audio",
                 "corrupt": "truncated", "truncated": "truncated", "nan": "invalid_samples",
                 "too_short": "too_short", "silent": "silent", "unreadable": "unreadable"}
IMAGE_REASONS = {"empty": "empty", "unreadable": "unreadable", "truncated": "truncated",
                 "undecodable": "not_image"}


class UserFileError(Exception):
    """A user's file that cannot be used: ``path``, a ``reason`` token and free ``detail``."""

    def __init__(self, path: str | os.PathLike, reason: str, detail: str = "") -> None:
        self.path, self.reason, self.detail = str(path), reason, detail
        text = f"{self.path}: {REASONS.get(reason, reason)}"
        super().__init__(f"{text} ({detail})" if detail else text)


class AudioFileError(UserFileError):
    """A voice file that cannot be used."""


class ImageFileError(UserFileError):
    """A photo that cannot be used."""


class NoFaceFound(ImageFileError):
    """The detector found no face in the photo (use ``no_detect`` to crop the centre)."""


class DetectorUnavailable(RuntimeError):
    """The installed OpenCV has no bundled Haar cascade (OpenCV 5 dropped them)."""


def _check_path(path: Path, error: type[UserFileError]) -> None:
    if not path.exists():
        raise error(path, "missing")
    if not path.is_file():
        raise error(path, "not_a_file")


# ---- voices ---------------------------------------------------------------------------------

def load_voice(path: str | os.PathLike, sample_rate: int, *, min_duration: float = 0.0,
               silence_dbfs: float | None = None) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate``; :class:`AudioFileError` on any problem.

    ``min_duration`` (s) and ``silence_dbfs`` apply the feature stages' signal checks.
    """
    path = Path(path)
    _check_path(path, AudioFileError)
    try:
        signal = load_audio(path, sample_rate)
        if min_duration > 0 or silence_dbfs is not None:
            check_signal(signal, sample_rate, min_duration=min_duration,
                         silence_dbfs=-np.inf if silence_dbfs is None else silence_dbfs)
    except BadInput as exc:
        raise AudioFileError(path, AUDIO_REASONS.get(exc.reason, exc.reason), exc.detail) from exc
    except OSError as exc:
        raise AudioFileError(path, "unreadable", f"{type(exc).__name__}: {exc}") from exc
    return signal


# ---- photos ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class FaceFraming:
    """Crop square = ``scale`` x the detector box side, centre moved by ``(dx, dy)`` box sides."""

    scale: float = 2.0
    dx: float = 0.0
    dy: float = 0.0

    def __post_init__(self) -> None:
        if not self.scale > 0:
            raise ValueError("framing scale must be > 0")


@dataclass(frozen=True)
class DetectorConfig:
    """Haar cascade settings; ``max_side`` bounds the image size the detector runs on."""

    cascade: str = "haarcascade_frontalface_alt2.xml"
    scale_factor: float = 1.1
    min_neighbors: int = 5
    min_size_fraction: float = 0.08  # smallest face, as a fraction of the photo's shorter side
    max_side: int = 1024


@dataclass(frozen=True)
class Box:
    """A detector box in photo pixels (left, top, width, height)."""

    x: float
    y: float
    w: float
    h: float

    @property
    def area(self) -> float:
        return self.w * self.h

    @property
    def centre(self) -> tuple[float, float]:
        return self.x + self.w / 2.0, self.y + self.h / 2.0


@dataclass(frozen=True)
class FacePhoto:
    """A prepared face: ``image`` ``(size, size, 3)`` uint8 RGB, the box it came from
    (``None`` with ``no_detect``) and how many faces the detector saw."""

    image: np.ndarray
    box: Box | None
    n_faces: int


@functools.lru_cache(maxsize=4)
def _cascade(name: str) -> object:
    import cv2

    folder = getattr(getattr(cv2, "data", None), "haarcascades", None)
    if not hasattr(cv2, "CascadeClassifier") or folder is None:
        raise DetectorUnavailable(
            f"OpenCV {cv2.__version__} has no bundled Haar cascades (OpenCV 5 dropped them): "
            "install opencv-python-headless<5, or skip detection (--no-detect)")
    path = Path(folder) / name
    if not path.is_file():
        raise DetectorUnavailable(f"Haar cascade {name} is not in {folder}")
    classifier = cv2.CascadeClassifier(str(path))
    if classifier.empty():
        raise DetectorUnavailable(f"Haar cascade {path} could not be loaded")
    return classifier


def detect_faces(rgb: np.ndarray, cfg: DetectorConfig = DetectorConfig()) -> list[Box]:
    """Faces in an ``(H, W, 3)`` uint8 RGB image, largest first, in image pixels."""
    import cv2

    classifier = _cascade(cfg.cascade)
    height, width = rgb.shape[:2]
    factor = min(1.0, cfg.max_side / max(height, width))
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    if factor < 1.0:
        gray = cv2.resize(gray, (round(width * factor), round(height * factor)),
                          interpolation=cv2.INTER_AREA)
    gray = cv2.equalizeHist(gray)
    smallest = max(20, round(cfg.min_size_fraction * min(gray.shape)))
    found = classifier.detectMultiScale(gray, scaleFactor=cfg.scale_factor,  # type: ignore[attr-defined]
                                        minNeighbors=cfg.min_neighbors,
                                        minSize=(smallest, smallest))
    boxes = [Box(*(float(v) / factor for v in row)) for row in np.asarray(found).reshape(-1, 4)]
    return sorted(boxes, key=lambda b: (-b.area, b.x, b.y))


def crop_face(rgb: np.ndarray, box: Box, size: int, framing: FaceFraming = FaceFraming()) -> np.ndarray:
    """The framed square around ``box``, border pixels repeated outside the photo, resized."""
    import cv2

    height, width = rgb.shape[:2]
    side = max(1, round(framing.scale * max(box.w, box.h)))
    cx, cy = box.centre
    x0 = round(cx + framing.dx * box.w - side / 2.0)
    y0 = round(cy + framing.dy * box.h - side / 2.0)
    x1, y1 = x0 + side, y0 + side
    region = rgb[max(y0, 0):min(y1, height), max(x0, 0):min(x1, width)]
    if region.size == 0:
        raise ValueError(f"crop {x0},{y0},{x1},{y1} lies outside the {width}x{height} photo")
    pads = (max(0, -y0), max(0, y1 - height), max(0, -x0), max(0, x1 - width))  # top bottom left right
    if any(pads):
        region = cv2.copyMakeBorder(region, *pads, cv2.BORDER_REPLICATE)
    return resize_square(np.ascontiguousarray(region), size)


def load_photo(path: str | os.PathLike) -> np.ndarray:
    """A JPEG or PNG as ``(H, W, 3)`` uint8 RGB (EXIF-rotated); :class:`ImageFileError`."""
    path = Path(path)
    _check_path(path, ImageFileError)
    try:
        return decode_rgb(read_bytes(path))
    except BadInput as exc:
        raise ImageFileError(path, IMAGE_REASONS.get(exc.reason, exc.reason), exc.detail) from exc


def load_face_photo(path: str | os.PathLike, size: int, *, framing: FaceFraming = FaceFraming(),
                    detector: DetectorConfig = DetectorConfig(),
                    no_detect: bool = False) -> FacePhoto:
    """The largest face of a user's photo, framed like the training faces (see the module).

    Raises :class:`NoFaceFound` when the detector finds none, unless ``no_detect`` (then the
    centred square of the photo is used and no detector runs).
    """
    rgb = load_photo(path)
    if no_detect:
        height, width = rgb.shape[:2]
        x0, y0, side = square_region(width, height)
        return FacePhoto(resize_square(rgb[y0:y0 + side, x0:x0 + side], size), None, 0)
    boxes = detect_faces(rgb, detector)
    if not boxes:
        raise NoFaceFound(path, "no_face", f"the {detector.cascade} detector found no face in the "
                                           f"{rgb.shape[1]}x{rgb.shape[0]} photo; pass --no-detect "
                                           "to use its centred square")
    return FacePhoto(crop_face(rgb, boxes[0], size, framing), boxes[0], len(boxes))


def measure_framing(crops: Iterable[np.ndarray], detector: DetectorConfig = DetectorConfig()
                    ) -> tuple[FaceFraming, int]:
    """The framing of training crops under the same detector: medians over detected faces.

    For each square crop (e.g. images of ``faces.h5``) with a detected face: ``scale`` = crop
    side / box side, ``dx, dy`` = (crop centre - box centre) / box side. Returns the framing and
    the number of crops with a detection (``ValueError`` when none has one).
    """
    rows = []
    for crop in crops:
        boxes = detect_faces(np.asarray(crop), detector)
        if not boxes:
            continue
        box, side = boxes[0], float(crop.shape[0])
        cx, cy = box.centre
        rows.append((side / box.w, (side / 2.0 - cx) / box.w, (side / 2.0 - cy) / box.h))
    if not rows:
        raise ValueError("no face detected in any crop: cannot measure the framing")
    scale, dx, dy = np.median(np.asarray(rows), axis=0)
    return FaceFraming(float(scale), float(dx), float(dy)), len(rows)
