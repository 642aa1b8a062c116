"""Cartoon faces drawn with OpenCV from an identity's geometry (synthetic corpus).

An identity's :class:`Look` fixes head shape, skin tone, hair, eyes, brows, nose, lips, cheeks,
chin and facial hair, including the 12 labelled "private" attributes (CelebA names). Shared traits
drive part of it: gender (jaw, hair length, facial hair), nationality group (skin tone and hair
colour), age (grey hair, receding hairline, wrinkles) and body size (face width, jaw, chubby and
double chin). Each video (or CelebA photo) gets its own :class:`View`: pose, lighting, background,
glasses, blur and JPEG quality; each frame adds a small :class:`Expression` change.

Geometry is expressed in units of the head half-width ``W`` (pixels) around the face centre, so
the same identity renders alike in 128 px face-track crops and 178x218 CelebA-style images.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.names import Person

PRIVATE_ATTRIBUTES: tuple[str, ...] = (
    "Male", "Big_Nose", "Pointy_Nose", "Big_Lips", "Narrow_Eyes", "Arched_Eyebrows",
    "Bushy_Eyebrows", "High_Cheekbones", "Oval_Face", "Chubby", "Double_Chin", "Receding_Hairline",
)
CELEBA_ATTRIBUTES: tuple[str, ...] = (
    "5_o_Clock_Shadow", "Arched_Eyebrows", "Attractive", "Bags_Under_Eyes", "Bald", "Bangs",
    "Big_Lips", "Big_Nose", "Black_Hair", "Blond_Hair", "Blurry", "Brown_Hair", "Bushy_Eyebrows",
    "Chubby", "Double_Chin", "Eyeglasses", "Goatee", "Gray_Hair", "Heavy_Makeup", "High_Cheekbones",
    "Male", "Mouth_Slightly_Open", "Mustache", "Narrow_Eyes", "No_Beard", "Oval_Face", "Pale_Skin",
    "Pointy_Nose", "Receding_Hairline", "Rosy_Cheeks", "Sideburns", "Smiling", "Straight_Hair",
    "Wavy_Hair", "Wearing_Earrings", "Wearing_Hat", "Wearing_Lipstick", "Wearing_Necklace",
    "Wearing_Necktie", "Young",
)

# BGR skin tones, light to dark, and per-group mixture weights.
SKIN_TONES = ((196, 216, 246), (168, 194, 232), (128, 166, 212), (100, 140, 190), (72, 106, 152),
              (48, 72, 110))
SKIN_WEIGHTS: dict[str, tuple[float, ...]] = {
    "north_american": (0.25, 0.35, 0.12, 0.10, 0.10, 0.08), "british": (0.40, 0.40, 0.08, 0.04, 0.05, 0.03),
    "oceanic": (0.35, 0.40, 0.10, 0.08, 0.04, 0.03), "south_asian": (0.0, 0.02, 0.15, 0.35, 0.40, 0.08),
    "caribbean": (0.0, 0.03, 0.07, 0.20, 0.35, 0.35), "north_european": (0.55, 0.35, 0.07, 0.03, 0.0, 0.0),
    "latin": (0.05, 0.30, 0.40, 0.20, 0.05, 0.0), "east_asian": (0.10, 0.35, 0.45, 0.10, 0.0, 0.0),
    "middle_eastern": (0.05, 0.30, 0.45, 0.15, 0.05, 0.0),
}
# BGR hair colours and per-group mixture weights.
HAIR_COLOURS = {"black": (22, 22, 28), "dark_brown": (28, 42, 66), "brown": (42, 72, 112),
                "light_brown": (78, 118, 162), "blond": (120, 188, 228), "red": (38, 70, 158)}
HAIR_WEIGHTS: dict[str, tuple[float, ...]] = {
    "north_american": (0.25, 0.30, 0.20, 0.10, 0.12, 0.03), "british": (0.15, 0.30, 0.25, 0.12, 0.12, 0.06),
    "oceanic": (0.15, 0.25, 0.25, 0.15, 0.17, 0.03), "south_asian": (0.85, 0.15, 0.0, 0.0, 0.0, 0.0),
    "caribbean": (0.90, 0.10, 0.0, 0.0, 0.0, 0.0), "north_european": (0.05, 0.15, 0.20, 0.20, 0.38, 0.02),
    "latin": (0.50, 0.35, 0.12, 0.02, 0.01, 0.0), "east_asian": (0.90, 0.10, 0.0, 0.0, 0.0, 0.0),
    "middle_eastern": (0.70, 0.25, 0.05, 0.0, 0.0, 0.0),
}
GREY = np.array((172.0, 172.0, 176.0))
BEARDS = ("none", "stubble", "moustache", "goatee", "full")


@dataclass(frozen=True)
class Look:
    """Identity-level face geometry and colours (units of head half-width W unless noted)."""

    male: bool
    skin: tuple[float, float, float]
    hair_name: str
    hair: tuple[float, float, float]  # after greying
    grey: float  # 0..1
    hair_style: int  # 0 short, 1 medium, 2 long
    bald: bool
    receding: bool
    width: float  # W multiplier
    length: float  # H / W
    jaw: float  # chin width fraction
    chubby: bool
    double_chin: bool
    oval: bool
    cheekbones: bool
    eye_dx: float
    eye_w: float
    eye_h: float  # eye height / width
    iris: tuple[float, float, float]
    brow_thick: float
    arched: bool
    bushy: bool
    nose_len: float  # units of H
    nose_w: float
    big_nose: bool
    pointy: bool
    lip_w: float
    lip_h: float
    big_lips: bool
    lips: tuple[float, float, float]
    beard: str
    wrinkles: float  # 0..1
    ear: float

    def private_attributes(self) -> dict[str, bool]:
        """The 12 labelled private attributes (CelebA names)."""
        return {"Male": self.male, "Big_Nose": self.big_nose, "Pointy_Nose": self.pointy,
                "Big_Lips": self.big_lips, "Narrow_Eyes": self.eye_h < 0.4,
                "Arched_Eyebrows": self.arched, "Bushy_Eyebrows": self.bushy,
                "High_Cheekbones": self.cheekbones, "Oval_Face": self.oval, "Chubby": self.chubby,
                "Double_Chin": self.double_chin, "Receding_Hairline": self.receding}


@dataclass(frozen=True)
class View:
    """Per-video (or per-photo) capture conditions."""

    yaw: float  # -1..1 fraction of a quarter turn
    pitch: float
    roll_deg: float
    scale: float
    shift: tuple[float, float]  # fraction of canvas
    light_angle: float
    light_strength: float
    brightness: float
    cast: tuple[float, float, float]
    bg: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_shapes: tuple[tuple[float, ...], ...]  # (x0, x1, y0, y1, b, g, r): fractions, then colour
    clothes: tuple[float, float, float]
    glasses: str  # none | clear | sun
    blur: float  # Gaussian sigma, px at 128
    noise: float
    jpeg_quality: int


@dataclass(frozen=True)
class Expression:
    """Per-frame variation inside a video."""

    mouth_open: float  # 0..1
    smile: float  # 0..1
    blink: bool
    jitter: tuple[float, float, float]  # dx, dy (fraction of W), droll (deg)


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    w = np.asarray(weights, dtype=float)
    return int(rng.choice(len(w), p=w / w.sum()))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _colour(base: tuple[float, ...], rng: np.random.Generator, sd: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base, dtype=float) * (1.0 + rng.normal(0.0, sd)) + rng.normal(0.0, 6.0, 3), 0, 255)
    return tuple(round(float(v), 1) for v in c)  # type: ignore[return-value]


def _shape_traits(person: Person, rng: np.random.Generator) -> dict:
    """Head shape from gender and body size (shared) plus own variation."""
    male = person.gender == "m"
    chubby = rng.random() < _sigmoid(3.0 * (person.body - 1.0))
    double_chin = rng.random() < _sigmoid(3.0 * (person.body - 1.1) + 0.08 * (person.age - 45.0))
    oval = (not chubby) and rng.random() < 0.32
    width = (1.06 if male else 0.96) * (1.0 + 0.07 * person.body) * (1.1 if chubby else 1.0)
    return {"male": male, "chubby": chubby, "double_chin": double_chin, "oval": oval,
            "width": round(width * math.exp(rng.normal(0.0, 0.02)), 4),
            "length": round((1.22 if not oval else 1.45) + rng.normal(0.0, 0.03), 4),
            "jaw": round(float(np.clip((0.7 if male else 0.56) + 0.05 * person.body
                                       - (0.14 if oval else 0.0) + (0.1 if chubby else 0.0)
                                       + rng.normal(0.0, 0.03), 0.35, 0.9)), 4),
            "ear": round(float(rng.uniform(0.85, 1.2)), 3)}


def _hair_traits(person: Person, male: bool, rng: np.random.Generator) -> dict:
    """Hair colour from the nationality group, greying and receding with age."""
    names = list(HAIR_COLOURS)
    hair_name = names[_pick(rng, HAIR_WEIGHTS[person.group])]
    grey = float(np.clip(_sigmoid((person.age - 55.0) / 5.0) * rng.uniform(0.6, 1.3), 0.0, 1.0))
    base = np.asarray(_colour(HAIR_COLOURS[hair_name], rng, 0.08))
    p_recede = _sigmoid((person.age - 48.0) / 7.0) * 0.75 if male else 0.04
    receding = rng.random() < p_recede
    bald = male and receding and rng.random() < 0.3
    style = int(rng.choice(3, p=(0.8, 0.17, 0.03) if male else (0.1, 0.3, 0.6)))
    return {"hair_name": hair_name, "grey": round(grey, 3),
            "hair": tuple(round(float(v), 1) for v in base * (1 - grey) + GREY * grey),
            "hair_style": style, "bald": bald, "receding": receding and not bald,
            "wrinkles": round(float(np.clip((person.age - 45.0) / 25.0, 0.0, 1.0)), 3)}


def _feature_traits(male: bool, rng: np.random.Generator) -> dict:
    """Eyes, brows, nose and lips: identity-own traits with no cross-modal signal (but gender)."""
    big_nose = rng.random() < (0.32 if male else 0.15)
    narrow = rng.random() < 0.18
    bushy = rng.random() < (0.32 if male else 0.1)
    big_lips = rng.random() < (0.18 if male else 0.32)
    return {
        "eye_dx": round(float(rng.uniform(0.36, 0.44)), 4),
        "eye_w": round(float(rng.uniform(0.19, 0.23)), 4),
        "eye_h": round(float(rng.uniform(0.22, 0.3) if narrow else rng.uniform(0.55, 0.7)), 4),
        "iris": _colour(((30, 50, 80), (120, 90, 40), (70, 110, 80))[_pick(rng, (0.6, 0.25, 0.15))], rng, 0.1),
        "brow_thick": round(float(rng.uniform(0.1, 0.13) if bushy else rng.uniform(0.035, 0.05)), 4),
        "arched": bool(rng.random() < (0.12 if male else 0.45)), "bushy": bool(bushy),
        "nose_len": round(float(rng.uniform(0.4, 0.46) if big_nose else rng.uniform(0.27, 0.32)), 4),
        "nose_w": round(float(rng.uniform(0.34, 0.4) if big_nose else rng.uniform(0.2, 0.25)), 4),
        "big_nose": bool(big_nose), "pointy": bool(rng.random() < 0.3),
        "lip_w": round(float(rng.uniform(0.4, 0.5)), 4),
        "lip_h": round(float(rng.uniform(0.2, 0.24) if big_lips else rng.uniform(0.06, 0.08)), 4),
        "big_lips": bool(big_lips),
        "cheekbones": bool(rng.random() < 0.4),
    }


def draw_look(person: Person, rng: np.random.Generator) -> Look:
    """An identity's face: shared traits from ``person``, own traits from ``rng``."""
    shape = _shape_traits(person, rng)
    male = shape["male"]
    hair = _hair_traits(person, male, rng)
    feats = _feature_traits(male, rng)
    skin = _colour(SKIN_TONES[_pick(rng, SKIN_WEIGHTS[person.group])], rng, 0.05)
    lips = _colour((np.asarray(skin) * (0.75, 0.62, 0.85)).tolist(), rng, 0.05)
    beard = BEARDS[_pick(rng, (0.55, 0.15, 0.1, 0.08, 0.12))] if male else "none"
    return Look(skin=skin, lips=lips, beard=beard, **shape, **hair, **feats)


