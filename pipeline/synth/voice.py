"""Voices of the synthetic corpus, synthesised by Praat's KlattGrid (``praat-parselmouth``).

An utterance is planned in numpy, then rendered by Praat:

- **Plan** (:func:`plan_utterance`). Phrases of syllables ((C)(C)V(C): stops with closure,
  burst and aspiration, fricatives, nasals, liquids and glides around a vowel of the accent's
  inventory), separated by pauses. Durations follow the speaker's and the accent's speaking rate,
  vary per utterance and per phrase, and lengthen phrase-finally. Formant targets (vowels,
  consonant loci) are joined by linear transitions. The intonation has declination, pitch
  accents on stressed syllables, a falling or rising phrase end, microprosody after obstruents
  and, at some falling phrase ends, creak.
- **Source** (KlattGrid phonation). A glottal flow with open phase, power1/power2 shape,
  collision phase, spectral tilt, flutter and, in creak, double pulsing. The pitch tier has one
  point per glottal period and the voicing-amplitude tier one per pulse, so every period carries
  its own jitter and shimmer. Aspiration noise, modulated by the glottal flow, is added to the
  source (its derivative).
- **Filter.** KlattGrid's cascade vocal tract (five oral formants and a nasal pole-zero pair),
  all scaled by ``17.5 cm / vocal-tract length``; frication noise goes through the KlattGrid's
  frication formants.

Every random signal (aspiration, frication, bursts) is drawn from the numpy generator passed
in, and Praat runs only deterministic steps: its own noise sources draw from a process-global
generator. The audio therefore depends on the generator alone and is byte-identical for any
number of worker processes.

Each video then adds its own channel in numpy: reverberation, band-limiting EQ and background
noise at a realistic SNR. Shared traits (gender, accent group, age, body size) drive F0,
vocal-tract length, voice quality, accent and rate; ``difficulty`` weakens that dependence and
widens the channel variation.
"""

from __future__ import annotations

import math
import os
import tempfile
from dataclasses import dataclass, field

import numpy as np
import parselmouth
from parselmouth.praat import call

from pipeline.synth.names import GROUPS, Person

SAMPLE_RATE = 16_000
NEUTRAL_VTL_CM = 17.5  # the tract length the formant tables are written for
GRID_STEP = 0.005  # s, resolution of the planned F0 contour
VOWEL_DB = 60.0  # KlattGrid voicing amplitude of a stressed vowel, dB SPL
OFF_DB = -60.0  # KlattGrid voicing amplitude that stands for silence
PITCH_FLOOR_HZ = 40.0
NASAL_POLE_HZ = 270.0  # nasal formant; the antiformant sits on it (cancelling it) outside nasals
COLLISION_PHASE = 0.03  # KlattGrid collision phase (fraction of the open phase)
POWERS = (3.0, 4.0)  # KlattGrid power1, power2: glottal flow x^3 - x^4 over the open phase

# (F1, F2, F3) of a 17.5 cm tract, Hz: Peterson & Barney's (1952) male means for the English
# vowels, plus /e o a y/ and schwa for the other inventories.
VOWELS: dict[str, tuple[float, float, float]] = {
    "i": (270, 2290, 3010), "I": (390, 1990, 2550), "e": (460, 2100, 2700),
    "E": (530, 1840, 2480), "ae": (660, 1720, 2410), "a": (750, 1300, 2500),
    "A": (730, 1090, 2440), "O": (570, 840, 2410), "o": (480, 900, 2450), "U": (440, 1020, 2240),
    "u": (300, 870, 2240), "V": (640, 1190, 2390), "er": (490, 1350, 1690), "y": (280, 1750, 2150),
    "schwa": (500, 1500, 2500),
}
UPPER_FORMANTS = (3500.0, 4500.0)  # F4, F5 of the 17.5 cm tract
BANDWIDTHS = (60.0, 90.0, 150.0, 250.0, 300.0)  # B1..B5 at formant_bw = 1 (plus the terms below)
WALL_LOSS = 0.0  # Hz^2: wall losses widen low formants by WALL_LOSS / F (B1 of /i u/)


@dataclass(frozen=True)
class Consonant:
    """A consonant (17.5 cm tract): manner, voicing, formant locus and frication resonances."""

    manner: str  # stop, fricative, nasal, approximant or aspirate
    voiced: bool
    locus: tuple[float, float, float]  # F1..F3 at the constriction
    pull: float  # how far the vowel pulls the locus (0: fixed locus, 1: the vowel's formants)
    frication: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)  # F, B, F, B (Hz)
    frication_db: float = 0.0  # level relative to the RMS of the utterance's voiced speech
    seconds: float = 0.07  # duration at rate 1
    nasal_zero: float = 0.0  # nasal antiformant in the murmur (0: oral)


