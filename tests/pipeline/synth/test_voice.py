"""KlattGrid voices: Praat's own file layout, pitch and formants that follow the voice, the
channel, the shared-trait coupling, IS09 voicing and pyin F0 per gender, and determinism.

The per-gender checks are the fast part of ``benchmarks/voice_checks.py``: a few identities,
rendered exactly as the corpus renders them (same seeds, channel at the default difficulty).
"""

from __future__ import annotations

import dataclasses
import hashlib
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest

from pipeline.synth import voice as V
from pipeline.synth.face import HAIR_WEIGHTS, SKIN_WEIGHTS
from pipeline.synth.names import GROUPS, Person, sample_people

DIFFICULTY = 0.5  # the corpus default
STREAM_VOX = 2  # pipeline.synth.corpus's seed stream for VoxCeleb identities


def voice(**changes: object) -> V.Voice:
    base = V.Voice(accent="north_american", f0_hz=120.0, f0_range_st=0.8, vtl_cm=17.4, rate=1.0,
                   jitter=0.006, shimmer=0.03, breath=0.1, open_phase=0.6, tilt_db=8.0,
                   flutter=0.2, formant_bw=1.0, creak=0.0)
    return dataclasses.replace(base, **changes)


def sustained(symbol: str, seconds: float = 1.0) -> V.Plan:
    """A plan holding one stressed vowel for ``seconds`` (minus 0.1 s of silence each side)."""
    plan = V.Plan(seconds=seconds)
    plan.formants += [(0.1, V.VOWELS[symbol]), (seconds - 0.1, V.VOWELS[symbol])]
    plan.voicing.append((0.1, seconds - 0.1, 0.0))
    plan.phones.append(V.Phone(symbol, 0.1, seconds - 0.1, True))
    return plan


