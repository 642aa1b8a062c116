"""Image decoding and face-crop helpers shared by the ``faces`` and ``face_attributes_train`` stages.

One code path turns image bytes into the square uint8 RGB face the models see, so the attribute
classifier is trained (on CelebA-format images) and applied (on ``faces.h5``) to identically
prepared pixels:

1. decode JPEG or PNG with Pillow (a truncated or corrupt file raises :class:`BadInput`),
   apply the EXIF orientation;
2. convert to RGB: grayscale and palette are expanded, CMYK converted, 16-bit grayscale scaled to
   8 bit, and an alpha channel composited over black (so colors hidden under transparent pixels
   never leak into the crop);
3. crop: with a bounding box ``(left, top, right, bottom)`` the square of side ``max(w, h)``
   centred on the box, moved inside the image (and shrunk to fit if needed); without a box, the
   centred square of side ``min(W, H)``;
4. resize to ``size x size`` with area interpolation (linear when enlarging).
"""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.common.probe import BadInput

Box = tuple[float, float, float, float]

# The side of the stored faces and of the attribute classifier's input: one knob, ``faces.size``
# in params.yaml (this is its dataclass default, equal to the shipped value).
DEFAULT_FACE_SIZE = 64

_SIXTEEN_BIT = {"I", "I;16", "I;16B", "I;16L", "I;16N"}


def read_bytes(path: str | os.PathLike) -> bytes:
    """File contents; ``unreadable`` or ``empty`` as :class:`BadInput`."""
    try:
        data = Path(path).read_bytes()
    except OSError as exc:
        raise BadInput("unreadable", f"{type(exc).__name__}: {exc}") from exc
    if not data:
        raise BadInput("empty", "zero-byte file")
    return data


def _to_rgb(img: object) -> np.ndarray:
    """A loaded PIL image -> ``(H, W, 3)`` uint8 RGB."""
    from PIL import Image

    assert isinstance(img, Image.Image)
    if img.mode in _SIXTEEN_BIT:
        gray = np.asarray(img, dtype=np.float64) / 257.0  # 16-bit range -> 8-bit
        gray = np.clip(np.rint(gray), 0, 255).astype(np.uint8)
        return np.repeat(gray[:, :, None], 3, axis=2)  # (H, W) -> (H, W, 3)
    has_alpha = img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info
    if has_alpha:
        rgba = np.asarray(img.convert("RGBA"), dtype=np.uint16)  # (H, W, 4)
        alpha = rgba[:, :, 3:4]
        return ((rgba[:, :, :3] * alpha + 127) // 255).astype(np.uint8)  # over black
    if img.mode != "RGB":
        img = img.convert("RGB")
    return np.asarray(img, dtype=np.uint8)


def decode_rgb(data: bytes) -> np.ndarray:
    """Decode JPEG/PNG bytes to ``(H, W, 3)`` uint8 RGB, or raise :class:`BadInput`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not data:
        raise BadInput("empty", "zero-byte file")
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.format not in ("JPEG", "PNG", "MPO"):
                raise BadInput("undecodable", f"unsupported format {img.format}")
            img.load()
            img = ImageOps.exif_transpose(img)
            return _to_rgb(img)
    except BadInput:
        raise
    except UnidentifiedImageError as exc:
        raise BadInput("undecodable", "not a JPEG or PNG image") from exc
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        text = str(exc)
        reason = "truncated" if "truncated" in text.lower() or "broken data stream" in text.lower() \
            else "undecodable"
        raise BadInput(reason, f"{type(exc).__name__}: {text}") from exc


def square_region(width: int, height: int, box: Box | None = None) -> tuple[int, int, int]:
    """``(x0, y0, side)`` of the square to crop; see the module docstring."""
    if box is None:
        side = min(width, height)
        return (width - side) // 2, (height - side) // 2, side
    left, top, right, bottom = (float(v) for v in box)
    if not all(np.isfinite([left, top, right, bottom])) or right <= left or bottom <= top:
        raise BadInput("bad_box", f"degenerate box {box}")
    if right <= 0 or bottom <= 0 or left >= width or top >= height:
        raise BadInput("bad_box", f"box {box} lies outside the {width}x{height} image")
    side = min(int(round(max(right - left, bottom - top))), width, height)
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    x0 = min(max(int(round(cx - side / 2.0)), 0), width - side)
    y0 = min(max(int(round(cy - side / 2.0)), 0), height - side)
    return x0, y0, side


def resize_square(img: np.ndarray, size: int) -> np.ndarray:
    """Resize a square ``(S, S, 3)`` uint8 image to ``(size, size, 3)``."""
    import cv2

    if img.shape[0] == size and img.shape[1] == size:
        return np.ascontiguousarray(img)
    interpolation = cv2.INTER_AREA if img.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(img, (size, size), interpolation=interpolation)


def prepare_face(data: bytes, size: int, box: Sequence[float] | None = None,
                 min_size: int = 1) -> np.ndarray:
    """Image bytes -> square ``(size, size, 3)`` uint8 RGB face crop, or :class:`BadInput`."""
    rgb = decode_rgb(data)
    height, width = rgb.shape[:2]
    x0, y0, side = square_region(width, height, None if box is None else tuple(box))
    if side < min_size:
        raise BadInput("too_small", f"face crop {side}px < min_size {min_size}px "
                                    f"(image {width}x{height})")
    return resize_square(rgb[y0:y0 + side, x0:x0 + side], size)


def load_face(path: str | os.PathLike, size: int, box: Sequence[float] | None = None,
              min_size: int = 1) -> np.ndarray:
    """:func:`prepare_face` on a file."""
    return prepare_face(read_bytes(path), size, box, min_size)
