"""The embedded synthetic corpus: VoxCeleb1- and CelebA-format data with known ground truth.

``synthesize`` writes, under one directory, the real layouts (see :mod:`pipeline.sources.layout`):

- ``voxceleb1/vox1_meta.csv``, ``voxceleb1/wav/idNNNNN/<ytid>/NNNNN.wav`` (16 kHz mono PCM_16)
  and ``voxceleb1/unzippedFaces/<Name>/1.6/<ytid>/<7-digit frame>.jpg``;
- ``celeba/img_align_celeba/NNNNNN.jpg`` (178x218) with ``list_attr_celeba.txt``,
  ``identity_CelebA.txt`` and ``list_eval_partition.txt``;

plus a ground-truth sidecar under ``synthetic/`` that is not part of any real layout.

Identities follow VoxCeleb1's metadata statistics (:mod:`pipeline.synth.names`); voices
(:mod:`pipeline.synth.voice`) and faces (:mod:`pipeline.synth.face`) share gender, nationality,
age and body size, and each modality has traits of its own. ``difficulty`` (0..1) weakens the
voice's dependence on the shared traits and strengthens per-video variation. Every identity is
seeded from ``(seed, stream, index)``, so output is byte-identical for any number of workers.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import typer

from pipeline.common.config import build, load_params, section
from pipeline.common.io import atomic_dir
from pipeline.common.parallel import imap_ordered
from pipeline.sources import layout as L
from pipeline.synth import face as F
from pipeline.synth import voice as V
from pipeline.synth.names import (
    MIN_IDENTITIES,
    TEST_INITIALS,
    VAL_INITIALS,
    Person,
    apportion,
    sample_people,
    split_initials,
)

log = logging.getLogger(__name__)

GENERATOR = "avmatch.pipeline.synth"  # in corpus.json: the package, so its bytes outlive moves
GENERATOR_VERSION = "2.0"  # 2.0: Praat voices, one face renderer, recalibrated shared traits
SIDECAR = "synthetic"
YTID_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-"
FIRST_VOX_ID = 10001
FRAME_STEP = 25  # face-track frames are sampled once a second at 25 fps
CELEBA_PARTITION_WEIGHTS = (8.0, 1.0, 1.0)  # train / val / test identities
# SeedSequence spawn-key streams: names use 0 (vox) and 1 (CelebA people).
STREAM_VOX, STREAM_CELEBA, STREAM_CELEBA_PLAN = 2, 3, 4


@dataclass(frozen=True)
class SynthConfig:
    """Size and difficulty of the synthetic corpus (params.yaml section ``synth``).

    Every default equals params.yaml (tests check it). The split letters are not here: they are
    the manifest's (``manifest.val_initials`` / ``test_initials``), given to :func:`synthesize`.
    """

    identities: int = 400
    seed: int = 0
    difficulty: float = 0.5  # 0 = voice strongly tied to shared traits, 1 = weakly, noisier channels
    videos_per_identity: int = 6
    utterances_per_video: int = 1
    utterance_seconds: tuple[float, float] = (3.0, 8.0)  # uniform range of utterance lengths
    frames_per_video: int = 3
    face_size: int = 128  # face-track crop side, px
    celeba_identities: int = 200
    celeba_images_per_identity: int = 10

    def __post_init__(self) -> None:
        if self.identities < MIN_IDENTITIES:
            raise ValueError(f"synth.identities must be >= {MIN_IDENTITIES}; got {self.identities}")
        if not 0.0 <= self.difficulty <= 1.0:
            raise ValueError(f"synth.difficulty must be in [0, 1]; got {self.difficulty}")
        lo, hi = self.utterance_seconds
        if not 0.5 <= lo <= hi:
            raise ValueError(f"synth.utterance_seconds must be 0.5 <= lo <= hi; got {self.utterance_seconds}")
        for name in ("videos_per_identity", "utterances_per_video", "frames_per_video"):
            if getattr(self, name) < 1:
                raise ValueError(f"synth.{name} must be >= 1")
        if self.face_size < 32:
            raise ValueError(f"synth.face_size must be >= 32; got {self.face_size}")
        if self.celeba_identities < MIN_IDENTITIES or self.celeba_images_per_identity < 1:
            raise ValueError(f"synth.celeba_identities must be >= {MIN_IDENTITIES} and "
                             "synth.celeba_images_per_identity >= 1")


def small_config(**overrides: object) -> SynthConfig:
    """A fast corpus for tests (explicit overrides of the defaults): val/test/train identities
    of both genders, 2 videos each, one utterance and two frames per video."""
    base = {"identities": 20, "videos_per_identity": 2, "utterances_per_video": 1,
            "utterance_seconds": (1.0, 1.5), "frames_per_video": 2, "face_size": 64,
            "celeba_identities": 12, "celeba_images_per_identity": 2}
    return SynthConfig(**{**base, **overrides})  # type: ignore[arg-type]


def initials_from_params(params: Mapping[str, Any]) -> dict[str, str]:
    """The manifest's split letters (``manifest.val_initials`` / ``test_initials``) of a params
    mapping, for the generator; absent keys take the defaults (which equal params.yaml)."""
    manifest = section(params, "manifest")
    return split_initials(manifest.get("val_initials", VAL_INITIALS),
                          manifest.get("test_initials", TEST_INITIALS))


def _rng(seed: int, *key: int) -> np.random.Generator:
    """An independent generator for ``(seed, *key)``, never touching global state."""
    return np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=key))


@dataclass(frozen=True)
class VoxTask:
    out_dir: Path
    cfg: SynthConfig
    index: int
    vox_id: str
    person: Person


@dataclass(frozen=True)
class CelebaTask:
    out_dir: Path
    cfg: SynthConfig
    index: int
    person: Person
    images: tuple[int, ...]  # image numbers (000001.jpg = 1)


def _ytids(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    while len(out) < n:
        ytid = "".join(YTID_ALPHABET[i] for i in rng.integers(len(YTID_ALPHABET), size=11))
        if ytid not in out:
            out.append(ytid)
    return out


def _write_utterances(task: VoxTask, voice: V.Voice, ytid: str, video: int) -> dict:
    """All utterances of one video through one channel; returns the channel and seconds."""
    import soundfile as sf

    cfg = task.cfg
    rng = _rng(cfg.seed, STREAM_VOX, task.index, video, 0)
    channel = V.draw_channel(cfg.difficulty, rng)
    rir, sos = V.room_response(channel, rng), V.equalizer(channel)
    folder = task.out_dir / L.VOX1_WAV / task.vox_id / str(ytid)
    folder.mkdir(parents=True, exist_ok=True)
    seconds = 0.0
    for k in range(cfg.utterances_per_video):
        length = round(float(rng.uniform(*cfg.utterance_seconds)), 3)
        wav = V.apply_channel(V.render_utterance(voice, length, rng), channel, rir, sos, rng)
        sf.write(folder / f"{k + 1:05d}.wav", wav, V.SAMPLE_RATE, subtype="PCM_16", format="WAV")
        seconds += len(wav) / V.SAMPLE_RATE
    return {"seconds": seconds, **{f"ch_{k}": v for k, v in dataclasses.asdict(channel).items()}}


def _write_frames(task: VoxTask, look: F.Look, ytid: str, video: int) -> dict:
    """A video's face-track frames under one view; returns the view summary."""
    cfg = task.cfg
    rng = _rng(cfg.seed, STREAM_VOX, task.index, video, 1)
    view = F.draw_view(cfg.difficulty, rng)
    canvas = F.facetrack_canvas(cfg.face_size)
    folder = task.out_dir / L.VOX1_FACES / task.person.name / "1.6" / ytid
    folder.mkdir(parents=True, exist_ok=True)
    start = int(rng.integers(0, 120)) * FRAME_STEP
    for k in range(cfg.frames_per_video):
        img = F.render(look, view, F.draw_expression(rng), canvas, rng)
        (folder / f"{start + k * FRAME_STEP:07d}.jpg").write_bytes(F.encode_jpeg(img, view.jpeg_quality))
    return {"glasses": view.glasses, "yaw": view.yaw, "roll_deg": view.roll_deg, "blur": view.blur,
            "jpeg_quality": view.jpeg_quality, "first_frame": start}