def median_f0(wav: np.ndarray, sr: int = V.SAMPLE_RATE) -> float:
    """Median autocorrelation F0 of periodic 40 ms frames."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    lo, hi = sr // 400, sr // 60
    f0s = []
    for start in range(0, len(wav) - frame, hop):
        x = wav[start:start + frame] - wav[start:start + frame].mean()
        acf = np.correlate(x, x, "full")[frame - 1:]
        if acf[0] <= 1e-9:
            continue
        lag = lo + int(np.argmax(acf[lo:hi]))
        if acf[lag] / acf[0] > 0.6:
            f0s.append(sr / lag)
    return float(np.median(f0s))


def _rng(*key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=0, spawn_key=key))


@lru_cache(maxsize=1)
def corpus_clips() -> tuple[tuple[str, np.ndarray], ...]:
    """(gender, 16-bit-rounded wav) of one utterance for the first 12 men and 12 women of the
    default corpus, drawn as the corpus draws identity ``i``'s first video (same seed streams and
    order of draws), but 3-5 s long instead of 3-8 s."""
    people: list[Person] = sample_people(200, seed=0)  # the default corpus's identities
    clips = []
    for gender in "mf":
        for i in [k for k, p in enumerate(people) if p.gender == gender][:12]:
            v = V.draw_voice(people[i], DIFFICULTY, _rng(STREAM_VOX, i))
            rng = _rng(STREAM_VOX, i, 0, 0)
            channel = V.draw_channel(DIFFICULTY, rng)
            rir, sos = V.room_response(channel, rng), V.equalizer(channel)
            seconds = round(float(rng.uniform(3.0, 5.0)), 3)
            wav = V.apply_channel(V.render_utterance(v, seconds, rng), channel, rir, sos, rng)
            clips.append((gender, np.round(wav * 32767.0) / 32767.0))
    return tuple(clips)


def test_klattgrid_text_is_praats_own_layout(tmp_path: Path) -> None:
    """The serialised KlattGrid equals what Praat writes for an empty grid of the same shape."""
    from parselmouth.praat import call

    empty = V.KlattSpec(1.0, *[V.NO_POINTS] * 9, [V.NO_POINTS] * 5, [V.NO_POINTS] * 5,
                        *[V.NO_POINTS] * 4, [V.NO_POINTS] * 2, [V.NO_POINTS] * 2)
    reference = call("Create KlattGrid", "kg", 0, 1, 5, 1, 1, 2, 1, 1, 1)

    def tokens(text: str) -> list[object]:
        out: list[object] = []
        for line in filter(None, (s.strip() for s in text.splitlines())):
            try:
                out.append(float(line))
            except ValueError:
                out.append(line)
        return out

    reference.save_as_short_text_file(str(tmp_path / "empty.KlattGrid"))
    assert tokens(V.klattgrid_text(empty)) == tokens((tmp_path / "empty.KlattGrid").read_text())
    spec = V.klatt_spec(voice(), sustained("A"), np.random.default_rng(0))
    grid = V.read_klattgrid(V.klattgrid_text(spec))
    assert call(grid, "Get pitch at time", 0.5) == pytest.approx(120.0, rel=0.1)


def test_pitch_tier_carries_a_period_per_pulse_with_the_voices_jitter() -> None:
    spec = V.klatt_spec(voice(jitter=0.01, f0_range_st=0.0, flutter=0.0), sustained("A", 3.0),
                        np.random.default_rng(1))
    times, f0 = spec.pitch
    periods = np.diff(times)  # (P - 1,)
    assert np.allclose(1.0 / f0[:-1], periods, rtol=1e-9)
    assert np.std(np.diff(np.log(periods))) / np.sqrt(2) == pytest.approx(0.01, rel=0.25)


def test_rendered_pitch_follows_the_voice_f0() -> None:
    for f0 in (100.0, 210.0):
        wav = V.render_utterance(voice(f0_hz=f0), 2.0, np.random.default_rng(0))
        assert len(wav) == 2 * V.SAMPLE_RATE
        assert abs(median_f0(wav) / f0 - 1.0) < 0.12


def test_shorter_vocal_tract_raises_formants() -> None:
    """F1 and F2 of a sustained /A/ (Praat Burg) scale with 17.5 cm / tract length."""
    from parselmouth import Sound
    from parselmouth.praat import call

    def f1_f2(vtl: float) -> np.ndarray:
        wav = V.render_plan(voice(vtl_cm=vtl), sustained("A"), np.random.default_rng(2))
        formant = call(Sound(wav, V.SAMPLE_RATE), "To Formant (burg)", 0.0, 5, 5500.0, 0.025, 50.0)
        cand = [(call(formant, "Get value at time", k, 0.5, "hertz", "Linear"),
                 call(formant, "Get bandwidth at time", k, 0.5, "hertz", "Linear"))
                for k in range(1, 6)]
        return np.array([f for f, b in cand if b < 600.0][:2])

    long_tract, short_tract = f1_f2(17.5), f1_f2(14.0)
    assert np.allclose(long_tract, V.VOWELS["A"][:2], rtol=0.08)
    assert np.all((short_tract / long_tract > 1.15) & (short_tract / long_tract < 1.35))


def test_aspiration_lowers_the_harmonics_to_noise_ratio() -> None:
    from parselmouth import Sound
    from parselmouth.praat import call

    def hnr(breath: float) -> float:
        wav = V.render_plan(voice(breath=breath), sustained("A"), np.random.default_rng(3))
        harmonicity = call(Sound(wav, V.SAMPLE_RATE), "To Harmonicity (cc)", 0.01, 75.0, 0.1, 1.0)
        return call(harmonicity, "Get mean", 0.2, 0.8)

    clean, breathy = hnr(0.02), hnr(0.3)
    assert clean > 25.0 and 10.0 < breathy < clean - 8.0


def test_plans_have_syllables_pauses_and_the_accents_rate() -> None:
    rng = np.random.default_rng(4)
    rates = []
    for accent in ("north_american", "latin"):
        v = voice(accent=accent)
        plans = [V.plan_utterance(v, 6.0, rng) for _ in range(20)]
        rates.append(np.mean([p.syllables / p.seconds for p in plans]))
        for p in plans:
            assert all(b < c for (_, b), (c, _) in zip(p.phrases, p.phrases[1:], strict=False))
            assert all(0.0 <= ph.start < ph.end <= p.seconds for ph in p.phones)
    assert 4.0 <= rates[0] <= 5.0 and rates[1] > rates[0]  # latin is syllable-timed and faster


def test_channel_sets_level_and_adds_noise_at_the_snr() -> None:
    from scipy.signal import fftconvolve, sosfilt

    rng = np.random.default_rng(1)
    dry = V.render_utterance(voice(), 1.5, rng)
    ch = dataclasses.replace(V.draw_channel(0.5, rng), snr_db=10.0, hum_hz=0.0, level_dbfs=-6.0)
    rir, sos = V.room_response(ch, rng), V.equalizer(ch)
    mix = V.apply_channel(dry, ch, rir, sos, np.random.default_rng(2))
    assert abs(np.abs(mix).max() - 10 ** (-6 / 20)) < 1e-9
    wet = sosfilt(sos, fftconvolve(dry, rir)[: len(dry)])
    gain = float(mix @ wet / (wet @ wet))  # noise is independent of the speech
    noise = mix / gain - wet
    snr = 10 * np.log10(np.mean(wet ** 2) / np.mean(noise ** 2))
    assert abs(snr - 10.0) < 0.5


def test_difficulty_weakens_the_voice_dependence_on_shared_traits() -> None:
    people = sample_people(600, seed=4)
    men = [p for p in people if p.gender == "m"]

    def body_corr(difficulty: float) -> float:
        rng = np.random.default_rng(0)
        f0 = [np.log(V.draw_voice(p, difficulty, rng).f0_hz) for p in men]
        return float(np.corrcoef(f0, [p.body for p in men])[0, 1])

    def gender_gap(difficulty: float) -> float:
        rng = np.random.default_rng(0)
        f0 = {g: np.median([V.draw_voice(p, difficulty, rng).f0_hz
                            for p in people if p.gender == g]) for g in "mf"}
        return f0["f"] / f0["m"]

    assert body_corr(0.0) < -0.5 and abs(body_corr(1.0)) < 0.15
    assert gender_gap(0.0) > 1.5 and 1.1 < gender_gap(1.0) < 1.4


def test_every_nationality_group_has_an_accent_and_an_appearance() -> None:
    assert set(V.ACCENTS) == set(SKIN_WEIGHTS) == set(HAIR_WEIGHTS) == set(GROUPS)
    assert all(set(a.vowels) <= set(V.VOWELS) for a in V.ACCENTS.values())


def test_is09_hears_both_genders_as_voiced_alike() -> None:
    """openSMILE IS09's F0 (the LLD behind its F0 functionals) is non-zero on 20-60 % of the
    frames of both genders, and the genders differ by at most a factor 1.5 (issue 12)."""
    import opensmile

    smile = opensmile.Smile(feature_set=opensmile.FeatureSet.IS09,
                            feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    voiced: dict[str, list[float]] = {"m": [], "f": []}
    for gender, wav in corpus_clips():
        f0 = smile.process_signal(wav.astype(np.float32), V.SAMPLE_RATE)["F0_sma"].to_numpy()
        voiced[gender].append(float((f0 > 0).mean()))
    men, women = np.mean(voiced["m"]), np.mean(voiced["f"])
    assert 0.2 <= men <= 0.6 and 0.2 <= women <= 0.6
    assert max(men, women) / min(men, women) <= 1.5


def test_pyin_hears_published_mean_f0_per_gender() -> None:
    """librosa.pyin's mean F0: men 100-150 Hz, women 180-250 Hz (eight clips each)."""
    import librosa

    f0_by: dict[str, list[float]] = {"m": [], "f": []}
    for gender, wav in corpus_clips():
        if len(f0_by[gender]) == 8:
            continue
        f0, flag, _ = librosa.pyin(wav.astype(np.float32), fmin=60.0, fmax=500.0,
                                   sr=V.SAMPLE_RATE, frame_length=1024, hop_length=320)
        f0_by[gender].append(float(np.mean(f0[flag & np.isfinite(f0)])))
    assert 100.0 <= np.mean(f0_by["m"]) <= 150.0
    assert 180.0 <= np.mean(f0_by["f"]) <= 250.0


