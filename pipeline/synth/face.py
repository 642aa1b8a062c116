"""Cartoon faces drawn with OpenCV: one renderer and one framing for face tracks and CelebA.

An identity's :class:`Look` fixes head shape, skin tone, hair, eyes, brows, nose, lips, cheeks,
chin, facial hair and make-up, including the 12 labelled "private" attributes (CelebA names).
Shared traits drive part of it: gender (jaw and chin, brows, hair length, facial hair, make-up,
and the rates of the gendered attributes), nationality group (skin tone, hair colour), age (grey
hair, receding hairline and baldness, wrinkles, double chin) and body size (face width, jaw,
``Chubby``, ``Double_Chin``). Each video (or CelebA photo) gets its own :class:`View` (pose,
light, background, clothes, glasses, blur, noise, JPEG quality); each frame its own
:class:`Expression` (mouth, smile, blink, small head motion).

Framing. Every image is a window (:class:`Canvas`) onto one *portrait frame*: a square of side
``S`` with the face centre at ``(0.5 S, 0.55 S)`` and ``UNIT = 0.28 S`` pixels per face unit
(the head half-width of an average face is about one unit). A face-track crop is the square
itself (``S = face_size``). A CelebA-format image is the same frame at ``S = 178`` extended by
``20`` px above and below (178x218), so its central 178x178 square *is* the face-track crop;
this is also the square the ``faces`` and ``face_attributes_train`` stages cut out. The pose is
geometry, not an image warp: roll, scale and shift are a similarity transform of the face
coordinates, and yaw and pitch move each part by its depth, so nothing outside a window leaks
into it. With the same look, view and expression, a face track rendered at ``S = 178`` equals
rows 20-197 of the CelebA image before blur, sensor noise and JPEG (tested), and at other sizes
it is the same scene rasterised at another resolution.

Drawing is resolution independent: strokes that carry an attribute (brows, lids, creases) are
filled polygons in face units, not integer-width lines.
"""

from __future__ import annotations

import functools
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
BEARD_WEIGHTS = (0.5, 0.2, 0.08, 0.1, 0.12)  # of men; about 40% of CelebA's men have facial hair
# BGR lipstick (red, pink, berry, coral, plum) and eye-shadow (brown, plum, smoky, bronze) colours.
LIPSTICKS = ((35, 25, 190), (140, 70, 225), (80, 20, 140), (60, 90, 235), (90, 40, 110))
EYE_SHADOWS = ((50, 70, 110), (110, 60, 110), (70, 65, 70), (60, 110, 160))
# Rates of the gendered private attributes (men, women): in the direction of CelebA's sex ratios,
# but softened, so that an attribute model trained on a few hundred identities cannot score by
# guessing the sex (and 'Male' cannot be guessed from the nose). Narrow_Eyes, Oval_Face and the
# body/age-driven ones are drawn alike for both.
GENDERED_RATES: dict[str, tuple[float, float]] = {
    "big_nose": (0.32, 0.22), "pointy": (0.3, 0.34), "big_lips": (0.26, 0.36),
    "arched": (0.22, 0.45), "bushy": (0.32, 0.2), "cheekbones": (0.42, 0.52)}  # cheekbones: of non-chubby
NARROW_RATE = 0.25
OVAL_RATE = 0.35  # of faces that are not chubby
MAKEUP_RATE = 0.75  # of women
ALIGNED_PLANE = 0.8  # CelebA's roll, scale and shift ranges, as a fraction of the face tracks
HAIR_STYLE_WEIGHTS = ((0.88, 0.1, 0.02), (0.06, 0.3, 0.64))  # (short, medium, long): men, women


@dataclass(frozen=True)
class Look:
    """Identity-level face geometry and colours (lengths in face units; see the module doc)."""

    male: bool
    skin: tuple[float, float, float]
    hair_name: str
    hair: tuple[float, float, float]  # after greying
    grey: float  # 0..1
    hair_style: int  # 0 short, 1 medium (to the chin; a man's covers the ears), 2 long
    bald: bool
    receding: bool
    width: float  # head half-width at the cheeks
    length: float  # chin height below the face centre
    jaw: float  # chin width as a fraction of the head width
    chubby: bool
    double_chin: bool
    oval: bool
    cheekbones: bool
    eye_dx: float  # eye centre offset from the midline
    eye_w: float  # eye half-width
    eye_h: float  # eye opening / eye half-width (below 0.4: narrow)
    iris: tuple[float, float, float]
    brow_thick: float
    brow_y: float  # brow height above the eye line
    arched: bool
    bushy: bool
    nose_len: float  # eye line to nose tip
    nose_w: float  # half-width of the nostrils
    big_nose: bool
    pointy: bool
    lip_w: float  # mouth half-width
    lip_h: float  # upper plus lower lip height
    big_lips: bool
    lips: tuple[float, float, float]  # natural colour or lipstick
    beard: str
    makeup: bool  # lipstick, eye shadow and liner, blush
    eye_shadow: tuple[float, float, float]
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
    shift: tuple[float, float]  # fraction of the frame side
    light_angle: float
    light_strength: float
    brightness: float
    cast: tuple[float, float, float]
    bg: tuple[tuple[float, float, float], tuple[float, float, float]]
    bg_shapes: tuple[tuple[float, ...], ...]  # (x0, x1, y0, y1, b, g, r): portrait fractions, colour
    clothes: tuple[float, float, float]
    glasses: str  # none | clear | sun
    blur: float  # Gaussian sigma, px at a 128 px frame
    noise: float  # sensor noise sigma, grey levels
    jpeg_quality: int


@dataclass(frozen=True)
class Expression:
    """Per-frame variation inside a video."""

    mouth_open: float  # 0..1
    smile: float  # 0..1
    blink: bool
    jitter: tuple[float, float, float]  # dx, dy (face units), droll (deg)


def _pick(rng: np.random.Generator, weights: tuple[float, ...]) -> int:
    w = np.asarray(weights, dtype=float)
    return int(rng.choice(len(w), p=w / w.sum()))


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _colour(base: tuple[float, ...], rng: np.random.Generator, sd: float) -> tuple[float, float, float]:
    c = np.clip(np.asarray(base, dtype=float) * (1.0 + rng.normal(0.0, sd)) + rng.normal(0.0, 6.0, 3), 0, 255)
    return tuple(round(float(v), 1) for v in c)  # type: ignore[return-value]


