"""Source-filter voice synthesis for the synthetic corpus (numpy + scipy only).

A voice is a glottal pulse train at the speaker's F0 (with jitter and shimmer) plus aspiration and
fricative noise, shaped frame by frame by a cascade of formant resonances whose frequencies are
scaled by the vocal-tract length. Accents (one per nationality group) set vowel targets, speech
rate, rhythm and intonation. Each video then adds its own channel: reverberation, EQ and
background noise.

Shared traits (gender, accent group, age, body size) drive F0 and vocal-tract length; the
``difficulty`` knob weakens that dependence and widens channel variation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from pipeline.synth.names import GROUPS, Person

SAMPLE_RATE = 16_000
HOP = 160  # 10 ms control frames
NPERSEG = 400  # 25 ms analysis window
NFFT = 512
NEUTRAL_VTL_CM = 17.5  # the tract length the vowel tables are written for

# (F1, F2, F3) of a 17.5 cm tract, Hz.
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (280, 2250, 2950), "I": (400, 1920, 2560), "e": (480, 2000, 2600),
    "E": (580, 1800, 2500), "ae": (680, 1700, 2420), "a": (760, 1220, 2500),
    "A": (720, 1100, 2450), "O": (590, 900, 2420), "o": (480, 880, 2350), "U": (450, 1030, 2300),
    "u": (320, 900, 2250), "V": (640, 1190, 2400), "er": (490, 1350, 1700), "y": (300, 1700, 2100),
    "schwa": (500, 1480, 2450),
}


@dataclass(frozen=True)
class Accent:
    """Speech style of a nationality group: vowel system, rhythm and intonation."""

    vowels: tuple[str, ...]
    f2_shift: float  # multiplier on F2 (fronting > 1)
    f3_shift: float  # multiplier on F3 (retroflex colouring < 1)
    rate: float  # syllables per second
    rhythm: float  # sd of log syllable duration (stress-timed > syllable-timed)
    accent_st: float  # pitch-accent height, semitones
    declination: float  # semitones per second
    final_rise: float  # probability that a phrase ends rising
    phrase_syllables: float  # mean syllables per phrase


ACCENTS: dict[str, Accent] = {
    "north_american": Accent(("i", "I", "E", "ae", "A", "V", "u", "o", "er", "schwa"),
                             1.00, 1.00, 4.6, 0.35, 3.5, 1.0, 0.15, 7.0),
    "british": Accent(("i", "I", "E", "ae", "A", "O", "U", "u", "schwa"),
                      0.96, 1.04, 4.4, 0.40, 5.0, 1.6, 0.10, 6.0),
    "oceanic": Accent(("i", "I", "e", "ae", "a", "O", "u", "er", "schwa"),
                      1.07, 1.02, 4.8, 0.38, 3.0, 0.5, 0.55, 6.0),
    "south_asian": Accent(("i", "e", "a", "o", "u", "schwa"),
                          1.02, 0.86, 5.4, 0.18, 2.5, 0.6, 0.30, 9.0),
    "caribbean": Accent(("i", "e", "a", "A", "o", "u", "schwa"),
                        1.00, 0.95, 4.9, 0.22, 4.5, 0.8, 0.35, 7.0),
    "north_european": Accent(("i", "y", "e", "E", "a", "o", "u"),
                             0.94, 1.06, 4.2, 0.30, 4.0, 1.2, 0.12, 5.5),
    "latin": Accent(("i", "e", "a", "o", "u"), 1.04, 1.00, 5.8, 0.15, 5.5, 0.9, 0.25, 10.0),
    "east_asian": Accent(("i", "e", "a", "o", "u", "schwa"),
                         0.98, 1.02, 5.2, 0.14, 6.0, 0.4, 0.20, 8.0),
    "middle_eastern": Accent(("i", "a", "A", "u", "e", "o"), 0.97, 0.97, 5.0, 0.25, 4.0, 1.0, 0.20, 7.0),
}


@dataclass(frozen=True)
class Voice:
    """Identity-level voice parameters."""

    accent: str  # accent group (usually the nationality's group)
    f0_hz: float  # mean fundamental frequency
    f0_range_st: float  # scale of intonation excursions (semitones multiplier)
    vtl_cm: float  # vocal-tract length (formants scale with 17.5 / vtl)
    rate: float  # speech rate multiplier
    jitter: float  # relative sd of glottal period
    shimmer: float  # relative sd of pulse amplitude
    breath: float  # aspiration noise level
    tilt_hz: float  # corner of the glottal spectral tilt
    formant_bw: float  # bandwidth multiplier


@dataclass(frozen=True)
class Channel:
    """Per-video recording channel."""

    rt60: float  # reverberation time, s
    drr_db: float  # direct-to-reverberant ratio
    highpass_hz: float
    lowpass_hz: float
    peak_hz: float
    peak_db: float
    snr_db: float
    noise_color: float  # 0 white, 1 pink, 2 brown
    hum_hz: float  # mains hum (0 = none)
    level_dbfs: float  # peak level


def coupling(difficulty: float) -> float:
    """Correlation between the voice's view of a shared trait and the trait itself."""
    return float(np.clip(1.0 - difficulty, 0.0, 1.0)) * 0.95