def vox_identity(task: VoxTask) -> dict:
    """Write one VoxCeleb1 identity's utterances and face tracks; return its ground truth."""
    cfg = task.cfg
    rng = _rng(cfg.seed, STREAM_VOX, task.index)
    voice = V.draw_voice(task.person, cfg.difficulty, rng)
    look = F.draw_look(task.person, rng)
    videos = []
    for v, ytid in enumerate(_ytids(rng, cfg.videos_per_identity)):
        audio = _write_utterances(task, voice, ytid, v)
        faces = _write_frames(task, look, ytid, v)
        videos.append({"voxceleb_id": task.vox_id, "ytid": ytid, **audio, **faces})
    return {"kind": "vox", "vox_id": task.vox_id, "voice": voice, "look": look, "videos": videos}


def celeba_identity(task: CelebaTask) -> dict:
    """Render one synthetic celebrity's CelebA-format photos; return their labels.

    The photos use the face tracks' renderer and framing (:mod:`pipeline.synth.face`), with
    an aligned view (:func:`pipeline.synth.face.draw_view`: roll, scale and shift within
    ``ALIGNED_PLANE`` of the face tracks' ranges; milder blur, noise and JPEG).
    """
    cfg = task.cfg
    rng = _rng(cfg.seed, STREAM_CELEBA, task.index)
    look = F.draw_look(task.person, rng)  # the first draw, as in celeba_looks
    folder = task.out_dir / L.CELEBA_IMAGES
    folder.mkdir(parents=True, exist_ok=True)
    labels = {}
    for number in task.images:
        view = F.draw_view(cfg.difficulty, rng, aligned=True)
        expr = F.draw_expression(rng)
        img = F.render(look, view, expr, F.CELEBA_CANVAS, rng)
        (folder / f"{number:06d}.jpg").write_bytes(F.encode_jpeg(img, view.jpeg_quality))
        labels[number] = F.celeba_labels(look, view, expr)
    return {"kind": "celeba", "index": task.index, "look": look, "labels": labels}


