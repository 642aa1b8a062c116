"""Inference on users' files: ``avmatch match``, ``avmatch verify`` and ``avmatch retrieve``.

A user with a trained checkpoint (``models/avmatch/best``) applies the model to their own voices
and photos without DVC. Every file goes through exactly the preprocessing of the pipeline, one
function per step, shared by the three commands (docs/inference.md):

voice (any WAV / FLAC / M4A, any sample rate and channel count)
    :func:`~pipeline.common.userfiles.load_voice` (decode, downmix, resample; the
    ``spectrograms`` stage's duration and silence checks) -> :func:`voice_spectrogram` (the
    stage's own :func:`~pipeline.spectrograms.log_spectrogram`, rounded to the store's float16)
    -> :func:`fixed_crop` (the evaluation crops of :class:`model.stores.SpectrogramStore`,
    ``model.eval_voice_crops`` of them, tiled when the clip is short) -> the checkpoint's
    spectrogram normalisation, when it has one;
    :func:`voice_attributes`: openSMILE IS09 functionals of the whole clip, standardised with
    the train-split statistics (only when the model uses private attributes).
photo (any JPEG / PNG)
    :func:`~pipeline.common.userfiles.load_face_photo` (the largest face found by OpenCV's
    bundled Haar cascade, cropped with the framing of the training faces, resized to the
    model's face size; the centred square with ``--no-detect``) -> :func:`face_input`
    (``[-1, 1]``, plus the mirror image with ``model.eval_face_flip``); :func:`face_attributes`:
    the face-attribute classifier's 12 probabilities (or 0/1) when the model uses private
    attributes. The model averages the embeddings of an item's views (``embed_views``), as in
    evaluation.

Front-end settings (:func:`build_front_end`) come from the feature stores the model was trained
on (``--features``, default ``data/features``): the spectrogram parameters recorded in
``spectrograms.h5``, the IS09 statistics of ``audio_attributes_stats.json`` and the sample rate
in ``audio_attributes_summary.json``, the face-attribute threshold of
``face_attributes_summary.json``, and the framing measured on the crops of ``faces.h5``
(:func:`face_framing`). Without the stores the ``--params`` file's sections are used, and the
framing falls back to the default 2x detector box. The checkpoint's JSON gives the input sizes,
the spectrogram normalisation and the face-attribute mode; a front end that does not produce the
checkpoint's input sizes is refused.

Scores are the model's declared rule (``model.score``): for ``match``, ``AVMatchNet.score`` on
one 1:k tuple (the 1:k matching classifier when the model has one for that k, else the
retrieval distance); for ``verify`` the pair score (the verification head); for ``retrieve``
the per-pair score of the whole gallery (retrieval distance, else verification, else cosine).
``verify`` decides at the val-chosen threshold that the evaluate stage writes to
``reports/metrics.json`` (:data:`THRESHOLD_KEY`).

Errors (a bad file, a missing checkpoint, no threshold) print one line naming the file and the
reason and exit with status 1, without a traceback. In a ``retrieve`` gallery, unusable files
are skipped and listed (in the output and the JSON), so one bad file does not hide the ranking.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import typer

from pipeline.common.config import ConfigError, build, load_params, section
from pipeline.common.userfiles import (
    AudioFileError,
    DetectorConfig,
    DetectorUnavailable,
    FaceFraming,
    UserFileError,
    load_face_photo,
    load_photo,
    load_voice,
    measure_framing,
)

if TYPE_CHECKING:
    import torch

    from model.avnet import AVMatchNet
    from model.data import SpecNorm
    from pipeline.audio_attributes import AudioAttributesConfig
    from pipeline.spectrograms import SpectrogramConfig

log = logging.getLogger(__name__)

AUDIO_SUFFIXES = (".wav", ".flac", ".m4a")
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
MODALITY_SUFFIXES = {"voice": AUDIO_SUFFIXES, "face": IMAGE_SUFFIXES}
THRESHOLD_KEY = "val.v2f.verify.U.threshold"
FRAMING_CROPS = 64  # stored crops the framing is measured on (evenly spaced over the store)
FRAMING_SIDE = 96  # ... upscaled to this side first (the Haar box is stable from ~96 px on)
FRAMING_MIN_FOUND = 8  # fewer detections than this: the default framing is used
PRIVATE_NONE = "none"
GALLERY_RULES = ("distance", "verify", "cosine")  # per-pair rules, in the model's order for k > 1
RULE_NAMES = ("match", "verify", "distance", "cosine")
BATCH = 64  # items embedded per forward pass


class InferenceError(Exception):
    """The model, its front end or an option cannot be used (message says which and why)."""


# ---- the model -----------------------------------------------------------------------------------

class Matcher:
    """A trained :class:`~model.avnet.AVMatchNet` and its checkpoint's JSON. The weights are
    loaded (and verified) on first use of :attr:`net`, so a bad user file is reported before
    any network is built."""

    def __init__(self, path: Path, meta: dict[str, Any], device: str) -> None:
        self.path, self.meta, self.device = path, meta, device
        self._net: AVMatchNet | None = None

    @property
    def uses_attributes(self) -> bool:
        """Whether the network embeds private attributes (IS09 and face attributes)."""
        return self.meta["model"].get("private") != PRIVATE_NONE

    @property
    def score_rule(self) -> str:
        return str(self.meta["model"].get("score", "head"))

    @property
    def net(self) -> AVMatchNet:
        """The network in eval mode on :attr:`device`."""
        if self._net is None:
            from model.avnet import AVMatchNet, InputDims, ModelConfig
            from model.checkpoint import CheckpointError, load_model

            try:
                net = AVMatchNet(ModelConfig.from_checkpoint(self.meta["model"], name="model"),
                                 build(InputDims, self.meta["dims"], name="dims"))
                load_model(self.path, net, device="cpu")
            except (CheckpointError, ConfigError, KeyError) as exc:
                raise InferenceError(f"{self.path}: not a usable model checkpoint ({exc})") from exc
            self._net = net.to(self.device).eval()
        return self._net


def load_matcher(path: str | os.PathLike, device: str | None = None) -> Matcher:
    """The model checkpoint directory ``path`` (the train stage's ``best``): its JSON now, its
    weights when first needed."""
    from model.checkpoint import CheckpointError, model_meta
    from model.runtime import device as default_device

    path = Path(path)
    if not path.exists():
        raise InferenceError(f"{path}: model checkpoint not found (train one with `dvc repro "
                             "train`, or pass --model)")
    try:
        meta = model_meta(path)
    except CheckpointError as exc:
        raise InferenceError(f"{path}: not a usable model checkpoint ({exc})") from exc
    if not all(k in meta for k in ("model", "dims", "data")):
        raise InferenceError(f"{path}: checkpoint JSON lacks the model, dims or data entries")
    return Matcher(path, meta, device or default_device())


# ---- the front end ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class AudioStats:
    """Train-split IS09 statistics (``audio_attributes_stats.json``)."""

    names: tuple[str, ...]
    mean: np.ndarray  # (A,) float64
    std: np.ndarray  # (A,) float64


@dataclass(frozen=True)
class FrontEnd:
    """Everything that turns a user's file into the model's input, and where it came from."""

    spectrogram: SpectrogramConfig
    spec_norm: SpecNorm | None
    face_size: int
    face_store: Path | None = None  # the training faces, whose framing is measured (lazily)
    audio: AudioAttributesConfig | None = None  # None: the model uses no private attributes
    audio_stats: AudioStats | None = None
    face_attr: str = "prob"  # prob | binary
    face_attr_threshold: float = 0.5
    sources: dict[str, str] = field(default_factory=dict)  # setting -> file it was read from


def _read_json(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise InferenceError(f"{path}: unreadable JSON ({exc})") from exc


def _params_section(params: Path, name: str) -> dict[str, Any]:
    if not params.is_file():
        raise InferenceError(f"the front-end settings are neither in the feature stores nor in "
                             f"{params} (pass --features or --params)")
    return section(load_params(params), name)


def spectrogram_config(features: Path, params: Path) -> tuple[SpectrogramConfig, str]:
    """The spectrogram front end the store recorded (``spectrograms.h5``), else ``--params``'s."""
    from pipeline.spectrograms import STORE_FILE, SpectrogramConfig

    store = features / STORE_FILE
    if store.is_file():
        import h5py

        with h5py.File(store, "r") as f:
            recorded = json.loads(f.attrs["params"])
        return build(SpectrogramConfig, recorded, name="spectrograms"), str(store)
    return build(SpectrogramConfig, _params_section(params, "spectrograms"),
                 name="spectrograms"), str(params)


def audio_config(features: Path, params: Path) -> tuple[AudioAttributesConfig, str]:
    """The IS09 settings the ``audio_attributes`` stage ran with (its summary), else ``--params``'s."""
    from pipeline.audio_attributes import SUMMARY_FILE, AudioAttributesConfig

    summary = _read_json(features / SUMMARY_FILE)
    if summary is not None:
        keys = {"feature_set", "sample_rate", "min_duration", "silence_dbfs"}
        values = {k: v for k, v in summary.get("params", {}).items() if k in keys}
        return build(AudioAttributesConfig, values, name="audio_attributes"), str(
            features / SUMMARY_FILE)
    return build(AudioAttributesConfig, _params_section(params, "audio_attributes"),
                 name="audio_attributes"), str(params)


def audio_stats(features: Path) -> tuple[AudioStats, str]:
    """The train-split IS09 mean and std that standardised the model's training inputs."""
    from pipeline.audio_attributes import STATS_FILE

    path = features / STATS_FILE
    info = _read_json(path)
    if info is None:
        raise InferenceError(f"{path}: not found; the model uses IS09 attributes, which are "
                             "standardised with these train-split statistics (pass --features)")
    if info.get("split") != "train" or info.get("mean") is None:
        raise InferenceError(f"{path}: expected train-split statistics")
    stats = AudioStats(tuple(info["names"]), np.asarray(info["mean"], np.float64),
                       np.asarray(info["std"], np.float64))
    if (stats.std <= 0).any():
        raise InferenceError(f"{path}: non-positive standard deviations")
    return stats, str(path)


def face_framing(face_store: Path | None, detector: DetectorConfig = DetectorConfig()
                 ) -> tuple[FaceFraming, str]:
    """The framing of the training faces: measured by the photo detector on up to
    :data:`FRAMING_CROPS` crops of ``faces.h5`` (evenly spaced, upscaled to
    :data:`FRAMING_SIDE`); the default 2x box when there is no store or the detector finds too
    few faces in it."""
    from model.stores import FaceStore
    from pipeline.common.images import resize_square

    if face_store is None or not face_store.is_file():
        return FaceFraming(), "default 2x box (no face store)"
    with FaceStore(face_store) as store:
        rows = np.unique(np.linspace(0, len(store) - 1, min(len(store), FRAMING_CROPS)).astype(int))
        crops = store.get_many(rows) if len(store) else np.zeros((0, 1, 1, 3), np.uint8)
    side = max(FRAMING_SIDE, crops.shape[1])
    try:
        framing, found = measure_framing((resize_square(c, side) for c in crops), detector)
    except ValueError:
        found = 0
    if found < FRAMING_MIN_FOUND:
        log.warning("%s: the detector found faces in only %d crops; using the default framing",
                    face_store, found)
        return FaceFraming(), f"default 2x box ({found} detections in {face_store})"
    return framing, f"measured on {face_store} ({found} of {len(crops)} crops)"


def face_attribute_threshold(features: Path, params: Path) -> float:
    """The probability at which the ``face_attributes`` stage wrote an attribute as 1."""
    summary = _read_json(features / "face_attributes_summary.json")
    if summary is not None and "threshold" in summary:
        return float(summary["threshold"])
    if params.is_file():
        return float(section(load_params(params), "face_attributes").get("threshold", 0.5))
    return 0.5


def build_front_end(matcher: Matcher, features: str | os.PathLike, params: str | os.PathLike
                    ) -> FrontEnd:
    """The front end of ``matcher``'s training data; refuses one that does not fit its inputs."""
    from model.data import SpecNorm

    features, params = Path(features), Path(params)
    dims = matcher.meta["dims"]
    spec, spec_source = spectrogram_config(features, params)
    if (spec.n_bins, spec.frames) != (dims["n_bins"], dims["frames"]):
        raise InferenceError(
            f"the spectrogram front end of {spec_source} gives {spec.n_bins} x {spec.frames} "
            f"but {matcher.path} was trained on {dims['n_bins']} x {dims['frames']} (pass the "
            "--features or --params the model was trained with)")
    spec_norm = SpecNorm.from_dict(matcher.meta["data"].get("spec_norm"))
    if (spec_norm is None) != (spec.normalization == "cmvn"):
        raise InferenceError(f"{spec_source} has spectrogram normalization "
                             f"{spec.normalization!r}, which {matcher.path} was not trained on")
    from pipeline.faces import STORE_FILE

    store = features / STORE_FILE
    sources = {"spectrograms": spec_source}
    front = FrontEnd(spectrogram=spec, spec_norm=spec_norm, face_size=int(dims["face_size"]),
                     face_store=store if store.is_file() else None,
                     face_attr=matcher.meta["data"].get("face_attr", "prob"), sources=sources)
    if not matcher.uses_attributes:
        return front
    audio, audio_source = audio_config(features, params)
    stats, stats_source = audio_stats(features)
    if len(stats.names) != dims["n_audio_attr"]:
        raise InferenceError(f"{stats_source} has {len(stats.names)} features but "
                             f"{matcher.path} expects {dims['n_audio_attr']}")
    sources.update(audio_attributes=audio_source, audio_stats=stats_source)
    return FrontEnd(spectrogram=spec, spec_norm=spec_norm, face_size=front.face_size,
                    face_store=front.face_store, audio=audio, audio_stats=stats,
                    face_attr=front.face_attr,
                    face_attr_threshold=face_attribute_threshold(features, params),
                    sources=sources)


# ---- voices -----------------------------------------------------------------------------------------

def voice_spectrogram(signal: np.ndarray, cfg: SpectrogramConfig) -> np.ndarray:
    """The ``spectrograms`` stage's stored values of a mono signal: ``(frames_i, n_bins)``
    time-major, float32 holding the store's float16 values."""
    from pipeline.spectrograms import log_spectrogram

    spec = log_spectrogram(signal, cfg).astype(np.float16)
    if not np.isfinite(spec).all():
        raise ValueError("non-finite spectrogram values")
    return spec.astype(np.float32)


def fixed_crop(spec: np.ndarray, frames: int, position: str | float = "center") -> np.ndarray:
    """The evaluation crop of :class:`model.stores.SpectrogramStore` at ``position``
    (:func:`model.stores.crop_fraction`): ``frames`` of a long clip, a short one tiled from its
    start. ``(T_i, F)`` in, ``(F, frames)`` out."""
    from model.stores import fixed_starts

    length = spec.shape[0]
    if length >= frames:
        start = int(fixed_starts(np.asarray([length]), frames, position)[0])
        window = spec[start:start + frames]  # (frames, F)
    else:
        window = spec[np.arange(frames) % length]  # tiled: (frames, F)
    return np.ascontiguousarray(window.T)  # (frames, F) -> (F, frames)


def voice_input(signal: np.ndarray, front: FrontEnd, crops: int = 1) -> np.ndarray:
    """The model's voice input ``(V, 1, F, T)`` float32: stored spectrogram, the evaluation's
    ``crops`` fixed crops (:func:`model.data.eval_views`), normalisation."""
    from model.data import eval_views

    spec = voice_spectrogram(signal, front.spectrogram)
    x = np.stack([fixed_crop(spec, front.spectrogram.frames, position)
                  for position in eval_views("voice", crops)])  # (V, F, T)
    if front.spec_norm is not None:
        x = front.spec_norm.apply(x)
    return x[:, None]  # (V, F, T) -> (V, 1, F, T)


def voice_attributes(signal: np.ndarray, front: FrontEnd, smile: Any) -> np.ndarray:
    """IS09 functionals of the whole clip standardised with the train stats: ``(A,)`` float32."""
    from pipeline.audio_attributes import extract

    assert front.audio is not None and front.audio_stats is not None
    raw = extract(smile, signal, front.audio.sample_rate).astype(np.float64)  # (A,)
    if not np.isfinite(raw).all():
        raise ValueError(f"{int((~np.isfinite(raw)).sum())} non-finite IS09 features")
    return ((raw - front.audio_stats.mean) / front.audio_stats.std).astype(np.float32)


# ---- faces ----------------------------------------------------------------------------------------

def face_input(image: np.ndarray, flip: bool = False) -> np.ndarray:
    """``(S, S, 3)`` uint8 RGB -> the model's views ``(V, 3, S, S)`` float32 in [-1, 1]: the face,
    and with ``flip`` its mirror image (:func:`model.data.eval_views`)."""
    from model.data import eval_views

    views = [image[:, ::-1] if mirrored else image for mirrored in eval_views("face", flip=flip)]
    x = np.stack(views).transpose(0, 3, 1, 2).astype(np.float32)  # (V, S, S, 3) -> (V, 3, S, S)
    x /= np.float32(127.5)
    x -= np.float32(1.0)
    return x


@dataclass
class AttributeClassifier:
    """The face-attribute classifier of the ``face_attributes`` stage, loaded once."""

    net: Any
    meta: dict[str, Any]


def load_attribute_classifier(path: str | os.PathLike, front: FrontEnd, n_attr: int,
                              device: str) -> AttributeClassifier:
    from model.attributes import load_classifier

    path = Path(path)
    if not path.is_file():
        raise InferenceError(f"{path}: face-attribute classifier not found; the model embeds "
                             "face attributes (pass --attributes-model)")
    try:
        net, meta = load_classifier(path, device)
    except (ValueError, RuntimeError, KeyError, OSError) as exc:
        raise InferenceError(f"{path}: not a usable face-attribute classifier ({exc})") from exc
    if int(meta["size"]) != front.face_size or len(meta["attributes"]) != n_attr:
        raise InferenceError(f"{path} classifies {meta['size']} px faces into "
                             f"{len(meta['attributes'])} attributes; the model needs "
                             f"{front.face_size} px and {n_attr}")
    return AttributeClassifier(net, meta)


def face_attributes(images: np.ndarray, classifier: AttributeClassifier, front: FrontEnd
                    ) -> np.ndarray:
    """Attributes ``(n, A)`` float32 of uint8 faces ``(n, S, S, 3)``, as the model was trained
    on them: probabilities (``prob``) or 0/1 at the stage's threshold (``binary``)."""
    from model.attributes import predict

    meta = classifier.meta
    probs = predict(classifier.net, lambda a, b: images[a:b], len(images), BATCH,
                    tuple(meta["mean"]), tuple(meta["std"])).reshape(len(images), -1)
    if front.face_attr == "binary":
        return (probs >= front.face_attr_threshold).astype(np.float32)
    return probs.astype(np.float32)


# ---- prepared items ---------------------------------------------------------------------------------

@dataclass
class Item:
    """One user file ready for the model: input ``x``, attributes and what was found."""

    path: str
    modality: str
    x: np.ndarray  # views: (V, 1, F, T) voice crops | (V, 3, S, S) a face (and its mirror image)
    attr: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)
    image: np.ndarray | None = None  # (S, S, 3) uint8: the face crop (faces only)


