"""Source-filter voices: pitch follows F0, formants follow tract length, difficulty loosens the link."""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.synth import voice as V
from pipeline.synth.face import HAIR_WEIGHTS, SKIN_WEIGHTS
from pipeline.synth.names import GROUPS, sample_people


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


def voice(**changes: object) -> V.Voice:
    base = V.Voice(accent="north_american", f0_hz=120.0, f0_range_st=0.5, vtl_cm=17.0, rate=1.0,
                   jitter=0.004, shimmer=0.03, breath=0.02, tilt_hz=300.0, formant_bw=1.0)
    return dataclasses.replace(base, **changes)


def test_rendered_pitch_follows_the_voice_f0() -> None:
    for f0 in (100.0, 210.0):
        wav = V.render_utterance(voice(f0_hz=f0), 2.0, np.random.default_rng(0))
        assert len(wav) == 2 * V.SAMPLE_RATE
        assert abs(median_f0(wav) / f0 - 1.0) < 0.12


def test_shorter_vocal_tract_raises_formants() -> None:
    freqs = np.linspace(0, 8000, 257)
    formants = np.array([[700.0, 1200.0, 2500.0]])  # one frame: (1, 3)
    long_tract = V.vocal_tract(voice(vtl_cm=17.5), formants, freqs)[0]
    short_tract = V.vocal_tract(voice(vtl_cm=14.0), formants, freqs)[0]
    band = freqs < 1100  # first-formant region
    f1_long = freqs[band][np.argmax(long_tract[band])]
    f1_short = freqs[band][np.argmax(short_tract[band])]
    assert f1_short / f1_long == np.clip(f1_short / f1_long, 1.15, 1.35)


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
        f0 = {g: np.median([V.draw_voice(p, difficulty, rng).f0_hz for p in people if p.gender == g])
              for g in "mf"}
        return f0["f"] / f0["m"]

    assert body_corr(0.0) < -0.5 and abs(body_corr(1.0)) < 0.15
    assert gender_gap(0.0) > 1.6 and 1.1 < gender_gap(1.0) < 1.45


def test_every_nationality_group_has_an_accent_and_an_appearance() -> None:
    assert set(V.ACCENTS) == set(SKIN_WEIGHTS) == set(HAIR_WEIGHTS) == set(GROUPS)
    assert all(set(a.vowels) <= set(V.VOWELS) for a in V.ACCENTS.values())
