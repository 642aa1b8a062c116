"""``face_attributes_train`` stage: a CSWin multi-label classifier for the 12 private attributes.

P2VANet (section III-C) predicts 12 identity-invariant CelebA attributes with a CSWin
Transformer. This stage trains one on a CelebA-format directory (real CelebA, or the synthetic
one written by the corpus generator), using CelebA's own partition file:

- images are prepared exactly like ``faces.h5`` (``pipeline.common.images``: RGB, centred square,
  area resize to ``size``) and decoded once, in parallel, into a temporary uint8 memmap;
- training: BCE with logits (optionally with per-attribute positive weights ``n_neg / n_pos``
  from the train partition), AdamW, linear warm-up then cosine decay, random horizontal flips
  and small translations, inputs normalized to [-1, 1] as in the papers;
- the epoch with the best mean balanced accuracy on the *val* partition is kept; the *test*
  partition is only used for the final report (per attribute accuracy and balanced accuracy at
  threshold 0.5).

The input size is ``faces.size`` (one knob for the stored faces and the classifier: the CLI
builds this stage's config from its params section plus ``faces.size``, see
:func:`config_from_params`).

Outputs: the checkpoint (``model_name``, ``model_args``, ``attributes``, ``size``, ``mean``,
``std`` and the ``state_dict``; tensors and primitives only, load with ``weights_only=True``),
the JSON report (selected epoch, val and test metrics), a rejects table (unreadable images and
malformed annotation lines) and the per-epoch history logged with DVCLive in ``live_dir``
(``plots/metrics/<name>.tsv``, one row per epoch, ``step`` = epoch; ``metrics.json``, the last
epoch plus ``selected_epoch``), which ``dvc plots show`` draws. All of them are committed
together once training is done: a run that fails (too many rejects, or an error while training)
leaves the previous outputs as they were. DVCLive is used without DVC experiments or a
``dvc.yaml`` of its own (the stage's outputs are declared in the project's ``dvc.yaml``); it
writes into a git-ignored temp sibling (``*.tmp``) that replaces ``live_dir`` at the end.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import math
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import typer

from model.attributes import predict, save_classifier, to_input
from model.runtime import device, torch_runtime
from pipeline.common.config import ConfigError, from_sections, load_params
from pipeline.common.images import DEFAULT_FACE_SIZE, load_face
from pipeline.common.io import output_group, write_json
from pipeline.common.parallel import imap_ordered
from pipeline.common.probe import BadInput
from pipeline.common.rejects import Rejects
from pipeline.sources import layout
from pipeline.sources.layout import resolve_root

if TYPE_CHECKING:
    import torch
    from dvclive import Live

log = logging.getLogger(__name__)

STAGE = "face_attributes_train"
# P2VANet section III-C: the 12 identity-invariant CelebA attributes (visual private attributes).
PRIVATE_ATTRIBUTES = ("Male", "Big_Nose", "Pointy_Nose", "Big_Lips", "Narrow_Eyes",
                      "Arched_Eyebrows", "Bushy_Eyebrows", "High_Cheekbones", "Oval_Face",
                      "Chubby", "Double_Chin", "Receding_Hairline")
MEAN = (0.5, 0.5, 0.5)  # inputs normalized to [-1, 1], as in AML / P2VANet
STD = (0.5, 0.5, 0.5)
DECODE_TASK = 32  # images per decode task


@dataclass(frozen=True)
class FaceAttributesTrainConfig:
    # Fields read from another stage's section, so a knob shared by two stages is stated once
    # in params.yaml: field -> (section, key).
    shared_params: ClassVar[dict[str, tuple[str, str]]] = {"size": ("faces", "size")}

    celeba_dir: str | None = None
    attributes: tuple[str, ...] = PRIVATE_ATTRIBUTES
    model: str = "cswin_nano_64"
    size: int = DEFAULT_FACE_SIZE  # faces.size
    imagenet_checkpoint: str | None = None
    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    drop_path_rate: float = 0.0
    pos_weight: bool = True
    flip: bool = True
    shift: int = 0
    max_train_images: int | None = None
    seed: int = 0
    threads: int = 0
    workers: int = 0
    max_reject_fraction: float = 0.05

    def __post_init__(self) -> None:
        if not self.attributes:
            raise ConfigError("face_attributes_train.attributes must not be empty")
        if min(self.size, self.epochs, self.batch_size) <= 0:
            raise ConfigError("face_attributes_train: size, epochs and batch_size must be positive")


def config_from_params(params: Mapping[str, Any]) -> FaceAttributesTrainConfig:
    """The stage's section plus the shared knobs (``size`` = ``faces.size``) of a params mapping."""
    return from_sections(FaceAttributesTrainConfig, params, STAGE)


