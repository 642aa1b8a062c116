"""Drawn faces: one renderer and framing for face tracks and CelebA, visible attributes, priors,
deterministic rendering."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import pytest

from pipeline.common.parallel import imap_ordered
from pipeline.synth import face as F
from pipeline.synth.corpus import celeba_looks, plan_celeba, small_config, stratify
from pipeline.synth.names import Person, sample_people

# Look fields that carry each labelled attribute (Male is the sex flag itself: jaw and chin,
# neck, beard shadow are drawn from it).
ATTRIBUTE_FIELDS = {
    "Male": ("male",),
    "Big_Nose": ("big_nose", "nose_len", "nose_w"), "Pointy_Nose": ("pointy",),
    "Big_Lips": ("big_lips", "lip_h", "lip_w"), "Narrow_Eyes": ("eye_h",), "Arched_Eyebrows": ("arched",),
    "Bushy_Eyebrows": ("bushy", "brow_thick"), "High_Cheekbones": ("cheekbones",),
    "Oval_Face": ("oval", "length", "jaw"), "Chubby": ("chubby", "width", "jaw"),
    "Double_Chin": ("double_chin",), "Receding_Hairline": ("receding", "bald"),
}
NEUTRAL = F.View(yaw=0.0, pitch=0.0, roll_deg=0.0, scale=1.0, shift=(0.0, 0.0), light_angle=0.0,
                 light_strength=0.0, brightness=1.0, cast=(1.0, 1.0, 1.0),
                 bg=((90.0, 120.0, 60.0), (90.0, 120.0, 60.0)), bg_shapes=(), clothes=(120.0, 40.0, 40.0),
                 glasses="none", blur=0.0, noise=0.0, jpeg_quality=90)
STILL = F.Expression(mouth_open=0.0, smile=0.0, blink=False, jitter=(0.0, 0.0, 0.0))
MIN_CHANGED_PIXELS = 30  # of 64x64, by more than 30 grey levels in some channel


@pytest.fixture(scope="module")
def looks() -> list[F.Look]:
    rng = np.random.default_rng(0)
    return [F.draw_look(p, rng) for p in sample_people(400, seed=9)]


def small(look: F.Look) -> np.ndarray:
    """The 64 px face the attribute model sees (face-track crop at 128 px, area-resized)."""
    import cv2

    img = F.draw_face(look, NEUTRAL, STILL, F.facetrack_canvas(128))
    return cv2.resize(img, (64, 64), interpolation=cv2.INTER_AREA).astype(int)


def changed_pixels(a: F.Look, b: F.Look) -> int:
    return int((np.abs(small(a) - small(b)).max(axis=2) > 30).sum())


@pytest.mark.parametrize("attribute", sorted(ATTRIBUTE_FIELDS))
def test_each_private_attribute_is_visible_at_64px(looks: list[F.Look], attribute: str) -> None:
    """Toggling one attribute on faces without any changes many pixels at 64x64, for a man and a
    woman with different hair, skin and brows."""
    fields = ATTRIBUTE_FIELDS[attribute]
    plain = [lk for lk in looks if not any(v for a, v in lk.private_attributes().items() if a != "Male")
             and not lk.bald]
    bases = [next(lk for lk in plain if lk.male), next(lk for lk in plain if not lk.male)]
    for base in bases:
        donor = next(lk for lk in looks if lk.private_attributes()[attribute] != base.private_attributes()[attribute]
                     and not lk.bald)
        changed = dataclasses.replace(base, **{f: getattr(donor, f) for f in fields})
        diff = [a for a in F.PRIVATE_ATTRIBUTES
                if changed.private_attributes()[a] != base.private_attributes()[a]]
        assert diff == [attribute]
        pixels = changed_pixels(base, changed)
        assert pixels >= MIN_CHANGED_PIXELS, f"{attribute} changes only {pixels} pixels at 64x64"


def test_attribute_flags_match_the_geometry(looks: list[F.Look]) -> None:
    def split(flag: str, field: str) -> tuple[float, float]:
        on = [getattr(lk, field) for lk in looks if getattr(lk, flag)]
        off = [getattr(lk, field) for lk in looks if not getattr(lk, flag)]
        return min(on), max(off)

    for flag, field in (("big_nose", "nose_len"), ("big_nose", "nose_w"), ("big_lips", "lip_h"),
                        ("bushy", "brow_thick"), ("oval", "length")):
        lowest_on, highest_off = split(flag, field)
        assert lowest_on > highest_off, flag
    assert all(lk.private_attributes()["Narrow_Eyes"] == (lk.eye_h < 0.4) for lk in looks)
    eye_h = np.array([lk.eye_h for lk in looks])
    assert not ((eye_h > 0.25) & (eye_h < 0.6)).any()  # bimodal: slits or open eyes
    rates = {a: np.mean([lk.private_attributes()[a] for lk in looks]) for a in F.PRIVATE_ATTRIBUTES}
    assert all(0.1 < r < 0.6 for r in rates.values()), rates


def person(**kw: object) -> Person:
    base = {"name": "Ann_Lee", "gender": "m", "nationality": "USA", "age": 40.0, "body": 0.0}
    return Person(**{**base, **kw})  # type: ignore[arg-type]


def test_shared_traits_shape_the_face() -> None:
    rng = np.random.default_rng(1)

    def mean(attr: str, n: int = 300, **kw: object) -> float:
        return float(np.mean([getattr(F.draw_look(person(**kw), rng), attr) for _ in range(n)]))

    assert mean("width", body=1.5) > mean("width", body=-1.5) * 1.12
    assert mean("chubby", body=2.0) > 0.5 > 0.05 > mean("chubby", body=-1.0)
    assert mean("double_chin", body=2.0, age=60.0) > 0.5 > 0.05 > mean("double_chin", body=-1.0, age=30.0)
    assert mean("receding", age=70.0) > 0.3 > 0.1 > mean("receding", age=70.0, gender="f")
    assert mean("grey", age=75.0) > 0.5 > 0.1 > mean("grey", age=25.0)
    skin = {c: np.mean([sum(F.draw_look(person(nationality=c), rng).skin) for _ in range(200)])
            for c in ("Norway", "India")}
    assert skin["Norway"] > skin["India"] + 100
    assert mean("male", gender="f") == 0.0 and mean("male") == 1.0


def test_sex_typical_cues_follow_real_priors() -> None:
    """Men: wider, squarer jaw, thicker and lower brows, short hair, facial hair for about 40-50%;
    women: long or medium hair, make-up for about 3 in 4, arched brows more often."""
    rng = np.random.default_rng(2)
    men = [F.draw_look(person(body=float(b)), rng) for b in rng.normal(size=400)]
    women = [F.draw_look(person(gender="f", body=float(b)), rng) for b in rng.normal(size=400)]

    def mean(group: list[F.Look], fn: object) -> float:
        return float(np.mean([fn(lk) for lk in group]))  # type: ignore[operator]

    assert mean(men, lambda lk: lk.jaw) > mean(women, lambda lk: lk.jaw) + 0.2
    assert mean(men, lambda lk: lk.brow_thick) > mean(women, lambda lk: lk.brow_thick) * 1.3
    assert mean(men, lambda lk: lk.brow_y) < mean(women, lambda lk: lk.brow_y) - 0.05
    assert mean(men, lambda lk: lk.hair_style == 0) > 0.8 > 0.2 > mean(women, lambda lk: lk.hair_style == 0)
    assert 0.35 < mean(men, lambda lk: lk.beard != "none") < 0.65
    assert mean(women, lambda lk: lk.beard != "none") == 0.0
    assert 0.65 < mean(women, lambda lk: lk.makeup) < 0.85 and mean(men, lambda lk: lk.makeup) == 0.0
    assert mean(women, lambda lk: lk.arched) > mean(men, lambda lk: lk.arched) + 0.1
    assert mean(men, lambda lk: lk.bushy) > mean(women, lambda lk: lk.bushy)
    # Softened rates: the sex does not give the attribute away.
    for attr in ("big_nose", "pointy", "big_lips", "cheekbones"):
        assert abs(mean(men, lambda lk, a=attr: getattr(lk, a)) - mean(women, lambda lk, a=attr: getattr(lk, a))) < 0.2


def test_a_face_track_is_the_central_square_of_the_celeba_image(looks: list[F.Look]) -> None:
    """Same look, view and expression: the face track rendered at 178 px is rows 20-197 of the
    178x218 CelebA image, pixel for pixel (blur and noise off), under any pose and light; at
    128 px it is the same picture at a lower resolution."""
    import cv2

    rng = np.random.default_rng(3)
    for look in looks[:8]:
        view = dataclasses.replace(F.draw_view(0.5, rng), blur=0.0, noise=0.0)
        expr = F.draw_expression(rng)
        celeba = F.render(look, view, expr, F.CELEBA_CANVAS, rng)
        track = F.render(look, view, expr, F.facetrack_canvas(178), rng)
        assert celeba.shape == (218, 178, 3) and track.shape == (178, 178, 3)
        assert np.array_equal(track, celeba[F.CELEBA_TOP:F.CELEBA_TOP + 178])
        assert np.array_equal(F.CELEBA_CANVAS.crop_square(celeba), track)
        small_track = F.render(look, view, expr, F.facetrack_canvas(128), rng).astype(int)
        crop = cv2.resize(track, (128, 128), interpolation=cv2.INTER_AREA).astype(int)
        other = F.render(looks[-1], view, expr, F.facetrack_canvas(128), rng).astype(int)
        assert np.abs(small_track - crop).mean() < 3.0 < np.abs(other - crop).mean()
    with pytest.raises(ValueError, match="not a window"):
        F.draw_face(looks[0], NEUTRAL, STILL, F.Canvas(178, 240, 30))


def test_celeba_views_are_the_face_track_views_aligned() -> None:
    """CelebA photos share the face tracks' yaw, light and glasses ranges; roll, scale and shift
    shrink to ``ALIGNED_PLANE`` of theirs; blur and noise are milder."""
    tracks = [F.draw_view(0.5, np.random.default_rng(i)) for i in range(300)]
    celeba = [F.draw_view(0.5, np.random.default_rng(i), aligned=True) for i in range(300)]

    def spread(views: list[F.View], fn: object) -> float:
        return float(np.max(np.abs([fn(v) for v in views])))  # type: ignore[operator]

    for fn in (lambda v: v.roll_deg, lambda v: v.shift[0], lambda v: v.scale - 1.0):
        ratio = spread(celeba, fn) / spread(tracks, fn)
        assert abs(ratio - F.ALIGNED_PLANE) < 0.1
    assert abs(spread(celeba, lambda v: v.yaw) / spread(tracks, lambda v: v.yaw) - 1.0) < 0.1
    assert spread(celeba, lambda v: v.blur) < spread(tracks, lambda v: v.blur)
    assert {v.glasses for v in celeba} == {v.glasses for v in tracks} == {"none", "clear", "sun"}


def _jpeg(look: F.Look, seed: int, size: int) -> bytes:
    rng = np.random.default_rng(seed)
    view = F.draw_view(0.5, rng)
    return F.encode_jpeg(F.render(look, view, F.draw_expression(rng), F.facetrack_canvas(size), rng),
                         view.jpeg_quality)


def test_rendering_is_deterministic_in_and_across_processes(looks: list[F.Look]) -> None:
    render = functools.partial(_jpeg, looks[0], size=96)
    here = [render(seed) for seed in range(6)]
    assert here == [render(seed) for seed in range(6)]
    assert list(imap_ordered(render, range(6), workers=2)) == here
    assert len(set(here)) == 6  # each view differs
    img = F.render(looks[0], NEUTRAL, STILL, F.facetrack_canvas(96), np.random.default_rng(0))
    assert img.shape == (96, 96, 3) and img.dtype == np.uint8


def test_sensor_noise_has_the_requested_spread() -> None:
    noise = F.sensor_noise(np.random.default_rng(0), (200, 300, 3), 3.0)
    assert noise.shape == (200, 300, 3) and noise.dtype == np.float32
    assert abs(float(noise.mean())) < 0.05 and abs(float(noise.std()) - 3.0) < 0.05


def test_celeba_labels_cover_all_40_attributes(looks: list[F.Look]) -> None:
    look = next(lk for lk in looks if lk.makeup)
    labels = F.celeba_labels(look, dataclasses.replace(NEUTRAL, glasses="sun"), STILL)
    assert list(labels) == list(F.CELEBA_ATTRIBUTES) and len(labels) == 40
    assert set(labels.values()) <= {-1, 1}
    assert labels["Eyeglasses"] == 1 and labels["Wearing_Lipstick"] == 1 and labels["Male"] == -1
    assert F.celeba_labels(look, NEUTRAL, STILL)["Eyeglasses"] == -1
    for name, value in look.private_attributes().items():
        assert labels[name] == (1 if value else -1)
    for never in ("Attractive", "Wearing_Hat", "Bangs", "Wearing_Necktie"):
        assert labels[never] == -1


def test_celeba_partitions_are_stratified_on_the_private_attributes() -> None:
    cfg = dataclasses.replace(small_config(), celeba_identities=200)
    plan = plan_celeba(cfg)
    labels = np.array([[lk.private_attributes()[a] for a in F.PRIVATE_ATTRIBUTES]
                       for lk in celeba_looks(cfg, plan.people)])  # (200, 12)
    part = np.array(plan.partitions)
    assert [int((part == p).sum()) for p in range(3)] == [160, 20, 20]
    for p in (1, 2):  # val and test hold about a tenth of every attribute's positives
        share = labels[part == p].sum(axis=0) / labels.sum(axis=0)
        assert (np.abs(share - 0.1) <= 0.04).all(), share
        assert (labels[part == p].sum(axis=0) >= 2).all()
    rows = np.random.default_rng(0).random((50, 4)) < 0.3
    assert sorted(np.bincount(stratify(rows, [30, 10, 10], np.random.default_rng(1)))) == [10, 10, 30]