def _voice_view(value: float, rho: float, rng: np.random.Generator) -> float:
    """``rho``-correlated noisy copy of a unit-variance trait."""
    return rho * value + math.sqrt(1.0 - rho * rho) * float(rng.normal())


def _voice_accent(person: Person, difficulty: float, rng: np.random.Generator) -> str:
    """The nationality's accent, or (more often at high difficulty) some other group's."""
    if rng.random() < 0.1 + 0.5 * difficulty:
        return GROUPS[int(rng.integers(len(GROUPS)))]
    return person.group


def draw_voice(person: Person, difficulty: float, rng: np.random.Generator) -> Voice:
    """Voice parameters from the shared traits (weakened by ``difficulty``) and own traits."""
    rho = coupling(difficulty)
    body = _voice_view(person.body, rho, rng)
    age = 42.0 + 13.0 * _voice_view((person.age - 42.0) / 13.0, rho, rng)
    male = person.gender == "m"
    gap = 1.0 - 0.45 * difficulty  # gender F0 gap shrinks with difficulty
    base = 165.0 * (0.72 if male else 1.27) ** gap
    age_f0 = 1.0 + (0.0015 if male else -0.003) * (age - 42.0)
    f0 = base * age_f0 * math.exp(-0.09 * body + rng.normal(0.0, 0.06 + 0.08 * difficulty))
    vtl = (17.2 if male else 14.9) * (1.0 + 0.04 * body) * math.exp(rng.normal(0.0, 0.025))
    old = max(age - 45.0, 0.0)
    return Voice(
        accent=_voice_accent(person, difficulty, rng),
        f0_hz=round(float(np.clip(f0, 70.0, 320.0)), 2),
        f0_range_st=round(float(math.exp(rng.normal(0.0, 0.25))), 3),
        vtl_cm=round(float(vtl), 3),
        rate=round(float(math.exp(rng.normal(0.0, 0.1)) * (1.0 - 0.003 * (age - 42.0))), 3),
        jitter=round(0.004 + 0.0002 * old + abs(float(rng.normal(0.0, 0.004))), 4),
        shimmer=round(0.03 + 0.002 * old + abs(float(rng.normal(0.0, 0.03))), 4),
        breath=round(float(rng.uniform(0.02, 0.10) + (0.04 if not male else 0.0)), 4),
        tilt_hz=round(float(rng.uniform(180.0, 450.0)), 1),
        formant_bw=round(float(rng.uniform(0.8, 1.4)), 3),
    )


def draw_channel(difficulty: float, rng: np.random.Generator) -> Channel:
    """A video's recording channel; stronger variation at higher ``difficulty``."""
    spread = 0.5 + difficulty
    snr_low = 5.0 + 15.0 * (1.0 - difficulty)
    return Channel(
        rt60=round(float(rng.uniform(0.05, 0.15 + 0.55 * spread)), 3),
        drr_db=round(float(rng.uniform(2.0, 16.0 - 6.0 * difficulty)), 2),
        highpass_hz=round(float(rng.uniform(40.0, 80.0 + 160.0 * spread)), 1),
        lowpass_hz=round(float(rng.uniform(7800.0 - 3000.0 * spread, 7800.0)), 1),
        peak_hz=round(float(math.exp(rng.uniform(math.log(300.0), math.log(4000.0)))), 1),
        peak_db=round(float(rng.uniform(-6.0, 6.0) * spread), 2),
        snr_db=round(float(rng.uniform(snr_low, 30.0)), 2),
        noise_color=round(float(rng.uniform(0.0, 2.0)), 3),
        hum_hz=float(rng.choice([0.0, 0.0, 50.0, 60.0])),
        level_dbfs=round(float(rng.uniform(-12.0, -1.5)), 2),
    )