@dataclass
class Split:
    """Decoded images of one partition and their 0/1 labels."""

    files: list[str]
    images: np.ndarray  # (n, size, size, 3) uint8 (a memmap)
    labels: np.ndarray  # (n, attributes) uint8


def celeba_paths(raw_dir: Path, cfg: FaceAttributesTrainConfig) -> dict[str, Path]:
    base = Path(cfg.celeba_dir) if cfg.celeba_dir else resolve_root(raw_dir) / layout.CELEBA
    rel = Path(layout.CELEBA)
    return {key: base / Path(value).relative_to(rel) for key, value in
            (("images", layout.CELEBA_IMAGES), ("attr", layout.CELEBA_ATTR),
             ("partition", layout.CELEBA_PARTITION))}


def read_annotations(paths: dict[str, Path], cfg: FaceAttributesTrainConfig,
                     rejects: Rejects) -> tuple[dict[str, list[str]], dict[str, np.ndarray], int]:
    """Files and labels per partition; bad lines and unpartitioned images are rejected."""
    from model.celeba import read_attributes, read_partition

    table = read_attributes(paths["attr"]).select(cfg.attributes)
    partition, part_problems = read_partition(paths["partition"])
    problems = [*table.problems, *part_problems]
    for p in problems:  # a wrong count line drops nothing: recorded as kept
        rejects.add(p.reason, path=p.file, detail=f"line {p.line}: {p.detail}",
                    kept=p.reason == "count_mismatch")
    files: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    rows: dict[str, list[int]] = {"train": [], "val": [], "test": []}
    for i, file in enumerate(table.files):
        part = partition.get(file)
        if part is None:
            rejects.add("no_partition", id=file, detail="not in list_eval_partition.txt")
            continue
        files[part].append(file)
        rows[part].append(i)
    if cfg.max_train_images is not None:
        files["train"] = files["train"][: cfg.max_train_images]
        rows["train"] = rows["train"][: cfg.max_train_images]
    labels = {k: table.labels[v] for k, v in rows.items()}  # (n_k, attributes)
    return files, labels, len(table.files) + sum(p.reason != "count_mismatch" for p in problems)


def _decode(args: tuple[int, int], items: list[str]) -> list[tuple[np.ndarray | None, str, str]]:
    size, min_size = args
    out: list[tuple[np.ndarray | None, str, str]] = []
    for path in items:
        try:
            out.append((load_face(path, size, None, min_size), "ok", ""))
        except BadInput as exc:
            out.append((None, exc.reason, exc.detail))
        except Exception as exc:  # never let one image kill the stage
            out.append((None, "undecodable", f"{type(exc).__name__}: {exc}"))
    return out


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