def _r(x: float, digits: int = 4) -> float:
    return round(float(x), digits)


def _shape_traits(person: Person, rng: np.random.Generator) -> dict:
    """Head shape from gender and body size (shared) plus own variation."""
    male = person.gender == "m"
    chubby = rng.random() < _sigmoid(3.0 * (person.body - 0.9))
    double_chin = rng.random() < _sigmoid(2.0 * (person.body - 0.8) + 0.1 * (person.age - 50.0))
    oval = (not chubby) and rng.random() < OVAL_RATE
    width = (1.04 if male else 0.95) * (1.0 + 0.035 * person.body) * (1.06 if chubby else 1.0)
    jaw = (0.8 if male else 0.43) + 0.04 * person.body - (0.12 if oval else 0.0) + (0.1 if chubby else 0.0)
    return {"male": male, "chubby": chubby, "double_chin": double_chin, "oval": oval,
            "width": _r(width * math.exp(rng.normal(0.0, 0.02))),
            "length": _r((1.34 if oval else 1.14) + (0.04 if male else -0.02) + rng.uniform(-0.045, 0.045)),
            "jaw": _r(np.clip(jaw + rng.normal(0.0, 0.03), 0.3, 0.92)),
            "ear": _r(rng.uniform(0.85, 1.15), 3)}


def _hair_traits(person: Person, male: bool, rng: np.random.Generator) -> dict:
    """Hair colour from the nationality group, length from gender, greying and receding with age."""
    names = list(HAIR_COLOURS)
    hair_name = names[_pick(rng, HAIR_WEIGHTS[person.group])]
    grey = float(np.clip(_sigmoid((person.age - 55.0) / 5.0) * rng.uniform(0.6, 1.3), 0.0, 1.0))
    base = np.asarray(_colour(HAIR_COLOURS[hair_name], rng, 0.08))
    p_recede = _sigmoid((person.age - 46.0) / 6.0) * 0.85 if male else 0.05
    receding = rng.random() < p_recede
    bald = male and receding and rng.random() < 0.3
    style = _pick(rng, HAIR_STYLE_WEIGHTS[0 if male else 1])
    return {"hair_name": hair_name, "grey": round(grey, 3),
            "hair": tuple(round(float(v), 1) for v in base * (1 - grey) + GREY * grey),
            "hair_style": style, "bald": bald, "receding": receding and not bald,
            "wrinkles": _r(np.clip((person.age - 45.0) / 25.0, 0.0, 1.0), 3)}


def _feature_traits(male: bool, rng: np.random.Generator) -> dict:
    """Eyes, brows, nose and lips: each attribute is bimodal, with gendered rates."""
    on = {k: bool(rng.random() < rates[0 if male else 1]) for k, rates in GENDERED_RATES.items()}
    narrow = rng.random() < NARROW_RATE
    if on["bushy"]:
        thick = rng.uniform(0.15, 0.19)
    else:
        thick = rng.uniform(0.065, 0.08) if male else rng.uniform(0.035, 0.05)
    return {
        **on,
        "eye_dx": _r(rng.uniform(0.38, 0.43)),
        "eye_w": _r(rng.uniform(0.24, 0.27)),
        "eye_h": _r(rng.uniform(0.14, 0.2) if narrow else rng.uniform(0.68, 0.82)),
        "iris": _colour(((30, 50, 80), (120, 90, 40), (70, 110, 80))[_pick(rng, (0.6, 0.25, 0.15))], rng, 0.1),
        "brow_thick": _r(thick),
        "brow_y": _r((0.25 if male else 0.37) + rng.normal(0.0, 0.012)),
        "nose_len": _r(rng.uniform(0.46, 0.5) if on["big_nose"] else rng.uniform(0.32, 0.36)),
        "nose_w": _r(rng.uniform(0.2, 0.23) if on["big_nose"] else rng.uniform(0.12, 0.14)),
        "lip_w": _r(rng.uniform(0.4, 0.46) if on["big_lips"] else rng.uniform(0.34, 0.42)),
        "lip_h": _r(rng.uniform(0.42, 0.48) if on["big_lips"] else rng.uniform(0.04, 0.06)),
    }


def _natural_lips(skin: tuple[float, ...]) -> list[float]:
    """Unpainted lips: darker and a little redder than the skin, far less saturated than
    lipstick (so lips stand out on every skin tone without reading as make-up)."""
    return (np.asarray(skin) * (0.6, 0.52, 0.72)).tolist()


def _contrast(colour: tuple[float, ...], skin: tuple[float, ...], gap: float) -> tuple[float, float, float]:
    """``colour`` darkened, if need be, to at least ``gap`` grey levels below the skin's mean."""
    lum, skin_lum = float(np.mean(colour)), float(np.mean(skin))
    if lum <= skin_lum - gap:
        return _bgr(colour)
    return _bgr(colour, max(0.2, (skin_lum - gap) / max(lum, 1.0)))


def draw_look(person: Person, rng: np.random.Generator) -> Look:
    """An identity's face: shared traits from ``person``, own traits from ``rng``."""
    shape = _shape_traits(person, rng)
    male = shape["male"]
    hair = _hair_traits(person, male, rng)
    feats = _feature_traits(male, rng)
    feats["cheekbones"] = feats["cheekbones"] and not shape["chubby"]  # full cheeks hide them
    skin = _colour(SKIN_TONES[_pick(rng, SKIN_WEIGHTS[person.group])], rng, 0.05)
    makeup = (not male) and rng.random() < MAKEUP_RATE
    natural = _colour(_natural_lips(skin), rng, 0.04)
    lipstick = _colour(LIPSTICKS[_pick(rng, (0.35, 0.25, 0.15, 0.15, 0.1))], rng, 0.06)
    shadow = _colour(EYE_SHADOWS[_pick(rng, (0.35, 0.25, 0.25, 0.15))], rng, 0.06)
    beard = BEARDS[_pick(rng, BEARD_WEIGHTS)] if male else "none"
    if float(np.mean(hair["hair"])) < float(np.mean(skin)):  # dark hair stays readable on the skin
        hair["hair"] = tuple(round(v, 1) for v in _contrast(hair["hair"], skin, 45.0))
    return Look(skin=skin, lips=lipstick if makeup else natural, beard=beard, makeup=makeup,
                eye_shadow=shadow, **shape, **hair, **feats)