RENDER_DIGEST = """
import hashlib, numpy as np
from pipeline.synth import voice as V
v = V.Voice(accent="latin", f0_hz=190.0, f0_range_st=1.1, vtl_cm=14.8, rate=1.0, jitter=0.007,
            shimmer=0.02, breath=0.15, open_phase=0.7, tilt_db=10.0, flutter=0.2, formant_bw=1.0,
            creak=0.5)
print(hashlib.sha256(V.render_utterance(v, 2.5, np.random.default_rng(7)).tobytes()).hexdigest())
"""


def test_rendering_is_byte_identical_in_process_and_in_a_fresh_process() -> None:
    v = V.Voice(accent="latin", f0_hz=190.0, f0_range_st=1.1, vtl_cm=14.8, rate=1.0, jitter=0.007,
                shimmer=0.02, breath=0.15, open_phase=0.7, tilt_db=10.0, flutter=0.2,
                formant_bw=1.0, creak=0.5)
    first = V.render_utterance(v, 2.5, np.random.default_rng(7))
    V.render_utterance(voice(), 1.3, np.random.default_rng(8))  # other Praat work in between
    second = V.render_utterance(v, 2.5, np.random.default_rng(7))
    assert first.tobytes() == second.tobytes()
    out = subprocess.run([sys.executable, "-c", RENDER_DIGEST], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == hashlib.sha256(first.tobytes()).hexdigest()
