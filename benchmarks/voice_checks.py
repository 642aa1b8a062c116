"""Acceptance checks of the synthetic voices (issue 12), measured on rendered utterances.

For the identities of :func:`pipeline.synth.names.sample_people` (by default the default
corpus's 200) it renders each identity's utterances exactly as the corpus does: same seeds, one
utterance of 3-8 s per video through the video's channel, 16-bit PCM. It keeps the dry
(channel-free) signal and the utterance plan, and measures:

1. **IS09 voicing**: the fraction of frames with ``F0_sma > 0`` in openSMILE's IS09
   low-level descriptors (the F0 behind IS09's F0 functionals), per gender. Pass: both genders
   within 20-60 %, and the larger fraction at most 1.5 times the smaller.
2. **pyin F0**: the mean ``librosa.pyin`` F0 (60-500 Hz) over the frames pyin calls voiced,
   averaged over ``--pyin-clips`` clips per identity, per gender. Pass: men 100-150 Hz, women
   180-250 Hz.
3. **Gender from IS09**: logistic regression (standardised features) on the 384 IS09
   functionals of the train-split identities (names F-Z), scored once on the clips of the other
   identities (A-E). ``C`` is chosen by 5-fold cross-validation over the training identities.
   Pass: accuracy >= 0.95 with all features and >= 0.90 without the features whose name
   contains ``F0``.
4. **Voice quality and rate** (reported against the published norms, not pass/fail), on the dry
   signal with Praat (parselmouth):
   - jitter (local) and shimmer (local) from ``To PointProcess (periodic, cc)``, and the mean HNR
     from ``To Harmonicity (cc)``, with a pitch range of 75-300 Hz for men and 100-500 Hz for
     women. Each is given over the whole clip (running speech) and over the nuclei (middle
     halves) of stressed vowels of at least 90 ms outside creak, where voice reports are usually
     taken. Norms: jitter 0.5-1 %, shimmer 3-5 %, HNR 15-20 dB.
   - vowel F1/F2: Burg formants at the midpoint of stressed vowels of at least 70 ms, against
     Peterson & Barney's (1952) means for the gender. Burg candidates wider than 600 Hz are
     skipped: they model the source slope. Tolerance: F1 within 25 %, F2 within 20 %.
   - syllables per second (planned syllables over the clip length, pauses included) and the
     articulation rate (pauses excluded). Norm: 4-5 syllables per second.

Speed: process CPU seconds of planning plus rendering (dry speech), and of the channel, as seconds
of audio per CPU second.

Usage: ``python benchmarks/voice_checks.py [--identities 200] [--videos 6] [--pyin-clips 1]
[--seed 0] [--difficulty 0.5] [--out FILE.json]``. On the shared 2-core machine, niced, the
default run takes about 14 minutes: rendering 3, IS09 3, pyin 4 and Praat's measures 4. Run it
with ``nice`` and one BLAS thread.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import math
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from pipeline.synth import voice as V  # noqa: E402
from pipeline.synth.names import TEST_INITIALS, VAL_INITIALS, Person, sample_people  # noqa: E402

log = logging.getLogger("benchmarks.voice_checks")

STREAM_VOX = 2  # pipeline.synth.corpus: the VoxCeleb identities' seed stream
UTTERANCE_SECONDS = (3.0, 8.0)  # the corpus default
VOICED_RANGE = (0.20, 0.60)
VOICED_RATIO_MAX = 1.5
F0_RANGES = {"m": (100.0, 150.0), "f": (180.0, 250.0)}
PITCH_RANGE = {"m": (75.0, 300.0), "f": (100.0, 500.0)}
MAX_FORMANT = {"m": 5000.0, "f": 5500.0}
# Peterson & Barney (1952), mean F1/F2 (Hz) of American English vowels, men and women.
PETERSON_BARNEY = {
    "m": {"i": (270, 2290), "I": (390, 1990), "E": (530, 1840), "ae": (660, 1720),
          "A": (730, 1090), "O": (570, 840), "U": (440, 1020), "u": (300, 870),
          "V": (640, 1190), "er": (490, 1350)},
    "f": {"i": (310, 2790), "I": (430, 2480), "E": (610, 2330), "ae": (860, 2050),
          "A": (850, 1220), "O": (590, 920), "U": (470, 1160), "u": (370, 950),
          "V": (760, 1400), "er": (500, 1640)},
}
FORMANT_TOLERANCE = (0.25, 0.20)  # relative, F1 and F2
CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)  # logistic-regression C grid (cross-validated)
MAX_BANDWIDTH = 600.0  # Hz: Burg candidates wider than this are not counted as formants


@dataclass
class Clip:
    identity: int
    video: int
    gender: str
    split_train: bool
    voice: V.Voice
    plan: V.Plan
    dry: np.ndarray
    wav: np.ndarray  # after the channel and 16-bit PCM, as the corpus writes it


def _progress(items: list[Clip], desc: str) -> Any:
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, unit="clip", mininterval=2.0)


def _rng(seed: int, *key: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


def _pcm16(x: np.ndarray) -> np.ndarray:
    """Round-trip through a 16-bit WAV, as the corpus files are written and read back."""
    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, x, V.SAMPLE_RATE, subtype="PCM_16", format="WAV")
    buf.seek(0)
    y, _ = sf.read(buf, dtype="float64")
    return y


def render_clips(people: list[Person], seed: int, difficulty: float, videos: int,
                 timing: dict[str, float]) -> list[Clip]:
    """Each identity's utterances, drawn with the corpus's seeds (one utterance per video)."""
    from tqdm.auto import tqdm

    held_out = set(VAL_INITIALS + TEST_INITIALS)
    clips = []
    for i, person in enumerate(tqdm(people, desc="render", unit="identity", mininterval=2.0)):
        voice = V.draw_voice(person, difficulty, _rng(seed, STREAM_VOX, i))
        for v in range(videos):
            rng = _rng(seed, STREAM_VOX, i, v, 0)
            channel = V.draw_channel(difficulty, rng)
            rir, sos = V.room_response(channel, rng), V.equalizer(channel)
            length = round(float(rng.uniform(*UTTERANCE_SECONDS)), 3)
            start = time.process_time()
            plan = V.plan_utterance(voice, length, rng)
            dry = V.render_plan(voice, plan, rng)
            middle = time.process_time()
            wav = V.apply_channel(dry, channel, rir, sos, rng)
            timing["render_cpu"] += middle - start
            timing["channel_cpu"] += time.process_time() - middle
            timing["audio_seconds"] += len(dry) / V.SAMPLE_RATE
            clips.append(Clip(i, v, person.gender, person.name[0] not in held_out, voice, plan,
                              dry, _pcm16(wav)))
    return clips


def is09(clips: list[Clip]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Per clip: IS09 voiced-frame fraction (LLD ``F0_sma > 0``) and the 384 functionals."""
    import opensmile

    from pipeline.audio_attributes import INT16_MAX, extract, make_extractor

    lld = opensmile.Smile(feature_set=opensmile.FeatureSet.IS09,
                          feature_level=opensmile.FeatureLevel.LowLevelDescriptors)
    func = make_extractor("IS09")
    voiced, feats = [], []
    for c in _progress(clips, "IS09"):
        x = np.clip(c.wav, -1.0, INT16_MAX).astype(np.float32)
        frames = lld.process_signal(x, V.SAMPLE_RATE)
        voiced.append(float((frames["F0_sma"].to_numpy() > 0).mean()))
        feats.append(extract(func, c.wav, V.SAMPLE_RATE))
    return np.array(voiced), np.stack(feats), list(func.feature_names)