def draw_view(difficulty: float, rng: np.random.Generator, aligned: bool = False) -> View:
    """Capture conditions at ``difficulty``: a face track's video, or (``aligned``) a CelebA photo.

    Both kinds draw yaw, pitch, light, colour cast, background, clothes and glasses from the
    same ranges, so the attribute model trained on CelebA sees the face tracks' conditions.
    CelebA photos are milder: "alignment" keeps roll, scale and shift to ``ALIGNED_PLANE`` of
    the face tracks' ranges (loosely, on purpose: the classifier is not shift-invariant, and a
    tight alignment cost about 0.08 balanced accuracy on the face tracks), and their blur,
    sensor noise and JPEG quality are milder.
    """
    spread = 0.5 + difficulty
    plane = ALIGNED_PLANE * spread if aligned else spread
    bg0, bg1 = (tuple(float(v) for v in rng.uniform(20, 235, 3)) for _ in range(2))
    shapes = tuple(tuple(float(v) for v in (*np.sort(rng.uniform(0, 1, 2)), *np.sort(rng.uniform(0, 1, 2)),
                                            *rng.uniform(10, 245, 3)))
                   for _ in range(int(rng.integers(0, 4))))
    glasses = ("none", "clear", "sun")[_pick(rng, (0.86, 0.12, 0.02))]
    return View(
        yaw=_r(rng.uniform(-0.3, 0.3) * spread),
        pitch=_r(rng.uniform(-0.15, 0.15) * spread),
        roll_deg=_r(rng.uniform(-6.0, 6.0) * plane, 3),
        scale=_r(rng.uniform(1 - 0.06 * plane, 1 + 0.06 * plane)),
        shift=(_r(rng.uniform(-0.025, 0.025) * plane), _r(rng.uniform(-0.025, 0.025) * plane)),
        light_angle=_r(rng.uniform(0, 2 * math.pi)),
        light_strength=_r(rng.uniform(0.0, 0.3) * spread),
        brightness=_r(rng.uniform(1 - 0.18 * spread, 1 + 0.1 * spread)),
        cast=tuple(_r(v) for v in rng.uniform(1 - 0.07 * spread, 1 + 0.07 * spread, 3)),
        bg=(bg0, bg1), bg_shapes=shapes,
        clothes=tuple(float(v) for v in rng.uniform(15, 240, 3)),
        glasses=glasses,
        blur=_r(rng.uniform(0.0, (0.5 if aligned else 0.8) * spread), 3),
        noise=_r(rng.uniform(0.5, (2.0 if aligned else 3.5) * spread), 3),
        jpeg_quality=int(rng.integers(75, 96) if aligned else rng.integers(60, 96)),
    )


def draw_expression(rng: np.random.Generator) -> Expression:
    """A frame's expression and small head motion."""
    return Expression(mouth_open=_r(rng.uniform(0.0, 1.0) ** 2, 3),
                      smile=_r(rng.uniform(0.0, 1.0) ** 3, 3),
                      blink=bool(rng.random() < 0.04),
                      jitter=(_r(rng.normal(0, 0.02)), _r(rng.normal(0, 0.02)), _r(rng.normal(0, 1.2), 3)))


# ---- framing --------------------------------------------------------------------------------

FACE_CX, FACE_CY, UNIT = 0.5, 0.55, 0.28  # face centre and px per face unit, fractions of S
CELEBA_SIZE = (178, 218)
CELEBA_TOP = 20  # rows of the CelebA image above its central (face-track) square
PORTRAIT_TOP = CELEBA_TOP / CELEBA_SIZE[0]  # the portrait frame's extent above the square, of S
PORTRAIT_HEIGHT = CELEBA_SIZE[1] / CELEBA_SIZE[0]  # the portrait frame's height, of S


@dataclass(frozen=True)
class Canvas:
    """A pixel window onto the portrait frame: the frame square is ``width`` px wide and starts
    ``top`` rows below the window's first row."""

    width: int
    height: int
    top: int

    @property
    def centre(self) -> tuple[float, float]:
        """Face centre, px."""
        return FACE_CX * self.width, self.top + FACE_CY * self.width

    def crop_square(self, img: np.ndarray) -> np.ndarray:
        """The face-track square of an image drawn on this canvas."""
        return img[self.top:self.top + self.width]


def facetrack_canvas(size: int) -> Canvas:
    """A square face-track crop: the portrait frame's square at ``size`` px."""
    return Canvas(size, size, 0)


def portrait_canvas(side: int) -> Canvas:
    """The whole portrait frame for a square of ``side`` px (CelebA's 178x218 at 178 px)."""
    top = int(round(PORTRAIT_TOP * side))
    return Canvas(side, side + 2 * top, top)


# CelebA aligned images are 178x218; their central 178x178 square is a face-track crop.
CELEBA_CANVAS = portrait_canvas(CELEBA_SIZE[0])


# ---- drawing primitives ---------------------------------------------------------------------

SHIFT = 4  # cv2 sub-pixel bits
ONE = 1 << SHIFT
SKULL = 1.36  # top of the head above the face centre, face units
DEPTH = {"ears": -0.6, "cheeks": 0.6, "eyes": 1.0, "brows": 1.0, "nose": 1.6,
         "mouth": 1.15, "chin": 0.5, "hair": 0.15}  # how far each part moves with yaw and pitch