CONSONANTS: dict[str, Consonant] = {
    "p": Consonant("stop", False, (250, 900, 2200), 0.35, (1200, 1500, 3000, 2000), -14, 0.064),
    "t": Consonant("stop", False, (250, 1750, 2700), 0.45, (3800, 800, 5000, 1000), -10, 0.06),
    "k": Consonant("stop", False, (250, 1900, 2300), 0.7, (2200, 500, 3400, 800), -10, 0.064),
    "b": Consonant("stop", True, (250, 900, 2200), 0.35, (1200, 1500, 3000, 2000), -18, 0.051),
    "d": Consonant("stop", True, (250, 1750, 2700), 0.45, (3800, 800, 5000, 1000), -15, 0.047),
    "g": Consonant("stop", True, (250, 1900, 2300), 0.7, (2200, 500, 3400, 800), -15, 0.051),
    "f": Consonant("fricative", False, (300, 1100, 2200), 0.4, (5500, 2500, 7000, 2500), -24,
                   0.077),
    "s": Consonant("fricative", False, (300, 1700, 2650), 0.45, (4600, 500, 6200, 900), -9, 0.085),
    "S": Consonant("fricative", False, (300, 1900, 2400), 0.5, (2600, 400, 4000, 700), -10, 0.085),
    "v": Consonant("fricative", True, (300, 1100, 2200), 0.4, (5500, 2500, 7000, 2500), -28, 0.051),
    "z": Consonant("fricative", True, (300, 1700, 2650), 0.45, (4600, 500, 6200, 900), -16, 0.064),
    "h": Consonant("aspirate", False, (500, 1500, 2500), 1.0, seconds=0.055),
    "m": Consonant("nasal", True, (270, 1100, 2150), 0.3, seconds=0.055, nasal_zero=800),
    "n": Consonant("nasal", True, (270, 1600, 2600), 0.4, seconds=0.051, nasal_zero=1600),
    "l": Consonant("approximant", True, (360, 1050, 2750), 0.35, seconds=0.047),
    "r": Consonant("approximant", True, (350, 1150, 1550), 0.35, seconds=0.051),
    "w": Consonant("approximant", True, (300, 700, 2200), 0.25, seconds=0.043),
    "j": Consonant("approximant", True, (270, 2200, 3000), 0.25, seconds=0.043),
}
ONSETS = ("p", "t", "k", "b", "d", "g", "f", "s", "S", "v", "z", "h", "m", "n", "l", "r", "w", "j")
ONSET_WEIGHTS = (5, 9, 6, 5, 7, 3, 4, 8, 2, 3, 2, 4, 6, 7, 6, 5, 4, 2)
CODAS = ("t", "k", "d", "s", "z", "n", "m", "l", "r", "p", "f")
CODA_WEIGHTS = (8, 4, 4, 6, 4, 9, 4, 4, 3, 2, 2)
CLUSTER_FIRST, CLUSTER_SECOND = ("p", "k", "b", "g", "f"), ("l", "r", "w")


@dataclass(frozen=True)
class Accent:
    """Speech style of a nationality group: vowel system, rhythm and intonation."""

    vowels: tuple[str, ...]
    f2_shift: float  # multiplier on F2 (fronting > 1)
    f3_shift: float  # multiplier on F3 (retroflex colouring < 1)
    rate: float  # nominal syllables per second, pauses included
    rhythm: float  # sd of log vowel duration (stress-timed > syllable-timed)
    accent_st: float  # pitch-accent height, semitones
    declination: float  # semitones per second
    final_rise: float  # probability that a phrase ends rising
    phrase_syllables: float  # mean syllables per phrase
    prevoice: float = 0.25  # probability that /b d g/ are voiced through their closure


ACCENTS: dict[str, Accent] = {
    "north_american": Accent(("i", "I", "E", "ae", "A", "V", "u", "o", "er", "schwa"),
                             1.00, 1.00, 4.6, 0.35, 3.5, 1.0, 0.15, 7.0),
    "british": Accent(("i", "I", "E", "ae", "A", "O", "U", "u", "schwa"),
                      0.96, 1.04, 4.4, 0.40, 5.0, 1.6, 0.10, 6.0),
    "oceanic": Accent(("i", "I", "e", "ae", "a", "O", "u", "er", "schwa"),
                      1.07, 1.02, 4.8, 0.38, 3.0, 0.5, 0.55, 6.0),
    "south_asian": Accent(("i", "e", "a", "o", "u", "schwa"),
                          1.02, 0.86, 5.2, 0.18, 2.5, 0.6, 0.30, 9.0, 0.8),
    "caribbean": Accent(("i", "e", "a", "A", "o", "u", "schwa"),
                        1.00, 0.95, 4.9, 0.22, 4.5, 0.8, 0.35, 7.0),
    "north_european": Accent(("i", "y", "e", "E", "a", "o", "u"),
                             0.94, 1.06, 4.2, 0.30, 4.0, 1.2, 0.12, 5.5),
    "latin": Accent(("i", "e", "a", "o", "u"), 1.04, 1.00, 5.4, 0.15, 5.5, 0.9, 0.25, 10.0, 0.85),
    "east_asian": Accent(("i", "e", "a", "o", "u", "schwa"),
                         0.98, 1.02, 5.0, 0.14, 6.0, 0.4, 0.20, 8.0),
    "middle_eastern": Accent(("i", "a", "A", "u", "e", "o"), 0.97, 0.97, 4.8, 0.25, 4.0, 1.0, 0.20,
                             7.0, 0.7),
}