@dataclass
class Skipped:
    path: str
    reason: str
    message: str


class Preprocessor:
    """The shared pipeline of the three commands; IS09 and the classifier are loaded lazily."""

    def __init__(self, matcher: Matcher, front: FrontEnd, attributes_model: Path,
                 no_detect: bool = False, detector: DetectorConfig = DetectorConfig()) -> None:
        self.matcher, self.front = matcher, front
        self.attributes_model = Path(attributes_model)
        self.no_detect, self.detector = no_detect, detector
        self._smile: Any = None
        self._classifier: AttributeClassifier | None = None
        self._framing: FaceFraming | None = None

    def framing(self) -> FaceFraming:
        """The training faces' framing, measured on first use (photos with detection only)."""
        if self._framing is None:
            self._framing, source = face_framing(self.front.face_store, self.detector)
            self.front.sources["framing"] = source
            log.debug("face framing: %s, %s", self._framing, source)
        return self._framing

    def smile(self) -> Any:
        if self._smile is None:
            from pipeline.audio_attributes import make_extractor

            assert self.front.audio is not None
            self._smile = make_extractor(self.front.audio.feature_set)
        return self._smile

    def classifier(self) -> AttributeClassifier:
        if self._classifier is None:
            self._classifier = load_attribute_classifier(
                self.attributes_model, self.front, int(self.matcher.meta["dims"]["n_face_attr"]),
                self.matcher.device)
        return self._classifier

    def voice(self, path: str | os.PathLike) -> Item:
        """One voice file; :class:`UserFileError` names it and the reason."""
        cfg = self.front.spectrogram
        signal = load_voice(path, cfg.sample_rate, min_duration=cfg.min_duration,
                            silence_dbfs=cfg.silence_dbfs)
        info = {"seconds": round(signal.size / cfg.sample_rate, 3)}
        try:
            x = voice_input(signal, self.front, self.matcher.net.cfg.eval_voice_crops)
        except ValueError as exc:
            raise AudioFileError(path, "invalid_samples", str(exc)) from exc
        attr = None
        if self.matcher.uses_attributes:
            audio = self.front.audio
            assert audio is not None
            if audio.sample_rate != cfg.sample_rate:
                signal = load_voice(path, audio.sample_rate)
            try:
                attr = voice_attributes(signal, self.front, self.smile())
            except ValueError as exc:
                raise AudioFileError(path, "unusable", f"IS09: {exc}") from exc
        return Item(str(path), "voice", x, attr, info)

    def face(self, path: str | os.PathLike) -> Item:
        """One photo (attributes are added by :meth:`items`, in one batch)."""
        if not self.no_detect:
            load_photo(path)  # a bad file is reported before the framing is measured
        photo = load_face_photo(path, self.front.face_size,
                                framing=FaceFraming() if self.no_detect else self.framing(),
                                detector=self.detector, no_detect=self.no_detect)
        info: dict[str, Any] = {"detected": photo.box is not None, "faces_found": photo.n_faces}
        if photo.box is not None:
            box = photo.box
            info["box"] = [round(v, 1) for v in (box.x, box.y, box.w, box.h)]
        x = face_input(photo.image, self.matcher.net.cfg.eval_face_flip)
        return Item(str(path), "face", x, None, info, photo.image)

    def items(self, modality: str, paths: Sequence[str | os.PathLike], *,
              skip_bad: bool = False, desc: str | None = None) -> tuple[list[Item], list[Skipped]]:
        """Prepare ``paths`` in order; a bad file raises, or is skipped with ``skip_bad``."""
        from tqdm.auto import tqdm

        prepare = self.voice if modality == "voice" else self.face
        items, skipped = [], []
        for path in tqdm(paths, desc=desc, disable=desc is None or len(paths) < 8, unit="file"):
            try:
                items.append(prepare(path))
            except UserFileError as exc:
                if not skip_bad:
                    raise
                skipped.append(Skipped(str(path), exc.reason, str(exc)))
        if modality == "face" and items and self.matcher.uses_attributes:
            images = np.stack([i.image for i in items])  # (n, S, S, 3)
            attrs = face_attributes(images, self.classifier(), self.front)  # (n, A)
            for item, row in zip(items, attrs, strict=True):
                item.attr = row
        return items, skipped