@dataclass
class Sketch:
    """A canvas being drawn on, and the similarity transform from face units to pixels."""

    img: np.ndarray  # (h, w, 3) uint8 BGR
    ox: float  # face centre, px
    oy: float
    s: float  # px per face unit
    cos: float
    sin: float
    roll_deg: float
    yaw: float  # feature offset per unit of depth, face units
    pitch: float

    def __post_init__(self) -> None:
        self.rot = np.array([[self.cos, self.sin], [-self.sin, self.cos]]) * self.s  # row-vector form
        self.origin = np.array([self.ox, self.oy])
        self.per_depth = np.array([self.yaw, self.pitch]) @ self.rot  # px shift per unit of depth

    def px(self, pts: np.ndarray | list, depth: float = 0.0) -> np.ndarray:
        """Face-unit points (n, 2), x right and y down, moved by ``depth``, to pixels (n, 2)."""
        p = np.asarray(pts, dtype=np.float64).reshape(-1, 2)  # (n, 2)
        return p @ self.rot + (self.origin + depth * self.per_depth)

    def local(self, box: tuple[float, float, float, float], depth: float = 0.0
              ) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray] | None:
        """Pixels covering a face-unit box ``(x0, y0, x1, y1)``: their slices and face-unit
        coordinates ``(x, y)``, each (h', w'); None when the box is off the canvas."""
        x0, y0, x1, y1 = box
        corners = self.px([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], depth)
        h, w = self.img.shape[:2]
        c0, r0 = np.floor(corners.min(axis=0)).astype(int) - 1
        c1, r1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        c0, r0, c1, r1 = max(c0, 0), max(r0, 0), min(c1, w), min(r1, h)
        if c0 >= c1 or r0 >= r1:
            return None
        ys, xs = np.mgrid[r0:r1, c0:c1].astype(np.float32)  # (h', w') each
        dx, dy = xs - self.ox, ys - self.oy
        x = (dx * self.cos + dy * self.sin) / self.s - self.yaw * depth
        y = (-dx * self.sin + dy * self.cos) / self.s - self.pitch * depth
        return (slice(r0, r1), slice(c0, c1)), x, y


def _ip(points: np.ndarray) -> np.ndarray:
    """Float (N, 2) pixel points to cv2's fixed-point int32 (N, 2)."""
    return np.round(np.asarray(points, dtype=np.float64) * ONE).astype(np.int32)


def _bgr(colour: tuple[float, ...] | np.ndarray, k: float | tuple[float, ...] = 1.0) -> tuple[float, float, float]:
    """``colour`` times ``k`` (a scalar or per channel), clipped to 0..255, as a cv2 colour."""
    ks = (k, k, k) if isinstance(k, (int, float)) else k
    b, g, r = (min(255.0, max(0.0, float(c) * float(f))) for c, f in zip(colour, ks, strict=True))
    return (b, g, r)


def _mix(a: tuple[float, ...], b: tuple[float, ...], t: float) -> tuple[float, float, float]:
    return _bgr(np.asarray(a, float) * (1 - t) + np.asarray(b, float) * t)


def _poly(sk: Sketch, pts: np.ndarray | list, colour: tuple[float, ...], depth: float = 0.0) -> None:
    import cv2

    cv2.fillPoly(sk.img, [_ip(sk.px(pts, depth))], _bgr(colour), lineType=cv2.LINE_AA, shift=SHIFT)


def _ellipse(sk: Sketch, centre: tuple[float, float], axes: tuple[float, float], colour: tuple[float, ...],
             depth: float = 0.0, angle: float = 0.0) -> None:
    """A filled ellipse in face units (``angle`` in degrees, before the roll)."""
    import cv2

    (cx, cy), = sk.px([centre], depth)
    ax = (max(1, int(round(axes[0] * sk.s * ONE))), max(1, int(round(axes[1] * sk.s * ONE))))
    cv2.ellipse(sk.img, (int(round(cx * ONE)), int(round(cy * ONE))), ax, angle + sk.roll_deg, 0.0,
                360.0, _bgr(colour), -1, lineType=cv2.LINE_AA, shift=SHIFT)


def _arc(centre: tuple[float, float], axes: tuple[float, float], a0: float, a1: float,
         n: int = 16) -> np.ndarray:
    """Points (n, 2) on an ellipse arc from ``a0`` to ``a1`` degrees (y down: 90 is the bottom)."""
    t = np.radians(np.linspace(a0, a1, n))
    return np.stack([centre[0] + axes[0] * np.cos(t), centre[1] + axes[1] * np.sin(t)], axis=1)


def _stroke(sk: Sketch, pts: np.ndarray, width: float | np.ndarray, colour: tuple[float, ...],
            depth: float = 0.0) -> None:
    """A polyline (n, 2) of face-unit ``width`` (scalar or per point) as one filled polygon."""
    p = np.asarray(pts, dtype=np.float64)
    d = np.empty_like(p)  # (n, 2) tangents: central differences, one-sided at the ends
    d[1:-1] = p[2:] - p[:-2]
    d[0], d[-1] = p[1] - p[0], p[-1] - p[-2]
    normal = d[:, ::-1] * (-1.0, 1.0) / np.maximum(np.sqrt((d * d).sum(axis=1)), 1e-9)[:, None]
    half = np.asarray(width, dtype=np.float64).reshape(-1, 1) / 2.0  # (n, 1) or (1, 1)
    _poly(sk, np.concatenate([p + normal * half, (p - normal * half)[::-1]]), colour, depth)


def _blend_poly(sk: Sketch, pts: np.ndarray | list, colour: tuple[float, ...], alpha: float,
                depth: float = 0.0) -> None:
    """Blend ``colour`` over the polygon with opacity ``alpha`` (anti-aliased edges)."""
    import cv2

    p = sk.px(pts, depth)
    h, w = sk.img.shape[:2]
    c0, r0 = np.maximum(np.floor(p.min(axis=0)).astype(int) - 1, 0)
    c1, r1 = np.minimum(np.ceil(p.max(axis=0)).astype(int) + 2, (w, h))
    if c0 >= c1 or r0 >= r1:
        return
    mask = np.zeros((r1 - r0, c1 - c0), np.uint8)
    cv2.fillPoly(mask, [_ip(p - (c0, r0))], 255, lineType=cv2.LINE_AA, shift=SHIFT)
    _blend(sk.img, (slice(r0, r1), slice(c0, c1)), mask.astype(np.float32) * (alpha / 255.0), colour)


def _blend(img: np.ndarray, box: tuple[slice, slice], alpha: np.ndarray,
           colour: tuple[float, ...] | np.ndarray) -> None:
    """img[box] <- img[box] * (1 - alpha) + colour * alpha, alpha (h', w') in [0, 1]."""
    a = alpha[..., None]  # (h', w', 1)
    out = img[box].astype(np.float32) * (1.0 - a) + np.asarray(colour, dtype=np.float32) * a
    img[box] = np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---- the face, back to front ----------------------------------------------------------------