@dataclass(frozen=True)
class Voice:
    """Identity-level voice parameters."""

    accent: str  # accent group (usually the nationality's group)
    f0_hz: float  # mean fundamental frequency of modal voicing (geometric mean over the phrases)
    f0_range_st: float  # multiplier on the intonation's excursions
    vtl_cm: float  # vocal-tract length (formants scale with 17.5 / vtl)
    rate: float  # speaking-rate multiplier
    jitter: float  # relative sd of the glottal period
    shimmer: float  # relative sd of the pulse amplitude
    breath: float  # aspiration noise relative to the voiced source (RMS ratio, roughly)
    open_phase: float  # open quotient of the glottal cycle
    tilt_db: float  # glottal spectral tilt: attenuation at 3 kHz, dB
    flutter: float  # KlattGrid flutter (slow F0 wobble), 0..1
    formant_bw: float  # formant bandwidth multiplier
    creak: float  # probability that a falling phrase ends in creak


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
    noise_color: float  # power falls as 1/f^color: 1 pink, 2 brown
    hum_hz: float  # mains hum (0 = none)
    level_dbfs: float  # peak level


def coupling(difficulty: float) -> float:
    """Correlation between the voice's view of a shared trait and the trait itself: 0.97 at
    difficulty 0, 0.91 at the default 0.5, 0 at 1 (nothing but gender is shared)."""
    d = float(np.clip(difficulty, 0.0, 1.0))
    return 0.97 * math.sqrt(1.0 - d ** 3)


def _voice_view(value: float, rho: float, rng: np.random.Generator) -> float:
    """``rho``-correlated noisy copy of a unit-variance trait."""
    return rho * value + math.sqrt(1.0 - rho * rho) * float(rng.normal())


def _voice_accent(person: Person, difficulty: float, rng: np.random.Generator) -> str:
    """The nationality's accent, or (with probability ``difficulty``³, so always at 1) a random
    group's."""
    if rng.random() < difficulty ** 3:
        return GROUPS[int(rng.integers(len(GROUPS)))]
    return person.group


def draw_voice(person: Person, difficulty: float, rng: np.random.Generator) -> Voice:
    """Voice parameters from the shared traits (weakened by ``difficulty``) and own traits.

    Gender sets F0 (the gap shrinks with difficulty), vocal-tract length and voice quality
    (women: higher open quotient, steeper tilt, more aspiration, more creak, wider pitch range);
    body size lengthens the tract and lowers F0; age moves F0, raises jitter and shimmer and slows
    the rate. Body size and age are seen through ``coupling(difficulty)``-correlated copies.
    """
    rho = coupling(difficulty)
    body = _voice_view(person.body, rho, rng)
    age = 42.0 + 13.0 * _voice_view((person.age - 42.0) / 13.0, rho, rng)
    male = person.gender == "m"
    gap = 1.0 - 0.45 * difficulty  # gender F0 gap shrinks with difficulty
    base = 165.0 * (0.765 if male else 1.26) ** gap
    age_f0 = 1.0 + (0.002 if male else -0.004) * (age - 42.0)
    f0 = base * age_f0 * math.exp(-0.1 * body + rng.normal(0.0, 0.04 + 0.06 * difficulty))
    vtl = (17.4 if male else 14.7) * (1.0 + 0.045 * body) * math.exp(rng.normal(0.0, 0.015))
    years = max(age - 18.0, 0.0)
    shimmer = (1.0 if male else 0.6) * (0.018 + 0.0004 * years + abs(float(rng.normal(0.0, 0.006))))
    return Voice(
        accent=_voice_accent(person, difficulty, rng),
        f0_hz=round(float(np.clip(f0, 75.0, 320.0)), 2),
        f0_range_st=round((0.85 if male else 1.15) * math.exp(rng.normal(0.0, 0.2)), 3),
        vtl_cm=round(float(vtl), 3),
        rate=round(math.exp(rng.normal(0.0, 0.06)) * (1.0 - 0.008 * (age - 42.0)), 3),
        jitter=round(0.004 + 0.00012 * years + abs(float(rng.normal(0.0, 0.0015))), 4),
        shimmer=round(shimmer, 4),
        breath=round(float(rng.uniform(0.08, 0.16) if male else rng.uniform(0.11, 0.21)), 4),
        open_phase=round(float(rng.uniform(0.55, 0.70)) + (0.0 if male else 0.12), 3),
        tilt_db=round(float(rng.uniform(4.0, 12.0)) + (0.0 if male else 4.0), 2),
        flutter=round(float(np.clip(0.05 + 0.006 * years + rng.uniform(0.0, 0.12), 0.0, 0.6)), 3),
        formant_bw=round(float(rng.uniform(0.6, 0.9) if male else rng.uniform(0.9, 1.3)), 3),
        creak=round(float(rng.uniform(0.05, 0.35) if male else rng.uniform(0.2, 0.6)), 3),
    )


def draw_channel(difficulty: float, rng: np.random.Generator) -> Channel:
    """A video's recording channel; stronger variation at higher ``difficulty``."""
    spread = 0.5 + difficulty
    snr_low = 5.0 + 15.0 * (1.0 - difficulty)
    return Channel(
        rt60=round(float(rng.uniform(0.05, 0.15 + 0.55 * spread)), 3),
        drr_db=round(float(rng.uniform(2.0, 16.0 - 6.0 * difficulty)), 2),
        highpass_hz=round(float(rng.uniform(30.0, 60.0 + 80.0 * spread)), 1),
        lowpass_hz=round(float(rng.uniform(7800.0 - 3000.0 * spread, 7800.0)), 1),
        peak_hz=round(float(math.exp(rng.uniform(math.log(300.0), math.log(4000.0)))), 1),
        peak_db=round(float(rng.uniform(-6.0, 6.0) * spread), 2),
        snr_db=round(float(rng.uniform(snr_low, 30.0)), 2),
        noise_color=round(float(rng.uniform(1.0, 2.0)), 3),
        hum_hz=float(rng.choice([0.0, 0.0, 50.0, 60.0])),
        level_dbfs=round(float(rng.uniform(-12.0, -1.5)), 2),
    )