def pyin_mean_f0(clip: Clip) -> float:
    """Mean pyin F0 (Hz) over the frames pyin calls voiced."""
    import librosa

    f0, flag, _ = librosa.pyin(clip.wav.astype(np.float32), fmin=60.0, fmax=500.0,
                               sr=V.SAMPLE_RATE, frame_length=1024, hop_length=160)
    f0 = f0[flag & np.isfinite(f0)]
    return float(np.mean(f0)) if len(f0) else float("nan")


def gender_accuracy(x: np.ndarray, gender: np.ndarray, train: np.ndarray,
                    groups: np.ndarray) -> tuple[float, float]:
    """Logistic regression fitted on the ``train`` rows, accuracy on the others.

    The inverse regularisation ``C`` is chosen from ``CS`` by 5-fold cross-validation over the
    training identities (``groups``), so the held-out people are scored once. Returns the
    accuracy and the chosen ``C``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import GroupKFold
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def model(c: float):  # noqa: ANN202
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    xt, yt, gt = x[train], gender[train], groups[train]
    folds = list(GroupKFold(n_splits=min(5, len(set(gt)))).split(xt, yt, gt))
    scores = [np.mean([(model(c).fit(xt[a], yt[a]).predict(xt[b]) == yt[b]).mean()
                       for a, b in folds]) for c in CS]
    best = CS[int(np.argmax(scores))]
    return float((model(best).fit(xt, yt).predict(x[~train]) == gender[~train]).mean()), best


def nuclei(clip: Clip) -> list[tuple[float, float]]:
    """The steady middle halves of the stressed vowels of at least 90 ms, without creak (voice
    reports are taken on modal phonation)."""
    spans = [(p.start + 0.25 * (p.end - p.start), p.end - 0.25 * (p.end - p.start))
             for p in clip.plan.phones
             if p.symbol in V.VOWELS and p.stressed and p.end - p.start >= 0.09]
    return [(a, b) for a, b in spans
            if not any(a < c1 and b > c0 for c0, c1 in clip.plan.creak)]


def voice_report(clip: Clip) -> dict[str, float]:
    """Praat jitter (local), shimmer (local) and mean HNR of the dry signal: over the whole clip
    (running speech) and over the stressed vowels' nuclei (weighted by their periods)."""
    import parselmouth
    from parselmouth.praat import call

    lo, hi = PITCH_RANGE[clip.gender]
    snd = parselmouth.Sound(clip.dry, V.SAMPLE_RATE)
    points = call(snd, "To PointProcess (periodic, cc)", lo, hi)
    harmonicity = call(snd, "To Harmonicity (cc)", 0.01, lo, 0.1, 1.0)

    def measure(t0: float, t1: float) -> tuple[float, float, float]:
        jitter = call(points, "Get jitter (local)", t0, t1, 0.0001, 0.02, 1.3)
        shimmer = call([snd, points], "Get shimmer (local)", t0, t1, 0.0001, 0.02, 1.3, 1.6)
        return jitter, shimmer, call(harmonicity, "Get mean", t0, t1)

    out = dict(zip(("jitter", "shimmer", "hnr"), measure(0.0, 0.0), strict=True))
    spans = nuclei(clip)
    weights = [call(points, "Get number of periods", a, b, 0.0001, 0.02, 1.3) for a, b in spans]
    values = np.array([measure(a, b) for a, b in spans], dtype=float).reshape(-1, 3)  # (N, 3)
    ok = np.isfinite(values).all(axis=1) & (np.array(weights, dtype=float) >= 2)
    for k, name in enumerate(("jitter", "shimmer", "hnr")):
        w = np.array(weights, dtype=float)[ok]
        out[f"vowel_{name}"] = float(np.average(values[ok, k], weights=w)) if ok.any() else math.nan
    return out