# ---- utterance plan -------------------------------------------------------------------------

@dataclass
class Tracks:
    """Control tracks at HOP resolution."""

    voiced: np.ndarray  # (T,) voiced amplitude
    noise: np.ndarray  # (T,) fricative noise amplitude
    noise_hz: np.ndarray  # (T,) fricative centre frequency
    formants: np.ndarray  # (T, 3) F1..F3 before vocal-tract scaling
    pitch_st: np.ndarray  # (T,) intonation, semitones around the speaker mean


def _empty_tracks(frames: int) -> Tracks:
    return Tracks(np.zeros(frames), np.zeros(frames), np.full(frames, 4000.0),
                  np.tile(np.array(VOWELS["schwa"], dtype=float), (frames, 1)), np.zeros(frames))


def _syllable(tr: Tracks, start: int, voice: Voice, acc: Accent, rng: np.random.Generator) -> int:
    """Write one (consonant +) vowel syllable from frame ``start``; return the next free frame."""
    t = start
    kind = rng.choice(["fric", "stop", "nasal", "none"], p=[0.3, 0.3, 0.2, 0.2])
    if kind == "fric":
        n = int(rng.integers(5, 11))
        tr.noise[t:t + n] = rng.uniform(0.25, 0.6)
        tr.noise_hz[t:t + n] = rng.uniform(2500.0, 6500.0)
        t += n
    elif kind == "stop":
        t += int(rng.integers(3, 6))  # closure
        tr.noise[t:t + 2] = 0.8
        tr.noise_hz[t:t + 2] = rng.uniform(1500.0, 4500.0)
        t += 2
    elif kind == "nasal":
        n = int(rng.integers(4, 8))
        tr.voiced[t:t + n] = 0.35
        tr.formants[t:t + n] = (260.0, 1200.0, 2400.0)
        t += n
    mean_frames = 100.0 / (acc.rate * voice.rate) * 0.7
    n = max(4, int(round(mean_frames * math.exp(rng.normal(0.0, acc.rhythm)))))
    f1, f2, f3 = VOWELS[acc.vowels[int(rng.integers(len(acc.vowels)))]]
    tr.voiced[t:t + n] = rng.uniform(0.7, 1.0)
    tr.formants[t:t + n] = (f1, f2 * acc.f2_shift, f3 * acc.f3_shift)
    return t + n