# ---- utterance plan -------------------------------------------------------------------------

Formants = tuple[float, float, float]


@dataclass(frozen=True)
class Phone:
    """One planned phone: symbol, time span (s), and whether its syllable is stressed."""

    symbol: str
    start: float
    end: float
    stressed: bool


@dataclass
class Plan:
    """One utterance's score, in seconds and in Hz of a 17.5 cm tract."""

    seconds: float
    phones: list[Phone] = field(default_factory=list)
    phrases: list[tuple[float, float]] = field(default_factory=list)  # (start, end)
    syllables: int = 0
    formants: list[tuple[float, Formants]] = field(default_factory=list)  # (t, F1..F3) targets
    nasal_zero: list[tuple[float, float]] = field(default_factory=list)  # (t, Hz; 0 = oral)
    voicing: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, dB re vowel)
    aspiration: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, level)
    frication: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, dB)
    frication_formants: list[tuple[float, tuple[float, ...]]] = field(default_factory=list)
    accents: list[tuple[float, float]] = field(default_factory=list)  # (t, height in st)
    micro: list[tuple[float, float, float]] = field(default_factory=list)  # (t0, t1, st)
    final_st: list[float] = field(default_factory=list)  # each phrase's end excursion, st
    creak: list[tuple[float, float]] = field(default_factory=list)  # creaky spans (t0, t1)


def _pick(rng: np.random.Generator, items: tuple[str, ...], weights: tuple[float, ...]) -> str:
    p = np.asarray(weights, dtype=float)
    return items[int(rng.choice(len(items), p=p / p.sum()))]


def _syllable_shape(rng: np.random.Generator, acc: Accent) -> tuple[list[str], list[str]]:
    """Onset and coda consonants of one syllable."""
    onset: list[str] = []
    if rng.random() < 0.8:
        onset.append(_pick(rng, ONSETS, ONSET_WEIGHTS))
        if onset[0] in CLUSTER_FIRST and rng.random() < 0.15:
            onset.append(CLUSTER_SECOND[int(rng.integers(len(CLUSTER_SECOND)))])
    closed = rng.random() < (0.15 if acc.rhythm < 0.2 else 0.4)
    return onset, [_pick(rng, CODAS, CODA_WEIGHTS)] if closed else []


def _vowel_target(symbol: str, stressed: bool, acc: Accent) -> Formants:
    """Accent-shifted vowel formants; unstressed vowels drift toward schwa."""
    f = np.array(VOWELS[symbol], dtype=float)
    if not stressed:
        f = 0.7 * f + 0.3 * np.array(VOWELS["schwa"])
    return (float(f[0]), float(f[1] * acc.f2_shift), float(f[2] * acc.f3_shift))


def _locus(c: Consonant, vowel: Formants) -> Formants:
    """Formants at the consonant: its locus pulled toward the neighbouring vowel."""
    f1, f2, f3 = (lo + c.pull * (v - lo) for lo, v in zip(c.locus, vowel, strict=True))
    return (f1, f2, f3)


def _stop(plan: Plan, c: Consonant, t: float, dur: float, scale: float, locus: Formants,
          onset: bool, stressed: bool, acc: Accent, rng: np.random.Generator) -> float:
    """Closure (silent, or a voice bar if prevoiced), burst, and aspiration for voiceless
    onsets; returns the release's end."""
    burst = t + 0.75 * dur
    plan.formants += [(t + 0.01, locus), (burst, locus)]
    if c.voiced and rng.random() < acc.prevoice:
        plan.voicing.append((t, burst, -24.0))
    plan.frication.append((burst, burst + 0.012, c.frication_db))
    plan.frication_formants += [(burst - 0.008, c.frication), (burst + 0.02, c.frication)]
    if c.voiced or not onset:
        return burst + 0.015
    vot = (0.05 if stressed else 0.03) * math.sqrt(scale)
    plan.aspiration.append((burst + 0.008, burst + vot, 1.0))
    return burst + vot


