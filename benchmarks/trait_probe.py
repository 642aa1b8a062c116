"""What an embedding keeps of each shared trait within a gender, against the raw features.

The embedded corpus ties a voice to a face through gender and, within a gender, through the
accent/appearance group, age and body size (docs/synthetic-corpus.md). ``synthetic/identities.csv``
holds each identity's true traits. This probe asks, per modality, how much of each trait a
linear read-out finds in:

- ``h``: the checkpoint's embeddings (the evaluation views, as val embeds them);
- ``cca``: the same after the checkpoint's CCA back-end (``model.backend: cca``), if it has one;
- ``branch``, ``feature``, ``z``: the stages before ``h`` on the same views (:data:`STAGES`): the
  conv branch's pooled 3200-d output, the generator's 128-d ``f`` and the VAE's mean ``z`` (when
  the checkpoint has a VAE), so that a trait's loss can be placed in the module that drops it;
- ``raw``: what the linear baseline reads (``benchmarks/linear_baseline.py``): the standardised
  IS09 functionals for voices; for faces the whitened PCA of 16 x 16 block-averaged pixels plus
  the 12 attribute probabilities.

Each continuous trait is centred on its train mean per gender (so gender itself does not count),
a ridge regression (``RidgeCV``) is fitted on the train items and its Pearson ``r`` with the
trait is measured on the val items. The group is read by a logistic regression, reported as
val accuracy beside the majority-group rate. Only train and val items are read (the items of
their matching tuples); test stays unopened. Val has few identities, so an ``r`` carries about
±0.15 of identity noise: read the pattern across rows.

Usage: ``python -m benchmarks.trait_probe [--data data] [--checkpoint models/avmatch/best]
[--truth data/raw/synthetic/identities.csv]``; writes the ``trait_probe`` section of
``reports/benchmarks.json``.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression, RidgeCV

from benchmarks.common import REPORT, machine, update_report
from benchmarks.linear_baseline import BaselineConfig, _standardise, block_average
from model.data import DataPaths, read_audio_attributes, read_face_attributes
from model.stores import FaceStore
from pipeline.common.directions import MODALITIES

log = logging.getLogger("benchmarks.trait_probe")

SECTION = "trait_probe"
SPLITS = ("train", "val")
TRAITS = ("age", "body", "skin", "grey", "face_width", "voice_f0_hz", "voice_vtl_cm")
FACE_GRID = BaselineConfig().face_grid  # the linear baseline's block size
FACE_PCA = 64  # the linear baseline's tuned face PCA size (reports/baselines.json)
ALPHAS = np.logspace(-3, 5, 17)


@dataclass
class Rep:
    """One representation of one modality's train and val items."""

    x: dict[str, np.ndarray]  # split -> (n, d)
    identity: dict[str, list[str]]  # split -> (n,) identity ids


def read_truth(path: Path) -> pl.DataFrame:
    """The generator's per-identity traits, with ``skin``: the mean of the skin's RGB."""
    return pl.read_csv(path).with_columns(
        ((pl.col("skin_r") + pl.col("skin_g") + pl.col("skin_b")) / 3).alias("skin"))


def item_owners(paths: DataPaths, modality: str) -> dict[str, str]:
    """Each manifest item's identity."""
    return dict(pl.read_parquet(paths.items(modality), columns=["id", "identity"]).iter_rows())


def tuple_items(paths: DataPaths, split: str, owners: Mapping[str, Mapping[str, str]]
                ) -> dict[str, list[str]]:
    """Per modality, the sorted ids of the items ``split``'s matching tuples reference."""
    frame = pl.read_parquet(paths.tuple_table(split), columns=["query_id", "candidate_ids"])
    ids = set(frame["query_id"].to_list()) | set(frame["candidate_ids"].explode().to_list())
    return {m: sorted(ids & owners[m].keys()) for m in MODALITIES}