def mouth_y(look: Look) -> float:
    """The lips' parting line, face units below the centre."""
    return 0.55 * look.length + 0.04


def head_outline(look: Look, n: int = 72) -> np.ndarray:
    """Head contour (n, 2) in face units: an ellipse above the centre line, then the cheeks
    narrowing to the jaw and chin (square for men, tapered for women)."""
    theta = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    c = -np.cos(theta)  # -1 top, +1 chin
    v = np.clip(c, 0.0, 1.0)
    power = 3.2 if look.male else 1.3
    g = 1.0 - (1.0 - look.jaw) * v ** power
    if look.chubby:  # full lower cheeks: widest at the mouth, not at the cheekbones
        g = g + 0.17 * np.sin(math.pi * v ** 0.8)
    squareness = 0.5 if look.male else 1.0  # < 1 flattens the chin
    y = np.where(c < 0, SKULL * c, look.length * np.abs(c) ** squareness)
    return np.stack([look.width * np.sin(theta) * g, y], axis=1)  # (n, 2)


def _background(sk: Sketch, view: View, canvas: Canvas) -> None:
    """A vertical gradient and a few rectangles, placed on the whole portrait frame."""
    import cv2

    h, w = sk.img.shape[:2]
    top = canvas.top - PORTRAIT_TOP * canvas.width  # the portrait's first row, px
    t = _portrait_rows(h, canvas.width, canvas.top)[:, None, None]  # (h, 1, 1)
    grad = np.asarray(view.bg[0], np.float32) * (1 - t) + np.asarray(view.bg[1], np.float32) * t
    sk.img[...] = np.round(grad).astype(np.uint8)  # (h, 1, 3) broadcast to (h, w, 3)
    ph = PORTRAIT_HEIGHT * canvas.width
    for x0, x1, y0, y1, b, g, r in view.bg_shapes:
        box = np.array([[x0 * w, top + y0 * ph], [x1 * w, top + y0 * ph],
                        [x1 * w, top + y1 * ph], [x0 * w, top + y1 * ph]])
        cv2.fillPoly(sk.img, [_ip(box)], (b, g, r), lineType=cv2.LINE_AA, shift=SHIFT)


@functools.lru_cache(maxsize=8)
def _portrait_rows(h: int, side: int, top: int) -> np.ndarray:
    """Each row's position (h,) in the portrait frame, 0 at its top and 1 at its bottom."""
    rows = np.arange(h, dtype=np.float32) - (top - PORTRAIT_TOP * side)
    return rows / np.float32(PORTRAIT_HEIGHT * side)


def _hair_back(look: Look, sk: Sketch) -> None:
    """Medium or long hair behind the head and neck."""
    if look.bald or look.hair_style == 0:
        return
    w = look.width
    if look.hair_style == 1:  # men's medium hair covers the ears, women's falls to the chin
        bottom, half = (0.45, w + 0.2) if look.male else (0.95, w + 0.26)
    else:
        bottom, half = 2.0, w + 0.36
    d = DEPTH["hair"]
    _ellipse(sk, (0.0, -0.3), (w + 0.2, 1.12), look.hair, d)
    _poly(sk, [[-half, -0.3], [half, -0.3], [half * 0.96, bottom], [-half * 0.96, bottom]], look.hair, d)


def _body(look: Look, sk: Sketch, view: View) -> None:
    """Neck and shoulders (broader for men)."""
    neck = 0.52 if look.male else 0.38
    y0 = look.length * 0.55
    _poly(sk, [[-neck, y0], [neck, y0], [neck * 1.1, 3.0], [-neck * 1.1, 3.0]], _bgr(look.skin, 0.8))
    _ellipse(sk, (0.0, look.length + 1.3), (2.5 if look.male else 2.0, 0.9), view.clothes)


def _double_chin(look: Look, sk: Sketch) -> None:
    """A second chin: a skin fold under the jaw with a shadow below it (drawn before the head)."""
    if not look.double_chin:
        return
    d = DEPTH["chin"]
    half = max(0.62, look.jaw * look.width + 0.26)  # wider than the chin: jowls beside it
    y = look.length - 0.1
    _ellipse(sk, (0.0, y + 0.04), (half, 0.28), _bgr(look.skin, 0.35), d)  # shadow under the fold
    _ellipse(sk, (0.0, y - 0.01), (half * 0.92, 0.24), _bgr(look.skin, 1.05), d)


def _ears(look: Look, sk: Sketch) -> None:
    for side in (-1, 1):
        centre = (side * (look.width - 0.02), -0.04)
        _ellipse(sk, centre, (0.15 * look.ear, 0.24 * look.ear), _bgr(look.skin, 0.88), DEPTH["ears"])


def _head(look: Look, sk: Sketch) -> None:
    """The face in the skin colour, and the crease between chin and double chin."""
    _poly(sk, head_outline(look), look.skin)
    if look.double_chin:  # the crease between chin and fold
        t = np.linspace(-0.8, 0.8, 13)
        half = look.jaw * look.width
        pts = np.stack([t * half, look.length - 0.05 + 0.05 * (1 - t ** 2)], axis=1)
        _stroke(sk, pts, 0.07, _bgr(look.skin, 0.55), DEPTH["chin"])