def decode_split(name: str, files: list[str], labels: np.ndarray, image_dir: Path, cache: Path,
                 cfg: FaceAttributesTrainConfig, rejects: Rejects) -> Split:
    """Decode one partition into a memmap under ``cache``; failed images are rejected."""
    images = np.lib.format.open_memmap(cache / f"{name}.npy", mode="w+", dtype=np.uint8,
                                       shape=(len(files), cfg.size, cfg.size, 3))
    paths = [str(image_dir / f) for f in files]
    results = imap_ordered(functools.partial(_decode, (cfg.size, 8)), _chunks(paths, DECODE_TASK),
                           workers=cfg.workers, desc=f"decode {name}",
                           total=-(-len(paths) // DECODE_TASK))
    kept: list[int] = []  # good images are packed to the front of the memmap
    for i, (image, status, detail) in enumerate(r for batch in results for r in batch):
        if image is not None:
            images[len(kept)] = image
            kept.append(i)
        else:
            rejects.add(status, id=files[i], path=f"{image_dir.name}/{files[i]}", detail=detail)
    return Split([files[i] for i in kept], images[:len(kept)], labels[kept])


def binary_metrics(probs: np.ndarray, labels: np.ndarray, names: tuple[str, ...],
                   threshold: float = 0.5) -> dict[str, Any]:
    """Accuracy and balanced accuracy (mean of the recalls of the classes present) per attribute."""
    pred = probs >= threshold
    truth = labels.astype(bool)
    per: dict[str, dict[str, float]] = {}
    for j, name in enumerate(names):
        recalls = [float((pred[truth[:, j] == cls, j] == cls).mean()) for cls in (True, False)
                   if (truth[:, j] == cls).any()]
        per[name] = {"accuracy": round(float((pred[:, j] == truth[:, j]).mean()), 4),
                     "balanced_accuracy": round(float(np.mean(recalls)), 4) if recalls else math.nan,
                     "positive_rate": round(float(truth[:, j].mean()), 4)}
    mean_ba = float(np.nanmean([v["balanced_accuracy"] for v in per.values()]))
    mean_acc = float(np.mean([v["accuracy"] for v in per.values()]))
    return {"n": int(len(labels)), "mean_accuracy": round(mean_acc, 4),
            "mean_balanced_accuracy": round(mean_ba, 4), "attributes": per}


def build_model(cfg: FaceAttributesTrainConfig) -> tuple[torch.nn.Module, dict[str, Any]]:
    import timm

    from model.cswin import load_pretrained

    args = {"num_classes": len(cfg.attributes), "img_size": cfg.size}
    net = timm.create_model(cfg.model, drop_path_rate=cfg.drop_path_rate, **args)
    if cfg.imagenet_checkpoint:
        load_pretrained(net, cfg.imagenet_checkpoint)
        log.info("initialized %s from %s", cfg.model, cfg.imagenet_checkpoint)
    return net, args


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """Linear warm-up to ``base`` then cosine decay to 0."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1.0 + math.cos(math.pi * progress))


def augment(images: np.ndarray, rng: np.random.Generator, flip: bool, shift: int) -> np.ndarray:
    """Random horizontal flips and translations by up to ``shift`` px (edge padding), per image."""
    n, size = images.shape[0], images.shape[1]
    flips = rng.random(n) < 0.5
    offsets = rng.integers(0, 2 * shift + 1, size=(n, 2))
    if flip:
        images = np.where(flips[:, None, None, None], images[:, :, ::-1], images)
    if shift:
        padded = np.pad(images, ((0, 0), (shift, shift), (shift, shift), (0, 0)), mode="edge")
        images = np.stack([padded[i, y:y + size, x:x + size] for i, (y, x) in enumerate(offsets)])
    return images  # (B, S, S, 3)


def _batch(split: Split, idx: np.ndarray, rng: np.random.Generator | None,
           cfg: FaceAttributesTrainConfig, dev: Any) -> tuple[torch.Tensor, torch.Tensor]:
    import torch

    idx = np.sort(idx)  # memmap reads in file order
    images = split.images[idx]  # (B, S, S, 3)
    if rng is not None:
        images = augment(images, rng, cfg.flip, cfg.shift)
    x = to_input(images, MEAN, STD, dev)
    y = torch.from_numpy(split.labels[idx].astype(np.float32)).to(dev)
    return x, y


def train_epochs(net: torch.nn.Module, train: Split, val: Split, cfg: FaceAttributesTrainConfig,
                 dev: str, live: Live) -> tuple[dict[str, torch.Tensor], int]:
    """Train, logging each epoch to ``live``; return the best-val epoch's state dict and number."""
    import torch
    from tqdm.auto import tqdm

    rng = np.random.default_rng(cfg.seed)
    pos = train.labels.mean(axis=0).clip(1e-3, 1 - 1e-3)
    weight = torch.tensor((1 - pos) / pos, dtype=torch.float32, device=dev) if cfg.pos_weight else None
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=weight)
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    no_decay = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                             {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr)
    steps = -(-len(train.files) // cfg.batch_size)
    total, warmup = steps * cfg.epochs, int(round(cfg.warmup_epochs * steps))
    best: tuple[float, int, dict[str, torch.Tensor]] | None = None
    for epoch in range(cfg.epochs):
        net.train()
        order = rng.permutation(len(train.files))
        losses = []
        for b in tqdm(range(steps), desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch",
                      mininterval=1.0, leave=False):
            sel = order[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = _batch(train, sel, rng, cfg, dev)
            for group in opt.param_groups:
                group["lr"] = lr_at(epoch * steps + b, total, warmup, cfg.lr)
            loss = loss_fn(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
        val_m = evaluate(net, val, cfg) if len(val.files) else None
        score = val_m["mean_balanced_accuracy"] if val_m else -float(np.mean(losses))
        log_epoch(live, epoch + 1, float(np.mean(losses)), val_m)
        if best is None or score > best[0]:
            best = (score, epoch + 1, {k: v.detach().clone() for k, v in net.state_dict().items()})
    assert best is not None
    return best[2], best[1]


def log_epoch(live: Live, epoch: int, train_loss: float, val: dict[str, Any] | None) -> None:
    """One row per metric and epoch in ``live``'s history (``step`` = epoch number)."""
    live.step = epoch
    live.log_metric("train_loss", round(train_loss, 5))
    if val is not None:
        live.log_metric("val_mean_balanced_accuracy", val["mean_balanced_accuracy"])
        live.log_metric("val_mean_accuracy", val["mean_accuracy"])
    log.info("epoch %d: train loss %.4f, val mean balanced accuracy %s", epoch, train_loss,
             val and val["mean_balanced_accuracy"])
    live.next_step()


def evaluate(net: torch.nn.Module, split: Split, cfg: FaceAttributesTrainConfig) -> dict[str, Any]:
    def read(start: int, stop: int) -> np.ndarray:
        return split.images[start:stop]

    probs = predict(net, read, len(split.files), 256, MEAN, STD)
    return binary_metrics(probs, split.labels, cfg.attributes)


def fit(splits: dict[str, Split], cfg: FaceAttributesTrainConfig, dev: str, model_path: Path,
        live_dir: Path) -> tuple[int, dict[str, Any] | None, dict[str, Any] | None]:
    """Train (history to DVCLive in ``live_dir``), keep the best-val epoch, save the checkpoint;
    return the selected epoch, val and test metrics."""
    import torch
    from dvclive import Live

    torch.manual_seed(cfg.seed)
    net, model_args = build_model(cfg)
    net.to(dev)
    start = time.perf_counter()
    # No DVC experiment and no dvc.yaml of DVCLive's own: the project's dvc.yaml declares the files.
    with Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None, report=None) as live:
        state, selected = train_epochs(net, splits["train"], splits["val"], cfg, dev, live)
        live.summary["selected_epoch"] = selected
    log.info("trained %d epochs in %.1f s; epoch %d selected on val", cfg.epochs,
             time.perf_counter() - start, selected)
    net.load_state_dict(state)
    test = evaluate(net, splits["test"], cfg) if len(splits["test"].files) else None
    val = evaluate(net, splits["val"], cfg) if len(splits["val"].files) else None
    meta = {"model_name": cfg.model, "model_args": model_args, "attributes": list(cfg.attributes),
            "size": cfg.size, "mean": list(MEAN), "std": list(STD), "threshold": 0.5}
    save_classifier(model_path, net, meta)
    return selected, val, test


def run(raw_dir: Path, model_path: Path, report_path: Path, rejects_path: Path,
        cfg: FaceAttributesTrainConfig, live_dir: Path | None = None) -> dict[str, Any]:
    """Train the attribute classifier; write the checkpoint, report, rejects and history.

    ``live_dir`` (default: ``<report dir>/face_attributes_train``) receives the DVCLive history.
    Every output is replaced only when the whole run succeeds.
    """
    paths = celeba_paths(raw_dir, cfg)
    rejects = Rejects(STAGE)
    files, labels, total = read_annotations(paths, cfg, rejects)
    if not files["train"]:
        raise ValueError(f"no training images in {paths['partition']} (partition 0)")
    model_path, report_path = Path(model_path), Path(report_path)
    live_dir = Path(live_dir) if live_dir is not None else report_path.parent / STAGE
    model_path.parent.mkdir(parents=True, exist_ok=True)
    dev = device()
    with output_group() as outputs, torch_runtime(cfg.threads), \
            tempfile.TemporaryDirectory(prefix=".celeba-cache-", dir=model_path.parent) as cache:
        splits = {k: decode_split(k, files[k], labels[k], paths["images"], Path(cache), cfg, rejects)
                  for k in ("train", "val", "test")}
        rejects.check(total, cfg.max_reject_fraction)  # raises: no output is replaced
        selected, val, test = fit(splits, cfg, dev, outputs.file(model_path),
                                  outputs.dir(live_dir))
        images = {k: len(v.files) for k, v in splits.items()}
        report = {"stage": STAGE, "model": cfg.model, "size": cfg.size, "images": images,
                  "rejected": len(rejects.dropped), "rejects_by_reason": rejects.counts(),
                  "params": {k: v for k, v in dataclasses.asdict(cfg).items()
                             if k not in ("threads", "workers")},
                  "selected_epoch": selected, "val": val, "test": test}
        rejects.write(outputs.file(rejects_path))
        write_json(outputs.file(report_path), report)
    log.info("face attributes: test mean balanced accuracy %s",
             test and test["mean_balanced_accuracy"])
    return report


def cli(
    raw_dir: Path = typer.Argument(..., help="Output of `acquire` (data/raw); CelebA at <root>/celeba."),
    model_path: Path = typer.Argument(..., help="Checkpoint to write (models/face_attributes.pt)."),
    report_path: Path = typer.Argument(..., help="JSON report (reports/face_attributes.json)."),
    rejects_path: Path = typer.Argument(..., help="Rejects table (reports/face_attributes_rejects.parquet)."),
    live_dir: Path | None = typer.Option(None, help="DVCLive history directory (default: "
                                             "<report dir>/face_attributes_train)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads its "
                                "`face_attributes_train` section and `faces.size`."),
) -> None:
    """Train the CSWin face-attribute classifier on a CelebA-format directory."""
    run(raw_dir, model_path, report_path, rejects_path, config_from_params(load_params(params)),
        live_dir=live_dir)
