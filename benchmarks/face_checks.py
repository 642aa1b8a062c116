"""Face checks (issue 12): does the attribute model trained on the synthetic CelebA set transfer
to the synthetic face tracks, and is each of the 12 private attributes learnable?

1. Generates a corpus into ``OUT/raw`` with :func:`pipeline.synth.corpus.synthesize`: a reduced
   VoxCeleb part (``--identities``, ``--videos``, ``--frames``; short utterances, since the
   voices do not matter here) and the default CelebA part (``synth.celeba_*`` of ``--params``),
   so the attribute model trains on the default number of images.
2. Trains the ``face_attributes_train`` stage with the params file's settings (only the runtime
   knobs ``threads`` and ``workers`` are set, to ``--threads`` and 1; ``--epochs`` overrides the
   epoch count for quick looks and is recorded).
3. Applies the model to every face-track crop, prepared exactly like the ``faces`` stage does
   (:func:`pipeline.common.images.load_face`, ``faces.size``) and thresholded like the
   ``face_attributes`` stage (``face_attributes.threshold``), and compares with
   ``synthetic/identities.csv``. No VoxCeleb identity is a CelebA identity, so every face track
   belongs to a held-out identity.
4. Measures the renderer's throughput (images/s, one process) for face tracks and CelebA images.

The JSON written to ``OUT/face_checks.json`` holds 'Male' accuracy on the face tracks (all and
test split), per-attribute balanced accuracy on the face tracks and on the CelebA val and test
partitions, the pass/fail of the issue's thresholds, and the render speed. ``--report`` also
merges it into ``reports/benchmarks.json`` under ``face_checks``.

    nice -n 15 env OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 \\
        python -m benchmarks.face_checks /tmp/face/run [--identities 80] [--report]

``--pipeline .`` skips steps 1, 2 and 4 and measures a finished default ``dvc repro`` instead:
its corpus (``data/raw``) and its attribute model (``models/face_attributes.pt``).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import update_report
from pipeline.common.config import build, load_params, section
from pipeline.face_attributes_train import binary_metrics, config_from_params
from pipeline.face_attributes_train import run as train_attributes
from pipeline.sources import layout as L
from pipeline.synth import face as F
from pipeline.synth.corpus import SIDECAR, SynthConfig, synthesize
from pipeline.synth.names import TEST_INITIALS

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
MALE_MIN = 0.95  # issue 12: 'Male' accuracy on the face tracks
BA_MIN = 0.70  # issue 12: balanced accuracy of every attribute on the CelebA test partition


def corpus_config(params: dict[str, Any], identities: int, videos: int, frames: int,
                  seed: int) -> SynthConfig:
    """The params file's ``synth`` section with a reduced VoxCeleb part (CelebA part unchanged)."""
    cfg = build(SynthConfig, section(params, "synth"), name="synth")
    return dataclasses.replace(cfg, identities=identities, videos_per_identity=videos,
                               frames_per_video=frames, utterances_per_video=1,
                               utterance_seconds=(0.5, 0.6), seed=seed)


def train(raw: Path, out: Path, params: dict[str, Any], threads: int,
          epochs: int | None) -> dict[str, Any]:
    """Run the ``face_attributes_train`` stage; returns its report."""
    cfg = config_from_params(params)
    cfg = dataclasses.replace(cfg, threads=threads, workers=1,
                              **({"epochs": epochs} if epochs else {}))
    return train_attributes(raw, out / "face_attributes.pt", out / "face_attributes.json",
                            out / "face_attributes_rejects.parquet", cfg, live_dir=out / "live")


def face_tracks(raw: Path) -> tuple[list[Path], list[dict[str, str]]]:
    """Every face-track JPEG and its identity's ground-truth row, in path order."""
    with open(raw / SIDECAR / "identities.csv", encoding="utf-8") as fh:
        truth = {row["name"]: row for row in csv.DictReader(fh)}
    paths = sorted((raw / L.VOX1_FACES).glob("*/1.6/*/*.jpg"))
    return paths, [truth[p.parts[-4]] for p in paths]


def predict_tracks(paths: list[Path], checkpoint: Path, size: int, threads: int) -> np.ndarray:
    """Sigmoid probabilities (n, attributes) of the checkpoint on the face-track crops."""
    from model.attributes import load_classifier, predict
    from model.runtime import torch_runtime
    from pipeline.common.images import load_face

    images = np.stack([load_face(p, size) for p in paths])  # (n, size, size, 3) RGB
    with torch_runtime(threads):
        net, meta = load_classifier(checkpoint)
        probs = predict(net, lambda a, b: images[a:b], len(images), 256, tuple(meta["mean"]),
                        tuple(meta["std"]))
    return probs


def track_metrics(probs: np.ndarray, rows: list[dict[str, str]], names: tuple[str, ...],
                  threshold: float) -> dict[str, Any]:
    """Per-attribute metrics on all face tracks and 'Male' accuracy on the test split."""
    labels = np.array([[int(r[a]) for a in names] for r in rows], dtype=np.uint8)  # (n, attributes)
    test = np.array([r["name"][0] in TEST_INITIALS for r in rows])
    male = names.index("Male")
    pred = probs[:, male] >= threshold
    return {"all": binary_metrics(probs, labels, names, threshold),
            "identities": len({r["name"] for r in rows}),
            "male_accuracy": round(float((pred == labels[:, male]).mean()), 4),
            "male_accuracy_test_split": round(float((pred[test] == labels[test, male]).mean()), 4),
            "test_split_faces": int(test.sum())}