def _cheeks(look: Look, sk: Sketch) -> None:
    """High cheekbones: a highlight above a shadow running down towards the mouth; chubby:
    round cheek pads; make-up: blush."""
    d = DEPTH["cheeks"]
    for side in (-1, 1):
        if look.chubby:  # round cheek pads, lit, with the fold beside the mouth below them
            _ellipse(sk, (side * 0.56, 0.32), (0.27, 0.2), _bgr(look.skin, 1.08), d)
            fold = _arc((side * 0.56, 0.32), (0.3, 0.24), 100 if side > 0 else 80, 170 if side > 0 else 10, 9)
            _stroke(sk, fold, 0.05, _bgr(look.skin, 0.62), d)
        if look.makeup:
            _blend_poly(sk, _arc((side * 0.62, 0.04), (0.18, 0.09), 0, 360), (90, 80, 215), 0.3, d)
        if look.cheekbones:
            hollow = [[side * (look.width - 0.02), -0.02], [side * (look.width - 0.05), 0.16],
                      [side * 0.5, 0.3], [side * 0.62, 0.12]]
            _blend_poly(sk, hollow, _bgr(look.skin, 0.45), 0.6, d)
            _ellipse(sk, (side * 0.68, 0.05), (0.22, 0.075), _bgr(look.skin, 1.12), d, angle=side * 30.0)
            pts = np.array([[side * (look.width - 0.03), 0.0], [side * 0.74, 0.11], [side * 0.53, 0.25]])
            _stroke(sk, pts, np.array([0.07, 0.11, 0.045]), _bgr(look.skin, 0.55), d)


def _wrinkles(look: Look, sk: Sketch) -> None:
    if look.wrinkles <= 0.1:
        return
    colour = _bgr(look.skin, 0.74)
    xs = np.linspace(-0.4, 0.4, 9)
    for k in range(1 + int(2.5 * look.wrinkles)):
        pts = np.stack([xs, -0.62 - 0.09 * k - 0.05 * np.cos(xs * 2.5)], axis=1)  # (9, 2)
        _stroke(sk, pts, 0.02 + 0.015 * look.wrinkles, colour, DEPTH["brows"])


def _beard_colour(look: Look) -> tuple[float, float, float]:
    """Facial hair: the hair colour, but never lighter than a mid grey-brown and always well
    below the skin (so that blond, grey and brown beards read as beards on every skin)."""
    lum = float(np.mean(look.hair))
    beard = _mix(look.hair, (50, 58, 70), float(np.clip((lum - 70.0) / 120.0, 0.0, 0.6)))
    return _contrast(beard, look.skin, 60.0)


def _beard(look: Look, sk: Sketch) -> None:
    """Every man's lower face is shaded (beard shadow, or the stubble of a beard), then the
    moustache, goatee or full beard is drawn over it."""
    if not look.male:
        return
    outline = head_outline(look, 96)
    my = mouth_y(look)
    lower = outline[outline[:, 1] > my - 0.25]
    lower = lower[np.argsort(np.arctan2(lower[:, 1] - (my - 0.25), lower[:, 0]))]  # left to right via chin
    beard = _beard_colour(look)
    shade = _bgr(beard, 0.9) if look.beard != "none" else _bgr(look.skin, (0.76, 0.68, 0.62))
    _blend_poly(sk, lower[::-1], shade, 0.6 if look.beard == "none" else 0.5, DEPTH["chin"])
    if look.beard in ("none", "stubble"):
        return
    m = DEPTH["mouth"]
    top = my - 0.42 * look.lip_h - 0.035  # a line of skin between the moustache and the lip
    w = look.lip_w
    tache = [[-w - 0.05, my + 0.02], [-w * 0.7, top - 0.13], [w * 0.7, top - 0.13], [w + 0.05, my + 0.02],
             [w * 0.85, my - 0.03], [0.0, top], [-w * 0.85, my - 0.03]]
    _poly(sk, tache, beard, m)
    if look.beard == "goatee":
        _ellipse(sk, (0.0, (my + look.length) / 2 + 0.02), (0.28, (look.length - my) / 2 + 0.02), beard,
                 DEPTH["chin"])
    elif look.beard == "full":
        _blend_poly(sk, lower[::-1], beard, 0.95, DEPTH["chin"])


def _mouth(look: Look, sk: Sketch, expr: Expression) -> None:
    """Lips (thickness from the identity), opening and smile from the frame."""
    y = mouth_y(look)
    d = DEPTH["mouth"]
    up, low = 0.42 * look.lip_h, 0.58 * look.lip_h
    gap = expr.mouth_open * 0.06
    t = np.linspace(-1.0, 1.0, 17)
    lift = expr.smile * 0.07 * t ** 2
    shape = np.sqrt(1.0 - t ** 2)
    bow = 1.0 - 0.35 * np.exp(-(t / 0.15) ** 2)
    xs = t * look.lip_w
    upper = np.concatenate([np.stack([xs, y - gap / 2 - lift - up * shape * bow], 1),
                            np.stack([xs[::-1], (y - gap / 2 - lift)[::-1]], 1)])  # (34, 2)
    lower = np.concatenate([np.stack([xs, y + gap / 2 - lift], 1),
                            np.stack([xs[::-1], (y + gap / 2 - lift + low * shape)[::-1]], 1)])  # (34, 2)
    if gap > 0.01:
        _poly(sk, np.concatenate([upper[17:], lower[:17][::-1]]), (40, 30, 60), d)
    _poly(sk, upper, look.lips, d)
    _poly(sk, lower, _bgr(look.lips, 1.1), d)
    _stroke(sk, np.stack([xs, y - lift], 1), 0.022, _bgr(look.lips, 0.45), d)


def _nose(look: Look, sk: Sketch, eye_y: float) -> None:
    """A pointy nose is outlined on both sides down to a sharp tip that hides the nostrils and
    casts a shadow onto the upper lip; a round one is a lit bulb outlined by a U, with both
    nostrils showing, and no side lines."""
    d = DEPTH["nose"]
    top, tip, nw = eye_y + 0.1, eye_y + look.nose_len, look.nose_w
    dark = _bgr(look.skin, 0.45)
    if look.pointy:
        _poly(sk, [[-nw * 0.5, tip + 0.05], [nw * 0.9, tip - 0.02], [nw * 0.5, tip + 0.26], [0.0, tip + 0.3]],
              _bgr(look.skin, 0.72), d)  # cast shadow
        _poly(sk, [[-0.06, top], [0.06, top], [nw * 0.8, tip - 0.04], [0.0, tip + 0.16], [-nw * 0.8, tip - 0.04]],
              _bgr(look.skin, 1.12), d)
        for side in (-1, 1):
            _stroke(sk, np.array([[side * 0.07, top], [side * nw * 0.85, tip - 0.05], [0.0, tip + 0.17]]), 0.05,
                    dark, d)
    else:
        _ellipse(sk, (0.0, tip - 0.045), (nw * 0.9, 0.06 + 0.2 * nw), _bgr(look.skin, 1.12), d)
        _stroke(sk, _arc((0.0, tip - 0.06), (nw * 1.15, 0.11), 0, 180, 13), 0.045, _bgr(look.skin, 0.55), d)
        for side in (-1, 1):
            _ellipse(sk, (side * nw * 0.62, tip + 0.01), (0.3 * nw + 0.035, 0.055), _bgr(look.skin, 0.25), d)


