"""Measure what ``synth.difficulty`` does to the cross-modal signal of the synthetic corpus.

For each difficulty, from the generator's parameters alone (:mod:`benchmarks.generator_ceiling`,
3,000 drawn identities, nothing rendered), in both directions and for 1:2 U and G:

- ``ceiling``: the generator-truth ceiling, a Bayes scorer on the true voice and face parameters;
- ``gender_oracle``: the candidate of the query's gender wins (0.5 on G by construction).

Then, on a small rendered corpus, measured predictors of 1:2 voice->face matching trials
(query utterance; positive face of the same identity, negative face of a random other identity):

- ``gender_oracle_1to2``: pick the candidate whose metadata gender matches the query's (random on
  ties). It does not look at the signals, so it only moves with the sampled identities.
- ``f0_width_1to2``: a measured predictor. F0 is estimated from the wav (autocorrelation), face
  width is measured on the JPEG (skin-coloured run across the cheeks, below the ears). Both are turned into
  percentiles; the voice predicts face percentile ``1 - F0 percentile`` (low voice, wide face),
  and the nearer candidate wins.
- ``f0_gender_1to2``: the voice's gender heard from its estimated F0 (male below 160 Hz), then the
  candidate whose metadata gender matches it (random on ties): how much gender the voice carries.
- ``spearman_f0_width``: rank correlation of per-identity mean F0 and mean measured face width.
- ``spearman_f0_body``: the same with the latent body size (ground truth from the sidecar).

Finally ``default`` puts the default difficulty's (``params.yaml`` ``synth.difficulty``) ceiling
and gender oracle beside the linear baseline's val and test 1:2 accuracies from
``reports/baselines.json`` (``benchmarks/linear_baseline.py``, if it has been run on the default
corpus), so the README table has one source.

    python -m benchmarks.synth_difficulty [--identities 80] [--trials 4000] [--no-render]
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import yaml

from benchmarks.common import update_report
from benchmarks.generator_ceiling import ceiling
from pipeline.sources import layout as L
from pipeline.synth.corpus import SynthConfig, synthesize

log = logging.getLogger(__name__)

MALE_F0_BELOW = 160.0  # Hz: the usual adult male/female F0 boundary


def estimate_f0(wav: np.ndarray, sr: int) -> float:
    """Median F0 (Hz) of clearly periodic 40 ms frames, from the normalized autocorrelation."""
    frame, hop = int(0.04 * sr), int(0.01 * sr)
    n = 1 + max(0, (len(wav) - frame) // hop)
    idx = np.arange(frame)[None, :] + hop * np.arange(n)[:, None]  # (n, frame)
    frames = wav[idx] - wav[idx].mean(axis=1, keepdims=True)  # (n, frame)
    energy = (frames ** 2).sum(axis=1)
    spec = np.fft.rfft(frames * np.hanning(frame), 2 * frame, axis=1)  # (n, frame + 1)
    acf = np.fft.irfft(np.abs(spec) ** 2, axis=1)[:, :frame]  # (n, frame)
    lo, hi = int(sr / 400), int(sr / 65)
    norm = acf[:, lo:hi] / np.maximum(acf[:, :1], 1e-12)  # (n, hi - lo)
    best = norm.argmax(axis=1)
    voiced = (norm.max(axis=1) > 0.5) & (energy > 0.1 * np.median(energy[energy > 0]))
    if not voiced.any():
        return float("nan")
    return float(np.median(sr / (lo + best[voiced])))


def _run_end(row: np.ndarray, start: int, step: int) -> int:
    """Last index of the skin run from ``start`` walking by ``step``, bridging 1-px gaps."""
    i = start
    while 0 <= i + step < len(row) and (row[i + step] or (0 <= i + 2 * step < len(row) and row[i + 2 * step])):
        i += step
    return i


def measure_face_width(img: np.ndarray) -> float:
    """Face width (fraction of the image) between the cheeks' outer edges, below the ears.

    Skin colour is the median of four probes on the cheeks; on each row the skin run is grown
    outwards from the left and right probes, and the median row width is returned.
    """
    import cv2

    h, w = img.shape[:2]
    lab = cv2.cvtColor(cv2.GaussianBlur(img, (0, 0), 0.8), cv2.COLOR_BGR2LAB).astype(np.float32)
    cx, cy, unit = 0.5 * w, 0.55 * h, 0.28 * w
    rows = range(int(cy + 0.28 * unit), int(cy + 0.4 * unit) + 1)
    probes = [(int(cx + dx * unit), y) for dx in (-0.6, -0.35, 0.35, 0.6) for y in (rows[0], rows[-1])]
    ref = np.median(np.array([lab[y, x] for x, y in probes]), axis=0)
    skin = np.sqrt((((lab - ref) * (0.5, 1.0, 1.0)) ** 2).sum(axis=2)) < 18.0  # (h, w)
    widths = []
    for y in rows:
        left, right = int(cx - 0.6 * unit), int(cx + 0.6 * unit)
        if skin[y, left] and skin[y, right]:
            widths.append((_run_end(skin[y], right, 1) - _run_end(skin[y], left, -1) + 1) / w)
    return float(np.median(widths)) if widths else float("nan")


def _percentiles(values: np.ndarray) -> np.ndarray:
    order = values.argsort(kind="stable")
    out = np.empty(len(values))
    out[order] = (np.arange(len(values)) + 0.5) / len(values)
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(_percentiles(a[ok]), _percentiles(b[ok]))[0, 1])


def load_measurements(root: Path) -> dict:
    """Per-utterance F0 and per-face width, keyed by identity, plus metadata gender and body."""
    import cv2
    import soundfile as sf

    meta = list(csv.reader((root / L.VOX1_META).read_text().splitlines()[1:], delimiter="\t"))
    gender = {row[0]: row[2] for row in meta}
    by_name = {row[1]: row[0] for row in meta}
    f0: dict[str, list[float]] = defaultdict(list)
    for path in sorted((root / L.VOX1_WAV).glob("*/*/*.wav")):
        wav, sr = sf.read(path)
        f0[path.parts[-3]].append(estimate_f0(wav, sr))
    width: dict[str, list[float]] = defaultdict(list)
    for path in sorted((root / L.VOX1_FACES).glob("*/1.6/*/*.jpg")):
        width[by_name[path.parts[-4]]].append(measure_face_width(cv2.imread(str(path))))
    truth = list(csv.DictReader((root / "synthetic" / "identities.csv").open()))
    body = {row["voxceleb_id"]: float(row["body"]) for row in truth}
    return {"gender": gender, "f0": dict(f0), "width": dict(width), "body": body}


def score(m: dict, trials: int, seed: int) -> dict:
    """1:2 voice->face accuracies of the gender oracle and the F0/width predictor."""
    rng = np.random.default_rng(seed)
    ids = sorted(m["f0"])
    utts = [(i, f) for i in ids for f in m["f0"][i] if np.isfinite(f)]
    faces = [(i, w) for i in ids for w in m["width"][i] if np.isfinite(w)]
    p_voice = dict(zip(range(len(utts)), 1.0 - _percentiles(np.array([f for _, f in utts])), strict=True))
    p_face = _percentiles(np.array([w for _, w in faces]))
    face_idx: dict[str, list[int]] = defaultdict(list)
    for k, (i, _) in enumerate(faces):
        face_idx[i].append(k)
    hits_g = hits_m = hits_v = 0
    for _ in range(trials):
        q = int(rng.integers(len(utts)))
        qid = utts[q][0]
        neg = ids[int(rng.integers(len(ids) - 1))]
        neg = ids[-1] if neg == qid else neg
        pos_f, neg_f = rng.choice(face_idx[qid]), rng.choice(face_idx[neg])
        g_pos, g_neg = m["gender"][qid] == m["gender"][qid], m["gender"][neg] == m["gender"][qid]
        hits_g += 1 if g_pos and not g_neg else int(rng.random() < 0.5)
        heard = "m" if utts[q][1] < MALE_F0_BELOW else "f"
        v_pos, v_neg = m["gender"][qid] == heard, m["gender"][neg] == heard
        hits_v += int(v_pos) if v_pos != v_neg else int(rng.random() < 0.5)
        d_pos, d_neg = abs(p_face[pos_f] - p_voice[q]), abs(p_face[neg_f] - p_voice[q])
        hits_m += 1 if d_pos < d_neg else int(d_pos == d_neg and rng.random() < 0.5)
    mean = {k: np.array([np.nanmean(m[k].get(i, [np.nan])) for i in ids]) for k in ("f0", "width")}
    body = np.array([m["body"][i] for i in ids])
    return {"gender_oracle_1to2": round(hits_g / trials, 4), "f0_gender_1to2": round(hits_v / trials, 4),
            "f0_width_1to2": round(hits_m / trials, 4),
            "spearman_f0_width": round(_spearman(mean["f0"], mean["width"]), 3),
            "spearman_f0_body": round(_spearman(mean["f0"], body), 3),
            "utterances": len(utts), "faces": len(faces)}


def measured(difficulty: float, identities: int, trials: int, seed: int, workers: int) -> dict:
    """The F0/face-width predictors on a small rendered corpus at ``difficulty``."""
    cfg = SynthConfig(identities=identities, seed=seed, difficulty=difficulty, videos_per_identity=2,
                      utterances_per_video=2, utterance_seconds=(3.0, 5.0), frames_per_video=3,
                      celeba_identities=6, celeba_images_per_identity=1)
    with tempfile.TemporaryDirectory(prefix="synth_difficulty_") as tmp:
        start = time.perf_counter()
        synthesize(Path(tmp), cfg, workers=workers)
        seconds = time.perf_counter() - start
        return {**score(load_measurements(Path(tmp)), trials, seed), "generate_seconds": round(seconds, 2)}


LINEAR_KEYS = tuple(f"{split}.{d}.match.k2.{c}.acc" for split in ("val", "test")
                    for d in ("v2f", "f2v") for c in ("U", "G"))


def linear_baseline(path: Path) -> dict | None:
    """The linear CCA baseline's 1:2 accuracies (with intervals) from ``reports/baselines.json``."""
    if not path.exists():
        return None
    section = json.loads(path.read_text()).get("linear_cca")
    if not section:
        return None
    return {k: [section[k], section[f"{k}.ci_low"], section[f"{k}.ci_high"]] for k in LINEAR_KEYS}