def _work(task: VoxTask | CelebaTask) -> dict:
    return vox_identity(task) if isinstance(task, VoxTask) else celeba_identity(task)


# ---- planning and tables --------------------------------------------------------------------

@dataclass(frozen=True)
class CelebaPlan:
    """Who the CelebA-format celebrities are, their ids, partitions and image numbers."""

    people: tuple[Person, ...]
    celeb_ids: tuple[int, ...]
    partitions: tuple[int, ...]  # 0 train, 1 val, 2 test (per identity, so none spans two)
    images: tuple[tuple[int, ...], ...]


def celeba_looks(cfg: SynthConfig, people: tuple[Person, ...]) -> list[F.Look]:
    """Each celebrity's look, drawn exactly as :func:`celeba_identity` draws it."""
    return [F.draw_look(p, _rng(cfg.seed, STREAM_CELEBA, i)) for i, p in enumerate(people)]


def stratify(labels: np.ndarray, sizes: list[int], rng: np.random.Generator,
             swaps: int = 5000) -> np.ndarray:
    """Part (0..len(sizes)-1) of each row of 0/1 ``labels`` (n, attributes), with the given part
    sizes: a random split, then ``swaps`` random exchanges between parts, each kept when it brings
    every part's count of each attribute's positives closer to its proportional share (squared
    error relative to the share). Small parts thus hold about their share of every attribute."""
    labels = labels.astype(np.int64)
    n = len(labels)
    part = np.repeat(np.arange(len(sizes)), sizes)[rng.permutation(n)]  # (n,)
    target = np.asarray(sizes, float)[:, None] / n * labels.sum(axis=0)[None, :]  # (parts, attributes)
    counts = np.stack([labels[part == p].sum(axis=0) for p in range(len(sizes))]).astype(float)
    weight = 1.0 / np.maximum(target, 1.0)

    def cost(c: np.ndarray) -> float:
        return float((((c - target) ** 2) * weight).sum())

    current = cost(counts)
    for i, j in rng.integers(0, n, size=(swaps, 2)):
        pi, pj = part[i], part[j]
        if pi == pj or (labels[i] == labels[j]).all():
            continue
        trial = counts.copy()
        trial[pi] += labels[j] - labels[i]
        trial[pj] += labels[i] - labels[j]
        c = cost(trial)
        if c < current:
            part[i], part[j], counts, current = pj, pi, trial, c
    return part