def _eye_shape(a: float, cx: float, y: float, h: float, n: int = 13) -> np.ndarray:
    """Almond outline (2n, 2) of half-width ``a`` and opening ``h``: upper lid arc, then the
    flatter lower lid."""
    t = np.linspace(-1.0, 1.0, n)
    upper = np.stack([cx + a * t, y - 0.8 * h * np.sqrt(1 - t ** 2) ** 0.9], axis=1)
    lower = np.stack([cx + a * t[::-1], y + 0.6 * h * np.sqrt(1 - t[::-1] ** 2)], axis=1)
    return np.concatenate([upper, lower])


IRIS = 0.6  # iris radius / eye half-width: an open eye is a dark disc, a narrow one a slit
LOWER_LID = 0.035  # width of the dark lower lid line, face units


def _eyes(look: Look, sk: Sketch, expr: Expression) -> float:
    """Whites, iris and pupil inside the almond, lids, liner and eye shadow; returns the eye y."""
    import cv2

    y = -0.14
    d = DEPTH["eyes"]
    a = look.eye_w * (1.12 if look.eye_h < 0.4 else 1.0)  # narrow eyes are longer slits
    h = look.eye_w * (0.07 if expr.blink else look.eye_h)
    liner = 0.05 if look.makeup else 0.04 if not look.male else 0.028  # lashes: women's read darker
    for side in (-1, 1):
        cx = side * look.eye_dx
        if look.makeup:
            _blend_poly(sk, _arc((cx, y - h * 0.6), (a * 1.15, 0.1 + 0.5 * h), 180, 360), look.eye_shadow, 0.5, d)
        shape = _eye_shape(a, cx, y, h)
        _poly(sk, shape, (246, 248, 250), d)
        area = sk.local((cx - a, y - h, cx + a, y + h), d)
        if area is not None:
            box, x, yy = area
            inside = np.zeros(x.shape, np.uint8)
            p = sk.px(shape, d) - (box[1].start, box[0].start)
            cv2.fillPoly(inside, [_ip(p)], 255, lineType=cv2.LINE_AA, shift=SHIFT)
            dist = np.sqrt((x - cx) ** 2 + (yy - y) ** 2) * sk.s  # px from the eye centre
            clip = inside.astype(np.float32) / 255.0
            _blend(sk.img, box, clip * np.clip(IRIS * a * sk.s - dist + 0.5, 0, 1), look.iris)
            _blend(sk.img, box, clip * np.clip(0.17 * a * sk.s - dist + 0.5, 0, 1), (15, 15, 15))
        _stroke(sk, shape[:13], liner + 0.02 * (1 - np.linspace(-1, 1, 13) ** 2), (30, 28, 35), d)
        _stroke(sk, shape[13:], LOWER_LID, _bgr(look.skin, 0.25), d)
        if look.makeup:  # winged liner at the outer corner
            corner = shape[12] if side > 0 else shape[0]
            wing = np.array([corner - (side * 0.06, -0.02), corner + (side * 0.09, -0.06)])
            _stroke(sk, wing, np.array([0.045, 0.015]), (30, 28, 35), d)
        if look.eye_h < 0.4:  # the heavy lid fold of a narrow eye
            fold = _arc((cx, y - h * 0.2), (a * 1.05, h + 0.05), 200, 340, 9)
            _stroke(sk, fold, 0.022, _bgr(look.skin, 0.62), d)
    return y


def _brows(look: Look, sk: Sketch, eye_y: float) -> None:
    """Tapered brows: straight, or peaked at two thirds with a falling tail (arched)."""
    d = DEPTH["brows"]
    hair = np.asarray(HAIR_COLOURS[look.hair_name], float) * (1 - 0.6 * look.grey) + GREY * 0.6 * look.grey
    colour = _contrast(_bgr(hair, 0.55 if look.bushy else 0.65), look.skin, 70.0)  # blond brows darker
    t = np.linspace(0.0, 1.0, 15)
    if look.arched:
        rise = np.where(t < 0.62, 0.17 * np.sin(0.5 * math.pi * t / 0.62), 0.17 - 0.4 * (t - 0.62))
    else:
        rise = 0.015 * np.sin(math.pi * t) - 0.02 * t
    width = look.brow_thick * (1.05 - 0.5 * t ** 1.5)
    for side in (-1, 1):
        x0 = side * (look.eye_dx - 0.95 * look.eye_w - (0.03 if look.bushy else 0.0))
        xs = x0 + side * t * (2.15 * look.eye_w + (0.05 if look.bushy else 0.0))
        ys = eye_y - look.brow_y - rise - 0.5 * look.brow_thick
        _stroke(sk, np.stack([xs, ys], axis=1), width, colour, d)


def _hairline(look: Look, x: np.ndarray) -> np.ndarray:
    """Height of the hairline (y, face units, negative above the centre) at each x."""
    if look.receding:
        return -0.9 - 0.36 * np.exp(-((np.abs(x) - 0.5) / 0.2) ** 2)
    return -0.92 + 0.3 * x ** 2


def _hair_top(look: Look, sk: Sketch) -> None:
    """Hair above the hairline and at the temples; bald heads keep hair only above the ears.
    Medium and long hair also falls beside the cheeks."""
    d = DEPTH["hair"]
    w = look.width
    volume = 0.05 if look.hair_style == 0 else 0.13
    if look.bald:
        for side in (-1, 1):
            _poly(sk, [[side * (w - 0.1), -0.75], [side * (w + 0.05), -0.8], [side * (w + 0.04), -0.2],
                       [side * (w - 0.06), -0.2]], look.hair, d)
        return
    xs = np.linspace(-0.8 * w, 0.8 * w, 25)
    line = np.stack([xs, _hairline(look, xs)], axis=1)  # left to right
    if look.hair_style == 0:
        side_y, inner = -0.3, w - 0.09
    else:
        side_y, inner = (0.05 if look.male and look.hair_style == 1 else 0.3), w - 0.12
    outer = _arc((0.0, -0.2), (w + volume, SKULL - 0.2 + volume), 0, -180, 25)  # right, over the top, left
    cap = np.concatenate([[[-w - volume, side_y], [-inner, side_y]], line,
                          [[inner, side_y], [w + volume, side_y]], outer[1:-1]])
    _poly(sk, cap, look.hair, d)