# ---- embeddings and scores -----------------------------------------------------------------------------

def embed(matcher: Matcher, items: Sequence[Item]) -> torch.Tensor:
    """Embeddings ``h (n, d)`` of prepared items of one modality (eval mode: the VAE's mean)."""
    import torch

    modality = items[0].modality
    parts = []
    with torch.no_grad():
        for start in range(0, len(items), BATCH):
            chunk = items[start:start + BATCH]
            x = torch.from_numpy(np.stack([i.x for i in chunk], axis=1)  # (V, b, C, H, W)
                                 ).to(matcher.device)
            attr = None
            if matcher.uses_attributes:
                attr = torch.from_numpy(np.stack([i.attr for i in chunk])).to(matcher.device)
            parts.append(matcher.net.embed_views(modality, x, attr).float())
    return torch.cat(parts)


def _bank(items: Sequence[Item], h: torch.Tensor, prefix: str) -> Any:
    from model.scoring import ItemEmbeddings

    ids = [f"{prefix}{i}" for i in range(len(items))]
    return ItemEmbeddings(ids, h, ids)


def tuple_scores(matcher: Matcher, direction: str, query: Item, candidates: Sequence[Item]
                 ) -> dict[str, np.ndarray]:
    """Scores ``(k,)`` of the candidates of one 1:k tuple, for every rule the model has."""
    from model.data import DIRECTIONS
    from model.scoring import score_tuples

    q_mod, c_mod = DIRECTIONS[direction]
    emb = {q_mod: _bank([query], embed(matcher, [query]), "q"),
           c_mod: _bank(candidates, embed(matcher, candidates), "c")}
    scores = score_tuples(matcher.net, direction, ["q0"], [emb[c_mod].ids], emb)
    return {name: value[0] for name, value in scores.items()}