def draw_view(difficulty: float, rng: np.random.Generator, aligned: bool = False) -> View:
    """Capture conditions; ``aligned`` (CelebA-style) keeps the pose near frontal."""
    spread = 0.5 + difficulty
    pose = 0.35 if aligned else spread
    bg0, bg1 = (tuple(float(v) for v in rng.uniform(20, 235, 3)) for _ in range(2))
    shapes = tuple(tuple(float(v) for v in (*np.sort(rng.uniform(0, 1, 2)), *np.sort(rng.uniform(0, 1, 2)),
                                            *rng.uniform(10, 245, 3)))
                   for _ in range(int(rng.integers(0, 4))))
    glasses = ("none", "clear", "sun")[_pick(rng, (0.8, 0.14, 0.06))]
    return View(
        yaw=round(float(rng.uniform(-0.3, 0.3) * pose), 4),
        pitch=round(float(rng.uniform(-0.2, 0.2) * pose), 4),
        roll_deg=round(float(rng.uniform(-8.0, 8.0) * pose), 3),
        scale=round(float(rng.uniform(1 - 0.08 * pose, 1 + 0.08 * pose)), 4),
        shift=(round(float(rng.uniform(-0.04, 0.04) * pose), 4), round(float(rng.uniform(-0.04, 0.04) * pose), 4)),
        light_angle=round(float(rng.uniform(0, 2 * math.pi)), 4),
        light_strength=round(float(rng.uniform(0.0, 0.35) * spread), 4),
        brightness=round(float(rng.uniform(1 - 0.2 * spread, 1 + 0.12 * spread)), 4),
        cast=tuple(round(float(v), 4) for v in rng.uniform(1 - 0.08 * spread, 1 + 0.08 * spread, 3)),
        bg=(bg0, bg1), bg_shapes=shapes,
        clothes=tuple(float(v) for v in rng.uniform(15, 240, 3)),
        glasses=glasses,
        blur=round(float(rng.uniform(0.0, 0.9 * spread)), 3),
        noise=round(float(rng.uniform(0.5, 4.0 * spread)), 3),
        jpeg_quality=int(rng.integers(60, 96)),
    )


