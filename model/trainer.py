"""Adversarial-metric training of :class:`model.avnet.AVMatchNet` (AML Algorithm 1, P2VANet III-F).

Per batch of matching tuples (one direction and one ``k``; both directions are trained by one
model, ``train.directions`` selects):

1. embed every item of the batch (the generator side's forward pass);
2. AML Algorithm 1, lines 7-10: ``model.disc_steps`` descent steps of the discriminator on the
   detached embeddings (``L_dis``, AML Eq. 3 / P2VANet Eq. 5), clipping for WGAN;
3. one generator-side step on ``L_total - L_dis`` (AML Eq. 10-11 / P2VANet Eq. 18) against the
   updated discriminator.

Optimisers: Adam (``beta1``, ``beta2``, ``weight_decay``) with the per-module rates of
:meth:`AVMatchNet.param_groups`: every trainable parameter is in exactly one group, the
discriminator's in their own optimiser. Groups with ``lr_end != lr`` (AML's branches, generator,
private modules and heads) decay logarithmically from ``lr`` to ``lr_end`` over the run.

Weight averaging (``train.ema_decay`` > 0; off by default, not in the papers; docs/model.md): an
exponential moving average of every weight and buffer (timm's ``ModelEmaV3``, with its warm-up)
follows the training; validation, the back-end fit and the ``best`` checkpoint use the average, training
goes on with the live weights.

Model selection uses val only: after each epoch the val tuples' ``train.select_metric`` (by
default the mean of 1:2 unconstrained and gender-constrained matching accuracy over the trained
directions) decides the ``best`` checkpoint; ``last`` holds the full resume state (the live
weights, the optimisers and the average). The train
stage never reads test or seen_heard tuples (:func:`model.data.load_tuples` refuses them).

Devices: CUDA when present (bf16 autocast, pinned memory, non-blocking copies), CPU otherwise,
deterministic for a seed. Several processes (``torchrun --nproc_per_node=N``) train with
DistributedDataParallel: nccl on GPU, gloo on CPU, each rank a disjoint share of every global
batch, logging and checkpoints on rank 0 only.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import os
import random
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import torch
from torch import Tensor, nn

from model.avnet import AVMatchNet, InputDims, LearningRates, LossWeights, ModelConfig
from model.backend import MIN_PAIRS as MIN_BACKEND_PAIRS
from model.backend import cross_video_pair_count
from model.checkpoint import load_resume, model_meta, resume_meta, save_model, save_resume
from model.data import DataConfig, DataPaths, TrainData, make_loader, prepare_training
from model.metrics import match_accuracy
from model.runtime import torch_runtime
from model.scoring import embed_items, score_matching
from pipeline.common.config import ConfigError

log = logging.getLogger(__name__)

SELECT_SPLIT = "val"


@dataclass(frozen=True)
class TrainConfig:
    """The ``train`` params section (docs/model.md)."""

    epochs: int = 6
    batch_size: int = 64  # tuples per batch (per rank with several processes)
    seed: int = 0
    directions: tuple[str, ...] = ("v2f", "f2v")
    # Adam with per-module rates (P2VANet IV-B, AML III-G)
    lr: float = 1e-3  # branches, generators, private modules and heads: start of the log decay
    lr_end: float = 1e-5  # ... and its end (AML III-G: 5e-3 -> 5e-5; docs/model.md)
    lr_vae: float = 1e-2
    lr_discriminator: float = 5e-3
    lr_gender: float = 5e-3
    lr_nation: float = 5e-2
    lr_private: float | None = None  # private-attribute module; None = lr -> lr_end like the branches
    beta1: float = 0.9
    beta2: float = 0.999
    weight_decay: float = 5e-4
    # > 0: an exponential moving average of the weights is what validation scores and ``best``
    # keeps (timm's ModelEmaV3 with warm-up, decay min(ema_decay, 1 - (1 + step) ** -2/3));
    # 0 = off, the live weights (measured no better on val: docs/model.md)
    ema_decay: float = 0.0
    # inputs
    min_nation_count: int = 5  # train identities a nationality needs to keep its own class
    face_attr: str = "prob"  # prob | binary face attributes
    flip: bool = True  # random horizontal face flips (training only)
    # model selection on val
    # <task>.k<k>.<constraint>.acc, one or several: the mean over them and the directions
    select_metric: tuple[str, ...] = ("match.k2.U.acc", "match.k2.G.acc")
    select_score: str = "model"  # model (model.score) | head | cosine
    # runtime
    workers: int = 0  # DataLoader worker processes per rank
    threads: int = 0  # torch threads; 0 = every core
    resume: bool = True  # continue from <out>/last when it matches these params

    def __post_init__(self) -> None:
        if min(self.epochs, self.batch_size) < 1:
            raise ConfigError("train.epochs and train.batch_size must be >= 1")
        if not 0.0 <= self.ema_decay < 1.0:
            raise ConfigError("train.ema_decay must be in [0, 1) (0 = no weight averaging)")
        if self.select_score not in ("model", "head", "cosine"):
            raise ConfigError("train.select_score must be model, head or cosine")
        names = self.select_metric  # one name (`-S train.select_metric=match.k2.G.acc`) or several
        names = (names,) if isinstance(names, str) else tuple(names)
        object.__setattr__(self, "select_metric", names)
        if not self.select_metric:
            raise ConfigError("train.select_metric needs at least one metric")
        for name in self.select_metric:
            parts = name.split(".")
            if len(parts) != 4 or parts[0] != "match" or not parts[1][1:].isdigit():
                raise ConfigError(f"train.select_metric entries must look like match.k2.U.acc; "
                                  f"got {name!r}")

    @property
    def learning_rates(self) -> LearningRates:
        return LearningRates(base=self.lr, base_end=self.lr_end, vae=self.lr_vae,
                             discriminator=self.lr_discriminator, gender=self.lr_gender,
                             nation=self.lr_nation, private=self.lr_private)

    @property
    def data(self) -> DataConfig:
        return DataConfig(batch_size=self.batch_size, directions=self.directions,
                          min_nation_count=self.min_nation_count, face_attr=self.face_attr,
                          flip=self.flip, seed=self.seed)

    @property
    def select(self) -> tuple[tuple[int, str], ...]:
        """``(k, constraint)`` of each selection metric."""
        return tuple((int(k[1:]), constraint)
                     for _, k, constraint, _ in (name.split(".") for name in self.select_metric))


# ---- distributed ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Dist:
    """This process's place in a (possibly single-process) run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed() -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (nccl on GPU,
    gloo on CPU); a plain run is a world of one."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    import torch.distributed as dist

    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local)
    return Dist(dist.get_rank(), dist.get_world_size(), local)