def resolved_rule(matcher: Matcher, scores: Mapping[str, np.ndarray]) -> str:
    """Which rule the model's score is: ``cosine``, or the head ``AVMatchNet.score`` chose."""
    if matcher.score_rule == "cosine":
        return "cosine"
    return next(n for n in RULE_NAMES if n in scores and np.array_equal(scores[n], scores["head"]))


def gallery_scores(matcher: Matcher, query: Item, gallery: Sequence[Item]
                   ) -> tuple[dict[str, np.ndarray], str]:
    """Per-pair scores ``(G,)`` of a query against a whole gallery and the model's rule: the
    retrieval distance, else verification, else cosine (a 1:G matching classifier does not
    exist), or cosine when the model declares ``score: cosine``."""
    import torch

    q = embed(matcher, [query])  # (1, d)
    g = embed(matcher, gallery)  # (G, d)
    voice, face = (q, g) if query.modality == "voice" else (g, q)
    with torch.no_grad():
        scores = {n: v.float().cpu().numpy().reshape(-1)
                  for n, v in matcher.net.pair_scores(voice, face).items()}  # (G,)
    rule = "cosine" if matcher.score_rule == "cosine" else next(
        n for n in GALLERY_RULES if n in scores)
    return scores, rule


def read_threshold(metrics_path: str | os.PathLike, key: str = THRESHOLD_KEY) -> float | None:
    """The val-chosen verification threshold, or ``None`` when the file or the key is absent."""
    metrics = _read_json(Path(metrics_path))
    if metrics is None:
        return None
    from pipeline.report import flatten

    value = flatten(metrics).get(key)
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def list_gallery(folder: str | os.PathLike, modality: str) -> list[Path]:
    """The files of ``modality`` in ``folder`` (recursively, sorted)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InferenceError(f"{folder}: gallery folder not found" if not folder.exists()
                             else f"{folder}: not a folder")
    suffixes = MODALITY_SUFFIXES[modality]
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not files:
        raise InferenceError(f"{folder}: no {modality} files ({', '.join(suffixes)})")
    return files


# ---- results -------------------------------------------------------------------------------------------

def _ranking(items: Sequence[Item], scores: Mapping[str, np.ndarray], rule: str,
             top: int | None = None) -> list[dict[str, Any]]:
    order = sorted(range(len(items)), key=lambda i: (-float(scores[rule][i]), items[i].path))
    rows = []
    for rank, i in enumerate(order[:top] if top else order, start=1):
        row = {"rank": rank, "path": items[i].path, "score": float(scores[rule][i])}
        row.update({f"{n}_score": float(v[i]) for n, v in sorted(scores.items())
                    if n not in (rule, "head")})
        row.update(items[i].info)
        rows.append(row)
    return rows


def match(pre: Preprocessor, query_path: Path, candidate_paths: Sequence[Path],
          direction: str) -> dict[str, Any]:
    """Rank ``candidate_paths`` for the query (``v2f``: a voice and faces; ``f2v``: the reverse)."""
    from model.data import DIRECTIONS

    q_mod, c_mod = DIRECTIONS[direction]
    query = pre.items(q_mod, [query_path])[0][0]
    candidates = pre.items(c_mod, candidate_paths, desc="candidates")[0]
    scores = tuple_scores(pre.matcher, direction, query, candidates)
    rule = resolved_rule(pre.matcher, scores)
    return {"command": "match", "direction": direction, "query": _describe(query),
            "k": len(candidates), "score_rule": rule,
            "ranking": _ranking(candidates, scores, rule)}


def verify(pre: Preprocessor, voice_path: Path, face_path: Path, threshold: float | None,
           threshold_source: str) -> dict[str, Any]:
    """Same-identity score of one (voice, face) pair and the decision at ``threshold``."""
    voice = pre.items("voice", [voice_path])[0][0]
    face = pre.items("face", [face_path])[0][0]
    scores = tuple_scores(pre.matcher, "v2f", voice, [face])
    rule = resolved_rule(pre.matcher, scores)
    score = float(scores[rule][0])
    return {"command": "verify", "voice": _describe(voice), "face": _describe(face),
            "score_rule": rule, "score": score,
            "scores": {n: float(v[0]) for n, v in sorted(scores.items()) if n != "head"},
            "threshold": threshold, "threshold_source": threshold_source,
            "same_identity": bool(score >= threshold) if threshold is not None else None}


def retrieve(pre: Preprocessor, query_path: Path, q_mod: str, gallery_dir: Path,
             top: int | None = None) -> dict[str, Any]:
    """Rank every usable file of the other modality in ``gallery_dir`` for the ``q_mod`` query
    (unusable gallery files are skipped and listed)."""
    g_mod = "face" if q_mod == "voice" else "voice"
    files = list_gallery(gallery_dir, g_mod)
    query = pre.items(q_mod, [query_path])[0][0]
    gallery, skipped = pre.items(g_mod, files, skip_bad=True, desc="gallery")
    if not gallery:
        raise InferenceError(f"{gallery_dir}: none of its {len(files)} {g_mod} files is usable "
                             f"(e.g. {skipped[0].message})")
    scores, rule = gallery_scores(pre.matcher, query, gallery)
    return {"command": "retrieve", "direction": "v2f" if q_mod == "voice" else "f2v",
            "query": _describe(query), "gallery": str(gallery_dir), "gallery_size": len(gallery),
            "score_rule": rule, "ranking": _ranking(gallery, scores, rule, top),
            "skipped": [{"path": s.path, "reason": s.reason, "message": s.message}
                        for s in skipped]}


def _describe(item: Item) -> dict[str, Any]:
    return {"path": item.path, "modality": item.modality, **item.info}


def render(result: Mapping[str, Any]) -> str:
    """Plain-text output of a command's result."""
    lines = []
    if result["command"] == "verify":
        lines.append(f"voice {result['voice']['path']}  face {result['face']['path']}")
        lines.append(f"score {result['score']:.4f} ({result['score_rule']})")
        if result["threshold"] is None:
            lines.append("no threshold: pass --threshold")
        else:
            verdict = "same identity" if result["same_identity"] else "different identities"
            lines.append(f"threshold {result['threshold']:.4f} ({result['threshold_source']}): "
                         f"{verdict}")
        return "\n".join(lines)
    query = result["query"]
    what = "faces" if query["modality"] == "voice" else "voices"
    head = f"{query['modality']} {query['path']}: {len(result['ranking'])} {what} ranked by " \
           f"{result['score_rule']} score (higher = more likely the same person)"
    lines.append(head)
    lines.append(f"{'rank':>4}  {'score':>9}  path")
    for row in result["ranking"]:
        note = "" if row.get("detected", True) else "  (no detection: centred square)"
        lines.append(f"{row['rank']:>4}  {row['score']:>9.4f}  {row['path']}{note}")
    for skip in result.get("skipped", []):
        lines.append(f"skipped {skip['message']}")
    return "\n".join(lines)