def draw_expression(rng: np.random.Generator) -> Expression:
    """A frame's expression and small head motion."""
    return Expression(mouth_open=round(float(rng.uniform(0.0, 1.0) ** 2), 3),
                      smile=round(float(rng.uniform(0.0, 1.0) ** 3), 3),
                      blink=bool(rng.random() < 0.08),
                      jitter=(round(float(rng.normal(0, 0.03)), 4), round(float(rng.normal(0, 0.03)), 4),
                              round(float(rng.normal(0, 1.5)), 3)))


# ---- drawing --------------------------------------------------------------------------------

SHIFT = 4  # cv2 sub-pixel bits
ONE = 1 << SHIFT


@dataclass(frozen=True)
class Canvas:
    """Image size and where the face sits: centre and head half-width as fractions of the width."""

    width: int
    height: int
    cx: float
    cy: float
    unit: float


def facetrack_canvas(size: int) -> Canvas:
    """Square face-track crop."""
    return Canvas(size, size, 0.5, 0.55, 0.28)


# CelebA aligned images are 178x218; their central 178x178 square matches a face-track crop.
CELEBA_CANVAS = Canvas(178, 218, 0.5, (20 + 0.55 * 178) / 218, 0.28)


@dataclass
class Sketch:
    """A canvas being drawn on, with the face frame in pixels."""

    img: np.ndarray  # (h, w, 3) uint8 BGR
    cx: float
    cy: float
    W: float
    H: float
    fx: float  # feature offset from yaw, px
    fy: float  # feature offset from pitch, px

    def grid(self) -> tuple[np.ndarray, np.ndarray]:
        """(dx, u): x offset in W units and height above centre in H units, each (h, w)."""
        h, w = self.img.shape[:2]
        ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
        return (xs - self.cx) / self.W, (self.cy - ys) / self.H