def vowel_formants(clip: Clip) -> list[tuple[float, float]]:
    """Relative F1 and F2 errors against Peterson-Barney of stressed vowels (>= 70 ms).

    F1 and F2 are the two lowest Burg formants with a bandwidth below ``MAX_BANDWIDTH``: wider
    candidates model the glottal source's slope, not a resonance of the tract."""
    import parselmouth
    from parselmouth.praat import call

    table = PETERSON_BARNEY[clip.gender]
    snd = parselmouth.Sound(clip.dry, V.SAMPLE_RATE)
    formant = call(snd, "To Formant (burg)", 0.0, 5, MAX_FORMANT[clip.gender], 0.025, 50.0)
    out = []
    for ph in clip.plan.phones:
        if ph.symbol in table and ph.stressed and ph.end - ph.start >= 0.07:
            mid = 0.5 * (ph.start + ph.end)
            cand = [(call(formant, "Get value at time", k, mid, "hertz", "Linear"),
                     call(formant, "Get bandwidth at time", k, mid, "hertz", "Linear"))
                    for k in range(1, 6)]
            freqs = [f for f, b in cand if np.isfinite(f) and np.isfinite(b) and b < MAX_BANDWIDTH]
            if len(freqs) >= 2:
                ref = table[ph.symbol]
                out.append((freqs[0] / ref[0] - 1.0, freqs[1] / ref[1] - 1.0))
    return out


def rates(clip: Clip) -> tuple[float, float]:
    """Syllables per second over the clip, and over the phrases only (articulation rate)."""
    speech = sum(b - a for a, b in clip.plan.phrases)
    return clip.plan.syllables / clip.plan.seconds, clip.plan.syllables / max(speech, 1e-9)


def _mean(values: list[float] | np.ndarray) -> float:
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    return round(float(v.mean()), 4) if len(v) else float("nan")


def per_gender(clips: list[Clip], values: np.ndarray | list[float]) -> dict[str, float]:
    g = np.array([c.gender for c in clips])
    v = np.asarray(values, dtype=float)
    return {k: _mean(v[g == k]) for k in ("m", "f")}


