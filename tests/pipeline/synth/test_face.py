"""Drawn faces: labelled attributes are visible, shared traits shape the face, rendering is deterministic."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from pipeline.synth import face as F
from pipeline.synth.names import Person, sample_people

# Look fields that carry each labelled attribute (besides Male, which changes many).
ATTRIBUTE_FIELDS = {
    "Big_Nose": ("big_nose", "nose_len", "nose_w"), "Pointy_Nose": ("pointy",),
    "Big_Lips": ("big_lips", "lip_h"), "Narrow_Eyes": ("eye_h",), "Arched_Eyebrows": ("arched",),
    "Bushy_Eyebrows": ("bushy", "brow_thick"), "High_Cheekbones": ("cheekbones",),
    "Oval_Face": ("oval", "length", "jaw"), "Chubby": ("chubby", "width", "jaw"),
    "Double_Chin": ("double_chin",), "Receding_Hairline": ("receding", "bald"),
}
NEUTRAL = F.View(yaw=0.0, pitch=0.0, roll_deg=0.0, scale=1.0, shift=(0.0, 0.0), light_angle=0.0,
                 light_strength=0.0, brightness=1.0, cast=(1.0, 1.0, 1.0),
                 bg=((90.0, 120.0, 60.0), (90.0, 120.0, 60.0)), bg_shapes=(), clothes=(120.0, 40.0, 40.0),
                 glasses="none", blur=0.0, noise=0.0, jpeg_quality=90)
STILL = F.Expression(mouth_open=0.0, smile=0.0, blink=False, jitter=(0.0, 0.0, 0.0))


@pytest.fixture(scope="module")
def looks() -> list[F.Look]:
    rng = np.random.default_rng(0)
    return [F.draw_look(p, rng) for p in sample_people(400, seed=9)]


def small(look: F.Look) -> np.ndarray:
    import cv2

    img = F.draw_face(look, NEUTRAL, STILL, F.facetrack_canvas(128))
    return cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(int)


@pytest.mark.parametrize("attribute", sorted(ATTRIBUTE_FIELDS))
def test_each_private_attribute_is_visible_at_64px(looks: list[F.Look], attribute: str) -> None:
    base = next(lk for lk in looks if not any(lk.private_attributes()[a] for a in ATTRIBUTE_FIELDS)
                and not lk.bald)
    donor = next(lk for lk in looks if lk.private_attributes()[attribute] and not lk.bald)
    changed = dataclasses.replace(base, **{f: getattr(donor, f) for f in ATTRIBUTE_FIELDS[attribute]})
    diff = [a for a in F.PRIVATE_ATTRIBUTES if changed.private_attributes()[a] != base.private_attributes()[a]]
    assert diff == [attribute]
    pixels = (np.abs(small(changed) - small(base)).max(axis=2) > 30).sum()
    assert pixels >= 8, f"{attribute} changes only {pixels} pixels at 64x64"


def test_attribute_flags_match_the_geometry(looks: list[F.Look]) -> None:
    def split(flag: str, field: str) -> tuple[float, float]:
        on = [getattr(lk, field) for lk in looks if getattr(lk, flag)]
        off = [getattr(lk, field) for lk in looks if not getattr(lk, flag)]
        return min(on), max(off)

    for flag, field in (("big_nose", "nose_len"), ("big_lips", "lip_h"), ("bushy", "brow_thick")):
        lowest_on, highest_off = split(flag, field)
        assert lowest_on > highest_off, flag
    assert all(lk.private_attributes()["Narrow_Eyes"] == (lk.eye_h < 0.4) for lk in looks)
    rates = {a: np.mean([lk.private_attributes()[a] for lk in looks]) for a in F.PRIVATE_ATTRIBUTES}
    assert all(0.02 < r < 0.7 for r in rates.values()), rates


def test_shared_traits_shape_the_face() -> None:
    rng = np.random.default_rng(1)

    def person(**kw: object) -> Person:
        base = {"name": "Ann_Lee", "gender": "m", "nationality": "USA", "age": 40.0, "body": 0.0}
        return Person(**{**base, **kw})  # type: ignore[arg-type]

    def mean(attr: str, n: int = 300, **kw: object) -> float:
        return float(np.mean([getattr(F.draw_look(person(**kw), rng), attr) for _ in range(n)]))

    assert mean("width", body=1.5) > mean("width", body=-1.5) * 1.15
    assert mean("chubby", body=2.0) > 0.5 > 0.05 > mean("chubby", body=-1.0)
    assert mean("receding", age=70.0) > 0.3 > 0.06 > mean("receding", age=70.0, gender="f")
    assert mean("grey", age=75.0) > 0.5 > 0.1 > mean("grey", age=25.0)
    skin = {c: np.mean([sum(F.draw_look(person(nationality=c), rng).skin) for _ in range(200)])
            for c in ("Norway", "India")}
    assert skin["Norway"] > skin["India"] + 100
    assert mean("male", gender="f") == 0.0 and mean("male") == 1.0


def test_rendering_is_deterministic_and_each_view_differs(looks: list[F.Look]) -> None:
    canvas = F.facetrack_canvas(96)

    def jpeg(view_seed: int, noise_seed: int) -> bytes:
        view = F.draw_view(0.5, np.random.default_rng(view_seed))
        img = F.render(looks[0], view, STILL, canvas, np.random.default_rng(noise_seed))
        assert img.shape == (96, 96, 3) and img.dtype == np.uint8
        return F.encode_jpeg(img, view.jpeg_quality)

    assert jpeg(1, 1) == jpeg(1, 1)
    assert jpeg(1, 1) != jpeg(2, 1)
    celeba = F.render(looks[0], NEUTRAL, STILL, F.CELEBA_CANVAS, np.random.default_rng(0))
    assert celeba.shape == (218, 178, 3)


def test_celeba_labels_cover_all_40_attributes(looks: list[F.Look]) -> None:
    look = looks[3]
    labels = F.celeba_labels(look, dataclasses.replace(NEUTRAL, glasses="sun"), STILL)
    assert list(labels) == list(F.CELEBA_ATTRIBUTES) and len(labels) == 40
    assert set(labels.values()) <= {-1, 1}
    assert labels["Eyeglasses"] == 1
    assert F.celeba_labels(look, NEUTRAL, STILL)["Eyeglasses"] == -1
    for name, value in look.private_attributes().items():
        assert labels[name] == (1 if value else -1)
    for never in ("Attractive", "Wearing_Hat", "Heavy_Makeup", "Wearing_Necktie"):
        assert labels[never] == -1