def _ip(points: np.ndarray) -> np.ndarray:
    """Float (N, 2) points to cv2's fixed-point int32 (N, 2)."""
    return np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32)


def _bgr(colour: tuple[float, ...] | np.ndarray, k: float = 1.0) -> tuple[float, float, float]:
    c = np.clip(np.asarray(colour, dtype=float) * k, 0, 255)
    return (float(c[0]), float(c[1]), float(c[2]))


def _fill(img: np.ndarray, points: np.ndarray, colour: tuple[float, ...]) -> None:
    import cv2

    cv2.fillPoly(img, [_ip(points)], _bgr(colour), lineType=cv2.LINE_AA, shift=SHIFT)


def _line(img: np.ndarray, points: np.ndarray, colour: tuple[float, ...], thick: float) -> None:
    import cv2

    cv2.polylines(img, [_ip(points)], False, _bgr(colour), max(1, int(round(thick))),
                  lineType=cv2.LINE_AA, shift=SHIFT)


def _ellipse(img: np.ndarray, centre: tuple[float, float], axes: tuple[float, float],
             colour: tuple[float, ...], thick: float = -1, angle: float = 0.0,
             arc: tuple[float, float] = (0.0, 360.0)) -> None:
    import cv2

    t = -1 if thick < 0 else max(1, int(round(thick)))
    cv2.ellipse(img, (int(round(centre[0] * ONE)), int(round(centre[1] * ONE))),
                (max(1, int(round(axes[0] * ONE))), max(1, int(round(axes[1] * ONE)))),
                angle, arc[0], arc[1], _bgr(colour), t, lineType=cv2.LINE_AA, shift=SHIFT)


def _blend(img: np.ndarray, alpha: np.ndarray, colour: tuple[float, ...] | np.ndarray) -> None:
    """img <- img * (1 - alpha) + colour * alpha, alpha (h, w) in [0, 1]."""
    rows, cols = np.flatnonzero(alpha.any(axis=1)), np.flatnonzero(alpha.any(axis=0))
    if rows.size == 0:
        return
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    a = alpha[box][..., None].astype(np.float32)  # (h', w', 1)
    out = img[box].astype(np.float32) * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a
    img[box] = np.clip(np.round(out), 0, 255).astype(np.uint8)