def _glasses(look: Look, sk: Sketch, view: View, eye_y: float) -> None:
    if view.glasses == "none":
        return
    d = DEPTH["eyes"]
    rx, ry = look.eye_w * 1.45, look.eye_w * 1.05
    frame = (25, 25, 25)
    for side in (-1, 1):
        cx = side * look.eye_dx
        ring = _arc((cx, eye_y), (rx, ry), 0, 360, 33)
        if view.glasses == "sun":
            _poly(sk, ring, (35, 30, 30), d)
        else:
            _blend_poly(sk, ring, (235, 225, 215), 0.12, d)
        _stroke(sk, ring, 0.035, frame, d)
    bridge = np.array([[-look.eye_dx + rx, eye_y - 0.02], [look.eye_dx - rx, eye_y - 0.02]])
    _stroke(sk, bridge, 0.035, frame, d)


def _sketch(canvas: Canvas, view: View, expr: Expression) -> Sketch:
    cx, cy = canvas.centre
    roll = view.roll_deg + expr.jitter[2]
    s = UNIT * canvas.width * view.scale
    return Sketch(img=np.empty((canvas.height, canvas.width, 3), np.uint8),
                  ox=cx + view.shift[0] * canvas.width + expr.jitter[0] * s,
                  oy=cy + view.shift[1] * canvas.width + expr.jitter[1] * s,
                  s=s, cos=math.cos(math.radians(roll)), sin=math.sin(math.radians(roll)), roll_deg=roll,
                  yaw=view.yaw * 0.3, pitch=view.pitch * 0.25)


def draw_face(look: Look, view: View, expr: Expression, canvas: Canvas) -> np.ndarray:
    """The posed drawing (before light, blur and noise): (h, w, 3) uint8 BGR.

    The whole portrait is drawn at the canvas's frame size and the window is cut out of it, so
    shapes that cross the window's edge are rasterised alike in every window.
    """
    work = portrait_canvas(canvas.width)
    start = work.top - canvas.top
    if start < 0 or start + canvas.height > work.height:
        raise ValueError(f"{canvas} is not a window of the portrait frame {work}")
    sk = _sketch(work, view, expr)
    _background(sk, view, work)
    _hair_back(look, sk)
    _body(look, sk, view)
    _double_chin(look, sk)
    _ears(look, sk)
    _head(look, sk)
    _cheeks(look, sk)
    _wrinkles(look, sk)
    _beard(look, sk)
    _mouth(look, sk, expr)
    eye_y = _eyes(look, sk, expr)
    _nose(look, sk, eye_y)
    _brows(look, sk, eye_y)
    _hair_top(look, sk)
    _glasses(look, sk, view, eye_y)
    return np.ascontiguousarray(sk.img[start:start + canvas.height])


@functools.lru_cache(maxsize=8)
def _light_basis(canvas: Canvas) -> tuple[np.ndarray, np.ndarray]:
    """x and y offsets from the face centre as fractions of the frame side, (h, w) each."""
    ys, xs = np.mgrid[0:canvas.height, 0:canvas.width].astype(np.float32)
    cx, cy = canvas.centre
    return (xs - cx) / canvas.width, (ys - cy) / canvas.width


TRIANGULAR_SD = math.sqrt(2 * (256 ** 2 - 1) / 12)  # of the difference of two uniform bytes


def sensor_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean noise of standard deviation ``sigma``, float32 of ``shape``: the difference of two
    uniform random bytes (a triangular distribution), several times faster than Gaussian draws."""
    n = int(np.prod(shape))
    pairs = np.frombuffer(rng.bytes(2 * n), np.uint8).reshape(2, n)  # (2, n)
    diff = pairs[0].astype(np.float32) - pairs[1].astype(np.float32)
    return (diff * np.float32(sigma / TRIANGULAR_SD)).reshape(shape)  # (n,) -> shape


def capture(img: np.ndarray, view: View, canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """Apply the view's directional light and colour cast, blur and sensor noise."""
    import cv2

    bx, by = _light_basis(canvas)
    k = 2.0 * view.light_strength
    ramp = bx * np.float32(k * math.cos(view.light_angle)) + by * np.float32(k * math.sin(view.light_angle))
    cast = np.asarray(view.cast, np.float32) * np.float32(view.brightness)  # (3,)
    lit = img.astype(np.float32)
    lit *= (ramp[..., None] + np.float32(1.0)) * cast  # (h, w, 1) * (3,) -> (h, w, 3)
    if view.blur > 0.05:
        sigma = view.blur * canvas.width / 128.0
        lit = cv2.GaussianBlur(lit, (0, 0), sigmaX=sigma, sigmaY=sigma)
    if view.noise > 0:
        lit += sensor_noise(rng, lit.shape, view.noise)
    np.maximum(lit, 0.0, out=lit)
    return cv2.convertScaleAbs(lit)  # rounded to nearest and saturated at 255


def render(look: Look, view: View, expr: Expression, canvas: Canvas, rng: np.random.Generator) -> np.ndarray:
    """A captured face image: (h, w, 3) uint8 BGR."""
    return capture(draw_face(look, view, expr, canvas), view, canvas, rng)


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
          "Wearing_Lipstick": look.makeup, "Heavy_Makeup": look.makeup,
          "Rosy_Cheeks": look.makeup,
          "Mouth_Slightly_Open": expr.mouth_open > 0.3, "Smiling": expr.smile > 0.4,
          "Blurry": view.blur > 1.0, "Young": look.wrinkles <= 0.1 and look.grey < 0.3}
    return {name: 1 if on.get(name, False) else -1 for name in CELEBA_ATTRIBUTES}