def within_gender_r(rep: Rep, truth: Mapping[str, Mapping[str, Any]], trait: str) -> float | None:
    """Val Pearson ``r`` of a ridge read-out of ``trait`` (centred per gender on train)."""
    y, g = {}, {}
    for s in SPLITS:
        y[s] = np.array([truth[i][trait] for i in rep.identity[s]], np.float64)
        g[s] = np.array([truth[i]["gender"] for i in rep.identity[s]])
    for gender in np.unique(g["train"]):
        mean = y["train"][g["train"] == gender].mean()
        for s in SPLITS:
            y[s][g[s] == gender] -= mean
    if y["train"].std() == 0 or y["val"].std() == 0:
        return None
    pred = RidgeCV(alphas=ALPHAS).fit(rep.x["train"], y["train"]).predict(rep.x["val"])
    if pred.std() == 0:
        return 0.0
    return round(float(np.corrcoef(pred, y["val"])[0, 1]), 4)


def group_accuracy(rep: Rep, truth: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    """Val accuracy of a logistic read-out of the group, and the majority group's val share."""
    labels = {s: [truth[i]["group"] for i in rep.identity[s]] for s in SPLITS}
    _, counts = np.unique(labels["val"], return_counts=True)
    majority = round(float(counts.max() / counts.sum()), 4)
    if len(set(labels["train"])) < 2:
        return {"group_acc": None, "group_majority": majority}
    clf = LogisticRegression(C=0.1, max_iter=5000).fit(rep.x["train"], labels["train"])
    return {"group_acc": round(float(clf.score(rep.x["val"], labels["val"])), 4),
            "group_majority": majority}


def probe(rep: Rep, truth: Mapping[str, Mapping[str, Any]]) -> dict[str, float | None]:
    out: dict[str, float | None] = {t: within_gender_r(rep, truth, t) for t in TRAITS}
    out.update(group_accuracy(rep, truth))
    return out


def _standardise_splits(x: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each split of ``x`` standardised with the train split's statistics."""
    stacked = np.concatenate([x[s] for s in SPLITS])  # (n_train + n_val, d)
    train = np.arange(len(stacked)) < len(x["train"])
    scaled = _standardise(stacked, train)
    return {"train": scaled[train], "val": scaled[~train]}


def raw_reps(paths: DataPaths, ids: Mapping[tuple[str, str], list[str]],
             owners: Mapping[str, Mapping[str, str]]) -> dict[str, Rep]:
    """The linear baseline's inputs for the train and val items (PCA fitted on train)."""
    voice = {}
    for s in SPLITS:
        table = read_audio_attributes(paths.audio_attributes, paths.audio_stats, ids[s, "voice"])
        pos = {u: i for i, u in enumerate(table.ids)}
        voice[s] = table.values[[pos[u] for u in ids[s, "voice"]]].astype(np.float64)
    pixels, attrs = {}, {}
    with FaceStore(paths.faces) as store:
        for s in SPLITS:
            rows = [store.index(u) for u in ids[s, "face"]]
            pixels[s] = block_average(store.get_many(rows), FACE_GRID).astype(np.float64)
    for s in SPLITS:
        table = read_face_attributes(paths.face_attributes, "prob", ids[s, "face"])
        pos = {u: i for i, u in enumerate(table.ids)}
        attrs[s] = table.values[[pos[u] for u in ids[s, "face"]]].astype(np.float64)
    pixels, attrs = _standardise_splits(pixels), _standardise_splits(attrs)
    size = min(FACE_PCA, len(pixels["train"]) - 1)
    pca = PCA(size, whiten=True, svd_solver="full", random_state=0).fit(pixels["train"])
    face = {s: np.hstack([pca.transform(pixels[s]), attrs[s]]) for s in SPLITS}
    return {m: Rep(x, {s: [owners[m][u] for u in ids[s, m]] for s in SPLITS})
            for m, x in (("voice", voice), ("face", face))}


STAGES = ("branch", "feature", "z", "h")  # the network's path, in order (docs/model.md "Data flow")


def stage_views(net: Any, modality: str, x: Any, attr: Any) -> dict[str, Any]:
    """Each stage of the embedding path for ``N`` items seen in ``V`` fixed views
    (``x (V, N, C, H, W)``, as :meth:`AVMatchNet.embed_views` takes them): the conv branch's
    pooled output (3200-d), the generator's ``f`` (Eq. 1-2), the VAE's ``z`` (Eq. 1, the mean
    that goes on; absent without a VAE) and ``h``, each the mean over the views ``(N, d)``
    (``h`` exactly as :meth:`embed_views` gives it)."""
    from model.avnet import view_mean

    v, n = x.shape[:2]
    flat = x.reshape(v * n, *x.shape[2:])  # (V, N, C, H, W) -> (V*N, C, H, W)
    rep = None if attr is None else attr.repeat(v, 1)  # (N, A) -> (V*N, A)
    seen: dict[str, Any] = {}
    hook = net.branches[modality].register_forward_hook(lambda _m, _i, out: seen.update(branch=out))
    try:
        emb = net.embed(modality, flat, rep)
    finally:
        hook.remove()
    stages = {"branch": seen["branch"], "feature": emb.feature}
    if emb.vae is not None:
        stages["z"] = emb.z
    out = {k: view_mean(t, v) for k, t in stages.items()}  # (V*N, d) -> (N, d)
    out["h"] = view_mean(emb.h, v, net.cfg.normalize_embedding)
    return out


def network_reps(paths: DataPaths, checkpoint: Path, ids: Mapping[tuple[str, str], list[str]]
                 ) -> dict[str, dict[str, Rep]]:
    """Per modality, the checkpoint's representations of the items: each stage of
    :data:`STAGES` the network has, and ``cca`` (``h`` after the back-end) when fitted."""
    import torch

    from model.data import FeatureSource, iter_items
    from pipeline.evaluate import load_network

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    net, meta = load_network(checkpoint, device)
    net.eval()
    source = FeatureSource.from_state(paths, meta["data"])
    bank = {m: {s: source.bank(m, ids[s, m]).identity_ids for s in SPLITS} for m in MODALITIES}
    out: dict[str, dict[str, Rep]] = {}
    for m in MODALITIES:
        parts: dict[str, dict[str, list[np.ndarray]]] = {}
        for s in SPLITS:
            kept = []
            for batch in iter_items(source, m, ids[s, m], 256, crops=net.cfg.eval_voice_crops,
                                    flip=net.cfg.eval_face_flip):
                attr = batch["attr"].to(device)
                with torch.no_grad():
                    views = stage_views(net, m, batch["x"].to(device), attr)
                    if net.backend is not None and net.backend.is_fitted:
                        views["cca"] = net.backend.project(m, views["h"])
                for name, t in views.items():
                    parts.setdefault(name, {}).setdefault(s, []).append(t.double().cpu().numpy())
                kept += batch["ids"]
            if kept != ids[s, m]:
                raise ValueError(f"{s} {m}: the stores lack {len(ids[s, m]) - len(kept)} items")
        out[m] = {name: Rep({s: np.concatenate(x[s]) for s in SPLITS}, bank[m])
                  for name, x in parts.items()}
    return out


def run(paths: DataPaths, checkpoint: Path, truth_path: Path) -> dict[str, Any]:
    truth = {r["voxceleb_id"]: r for r in read_truth(truth_path).iter_rows(named=True)}
    owners = {m: item_owners(paths, m) for m in MODALITIES}
    ids = {(s, m): items for s in SPLITS for m, items in tuple_items(paths, s, owners).items()}
    reps = network_reps(paths, checkpoint, ids)
    for m, rep in raw_reps(paths, ids, owners).items():
        reps[m]["raw"] = rep
    report: dict[str, Any] = {"checkpoint": str(checkpoint), "machine": machine()}
    for m in MODALITIES:
        report[m] = {name: probe(rep, truth) for name, rep in reps[m].items()}
    report["items"] = {f"{s}.{m}": len(ids[s, m]) for s in SPLITS for m in MODALITIES}
    report["identities"] = {s: len(set(reps["voice"]["raw"].identity[s])) for s in SPLITS}
    return report


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data"))
    parser.add_argument("--checkpoint", type=Path, default=Path("models/avmatch/best"))
    parser.add_argument("--truth", type=Path, default=None,
                        help="identities.csv of the generator (default <data>/raw/synthetic/)")
    parser.add_argument("--section", default=SECTION)
    parser.add_argument("--out", type=Path, default=REPORT)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    truth = args.truth or args.data / "raw" / "synthetic" / "identities.csv"
    report = run(DataPaths.under(args.data), args.checkpoint, truth)
    update_report(args.section, report, path=args.out)
    for m in MODALITIES:
        for name, row in report[m].items():
            log.info("%s %s: %s", m, name, ", ".join(f"{k} {v}" for k, v in row.items()))
    return report


if __name__ == "__main__":
    main()