def head_outline(look: Look, sk: Sketch, n: int = 72) -> np.ndarray:
    """Head contour (n, 2): an ellipse on top, narrowing to the jaw below the centre line."""
    theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    y = -np.cos(theta)  # -1 top, +1 chin (image y grows downwards)
    u = np.clip(y, 0.0, 1.0)
    power = 2.2 if look.male else 1.6
    g = 1.0 - (1.0 - look.jaw) * u ** power
    if look.chubby:
        g = g + 0.1 * np.sin(math.pi * u)
    x = np.sin(theta) * g
    return np.stack([sk.cx + x * sk.W, sk.cy + y * sk.H], axis=1)  # (n, 2)


def _background(sk: Sketch, view: View) -> None:
    h, w = sk.img.shape[:2]
    t = np.linspace(0.0, 1.0, h, dtype=np.float32)[:, None, None]  # (h, 1, 1)
    grad = np.asarray(view.bg[0], np.float32) * (1 - t) + np.asarray(view.bg[1], np.float32) * t
    sk.img[...] = np.broadcast_to(grad, (h, w, 3)).astype(np.uint8)  # (h, 1, 3) -> (h, w, 3)
    for x0, x1, y0, y1, b, g, r in view.bg_shapes:
        box = np.array([[x0 * w, y0 * h], [x1 * w, y0 * h], [x1 * w, y1 * h], [x0 * w, y1 * h]])
        _fill(sk.img, box, (b, g, r))


def _hair_back(look: Look, sk: Sketch) -> None:
    """Medium or long hair hanging behind the head."""
    if look.bald or look.hair_style == 0:
        return
    bottom = 0.6 if look.hair_style == 1 else 1.5
    half = 1.2 if look.hair_style == 1 else 1.32
    top = sk.cy - 0.3 * sk.H
    _ellipse(sk.img, (sk.cx, top), (half * sk.W, 0.8 * sk.H), look.hair)
    box = np.array([[sk.cx - half * sk.W, top], [sk.cx + half * sk.W, top],
                    [sk.cx + half * 0.95 * sk.W, sk.cy + bottom * sk.H],
                    [sk.cx - half * 0.95 * sk.W, sk.cy + bottom * sk.H]])
    _fill(sk.img, box, look.hair)


def _body(look: Look, sk: Sketch, view: View) -> None:
    """Neck, shoulders and the double-chin fold."""
    h = sk.img.shape[0]
    neck = np.array([[sk.cx - 0.48 * sk.W, sk.cy + 0.4 * sk.H], [sk.cx + 0.48 * sk.W, sk.cy + 0.4 * sk.H],
                     [sk.cx + 0.55 * sk.W, h + 2], [sk.cx - 0.55 * sk.W, h + 2]])
    _fill(sk.img, neck, _bgr(look.skin, 0.82))
    _ellipse(sk.img, (sk.cx, sk.cy + 1.8 * sk.H), (2.1 * sk.W, 0.7 * sk.H), view.clothes)
    if look.double_chin:
        _ellipse(sk.img, (sk.cx, sk.cy + 1.0 * sk.H), (0.62 * sk.W, 0.24 * sk.H), _bgr(look.skin, 0.95))
        _ellipse(sk.img, (sk.cx, sk.cy + 1.0 * sk.H), (0.62 * sk.W, 0.24 * sk.H), _bgr(look.skin, 0.55),
                 thick=max(1.0, 0.05 * sk.W), arc=(15.0, 165.0))


def _ears(look: Look, sk: Sketch) -> None:
    for side in (-1, 1):
        centre = (sk.cx + side * 0.97 * sk.W, sk.cy - 0.02 * sk.H)
        _ellipse(sk.img, centre, (0.16 * sk.W * look.ear, 0.2 * sk.H * look.ear), _bgr(look.skin, 0.9))