def _phrase_pitch(tr: Tracks, start: int, stop: int, voice: Voice, acc: Accent,
                  rng: np.random.Generator) -> None:
    """Declination, pitch accents and a rising or falling phrase end over frames [start, stop)."""
    n = stop - start
    if n <= 0:
        return
    t = np.arange(n) / 100.0  # seconds
    contour = 1.5 - acc.declination * t
    for _ in range(max(1, n // 60)):
        centre = rng.uniform(0, n)
        contour += acc.accent_st * rng.uniform(0.4, 1.0) * np.exp(-0.5 * ((np.arange(n) - centre) / 8.0) ** 2)
    tail = np.clip((np.arange(n) - (n - 25)) / 25.0, 0.0, 1.0)
    contour += (3.5 if rng.random() < acc.final_rise else -2.5) * tail
    tr.pitch_st[start:stop] = contour * voice.f0_range_st


def plan_utterance(voice: Voice, seconds: float, rng: np.random.Generator) -> Tracks:
    """Syllables grouped into phrases separated by pauses, filling ``seconds`` of speech."""
    acc = ACCENTS[voice.accent]
    frames = int(math.ceil(seconds * 100)) + 2
    tr = _empty_tracks(frames)
    t = int(rng.integers(5, 20))  # leading silence
    end = frames - int(rng.integers(5, 15))
    while t < end - 20:
        start = t
        for _ in range(max(1, int(rng.poisson(acc.phrase_syllables)))):
            if t >= end - 10:
                break
            t = _syllable(tr, t, voice, acc, rng)
        _phrase_pitch(tr, start, min(t, frames), voice, acc, rng)
        t += int(rng.integers(12, 50))  # pause
    _trim(tr, end)
    return tr


def _trim(tr: Tracks, end: int) -> None:
    """Silence everything after ``end`` and smooth formant and pitch transitions."""
    tr.voiced[end:] = 0.0
    tr.noise[end:] = 0.0
    kernel = np.ones(5) / 5.0
    for k in range(3):
        tr.formants[:, k] = np.convolve(np.pad(tr.formants[:, k], 2, mode="edge"), kernel, "valid")
    tr.pitch_st[:] = np.convolve(np.pad(tr.pitch_st, 2, mode="edge"), kernel, "valid")
    tr.voiced[:] = np.convolve(np.pad(tr.voiced, 1, mode="edge"), np.ones(3) / 3.0, "valid")


# ---- signal generation ----------------------------------------------------------------------

def _frame_to_samples(track: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of a HOP-rate track onto ``n`` samples."""
    pos = np.arange(n) / HOP
    return np.interp(pos, np.arange(len(track)), track)


def glottal_source(voice: Voice, tr: Tracks, n: int, rng: np.random.Generator) -> np.ndarray:
    """Pulse train at the speaker's F0 contour with jitter and shimmer, gated by voicing."""
    f0 = voice.f0_hz * 2.0 ** (_frame_to_samples(tr.pitch_st, n) / 12.0)
    drift = _frame_to_samples(np.cumsum(rng.normal(0.0, 0.004, len(tr.pitch_st))), n)
    f0 = f0 * np.exp(drift - drift.mean())
    phase = np.cumsum(f0 / SAMPLE_RATE)
    idx = np.flatnonzero(np.diff(np.floor(phase)) > 0) + 1
    period = SAMPLE_RATE / f0[idx]
    idx = np.clip(np.round(idx + rng.normal(0.0, voice.jitter, len(idx)) * period), 0, n - 1).astype(int)
    amps = np.clip(1.0 + rng.normal(0.0, voice.shimmer, len(idx)), 0.2, None)
    gate = _frame_to_samples(tr.voiced, n)
    src = np.zeros(n)
    np.add.at(src, idx, amps * gate[idx] * np.sqrt(period / 100.0))
    src += voice.breath * 0.05 * gate * rng.normal(size=n)
    return src


def _resonances(freqs: np.ndarray, formants: np.ndarray, bw: np.ndarray) -> np.ndarray:
    """Product of second-order resonator magnitudes (unit gain at DC): (T, F)."""
    f = freqs[None, :, None]  # (1, F, 1)
    fk = formants[:, None, :]  # (T, 1, K)
    bk = bw[:, None, :]  # (T, 1, K)
    mag = fk ** 2 / np.sqrt((fk ** 2 - f ** 2) ** 2 + (bk * f) ** 2)  # (T, F, K)
    return mag.prod(axis=2)


def vocal_tract(voice: Voice, formants: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Frame-wise voiced transfer magnitude (T, F): formants scaled by tract length, plus F4."""
    scale = NEUTRAL_VTL_CM / voice.vtl_cm
    f4 = np.full((len(formants), 1), 3500.0)
    fk = np.concatenate([formants, f4], axis=1) * scale  # (T, 4)
    bw = np.array([60.0, 90.0, 140.0, 200.0])[None, :] * voice.formant_bw + 0.06 * fk  # (T, 4)
    tilt = 1.0 / np.sqrt(1.0 + (freqs / voice.tilt_hz) ** 2)  # (F,)
    return _resonances(freqs, fk, bw) * tilt[None, :]


def _fricative_shape(centre: np.ndarray, freqs: np.ndarray) -> np.ndarray:
    """Band-pass magnitude around each frame's fricative centre: (T, F)."""
    width = 0.35 * centre[:, None]  # (T, 1)
    return 1.0 / np.sqrt(1.0 + ((freqs[None, :] - centre[:, None]) / width) ** 2)


def render_utterance(voice: Voice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Dry (channel-free) speech, float64 at SAMPLE_RATE, ``seconds`` long."""
    from scipy.signal import istft, stft

    n = int(round(seconds * SAMPLE_RATE))
    tr = plan_utterance(voice, seconds, rng)
    src = glottal_source(voice, tr, n, rng)
    noise = rng.normal(size=n) * _frame_to_samples(tr.noise, n)
    kw = {"fs": SAMPLE_RATE, "nperseg": NPERSEG, "noverlap": NPERSEG - HOP, "nfft": NFFT}
    freqs, times, s_src = stft(src, **kw)  # s_src: (F, T')
    _, _, s_noise = stft(noise, **kw)
    frame = np.clip(np.round(times * 100).astype(int), 0, len(tr.voiced) - 1)  # (T',)
    h_voiced = vocal_tract(voice, tr.formants[frame], freqs)  # (T', F)
    h_noise = _fricative_shape(tr.noise_hz[frame] * NEUTRAL_VTL_CM / voice.vtl_cm, freqs)
    spec = s_src * h_voiced.T + 0.3 * s_noise * h_noise.T  # (F, T')
    _, y = istft(spec, **kw)
    return y[:n] if len(y) >= n else np.pad(y, (0, n - len(y)))


# ---- channel --------------------------------------------------------------------------------

def room_response(ch: Channel, rng: np.random.Generator) -> np.ndarray:
    """Direct path plus exponentially decaying diffuse tail with the channel's RT60 and DRR."""
    n = max(16, int(ch.rt60 * SAMPLE_RATE))
    t = np.arange(n) / SAMPLE_RATE
    tail = rng.normal(size=n) * np.exp(-6.9 * t / ch.rt60)
    tail[: int(0.002 * SAMPLE_RATE)] = 0.0
    tail *= 10 ** (-ch.drr_db / 20.0) / max(np.sqrt(np.sum(tail ** 2)), 1e-9)
    tail[0] = 1.0
    return tail


def _peaking_sos(freq: float, gain_db: float, q: float = 1.0) -> np.ndarray:
    """RBJ peaking-EQ biquad as a (1, 6) second-order section."""
    a = 10 ** (gain_db / 40.0)
    w0 = 2 * math.pi * freq / SAMPLE_RATE
    alpha = math.sin(w0) / (2 * q)
    b = np.array([1 + alpha * a, -2 * math.cos(w0), 1 - alpha * a])
    den = np.array([1 + alpha / a, -2 * math.cos(w0), 1 - alpha / a])
    return np.concatenate([b / den[0], den / den[0]])[None, :]


def equalizer(ch: Channel) -> np.ndarray:
    """The channel's band limits and presence peak as second-order sections."""
    from scipy.signal import butter

    band = butter(2, [ch.highpass_hz, ch.lowpass_hz], btype="bandpass", fs=SAMPLE_RATE, output="sos")
    return np.concatenate([band, _peaking_sos(ch.peak_hz, ch.peak_db)])


def background_noise(ch: Channel, n: int, rng: np.random.Generator) -> np.ndarray:
    """Coloured noise (1/f^color power) plus optional mains hum, unit RMS."""
    from scipy.fft import irfft, next_fast_len, rfft, rfftfreq

    m = next_fast_len(n, real=True)
    spec = rfft(rng.normal(size=m))
    f = np.maximum(rfftfreq(m, 1.0 / SAMPLE_RATE), 20.0)
    noise = irfft(spec / f ** (ch.noise_color / 2.0), m)[:n]
    if ch.hum_hz:
        t = np.arange(n) / SAMPLE_RATE
        hum = sum(np.sin(2 * math.pi * ch.hum_hz * k * t + rng.uniform(0, 6.3)) / k for k in (1, 2, 3))
        noise = noise / max(noise.std(), 1e-12) + 0.5 * hum
    return noise / max(noise.std(), 1e-12)


def apply_channel(dry: np.ndarray, ch: Channel, rir: np.ndarray, sos: np.ndarray,
                  rng: np.random.Generator) -> np.ndarray:
    """Reverberate, equalize, add noise at the channel SNR and scale to its peak level."""
    from scipy.signal import fftconvolve, sosfilt

    wet = fftconvolve(dry, rir)[: len(dry)]
    wet = sosfilt(sos, wet)
    power = np.mean(wet ** 2)
    noise = background_noise(ch, len(wet), rng) * math.sqrt(power / 10 ** (ch.snr_db / 10.0))
    mix = wet + noise
    peak = max(np.max(np.abs(mix)), 1e-9)
    return np.clip(mix * (10 ** (ch.level_dbfs / 20.0) / peak), -1.0, 1.0)