def device_for(dist_info: Dist) -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", dist_info.local_rank)
    return torch.device("cpu")


class GeneratorStep(nn.Module):
    """One training step's forward: embeddings, the discriminator's steps, generator losses.

    A module so that DistributedDataParallel sees every generator-side parameter used inside
    its forward; the discriminator is updated (and its gradients averaged across ranks by
    hooks) inside it, on detached embeddings.
    """

    def __init__(self, net: AVMatchNet) -> None:
        super().__init__()
        self.net = net

    def forward(self, batch: Mapping[str, Any], weights: LossWeights,
                disc_opt: torch.optim.Optimizer | None) -> dict[str, Tensor]:
        out = self.net(batch)
        extra: dict[str, Tensor] = {}
        if disc_opt is not None:
            extra["dis_train"], extra["dis_acc"] = self.net.discriminator_update(out, disc_opt)
        terms = self.net.generator_losses(batch, weights, out=out)
        return {**terms, **extra}


def wrap_distributed(step: GeneratorStep, dist_info: Dist, device: torch.device) -> nn.Module:
    """DistributedDataParallel over the generator side. The discriminator's parameters are on
    DDP's ignore list: :meth:`AVMatchNet.discriminator_update` trains them on detached inputs
    inside the forward and averages their gradients over the processes itself."""
    if not dist_info.enabled:
        return step
    from torch.nn.parallel import DistributedDataParallel as DDP

    names = [f"net.{n}" for n in step.net.ddp_ignore_names()]
    DDP._set_params_and_buffers_to_ignore_for_model(step, names)
    ids = [device.index] if device.type == "cuda" else None
    return DDP(step, device_ids=ids, find_unused_parameters=True)