def run(difficulties: list[float], identities: int, trials: int, seed: int, workers: int,
        render: bool, params: Path, baselines: Path) -> dict:
    rows = []
    for d in difficulties:
        row = {"difficulty": d, **ceiling(d, seed=seed)}
        if render:
            row["measured"] = measured(d, identities, trials, seed, workers)
        log.info("%s", row)
        rows.append(row)
    default = float(yaml.safe_load(params.read_text())["synth"]["difficulty"])
    known = {r["difficulty"]: r for r in rows}
    head = known.get(default) or {"difficulty": default, **ceiling(default, seed=seed)}
    return {"identities_rendered": identities, "trials_rendered": trials, "seed": seed, "rows": rows,
            "default": {"difficulty": default,
                        "ceiling": {k: head[k] for k in ("v2f_U", "f2v_U", "v2f_G", "f2v_G")},
                        "gender_oracle": {c: head[f"gender_oracle_{c}"] for c in ("U", "G")},
                        "linear_cca": linear_baseline(baselines)}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--difficulties", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 1.0])
    parser.add_argument("--identities", type=int, default=80, help="rendered corpus size")
    parser.add_argument("--trials", type=int, default=4000, help="rendered-corpus trials")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--no-render", dest="render", action="store_false",
                        help="skip the rendered-corpus predictors (parameters only)")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--baselines", type=Path, default=Path("reports/baselines.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    result = run(args.difficulties, args.identities, args.trials, args.seed, args.workers,
                 args.render, args.params, args.baselines)
    update_report("synth_difficulty", result)
    log.info("default: %s", result["default"])


if __name__ == "__main__":
    main()