def _head(look: Look, sk: Sketch) -> np.ndarray:
    """Fill the face; return its mask (h, w) float32 in [0, 1]."""
    import cv2

    outline = head_outline(look, sk)
    _fill(sk.img, outline, look.skin)
    mask = np.zeros(sk.img.shape[:2], np.uint8)
    cv2.fillPoly(mask, [_ip(outline)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    return mask.astype(np.float32) / 255.0


def _cheeks(look: Look, sk: Sketch) -> None:
    """High cheekbones: a highlight with a shadow stroke below; chubby: round cheek pads."""
    for side in (-1, 1):
        x0 = sk.cx + sk.fx
        if look.cheekbones:
            _ellipse(sk.img, (x0 + side * 0.55 * sk.W, sk.cy + 0.04 * sk.H), (0.22 * sk.W, 0.1 * sk.H),
                     _bgr(look.skin, 1.14), angle=-side * 20.0)
            stroke = np.array([[x0 + side * 0.9 * sk.W, sk.cy + 0.08 * sk.H],
                               [x0 + side * 0.62 * sk.W, sk.cy + 0.24 * sk.H],
                               [x0 + side * 0.45 * sk.W, sk.cy + 0.34 * sk.H]])
            _line(sk.img, stroke, _bgr(look.skin, 0.78), 0.05 * sk.W)
        if look.chubby:
            _ellipse(sk.img, (x0 + side * 0.58 * sk.W, sk.cy + 0.3 * sk.H), (0.24 * sk.W, 0.2 * sk.H),
                     _bgr(look.skin, (0.93, 0.93, 1.08)))


def _wrinkles(look: Look, sk: Sketch) -> None:
    if look.wrinkles <= 0.1:
        return
    colour = _bgr(look.skin, 0.72)
    for k in range(1 + int(2.5 * look.wrinkles)):
        y = sk.cy - (0.3 + 0.09 * k) * sk.H + sk.fy
        xs = np.linspace(-0.4, 0.4, 9)
        pts = np.stack([sk.cx + sk.fx + xs * sk.W, y - 0.05 * sk.H * np.cos(xs * 2.5)], axis=1)  # (9, 2)
        _line(sk.img, pts, colour, 1)


def _beard(look: Look, sk: Sketch, head: np.ndarray, mouth_y: float) -> None:
    """Stubble, moustache, goatee or full beard in the hair colour."""
    if look.beard == "none":
        return
    dx, u = sk.grid()
    uy = (sk.cy - mouth_y) / sk.H  # mouth height in u
    mdx = dx - sk.fx / sk.W
    lips = ((mdx / (look.lip_w + 0.04)) ** 2 + ((u - uy) / 0.1) ** 2) < 1.0
    tache = (np.abs(mdx) < look.lip_w + 0.08) & (u > uy + 0.05) & (u < uy + 0.05 + 0.14) & ~lips
    if look.beard == "stubble":
        alpha = head * (u < uy + 0.16) * 0.45 * (1.0 - lips)
    elif look.beard == "moustache":
        alpha = tache * 0.95
    elif look.beard == "goatee":
        chin = ((mdx / 0.42) ** 2 + ((u - uy + 0.3) / 0.3) ** 2) < 1.0
        alpha = ((chin & ~lips) * head + tache) * 0.95
    else:
        alpha = (head * (u < uy + 0.22) * (1.0 - lips) + tache) * 0.95
    _blend(sk.img, np.clip(alpha, 0.0, 1.0).astype(np.float32), look.hair)


def _nose(look: Look, sk: Sketch, eye_y: float) -> None:
    """Nose body, outline and nostrils; pointy noses end in a sharp V below the nostrils."""
    x = sk.cx + 1.6 * sk.fx
    top, tip = eye_y + 0.06 * sk.H, eye_y + look.nose_len * sk.H
    nw = look.nose_w * sk.W
    if look.pointy:
        lower = [[x + nw, tip - 0.02 * sk.H], [x, tip + 0.2 * sk.H], [x - nw, tip - 0.02 * sk.H]]
    else:
        ang = np.linspace(0.0, math.pi, 9)
        lower = np.stack([x + nw * np.cos(ang), tip + 0.55 * nw * np.sin(ang)], axis=1).tolist()
    body = np.array([[x - 0.22 * nw, top], [x + 0.22 * nw, top], *lower])
    _fill(sk.img, body, _bgr(look.skin, 0.9))
    dark = _bgr(look.skin, 0.5)
    _line(sk.img, np.array([[x + 0.22 * nw, top], *lower[:1]]), _bgr(look.skin, 0.7), 0.03 * sk.W)
    _line(sk.img, np.array(lower), dark, 0.05 * sk.W)
    for side in (-1, 1):
        _ellipse(sk.img, (x + side * 0.45 * nw, tip + 0.02 * sk.H), (0.2 * nw, 0.1 * nw), _bgr(look.skin, 0.3))


def _mouth(look: Look, sk: Sketch, expr: Expression) -> float:
    """Lips (thickness from the identity), opening and smile from the frame; returns mouth y."""
    y = sk.cy + 0.55 * sk.H + 0.8 * sk.fy
    x = sk.cx + 1.2 * sk.fx
    mw = look.lip_w * sk.W
    up, low = 0.45 * look.lip_h * sk.W, 0.55 * look.lip_h * sk.W
    gap = expr.mouth_open * 0.12 * sk.W
    t = np.linspace(-1.0, 1.0, 17)
    lift = expr.smile * 0.08 * sk.H * t ** 2
    shape = np.sqrt(1.0 - t ** 2)
    bow = 1.0 - 0.35 * np.exp(-(t / 0.15) ** 2)
    xs = x + t * mw
    upper = np.concatenate([np.stack([xs, y - gap / 2 - lift - up * shape * bow], 1),
                            np.stack([xs[::-1], (y - gap / 2 - lift)[::-1]], 1)])  # (34, 2)
    lower = np.concatenate([np.stack([xs, y + gap / 2 - lift], 1),
                            np.stack([xs[::-1], (y + gap / 2 - lift + low * shape)[::-1]], 1)])  # (34, 2)
    if gap > 0.5:
        inner = np.concatenate([upper[17:], lower[:17][::-1]])
        _fill(sk.img, inner, (40, 30, 60))
    _fill(sk.img, upper, look.lips)
    _fill(sk.img, lower, _bgr(look.lips, 1.08))
    _line(sk.img, np.stack([xs, y - lift], 1), _bgr(look.lips, 0.45), 1)
    return y


def _eyes(look: Look, sk: Sketch, expr: Expression) -> float:
    """Whites, iris and pupil clipped to the eye, upper lid line; returns eye y."""
    y = sk.cy - 0.12 * sk.H + sk.fy
    a = look.eye_w * sk.W
    b = a * (0.06 if expr.blink else look.eye_h)
    dx, u = sk.grid()
    for side in (-1, 1):
        ex = sk.cx + sk.fx + side * look.eye_dx * sk.W * (1.0 - 0.15 * side * sk.fx / sk.W)
        ux, uy = (ex - sk.cx) / sk.W, (sk.cy - y) / sk.H
        ell = ((dx - ux) * sk.W / a) ** 2 + ((u - uy) * sk.H / b) ** 2 < 1.0
        iris = ((dx - ux - 0.1 * sk.fx / sk.W) * sk.W) ** 2 + ((u - uy) * sk.H) ** 2 < (0.6 * a) ** 2
        pupil = ((dx - ux - 0.1 * sk.fx / sk.W) * sk.W) ** 2 + ((u - uy) * sk.H) ** 2 < (0.25 * a) ** 2
        _blend(sk.img, ell.astype(np.float32), (238, 238, 238))
        _blend(sk.img, (ell & iris).astype(np.float32), look.iris)
        _blend(sk.img, (ell & pupil).astype(np.float32), (15, 15, 15))
        _ellipse(sk.img, (ex, y), (a, b), (30, 30, 40), thick=max(1.0, 0.05 * sk.W), arc=(180.0, 360.0))
        if look.eye_h < 0.4:
            _ellipse(sk.img, (ex, y), (a, b), _bgr(look.skin, 0.55), thick=1, arc=(0.0, 180.0))
    return y


def _brows(look: Look, sk: Sketch, eye_y: float) -> None:
    """Eyebrows: thick for bushy, peaked for arched."""
    base = eye_y - 0.2 * sk.H
    a = look.eye_w * sk.W
    colour = _bgr(HAIR_COLOURS[look.hair_name], 0.85) if look.grey < 0.6 else _bgr(look.hair, 0.8)
    t = np.linspace(0.0, 1.0, 11)
    rise = (0.1 * np.sin(math.pi * t ** 0.75) if look.arched else 0.025 * np.sin(math.pi * t)) * sk.H
    for side in (-1, 1):
        ex = sk.cx + sk.fx + side * look.eye_dx * sk.W
        xs = ex - side * 1.0 * a + side * t * 2.3 * a
        _line(sk.img, np.stack([xs, base - rise], axis=1), colour, look.brow_thick * sk.W)


def _hairline_u(look: Look, dx: np.ndarray) -> np.ndarray:
    """Height (in H) of the hairline above the face centre at each x offset."""
    if look.receding:
        return 0.72 + 0.26 * np.exp(-((np.abs(dx) - 0.45) / 0.2) ** 2)
    return 0.62 - 0.35 * dx ** 2


def _hair_top(look: Look, sk: Sketch) -> None:
    """Hair above the hairline plus side hair; bald heads keep only the sides."""
    dx, u = sk.grid()
    outer = (dx / 1.1) ** 2 + ((u - 0.06) / 1.05) ** 2 < 1.0
    cap = outer & (u > _hairline_u(look, dx))
    sides = outer & (np.abs(dx) > 0.88) & (u > -0.05)
    mask = (sides | (cap & (u > 0.0))) if not look.bald else sides & (u < 0.4)
    _blend(sk.img, mask.astype(np.float32), look.hair)


def _glasses(sk: Sketch, look: Look, view: View, eye_y: float) -> None:
    if view.glasses == "none":
        return
    r = look.eye_w * sk.W * 1.45
    frame = (25, 25, 25)
    centres = [sk.cx + sk.fx + side * look.eye_dx * sk.W for side in (-1, 1)]
    for ex in centres:
        if view.glasses == "sun":
            _ellipse(sk.img, (ex, eye_y), (r, 0.8 * r), (35, 30, 30))
        _ellipse(sk.img, (ex, eye_y), (r, 0.8 * r), frame, thick=max(1.0, 0.05 * sk.W))
    _line(sk.img, np.array([[centres[0] + r, eye_y], [centres[1] - r, eye_y]]), frame, 0.05 * sk.W)


def _sketch(canvas: Canvas, look: Look, view: View) -> Sketch:
    w_px = canvas.unit * canvas.width * look.width
    img = np.zeros((canvas.height, canvas.width, 3), np.uint8)
    return Sketch(img=img, cx=canvas.cx * canvas.width, cy=canvas.cy * canvas.height, W=w_px,
                  H=w_px * look.length, fx=view.yaw * 0.3 * w_px, fy=view.pitch * 0.25 * w_px)


def draw_face(look: Look, view: View, expr: Expression, canvas: Canvas) -> np.ndarray:
    """The clean drawing (before pose, light, blur and noise): (h, w, 3) uint8 BGR."""
    sk = _sketch(canvas, look, view)
    _background(sk, view)
    _hair_back(look, sk)
    _body(look, sk, view)
    _ears(look, sk)
    head = _head(look, sk)
    _cheeks(look, sk)
    _wrinkles(look, sk)
    mouth_y = _mouth(look, sk, expr)
    _beard(look, sk, head, mouth_y)
    eye_y = _eyes(look, sk, expr)
    _nose(look, sk, eye_y)
    _brows(look, sk, eye_y)
    _hair_top(look, sk)
    _glasses(sk, look, view, eye_y)
    return sk.img


def capture(img: np.ndarray, view: View, expr: Expression, canvas: Canvas,
            rng: np.random.Generator) -> np.ndarray:
    """Apply the view: roll/scale/shift, directional light and colour cast, blur and sensor noise."""
    import cv2

    h, w = img.shape[:2]
    centre = (canvas.cx * w, canvas.cy * h)
    m = cv2.getRotationMatrix2D(centre, view.roll_deg + expr.jitter[2], view.scale)  # (2, 3)
    unit = canvas.unit * w
    m[0, 2] += view.shift[0] * w + expr.jitter[0] * unit
    m[1, 2] += view.shift[1] * h + expr.jitter[1] * unit
    out = cv2.warpAffine(img, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    ramp = ((xs - centre[0]) * math.cos(view.light_angle) + (ys - centre[1]) * math.sin(view.light_angle)) / w
    gain = (view.brightness * (1.0 + 2.0 * view.light_strength * ramp))[..., None]  # (h, w, 1)
    lit = out.astype(np.float32) * gain * np.asarray(view.cast, np.float32)
    if view.blur > 0.05:
        sigma = view.blur * w / 128.0
        lit = cv2.GaussianBlur(lit, (0, 0), sigmaX=sigma, sigmaY=sigma)
    lit += rng.normal(0.0, view.noise, lit.shape).astype(np.float32)
    return np.clip(np.round(lit), 0, 255).astype(np.uint8)


def render(look: Look, view: View, expr: Expression, canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A captured face image: (h, w, 3) uint8 BGR."""
    return capture(draw_face(look, view, expr, canvas), view, expr, canvas, rng)


def encode_jpeg(img: np.ndarray, quality: int) -> bytes:
    """Baseline JPEG with an explicit quality (deterministic bytes)."""
    import cv2

    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise RuntimeError("JPEG encoding failed")
    return buf.tobytes()


def celeba_labels(look: Look, view: View, expr: Expression) -> dict[str, int]:
    """All 40 CelebA attributes as +1/-1; attributes the renderer does not draw are -1."""
    hair_known = not look.bald and look.grey < 0.5
    on = {**look.private_attributes(),
          "Bald": look.bald, "Eyeglasses": view.glasses != "none", "Gray_Hair": look.grey >= 0.5,
          "Black_Hair": hair_known and look.hair_name == "black",
          "Brown_Hair": hair_known and look.hair_name in ("dark_brown", "brown"),
          "Blond_Hair": hair_known and look.hair_name == "blond",
          "5_o_Clock_Shadow": look.beard == "stubble", "Mustache": look.beard == "moustache",
          "Goatee": look.beard == "goatee", "No_Beard": look.beard == "none",
          "Mouth_Slightly_Open": expr.mouth_open > 0.3, "Smiling": expr.smile > 0.4,
          "Blurry": view.blur > 1.0, "Young": look.wrinkles <= 0.1 and look.grey < 0.3}
    return {name: 1 if on.get(name, False) else -1 for name in CELEBA_ATTRIBUTES}