def quality(clips: list[Clip]) -> dict[str, Any]:
    """Check 4: Praat voice report, vowel formants and speaking rate per gender."""
    reports = [voice_report(c) for c in _progress(clips, "Praat voice report")]
    out: dict[str, Any] = {k: per_gender(clips, [r[k] for r in reports]) for k in reports[0]}
    speaking, articulation = zip(*(rates(c) for c in clips), strict=True)
    out["syllables_per_second"] = per_gender(clips, speaking)
    out["articulation_rate"] = per_gender(clips, articulation)
    for g in ("m", "f"):
        errs = np.array([e for c in clips if c.gender == g for e in vowel_formants(c)])  # (V, 2)
        tol = np.array(FORMANT_TOLERANCE)
        out.setdefault("vowels_measured", {})[g] = len(errs)
        median = np.median(np.abs(errs), axis=0)  # (2,)
        out.setdefault("f1_median_abs_error", {})[g] = round(float(median[0]), 4)
        out.setdefault("f2_median_abs_error", {})[g] = round(float(median[1]), 4)
        out.setdefault("formants_within_tolerance", {})[g] = round(
            float(np.mean(np.all(np.abs(errs) <= tol, axis=1))), 4)
    return out


def classify(clips: list[Clip], feats: np.ndarray, names: list[str]) -> dict[str, Any]:
    """Check 3: gender from the IS09 functionals, with and without the F0 features."""
    gender = np.array([c.gender for c in clips])
    train = np.array([c.split_train for c in clips])
    groups = np.array([c.identity for c in clips])
    no_f0 = np.array(["F0" not in n for n in names])
    acc_all, c_all = gender_accuracy(feats, gender, train, groups)
    acc_no_f0, c_no_f0 = gender_accuracy(feats[:, no_f0], gender, train, groups)
    return {"accuracy_all_features": round(acc_all, 4), "accuracy_without_f0": round(acc_no_f0, 4),
            "c_all_features": c_all, "c_without_f0": c_no_f0,
            "features_without_f0": int(no_f0.sum()), "train_clips": int(train.sum()),
            "test_clips": int((~train).sum())}


def verdicts(voiced: dict[str, float], f0: dict[str, float],
             gender: dict[str, Any]) -> dict[str, bool]:
    """Pass/fail of checks 1-3."""
    ratio = max(voiced.values()) / max(min(voiced.values()), 1e-9)
    return {
        "is09_voiced_fraction": ratio <= VOICED_RATIO_MAX and all(
            VOICED_RANGE[0] <= v <= VOICED_RANGE[1] for v in voiced.values()),
        "pyin_f0": all(F0_RANGES[g][0] <= f0[g] <= F0_RANGES[g][1] for g in ("m", "f")),
        "gender_classifier": gender["accuracy_all_features"] >= 0.95
        and gender["accuracy_without_f0"] >= 0.90,
    }


def run(identities: int, seed: int, difficulty: float, videos: int,
        pyin_clips: int) -> dict[str, Any]:
    people = sample_people(identities, seed)
    timing = {"render_cpu": 0.0, "channel_cpu": 0.0, "audio_seconds": 0.0}
    clips = render_clips(people, seed, difficulty, videos, timing)
    voiced, feats, names = is09(clips)
    voiced_by = per_gender(clips, voiced)
    f0_clips = [c for c in clips if c.video < pyin_clips]
    f0_by = per_gender(f0_clips, [pyin_mean_f0(c) for c in _progress(f0_clips, "pyin")])
    gender = classify(clips, feats, names)
    cpu = timing["render_cpu"] + timing["channel_cpu"]
    ratio = max(voiced_by.values()) / max(min(voiced_by.values()), 1e-9)
    return {
        "config": {"identities": identities, "seed": seed, "difficulty": difficulty,
                   "videos": videos, "clips": len(clips), "pyin_clips_per_identity": pyin_clips,
                   "men": int(sum(p.gender == "m" for p in people)),
                   "women": int(sum(p.gender == "f" for p in people))},
        "checks_passed": verdicts(voiced_by, f0_by, gender),
        "is09_voiced_fraction": {**voiced_by, "ratio": round(ratio, 3)},
        "pyin_mean_f0_hz": f0_by,
        "gender_classifier": gender,
        "voice_quality": quality(clips),
        "speed": {"audio_seconds": round(timing["audio_seconds"], 1),
                  "render_cpu_seconds": round(timing["render_cpu"], 2),
                  "channel_cpu_seconds": round(timing["channel_cpu"], 2),
                  "audio_seconds_per_cpu_second":
                      round(timing["audio_seconds"] / max(cpu, 1e-9), 1)},
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--identities", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--difficulty", type=float, default=0.5)
    parser.add_argument("--videos", type=int, default=6)
    parser.add_argument("--pyin-clips", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None, help="JSON file for the results.")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    start = time.perf_counter()
    result = run(args.identities, args.seed, args.difficulty, args.videos, args.pyin_clips)
    result["wall_seconds"] = round(time.perf_counter() - start, 1)
    text = json.dumps(result, indent=2)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    log.info("%s", text)


if __name__ == "__main__":
    main()