def plan_celeba(cfg: SynthConfig, initials: Mapping[str, str] | None = None) -> CelebaPlan:
    """Partition celebrities 8:1:1 and number images partition by partition (as CelebA does).

    The partitions are stratified on the 12 private attributes (:func:`stratify`), so the
    small val and test partitions (20 identities each by default) hold about their share of
    every attribute's positives, and each balanced accuracy rests on several identities.
    """
    people = tuple(sample_people(cfg.celeba_identities, cfg.seed, stream=1, initials=initials))
    rng = _rng(cfg.seed, STREAM_CELEBA_PLAN)
    k = len(people)
    sizes = apportion(k, CELEBA_PARTITION_WEIGHTS, lo=[1, 1, 1])
    labels = np.array([[look.private_attributes()[a] for a in F.PRIVATE_ATTRIBUTES]
                       for look in celeba_looks(cfg, people)])  # (k, 12)
    partitions = stratify(labels, list(sizes), rng)
    celeb_ids = rng.permutation(k) + 1
    images: list[list[int]] = [[] for _ in range(k)]
    number = 1
    for part in range(3):
        slots = [i for i in range(k) if partitions[i] == part for _ in range(cfg.celeba_images_per_identity)]
        for i in (slots[j] for j in rng.permutation(len(slots))):
            images[i].append(number)
            number += 1
    return CelebaPlan(people, tuple(int(c) for c in celeb_ids), tuple(int(p) for p in partitions),
                      tuple(tuple(x) for x in images))