# ---- optimisation --------------------------------------------------------------------------------

def make_optimizers(net: AVMatchNet, cfg: TrainConfig
                    ) -> tuple[torch.optim.Adam, torch.optim.Adam | None]:
    """Adam for the generator side and for the discriminator (None without one)."""
    gen_groups, disc_groups = net.param_groups(cfg.learning_rates)
    kwargs = {"betas": (cfg.beta1, cfg.beta2), "weight_decay": cfg.weight_decay}
    gen = torch.optim.Adam(gen_groups, **kwargs)
    disc = torch.optim.Adam(disc_groups, **kwargs) if disc_groups else None
    return gen, disc


def make_ema(net: AVMatchNet, cfg: TrainConfig) -> nn.Module | None:
    """The weight average that validation scores (``train.ema_decay``; None when 0): timm's
    ``ModelEmaV3`` with warm-up, so the first steps are not held back by the initial weights.
    Every rank keeps one (DistributedDataParallel keeps the weights equal); rank 0 uses it."""
    if cfg.ema_decay == 0:
        return None
    from timm.utils import ModelEmaV3

    return ModelEmaV3(net, decay=cfg.ema_decay, use_warmup=True)


def set_learning_rates(optimizer: torch.optim.Optimizer, progress: float) -> None:
    """AML III-G's logarithmic decay: ``lr * (lr_end / lr) ** progress`` (progress in [0, 1])."""
    for group in optimizer.param_groups:
        start, end = group.setdefault("lr_start", group["lr"]), group["lr_end"]
        group["lr"] = start * (end / start) ** min(max(progress, 0.0), 1.0)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v
            for k, v in batch.items()}


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA; full precision on CPU (deterministic)."""
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


# ---- validation ----------------------------------------------------------------------------------

def item_videos(paths: DataPaths, modality: str, ids: Sequence[str]) -> list[str]:
    """The manifest video of each item (an item without one is its own video)."""
    table = pl.read_parquet(paths.items(modality), columns=["id", "video"])
    video = dict(table.filter(pl.col("id").is_in(list(ids))).iter_rows())
    return [video.get(u) or u for u in ids]


def backend_pair_count(data: TrainData) -> int:
    """How many cross-video (voice, face) pairs of one identity the train tuples' items give
    the CCA back-end."""
    banks = data.train.banks
    videos = {m: item_videos(data.source.paths, m, banks[m].ids) for m in banks}
    return cross_video_pair_count(banks["voice"].identity_ids, videos["voice"],
                                  banks["face"].identity_ids, videos["face"])


def check_backend_pairs(model_cfg: ModelConfig, data: TrainData) -> None:
    """``model.backend: cca`` needs cross-video train pairs; checked before the first epoch
    rather than at the first validation."""
    if model_cfg.backend == "none":
        return
    count = backend_pair_count(data)
    if count < MIN_BACKEND_PAIRS:
        raise ConfigError(f"model.backend {model_cfg.backend!r} is fitted on (voice, face) pairs "
                          f"of one train identity from two videos; the train tuples' items give "
                          f"{count}: set model.backend to none")


def fit_backend(net: AVMatchNet, data: TrainData, device: torch.device) -> None:
    """Fit the CCA back-end (``model.backend: cca``) on the train tuples' items, embedded as
    val embeds them, paired across videos of one identity (model/backend.py). The CPU random
    state is restored afterwards (the item loader draws a seed from it), so the trained weights
    are the same with and without a back-end."""
    if net.backend is None:
        return
    emb, identity, video = {}, {}, {}
    with torch.random.fork_rng(devices=[]):
        for m, bank in data.train.banks.items():
            items = embed_items(net, data.source, m, bank.ids, device=device)
            emb[m], identity[m] = items.h, items.identity_ids
            video[m] = item_videos(data.source.paths, m, items.ids)
    net.backend.fit_items(emb, identity, video)


def set_xattr_targets(net: AVMatchNet, data: TrainData) -> None:
    """Set the cross-modal attribute targets (``model.xattr_weight``; model/xattr.py) from the
    train tuples' items: identity-level means of each modality's private attributes."""
    if net.xattr is None:
        return
    banks = data.train.banks
    net.xattr.set_targets({m: b.attr for m, b in banks.items()},
                          {m: b.identity for m, b in banks.items()})


def validate(net: AVMatchNet, data: TrainData, cfg: TrainConfig, device: torch.device
             ) -> dict[str, float]:
    """Val matching accuracy per direction, constraint and k for every scoring rule, plus the
    selection value ``select``: the mean of ``train.select_metric``'s metrics over them and the
    directions. The CCA back-end, if any, is first refitted on the train items."""
    if data.val is None:
        raise ValueError("no val tuples: model selection needs the val split")
    fit_backend(net, data, device)
    frame = data.val.frame
    ids = {m: data.val.banks[m].ids for m in data.val.banks}
    emb = {m: embed_items(net, data.source, m, ids[m], device=device) for m in ids}
    metrics: dict[str, float] = {}
    keys = frame.select("direction", "constraint", "k").unique().sort(["direction", "constraint", "k"])
    for direction, constraint, k in keys.iter_rows():
        rows = frame.filter((frame["direction"] == direction) & (frame["constraint"] == constraint)
                            & (frame["k"] == k))
        scores = score_matching(net, rows, emb)
        label = rows["label"].to_numpy()
        scores["model"] = scores["head" if net.cfg.score == "head" else "cosine"]
        for rule, value in scores.items():
            if rule in ("model", "head", "cosine"):
                key = f"{direction}.match.k{k}.{constraint}.acc" + ("" if rule == "model" else f".{rule}")
                metrics[key] = match_accuracy(value, label)
    metrics["select"] = selection_value(metrics, cfg)
    return metrics


def selection_keys(cfg: TrainConfig, name: str) -> list[str]:
    """The val metric keys of one selection metric: one per direction, under ``select_score``."""
    suffix = "" if cfg.select_score == "model" else f".{cfg.select_score}"
    return [f"{d}.{name}{suffix}" for d in cfg.directions]


def selection_value(metrics: Mapping[str, float], cfg: TrainConfig) -> float:
    """The mean of every ``train.select_metric`` over ``train.directions`` (scored as
    ``train.select_score``)."""
    keys = [key for name in cfg.select_metric for key in selection_keys(cfg, name)]
    missing = [key for key in keys if key not in metrics]
    if missing:
        raise ValueError(f"val tuples lack {missing} "
                         f"(train.select_metric {list(cfg.select_metric)})")
    return float(np.mean([metrics[key] for key in keys]))


def best_metrics(best_dir: Path, cfg: TrainConfig) -> dict[str, float]:
    """``best.<metric>``: each selection metric at the selected epoch, mean over directions."""
    val = model_meta(best_dir)["selection"]["val"]
    return {f"best.{name}": float(np.mean([val[key] for key in selection_keys(cfg, name)]))
            for name in cfg.select_metric}


# ---- the run -------------------------------------------------------------------------------------

@dataclass
class RunState:
    epoch: int = 0  # epochs completed
    step: int = 0  # generator steps taken
    best: float = -math.inf
    best_epoch: int = -1


def fingerprint(params: Mapping[str, Any]) -> dict[str, Any]:
    """What a resumable run must share with the current one: every param but the runtime
    knobs (the epoch count too: the learning-rate schedule spans the whole run)."""
    skip = {"workers", "threads", "resume"}
    train = {k: v for k, v in params["train"].items() if k not in skip}
    return {"train": train, "model": params["model"], "lambdas": params["lambdas"]}


def _progress_bar(total: int, desc: str, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="batch", leave=False,
                disable=not (enabled and sys.stderr.isatty()))


def train_epoch(step: nn.Module, net: AVMatchNet, loader: Any, opts: tuple, weights: LossWeights,
                state: RunState, total_steps: int, device: torch.device, main: bool,
                ema: nn.Module | None = None) -> dict[str, float]:
    """One pass over the training batches, updating the weight average ``ema`` (if any) after
    each step; returns the mean of every loss term."""
    gen_opt, disc_opt = opts
    sums: dict[str, float] = {}
    count = 0
    net.train()
    with _progress_bar(len(loader), f"epoch {state.epoch + 1}", main) as bar:
        for batch in loader:
            batch = to_device(batch, device)
            set_learning_rates(gen_opt, state.step / max(total_steps - 1, 1))
            with autocast(device):
                terms = step(batch, weights, disc_opt)
            gen_opt.zero_grad(set_to_none=True)
            terms["total"].backward()
            gen_opt.step()
            state.step += 1
            if ema is not None:
                ema.update(net, step=state.step)
            count += 1
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value.detach())
            bar.update(1)
    return {name: total / max(count, 1) for name, total in sums.items()}


def _log(live: Any, prefix: str, values: Mapping[str, float]) -> None:
    for name, value in values.items():
        live.log_metric(f"{prefix}/{name}", float(value))


def run(data_dir: Path, out_dir: Path, live_dir: Path, params: Mapping[str, Any]) -> dict[str, Any]:
    """Train on ``data_dir`` (features, manifest, train/val tuples); write ``out_dir/best``,
    ``out_dir/last`` and the DVCLive logs in ``live_dir``. ``params`` holds the ``train`` and
    ``model`` sections and ``lambdas`` (the top-level ``lambda1..4``)."""
    from pipeline.common.config import build

    cfg = build(TrainConfig, params["train"], name="train")
    model_cfg = build(ModelConfig, params["model"], name="model")
    weights = LossWeights.from_params(params["lambdas"], model_cfg)
    dist_info = init_distributed()
    device = device_for(dist_info)
    with torch_runtime(cfg.threads):
        return _run(Path(data_dir), Path(out_dir), Path(live_dir), params, cfg, model_cfg,
                    weights, dist_info, device)


def _run(data_dir: Path, out_dir: Path, live_dir: Path, params: Mapping[str, Any],
         cfg: TrainConfig, model_cfg: ModelConfig, weights: LossWeights, dist_info: Dist,
         device: torch.device) -> dict[str, Any]:
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    random.seed(cfg.seed)  # the resume state records Python's generator: keep it reproducible
    data = prepare_training(DataPaths.under(data_dir), cfg.data)
    check_tuple_sizes(model_cfg, data)
    check_selection_tuples(cfg, data)
    check_backend_pairs(model_cfg, data)
    dims = InputDims(**data.source.input_dims())
    net = AVMatchNet(model_cfg, dims).to(device)
    set_xattr_targets(net, data)
    step = wrap_distributed(GeneratorStep(net), dist_info, device)
    gen_opt, disc_opt = make_optimizers(net, cfg)
    ema = make_ema(net, cfg)
    scored = net if ema is None else ema.module  # what validation scores and `best` keeps
    sampler = data.sampler(dist_info.rank, dist_info.world_size)
    loader = make_loader(data.train, sampler, num_workers=cfg.workers,
                         pin_memory=device.type == "cuda")
    total_steps = cfg.epochs * len(sampler)
    state = RunState()
    meta = {"model": model_cfg.to_dict(), "dims": dataclasses.asdict(dims),
            "data": data.source.state(), "params": dict(params),
            "fingerprint": fingerprint(params)}
    if cfg.resume and (out_dir / "last").exists():
        state = _resume(out_dir / "last", net, (gen_opt, disc_opt), ema, meta, state)
    live = _open_live(live_dir, dist_info, resume=state.epoch > 0)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    for epoch in range(state.epoch, cfg.epochs):
        sampler.set_epoch(epoch)
        losses = train_epoch(step, net, loader, (gen_opt, disc_opt), weights, state, total_steps,
                             device, dist_info.main, ema)
        state.epoch = epoch + 1
        if dist_info.main:
            val = validate(scored, data, cfg, device)
            improved = val["select"] > state.best
            if improved:
                state.best, state.best_epoch = val["select"], state.epoch
                save_model(out_dir / "best", scored, _selection_meta(meta, cfg, state, val))
            _write_last(out_dir / "last", net, (gen_opt, disc_opt), ema, state, meta)
            history.append({"epoch": state.epoch, **losses, **val})
            if live is not None:
                _log(live, "train", losses)
                _log(live, "val", val)
                live.log_metric("epoch", state.epoch, plot=False)
                live.next_step()
            log.info("epoch %d/%d: loss %.4f, val %s %.4f%s", state.epoch, cfg.epochs,
                     losses.get("total", float("nan")), "+".join(cfg.select_metric), val["select"],
                     " (best)" if improved else "")
        _barrier(dist_info)
    if live is not None:
        live.summary.update({"best_epoch": state.best_epoch, "best.select": state.best,
                             **best_metrics(out_dir / "best", cfg)})
        live.end()
    return {"epochs": cfg.epochs, "steps": state.step, "best_epoch": state.best_epoch,
            "best": state.best, "seconds": round(time.perf_counter() - start, 1),
            "history": history, "world_size": dist_info.world_size}


def check_tuple_sizes(model_cfg: ModelConfig, data: TrainData) -> None:
    """Every tuple size ``k`` of the train and val tuples needs its matching classifier."""
    if "match" not in model_cfg.heads:
        return
    sizes = {k for _, k in data.train.groups()} | ({k for _, k in data.val.groups()}
                                                    if data.val is not None else set())
    missing = sorted(sizes - set(model_cfg.match_ks))
    if missing:
        raise ConfigError(f"model.match_ks {list(model_cfg.match_ks)} lacks the tuple size(s) "
                          f"{missing} of the train/val tuples: add tuples.multiway_k to it")


def check_selection_tuples(cfg: TrainConfig, data: TrainData) -> None:
    """The val tuples hold every ``(direction, k, constraint)`` the selection metric averages,
    checked before the first epoch rather than after it."""
    if data.val is None:
        raise ValueError("no val tuples: model selection needs the val split")
    frame = data.val.frame
    held = set(frame.select("direction", "k", "constraint").unique().iter_rows())
    missing = [f"{d}.match.k{k}.{c}" for k, c in cfg.select for d in cfg.directions
               if (d, k, c) not in held]
    if missing:
        raise ConfigError(f"train.select_metric {list(cfg.select_metric)} needs val tuples "
                          f"{missing}: add the constraint to tuples.eval_constraints")


def _selection_meta(meta: Mapping[str, Any], cfg: TrainConfig, state: RunState,
                    val: Mapping[str, float]) -> dict[str, Any]:
    return {**meta, "selection": {"selected_on": SELECT_SPLIT, "metric": list(cfg.select_metric),
                                  "score": cfg.select_score, "value": state.best,
                                  "epoch": state.best_epoch, "val": dict(val)}}


def _optimizers(gen_opt: torch.optim.Optimizer, disc_opt: torch.optim.Optimizer | None
                ) -> dict[str, torch.optim.Optimizer]:
    return {"generator": gen_opt, **({"discriminator": disc_opt} if disc_opt else {})}


def _averages(ema: nn.Module | None) -> dict[str, nn.Module]:
    return {} if ema is None else {"ema": ema}


def _write_last(path: Path, net: AVMatchNet, opts: tuple, ema: nn.Module | None,
                state: RunState, meta: Mapping[str, Any]) -> None:
    save_resume(path, model=net, optimizers=_optimizers(*opts), schedulers=_averages(ema),
                epoch=state.epoch, step=state.step, extra=dataclasses.asdict(state), meta=meta)


def _resume(path: Path, net: AVMatchNet, opts: tuple, ema: nn.Module | None,
            meta: Mapping[str, Any], state: RunState) -> RunState:
    """Continue from ``path`` when it was written with the same fingerprint (params other than
    the epoch count and runtime knobs); otherwise start afresh."""
    if resume_meta(path).get("fingerprint") != meta["fingerprint"]:
        log.info("resume: %s was trained with other params; starting afresh", path)
        return state
    saved = load_resume(path, model=net, optimizers=_optimizers(*opts),
                        schedulers=_averages(ema), device=next(net.parameters()).device)
    resumed = RunState(**saved.extra)
    log.info("resume: continuing after epoch %d (step %d)", resumed.epoch, resumed.step)
    return resumed


def _open_live(live_dir: Path, dist_info: Dist, resume: bool) -> Any:
    if not dist_info.main:
        return None
    from dvclive import Live

    return Live(dir=str(live_dir), resume=resume, save_dvc_exp=False, dvcyaml=None)


def _barrier(dist_info: Dist) -> None:
    if dist_info.enabled:
        import torch.distributed as dist

        dist.barrier()