def render_speed(n: int = 200, face_size: int = 128, difficulty: float = 0.5) -> dict[str, float]:
    """Images/s of the renderer in this process: face tracks and CelebA images, JPEG included."""
    from pipeline.synth.names import sample_people

    looks = [F.draw_look(p, np.random.default_rng(i)) for i, p in enumerate(sample_people(n, 5))]
    out = {}
    for kind in ("face_track", "celeba"):
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        for look in looks:
            if kind == "face_track":
                view = F.draw_view(difficulty, rng)
                img = F.render(look, view, F.draw_expression(rng), F.facetrack_canvas(face_size), rng)
            else:
                view = F.draw_view(difficulty, rng, aligned=True)
                img = F.render(look, view, F.draw_expression(rng), F.CELEBA_CANVAS, rng)
            F.encode_jpeg(img, view.jpeg_quality)
        out[f"{kind}_images_per_s"] = round(n / (time.perf_counter() - start), 1)
    return out


def assess(raw: Path, checkpoint: Path, report: dict[str, Any], params: dict[str, Any],
           threads: int) -> dict[str, Any]:
    """Face-track and CelebA-test measures of a trained attribute model on the corpus in ``raw``."""
    names = tuple(report["params"]["attributes"])
    threshold = float(section(params, "face_attributes").get("threshold", 0.5))
    paths, rows = face_tracks(raw)
    probs = predict_tracks(paths, checkpoint, int(report["size"]), threads)
    tracks = track_metrics(probs, rows, names, threshold)
    test_ba = {a: v["balanced_accuracy"] for a, v in report["test"]["attributes"].items()}
    return {
        "epochs": report["params"]["epochs"], "selected_epoch": report["selected_epoch"],
        "celeba_images": report["images"],
        "face_tracks": {"faces": len(paths), **tracks},
        "celeba_val": report["val"], "celeba_test": report["test"],
        "celeba_test_balanced_accuracy": test_ba,
        "checks": {"male_face_tracks": tracks["male_accuracy"] >= MALE_MIN,
                   "every_attribute_celeba_test": min(test_ba.values()) >= BA_MIN},
    }


def run(out: Path, params_path: Path, identities: int, videos: int, frames: int, seed: int,
        workers: int, threads: int, epochs: int | None, skip_synth: bool) -> dict[str, Any]:
    params = load_params(params_path)
    raw = out / "raw"
    cfg = corpus_config(params, identities, videos, frames, seed)
    start = time.perf_counter()
    if not skip_synth:
        synthesize(raw, cfg, workers=workers)
    synth_s = time.perf_counter() - start
    report = train(raw, out, params, threads, epochs)
    train_s = time.perf_counter() - start - synth_s
    result = {
        "corpus": {k: v for k, v in dataclasses.asdict(cfg).items()},
        **assess(raw, out / "face_attributes.pt", report, params, threads),
        "seconds": {"synthesize": round(synth_s, 1), "train": round(train_s, 1)},
        "render": render_speed(face_size=cfg.face_size, difficulty=cfg.difficulty),
    }
    (out / "face_checks.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def run_pipeline(root: Path, out: Path, params_path: Path, threads: int) -> dict[str, Any]:
    """The same measures on a finished ``dvc repro``'s default corpus and attribute model
    (``data/raw``, ``models/face_attributes.pt``, ``reports/face_attributes.json`` under ``root``)."""
    params = load_params(params_path)
    report = json.loads((root / "reports" / "face_attributes.json").read_text(encoding="utf-8"))
    corpus = json.loads((root / "data" / "raw" / SIDECAR / "corpus.json").read_text(encoding="utf-8"))
    result = {"corpus": corpus["config"], "source": "dvc repro outputs",
              **assess(root / "data" / "raw", root / "models" / "face_attributes.pt", report, params, threads)}
    out.mkdir(parents=True, exist_ok=True)
    (out / "face_checks.json").write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path, help="working directory (corpus, model, JSON)")
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--identities", type=int, default=80, help="VoxCeleb identities")
    parser.add_argument("--videos", type=int, default=3, help="videos per identity")
    parser.add_argument("--frames", type=int, default=3, help="frames per video")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="corpus generation processes")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--epochs", type=int, default=None, help="override (quick looks only)")
    parser.add_argument("--skip-synth", action="store_true", help="reuse OUT/raw")
    parser.add_argument("--report", action="store_true", help="merge into reports/benchmarks.json")
    parser.add_argument("--pipeline", type=Path, default=None, metavar="ROOT",
                        help="measure a finished dvc repro under ROOT instead of generating and training")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    if args.pipeline:
        result = run_pipeline(args.pipeline, args.out, args.params, args.threads)
    else:
        result = run(args.out, args.params, args.identities, args.videos, args.frames, args.seed,
                     args.workers, args.threads, args.epochs, args.skip_synth)
    summary = {"male_face_tracks": result["face_tracks"]["male_accuracy"],
               "male_face_tracks_test_split": result["face_tracks"]["male_accuracy_test_split"],
               "celeba_test_balanced_accuracy": result["celeba_test_balanced_accuracy"],
               "checks": result["checks"]}
    log.info("face checks: %s", json.dumps(summary, sort_keys=True))
    if args.report:
        update_report("face_checks", result)


if __name__ == "__main__":
    main()