def write_vox_meta(out_dir: Path, people: list[Person], vox_ids: list[str]) -> None:
    """``vox1_meta.csv``: tab separated, VoxCeleb1's header, one row per identity in name order."""
    lines = ["\t".join(L.VOX1_META_HEADER)]
    lines += [f"{i}\t{p.name}\t{p.gender}\t{p.nationality}\t{p.set}" for i, p in zip(vox_ids, people, strict=True)]
    path = out_dir / L.VOX1_META
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_celeba_lists(out_dir: Path, plan: CelebaPlan, labels: dict[int, dict[str, int]]) -> None:
    """``list_attr_celeba.txt``, ``identity_CelebA.txt`` and ``list_eval_partition.txt``."""
    numbers = sorted(labels)
    owner = {n: i for i, imgs in enumerate(plan.images) for n in imgs}
    attr = [str(len(numbers)), " ".join(F.CELEBA_ATTRIBUTES)]
    attr += [f"{n:06d}.jpg" + "".join(f" {labels[n][a]:2d}" for a in F.CELEBA_ATTRIBUTES) for n in numbers]
    ident = [f"{n:06d}.jpg {plan.celeb_ids[owner[n]]}" for n in numbers]
    part = [f"{n:06d}.jpg {plan.partitions[owner[n]]}" for n in numbers]
    for rel, lines in ((L.CELEBA_ATTR, attr), (L.CELEBA_IDENTITY, ident), (L.CELEBA_PARTITION, part)):
        path = out_dir / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def _write_csv(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _look_columns(look: F.Look) -> dict:
    cols = {"face_width": look.width, "face_length": look.length, "jaw": look.jaw,
            "skin_b": look.skin[0], "skin_g": look.skin[1], "skin_r": look.skin[2],
            "hair_colour": look.hair_name, "grey": look.grey, "hair_style": look.hair_style,
            "bald": int(look.bald), "beard": look.beard, "makeup": int(look.makeup)}
    return {**cols, **{a: int(v) for a, v in look.private_attributes().items()}}


def _person_columns(p: Person) -> dict:
    return {"name": p.name, "gender": p.gender, "nationality": p.nationality, "group": p.group,
            "age": p.age, "body": p.body}


def write_sidecar(out_dir: Path, cfg: SynthConfig, people: list[Person], vox: list[dict],
                  plan: CelebaPlan, celeba: list[dict], summary: dict) -> None:
    """Ground truth under ``synthetic/`` (not part of any real layout)."""
    side = out_dir / SIDECAR
    rows = [{"voxceleb_id": r["vox_id"], **_person_columns(p), "set": p.set,
             **{f"voice_{k}": v for k, v in dataclasses.asdict(r["voice"]).items()}, **_look_columns(r["look"])}
            for p, r in zip(people, vox, strict=True)]
    _write_csv(side / "identities.csv", rows)
    _write_csv(side / "videos.csv", [v for r in vox for v in r["videos"]])
    celeb_rows = [{"celeb_id": plan.celeb_ids[r["index"]], "partition": plan.partitions[r["index"]],
                   "images": len(plan.images[r["index"]]), **_person_columns(plan.people[r["index"]]),
                   **_look_columns(r["look"])} for r in celeba]
    _write_csv(side / "celeba_identities.csv", celeb_rows)
    corpus = {"generator": GENERATOR, "version": GENERATOR_VERSION,
              "config": dataclasses.asdict(cfg), "summary": summary}
    (side / "corpus.json").write_text(json.dumps(corpus, indent=2, sort_keys=True) + "\n", encoding="utf-8")


# ---- entry points ---------------------------------------------------------------------------

def _summary(cfg: SynthConfig, people: list[Person], vox: list[dict], plan: CelebaPlan,
             initials: Mapping[str, str]) -> dict:
    splits = {s: sum(p.initial in letters for p in people) for s, letters in initials.items()}
    videos = [v for r in vox for v in r["videos"]]
    return {
        "identities": len(people),
        "genders": {g: sum(p.gender == g for p in people) for g in ("m", "f")},
        "initial_splits": splits,
        "nationalities": len({p.nationality for p in people}),
        "videos": len(videos),
        "utterances": len(videos) * cfg.utterances_per_video,
        "audio_seconds": round(sum(v["seconds"] for v in videos), 3),
        "faces": len(videos) * cfg.frames_per_video,
        "celeba_identities": len(plan.people),
        "celeba_images": sum(len(x) for x in plan.images),
        "celeba_partitions": {str(k): sum(len(x) for x, p in zip(plan.images, plan.partitions, strict=True)
                                          if p == k) for k in range(3)},
        "difficulty": cfg.difficulty,
        "seed": cfg.seed,
        "generator_version": GENERATOR_VERSION,
    }


def synthesize(out_dir: Path, cfg: SynthConfig, workers: int | None = None,
               initials: Mapping[str, str] | None = None) -> dict:
    """Write the whole corpus into ``out_dir``; return a summary (counts, seconds of audio).

    ``initials`` are the manifest's split letters (:func:`initials_from_params`; default A-B
    val, C-E test): every split gets identities of both genders. Identities are processed in
    parallel (``workers``; None or 0 = all cores); output is byte-identical for any worker count.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    initials = initials or split_initials()
    people = sample_people(cfg.identities, cfg.seed, initials=initials)
    vox_ids = [f"id{FIRST_VOX_ID + i}" for i in range(len(people))]
    plan = plan_celeba(cfg, initials)
    tasks: list[VoxTask | CelebaTask] = [VoxTask(out_dir, cfg, i, vid, p)
                                         for i, (vid, p) in enumerate(zip(vox_ids, people, strict=True))]
    tasks += [CelebaTask(out_dir, cfg, i, p, plan.images[i]) for i, p in enumerate(plan.people)]
    vox: list[dict] = []
    celeba: list[dict] = []
    for result in imap_ordered(_work, tasks, workers=workers, desc="synth", total=len(tasks)):
        (vox if result["kind"] == "vox" else celeba).append(result)
    write_vox_meta(out_dir, people, vox_ids)
    write_celeba_lists(out_dir, plan, {n: lab for r in celeba for n, lab in r["labels"].items()})
    summary = _summary(cfg, people, vox, plan, initials)
    write_sidecar(out_dir, cfg, people, vox, plan, celeba, summary)
    log.info("synthesized %d identities, %d utterances (%.0f s of audio), %d faces, %d CelebA images "
             "in %.1f s", summary["identities"], summary["utterances"], summary["audio_seconds"],
             summary["faces"], summary["celeba_images"], time.perf_counter() - start)
    return summary


def cli(
    out_dir: Path = typer.Argument(..., help="Directory to write the corpus into (replaced atomically)."),
    identities: int | None = typer.Option(None, "--identities", help="Number of identities [default: 400]."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed [default: 0]."),
    difficulty: float | None = typer.Option(
        None, "--difficulty", help="0..1; higher = weaker voice-face link [default: 0.5]."),
    params: Path | None = typer.Option(
        None, "--params",
        help="Take defaults from this file's `synth` section and manifest split letters."),
    workers: int = typer.Option(0, "--workers", help="Processes (0 = all cores)."),
) -> None:
    """Generate the embedded synthetic corpus (VoxCeleb1 + CelebA layouts) into OUT_DIR."""
    values = load_params(params) if params is not None else {}
    cfg = build(SynthConfig, section(values, "synth"), name="synth")
    overrides = {"identities": identities, "seed": seed, "difficulty": difficulty}
    cfg = dataclasses.replace(cfg, **{k: v for k, v in overrides.items() if v is not None})
    with atomic_dir(out_dir) as tmp:
        summary = synthesize(tmp, cfg, workers=workers, initials=initials_from_params(values))
    log.info("wrote %s: %s", out_dir, json.dumps(summary, sort_keys=True))