# ---- the commands ---------------------------------------------------------------------------------------

@contextlib.contextmanager
def clear_errors() -> Iterator[None]:
    """Turn the expected failures into one line on stderr and exit status 1 (no traceback)."""
    from model.checkpoint import CheckpointError

    try:
        yield
    except (UserFileError, InferenceError, CheckpointError, DetectorUnavailable,
            ConfigError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def prepare_session(model: Path, attributes_model: Path, features: Path, params: Path,
                    no_detect: bool) -> Preprocessor:
    """The matcher, its front end and the shared preprocessing of a command."""
    matcher = load_matcher(model)
    front = build_front_end(matcher, features, params)
    log.debug("front end: %s", front.sources)
    return Preprocessor(matcher, front, attributes_model, no_detect=no_detect)


def emit(result: dict[str, Any], as_json: bool) -> None:
    typer.echo(json.dumps(result, indent=2) if as_json else render(result))


MODEL = typer.Option(Path("models/avmatch/best"), "--model", help="Model checkpoint directory.")
ATTRIBUTES = typer.Option(Path("models/face_attributes.pt"), "--attributes-model",
                          help="Face-attribute classifier (used when the model embeds attributes).")
FEATURES = typer.Option(Path("data/features"), "--features",
                        help="The feature stores the model was trained on: front-end settings, "
                             "IS09 statistics, face framing.")
PARAMS = typer.Option(Path("params.yaml"), "--params",
                      help="Front-end settings used when the feature stores are absent.")
JSON = typer.Option(False, "--json", help="Machine-readable output.")
NO_DETECT = typer.Option(False, "--no-detect",
                         help="Do not look for a face: use each photo's centred square.")


def _one_query(voice: Path | None, face: Path | None) -> tuple[str, Path]:
    if (voice is None) == (face is None):
        raise InferenceError("give exactly one query: --voice FILE or --face FILE")
    return ("v2f", voice) if voice is not None else ("f2v", face)  # type: ignore[return-value]


def match_cli(
    candidates: list[Path] = typer.Argument(..., metavar="CANDIDATES",
                                            help="The files to rank (faces or voices)."),
    voice: Path | None = typer.Option(None, "--voice", help="Query voice (rank face photos)."),
    face: Path | None = typer.Option(None, "--face", help="Query photo (rank voices)."),
    faces: bool = typer.Option(False, "--faces", help="The candidates are face photos."),
    voices: bool = typer.Option(False, "--voices", help="The candidates are voices."),
    model: Path = MODEL, attributes_model: Path = ATTRIBUTES, features: Path = FEATURES,
    params: Path = PARAMS, as_json: bool = JSON, no_detect: bool = NO_DETECT,
) -> None:
    """Rank faces for a voice (`--voice V --faces A.jpg B.jpg ...`) or voices for a face
    (`--face F --voices A.wav B.wav ...`) by the model's score."""
    with clear_errors():
        direction, query = _one_query(voice, face)
        if (direction == "v2f" and voices) or (direction == "f2v" and faces):
            raise InferenceError("a voice query ranks --faces, a face query ranks --voices")
        pre = prepare_session(model, attributes_model, features, params, no_detect)
        emit(match(pre, query, candidates, direction), as_json)


def verify_cli(
    voice: Path = typer.Option(..., "--voice", help="The voice."),
    face: Path = typer.Option(..., "--face", help="The photo."),
    threshold: float | None = typer.Option(None, "--threshold",
                                           help="Decision threshold (overrides --metrics)."),
    metrics: Path = typer.Option(Path("reports/metrics.json"), "--metrics",
                                 help=f"Evaluate stage metrics holding {THRESHOLD_KEY}."),
    model: Path = MODEL, attributes_model: Path = ATTRIBUTES, features: Path = FEATURES,
    params: Path = PARAMS, as_json: bool = JSON, no_detect: bool = NO_DETECT,
) -> None:
    """Same-identity score of a voice and a photo, and the decision at the threshold chosen on
    val by the evaluate stage."""
    with clear_errors():
        source = "--threshold"
        if threshold is None:
            threshold = read_threshold(metrics)
            source = f"{metrics}:{THRESHOLD_KEY}"
            if threshold is None:
                raise InferenceError(f"{metrics} has no {THRESHOLD_KEY} (run the evaluate stage, "
                                     "or pass --threshold)")
        pre = prepare_session(model, attributes_model, features, params, no_detect)
        emit(verify(pre, voice, face, threshold, source), as_json)


def retrieve_cli(
    gallery: Path = typer.Option(..., "--gallery", help="Folder of the other modality's files."),
    voice: Path | None = typer.Option(None, "--voice", help="Query voice (gallery of photos)."),
    face: Path | None = typer.Option(None, "--face", help="Query photo (gallery of voices)."),
    top: int | None = typer.Option(None, "--top", min=1, help="Show only the best N."),
    model: Path = MODEL, attributes_model: Path = ATTRIBUTES, features: Path = FEATURES,
    params: Path = PARAMS, as_json: bool = JSON, no_detect: bool = NO_DETECT,
) -> None:
    """Rank every photo (for `--voice`) or voice (for `--face`) in a folder; unusable gallery
    files are skipped and listed."""
    with clear_errors():
        direction, query = _one_query(voice, face)
        pre = prepare_session(model, attributes_model, features, params, no_detect)
        q_mod = "voice" if direction == "v2f" else "face"
        emit(retrieve(pre, query, q_mod, gallery, top), as_json)