def _consonant(plan: Plan, symbol: str, t: float, scale: float, vowel: Formants, onset: bool,
               stressed: bool, acc: Accent, rng: np.random.Generator) -> float:
    """Write one consonant from ``t``; return its end time."""
    c = CONSONANTS[symbol]
    dur = c.seconds * scale * math.exp(rng.normal(0.0, 0.15))
    locus, end = _locus(c, vowel), t + dur
    if c.manner == "stop":
        end = _stop(plan, c, t, dur, scale, locus, onset, stressed, acc, rng)
    elif c.manner == "fricative":
        plan.formants += [(t + 0.01, locus), (end - 0.01, locus)]
        plan.frication.append((t, end, c.frication_db))
        plan.frication_formants += [(t - 0.008, c.frication), (end + 0.008, c.frication)]
        if c.voiced:
            plan.voicing.append((t + 0.3 * dur, end, -14.0))  # devoiced at the start
    elif c.manner == "aspirate":
        plan.formants.append((t + 0.005, vowel))
        plan.aspiration.append((t, end, 0.7))
    else:  # nasal or approximant
        plan.formants += [(t + 0.01, locus), (end - 0.01, locus)]
        plan.voicing.append((t, end, -8.0 if c.manner == "nasal" else -5.0))
        if c.manner == "nasal":
            plan.nasal_zero += [(t, 0.0), (t + 0.01, c.nasal_zero), (end - 0.01, c.nasal_zero),
                                (end, 0.0)]
    if onset and c.manner in ("stop", "fricative"):
        plan.micro.append((end, end + 0.05, -0.6 if c.voiced else 0.8))  # F0 after obstruents
    plan.phones.append(Phone(symbol, t, end, stressed))
    return end


def _syllable(plan: Plan, t: float, scale: float, acc: Accent, stressed: bool, final: bool,
              rng: np.random.Generator) -> float:
    """Write one syllable from ``t``; return its end time."""
    onset, coda = _syllable_shape(rng, acc)
    symbol = acc.vowels[int(rng.integers(len(acc.vowels)))]
    if not stressed and rng.random() < 0.35:
        symbol = "schwa"
    vowel = _vowel_target(symbol, stressed, acc)
    for c in onset:
        t = _consonant(plan, c, t, scale, vowel, True, stressed, acc, rng)
    dur = 0.075 * scale * (1.45 if stressed else 1.0) * (1.4 if final else 1.0)
    dur = max(0.045, dur * math.exp(rng.normal(0.0, acc.rhythm)))
    edge = min(0.04, dur / 3.0)  # formant transitions into and out of the vowel
    plan.formants += [(t + edge, vowel), (t + dur - edge, vowel)]
    plan.voicing.append((t, t + dur, (0.0 if stressed else -4.0) - (4.0 if final else 0.0)))
    plan.phones.append(Phone(symbol, t, t + dur, stressed))
    if stressed:
        plan.accents.append((t + 0.5 * dur, acc.accent_st * float(rng.uniform(0.4, 1.0))))
    t += dur
    for c in coda:
        t = _consonant(plan, c, t, scale, vowel, False, stressed, acc, rng)
    plan.syllables += 1
    return t


def _phrase(plan: Plan, t: float, end: float, scale: float, acc: Accent, voice: Voice,
            rng: np.random.Generator) -> float:
    """Write one phrase's syllables from ``t``, stopping when ``end`` is near."""
    count = max(1, int(rng.poisson(acc.phrase_syllables)))
    scale *= math.exp(rng.normal(0.0, 0.08))  # the phrase's own tempo
    start = t
    for i in range(count):
        if t + 0.3 * scale > end:
            break
        stressed = i == 0 or rng.random() < 0.25 + acc.rhythm
        t = _syllable(plan, t, scale, acc, stressed, i == count - 1, rng)
    if t > start:
        plan.phrases.append((start, t))
        rise = rng.random() < acc.final_rise
        plan.final_st.append(3.5 if rise else -3.0)
        if not rise and rng.random() < voice.creak:
            plan.creak.append((max(start, t - float(rng.uniform(0.1, 0.3))), t))
    return t


def plan_utterance(voice: Voice, seconds: float, rng: np.random.Generator) -> Plan:
    """Phrases of syllables separated by pauses, filling ``seconds``."""
    acc = ACCENTS[voice.accent]
    plan = Plan(seconds=seconds)
    scale = 4.6 / (acc.rate * voice.rate) * math.exp(rng.normal(0.0, 0.06))  # utterance tempo
    t = float(rng.uniform(0.05, 0.15))
    end = seconds - float(rng.uniform(0.05, 0.12))
    while t < end - 0.3:
        t = _phrase(plan, t, end, scale, acc, voice, rng)
        t += float(rng.uniform(0.12, 0.4)) * math.sqrt(scale)  # pause
    return plan


# ---- plan -> control tracks -----------------------------------------------------------------

def _steps(segments: list[tuple[float, float, float]], t: np.ndarray, off: float,
           ramp: float) -> np.ndarray:
    """Levels over ``segments`` (``(t0, t1, value)``, the largest wins where they overlap) with
    linear edges ``ramp`` wide, sampled at the sorted times ``t``; ``off`` elsewhere."""
    out = np.full(t.shape, off)
    for t0, t1, value in segments:
        r = max(min(ramp, 0.5 * (t1 - t0)), 1e-4)
        i0, i1 = np.searchsorted(t, (t0 - r, t1 + r))
        shape = np.clip(np.minimum(t[i0:i1] - t0, t1 - t[i0:i1]) / (2 * r) + 0.5, 0.0, 1.0)
        np.maximum(out[i0:i1], off + (value - off) * shape, out=out[i0:i1])
    return out


def _creak(plan: Plan, t: np.ndarray) -> np.ndarray:
    """0..1: how creaky the voice is at ``t`` (40 ms onset)."""
    out = np.zeros_like(t)
    for t0, t1 in plan.creak:
        out = np.maximum(out, np.clip((t - t0) / 0.04, 0.0, 1.0) * (t <= t1 + 0.03))
    return out


def _contour(voice: Voice, plan: Plan, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """F0 (Hz) on a GRID_STEP grid: declination, accents, phrase ends, microprosody, creak.

    The modal part has the speaker's ``f0_hz`` as its geometric mean, give or take a random
    per-utterance key (0.6 semitones sd); creak halves F0."""
    acc = ACCENTS[voice.accent]
    t = np.arange(0.0, plan.seconds + GRID_STEP, GRID_STEP)
    st = np.zeros_like(t)
    for (t0, t1), final in zip(plan.phrases, plan.final_st, strict=True):
        inside = (t >= t0 - 0.05) & (t <= t1 + 0.05)
        st[inside] += 1.5 - acc.declination * (t[inside] - t0)
        st += final * np.clip((t - t1 + 0.25) / 0.25, 0.0, 1.0) * inside
    for centre, height in plan.accents:
        st += height * np.exp(-0.5 * ((t - centre) / 0.07) ** 2)
    st *= voice.f0_range_st
    for t0, t1, shift in plan.micro:
        st += shift * ((t >= t0) & (t < t1))
    creak = _creak(plan, t)
    modal = (_steps(plan.voicing, t, -99.0, 0.01) > -30.0) & (creak == 0.0)
    st += float(rng.normal(0.0, 0.6)) - (st[modal].mean() if modal.any() else 0.0)
    f0 = voice.f0_hz * 2.0 ** (st / 12.0) * (1.0 - 0.5 * creak)
    return t, np.maximum(f0, PITCH_FLOOR_HZ)


def _pulses(t: np.ndarray, f0: np.ndarray, jitter: np.ndarray, seconds: float,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Glottal closure times following ``f0`` with relative period noise ``jitter`` (both on the
    grid ``t``); returns the times and each pulse's period."""
    phase = np.concatenate([[0.0], np.cumsum(0.5 * (f0[1:] + f0[:-1]) * np.diff(t))])
    times = np.interp(np.arange(1, max(int(phase[-1]), 2) + 1), phase, t)
    noise = np.interp(times[:-1], t, jitter) * rng.normal(size=len(times) - 1)
    periods = np.diff(times) * (1.0 + noise)
    pulses = times[0] + np.concatenate([[0.0], np.cumsum(periods)])
    periods = np.append(periods, periods[-1])
    keep = pulses < seconds
    return pulses[keep], periods[keep]


# ---- KlattGrid ------------------------------------------------------------------------------

Tier = tuple[np.ndarray, np.ndarray]  # (times, values)
NO_POINTS: Tier = (np.zeros(0), np.zeros(0))


def _tier(xmax: float, tier: Tier) -> list[str]:
    """A RealTier in Praat's short text format: domain, point count, then time/value pairs.
    Points outside the domain and repeated times (Praat needs increasing times) are dropped."""
    times, values = np.asarray(tier[0], dtype=float), np.asarray(tier[1], dtype=float)
    inside = (times >= 0.0) & (times <= xmax)
    times, values = times[inside], values[inside]
    keep = np.concatenate([[True], np.diff(times) > 1e-7])[: len(times)]
    pairs = np.column_stack([times[keep], values[keep]]).ravel()  # (2 n,): t0 v0 t1 v1 ...
    return ["0", repr(xmax), str(int(keep.sum())), *map(repr, pairs.tolist())]


def _grid(xmax: float, formants: list[Tier], bandwidths: list[Tier]) -> list[str]:
    """A FormantGrid: its formant tiers, then its bandwidth tiers."""
    out = ["<exists>", "0", repr(xmax), str(len(formants))]
    for tier in formants:
        out += _tier(xmax, tier)
    out.append(str(len(bandwidths)))
    for tier in bandwidths:
        out += _tier(xmax, tier)
    return out


def _tiers(xmax: float, tiers: list[Tier], exists: bool = False) -> list[str]:
    """Tiers one after the other: each marked as present, or all behind a count."""
    out = [] if exists else [str(len(tiers))]
    for tier in tiers:
        out += (["<exists>"] if exists else []) + _tier(xmax, tier)
    return out


@dataclass(frozen=True)
class KlattSpec:
    """The tiers of one KlattGrid that the synthesiser fills; the others stay empty."""

    seconds: float
    pitch: Tier
    voicing: Tier  # dB SPL
    flutter: Tier
    double_pulsing: Tier
    open_phase: Tier
    collision_phase: Tier
    power1: Tier
    power2: Tier
    tilt: Tier  # dB at 3 kHz
    oral: list[Tier]  # F1..F5
    oral_bw: list[Tier]
    nasal: Tier
    nasal_bw: Tier
    antinasal: Tier
    antinasal_bw: Tier
    frication: list[Tier]  # frication formants
    frication_bw: list[Tier]


def klattgrid_text(spec: KlattSpec) -> str:
    """The KlattGrid in Praat's short text format (the layout Praat itself writes)."""
    x = spec.seconds
    domain = ["<exists>", "0", repr(x)]
    phonation = [spec.pitch, spec.flutter, spec.voicing, spec.double_pulsing, spec.open_phase,
                 spec.collision_phase, spec.power1, spec.power2, spec.tilt,
                 NO_POINTS, NO_POINTS]  # aspiration and breathiness: noise comes from numpy
    lines = ['File type = "ooTextFile"', 'Object class = "KlattGrid"', "", "0", repr(x)]
    lines += domain + _tiers(x, phonation, exists=True)
    lines += domain + _grid(x, spec.oral, spec.oral_bw)  # vocal tract
    lines += _grid(x, [spec.nasal], [spec.nasal_bw])
    lines += _grid(x, [spec.antinasal], [spec.antinasal_bw])
    lines += _tiers(x, [NO_POINTS] * len(spec.oral)) + _tiers(x, [NO_POINTS])  # parallel model only
    empty_grid = _grid(x, [NO_POINTS], [NO_POINTS])
    lines += domain + empty_grid + empty_grid + _tiers(x, [NO_POINTS]) + empty_grid  # coupling
    lines += domain + _tiers(x, [NO_POINTS], exists=True)  # frication; its amplitude is numpy's
    lines += _grid(x, spec.frication, spec.frication_bw)
    lines += _tiers(x, [NO_POINTS] * len(spec.frication))  # parallel amplitudes
    lines += _tiers(x, [NO_POINTS, NO_POINTS], exists=True)  # frication bypass, gain
    return "\n".join(lines) + "\n"


def read_klattgrid(text: str) -> parselmouth.Data:
    """Parse KlattGrid text with Praat, through a private temporary file."""
    fd, path = tempfile.mkstemp(suffix=".KlattGrid")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        return parselmouth.read(path)
    finally:
        os.remove(path)


# ---- rendering ------------------------------------------------------------------------------

def _formant_tiers(voice: Voice, plan: Plan) -> tuple[list[Tier], list[Tier]]:
    """Oral F1..F5 and B1..B5 tiers, scaled by the vocal-tract length."""
    scale = NEUTRAL_VTL_CM / voice.vtl_cm
    points = sorted(plan.formants, key=lambda p: p[0]) or [(0.0, VOWELS["schwa"])]
    times = np.array([p[0] for p in points])  # (P,)
    lower = np.array([p[1] for p in points])  # (P, 3)
    upper = np.tile(UPPER_FORMANTS, (len(points), 1))  # (P, 2)
    f = np.concatenate([lower, upper], axis=1) * scale  # (P, 5)
    bw = np.array(BANDWIDTHS)[None, :] * voice.formant_bw + 0.04 * f + WALL_LOSS / f  # (P, 5)
    return [(times, f[:, k]) for k in range(5)], [(times, bw[:, k]) for k in range(5)]


def _nasal_tiers(voice: Voice, plan: Plan) -> tuple[Tier, Tier]:
    """The nasal antiformant: on the nasal pole (cancelling it) except in nasal murmurs."""
    scale = NEUTRAL_VTL_CM / voice.vtl_cm
    points = sorted(plan.nasal_zero) or [(0.0, 0.0)]
    times = np.array([p[0] for p in points])
    zero = np.array([(p[1] or NASAL_POLE_HZ) * scale for p in points])
    return (times, zero), (times, np.full(len(times), 100.0))


def _frication_tiers(voice: Voice, plan: Plan) -> tuple[list[Tier], list[Tier]]:
    """Two frication resonances, scaled by the tract length (kept below 0.47 x sample rate)."""
    scale = NEUTRAL_VTL_CM / voice.vtl_cm
    points = sorted(plan.frication_formants, key=lambda p: p[0])
    points = points or [(0.0, CONSONANTS["s"].frication)]
    times = np.array([p[0] for p in points])
    shape = np.array([p[1] for p in points])  # (P, 4): F, B, F, B
    freqs = np.minimum(shape[:, [0, 2]] * scale, 0.47 * SAMPLE_RATE)  # (P, 2)
    return ([(times, freqs[:, 0]), (times, freqs[:, 1])],
            [(times, shape[:, 1]), (times, shape[:, 3])])


def _phonation_tiers(voice: Voice, plan: Plan, rng: np.random.Generator) -> dict[str, Tier]:
    """Pitch (a point per period, with jitter), voicing amplitude (a point per pulse, with
    shimmer) and the voice-quality tiers; creak adds jitter, shimmer, double pulsing and a
    pressed (shorter) open phase."""
    grid, f0 = _contour(voice, plan, rng)
    creak = _creak(plan, grid)
    pulses, period = _pulses(grid, f0, voice.jitter * (1.0 + 5.0 * creak), plan.seconds, rng)
    level = _steps(plan.voicing, pulses, -99.0, 0.012)
    creak_at = np.interp(pulses, grid, creak)
    shimmer = voice.shimmer * (1.0 + 3.0 * creak_at) * np.clip(rng.normal(size=len(pulses)), -3, 3)
    db = VOWEL_DB + level + 20.0 * np.log10(1.0 + shimmer) - 6.0 * creak_at
    coarse = grid[::4]
    return {"pitch": (pulses, 1.0 / period),
            "voicing": (pulses, np.where(level > -60.0, db, OFF_DB)),
            "double_pulsing": (coarse, 0.6 * creak[::4]),
            "open_phase": (coarse, voice.open_phase * (1.0 - 0.4 * creak[::4]))}


def _one(value: float) -> Tier:
    return (np.zeros(1), np.full(1, value))


def klatt_spec(voice: Voice, plan: Plan, rng: np.random.Generator) -> KlattSpec:
    """The KlattGrid for one planned utterance."""
    oral, oral_bw = _formant_tiers(voice, plan)
    zero, zero_bw = _nasal_tiers(voice, plan)
    fric, fric_bw = _frication_tiers(voice, plan)
    return KlattSpec(
        seconds=plan.seconds, **_phonation_tiers(voice, plan, rng), flutter=_one(voice.flutter),
        collision_phase=_one(COLLISION_PHASE), power1=_one(POWERS[0]), power2=_one(POWERS[1]),
        tilt=_one(voice.tilt_db), oral=oral, oral_bw=oral_bw,
        nasal=_one(NASAL_POLE_HZ * NEUTRAL_VTL_CM / voice.vtl_cm), nasal_bw=_one(100.0),
        antinasal=zero, antinasal_bw=zero_bw, frication=fric, frication_bw=fric_bw)


def _sound(x: np.ndarray) -> parselmouth.Sound:
    return parselmouth.Sound(np.ascontiguousarray(x, dtype=np.float64),
                             sampling_frequency=SAMPLE_RATE)


def _samples(sound: parselmouth.Sound, n: int) -> np.ndarray:
    """The first channel of ``sound`` as exactly ``n`` float64 samples (zero-padded)."""
    x = np.asarray(sound.values[0], dtype=np.float64)
    return x[:n] if len(x) >= n else np.pad(x, (0, n - len(x)))


def _rms(x: np.ndarray) -> float:
    return math.sqrt(float(np.mean(x ** 2))) if len(x) else 0.0


def _aspiration(voice: Voice, plan: Plan, flow: np.ndarray, voiced_rms: float,
                rng: np.random.Generator) -> np.ndarray:
    """Aspiration noise relative to the voiced source's RMS: breathiness that follows the voicing
    envelope and is strongest while the glottis is open, plus /h/ and stop aspiration."""
    t = (np.arange(len(flow)) + 0.5) / SAMPLE_RATE
    envelope = 10.0 ** (_steps(plan.voicing, t, -99.0, 0.01) / 20.0)  # 1 in a stressed vowel
    opening = np.clip(flow / max(float(np.max(flow)), 1e-12), 0.0, 1.0)
    level = voice.breath * (0.4 * envelope + 1.2 * opening)
    level += 0.35 * _steps(plan.aspiration, t, 0.0, 0.01)
    return voiced_rms * level * rng.normal(size=len(flow))


def _frication(plan: Plan, formants: parselmouth.Data, n: int, reference_rms: float,
               rng: np.random.Generator) -> np.ndarray:
    """Frication noise through the frication formants, each stretch at its planned level
    relative to ``reference_rms``. The noise is filtered whole, then gated, so every stretch
    keeps its spectrum."""
    if not plan.frication:
        return np.zeros(n)
    noise = np.diff(rng.normal(size=n + 1))  # first difference: frication has little bass
    y = _samples(call([_sound(noise), formants], "Filter"), n)
    gains = []
    for t0, t1, db in plan.frication:
        stretch = y[int(t0 * SAMPLE_RATE):int(math.ceil(t1 * SAMPLE_RATE))]
        gains.append((t0, t1, reference_rms * 10 ** (db / 20.0) / max(_rms(stretch), 1e-12)))
    return y * _steps(gains, (np.arange(n) + 0.5) / SAMPLE_RATE, 0.0, 0.006)


def render_plan(voice: Voice, plan: Plan, rng: np.random.Generator) -> np.ndarray:
    """Dry speech for ``plan``: float64 at SAMPLE_RATE, ``round(plan.seconds * SAMPLE_RATE)``
    samples, voiced stretches at an RMS of 0.1."""
    n = int(round(plan.seconds * SAMPLE_RATE))
    grid = read_klattgrid(klattgrid_text(klatt_spec(voice, plan, rng)))
    flow = _samples(call(grid, "To Sound (phonation)...", SAMPLE_RATE, "yes", "yes", "yes", "yes",
                         "yes", "Powers in tiers", "no", "no", "no"), n)
    source = np.diff(flow, prepend=0.0)  # flow derivative: the excitation, radiation included
    voiced = _steps(plan.voicing, (np.arange(n) + 0.5) / SAMPLE_RATE, -99.0, 0.01) > -6.0
    source += _aspiration(voice, plan, flow, _rms(source[voiced]) or 1e-3, rng)
    speech = _samples(call([_sound(source), grid], "Filter by vocal tract...", "Cascade"), n)
    reference = _rms(speech[voiced]) or 1e-3
    fric = call(grid, "Extract frication formant grid")
    speech += _frication(plan, fric, n, reference, rng)
    return speech * (0.1 / reference)


def render_utterance(voice: Voice, seconds: float, rng: np.random.Generator) -> np.ndarray:
    """Dry (channel-free) speech, float64 at SAMPLE_RATE, ``round(seconds * SAMPLE_RATE)`` long."""
    return render_plan(voice, plan_utterance(voice, seconds, rng), rng)


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

    band = butter(2, [ch.highpass_hz, ch.lowpass_hz], btype="bandpass", fs=SAMPLE_RATE,
                  output="sos")
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
        hum = sum(np.sin(2 * math.pi * ch.hum_hz * k * t + rng.uniform(0, 6.3)) / k
                  for k in (1, 2, 3))
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
