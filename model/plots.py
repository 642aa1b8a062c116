"""Evaluation figures (matplotlib PNGs) and the data files that ``dvc plots`` renders.

- :func:`accuracy_vs_k_frame` / :func:`roc_frame`: tables for DVC's ``linear`` / ``simple``
  templates (``x: k, y: acc``; ``x: fpr, y: tpr``), written as CSV by :func:`write_csv`;
- :func:`tsne_figure`: a 2-D t-SNE (scikit-learn) of embeddings coloured by identity, the marker
  by modality, one panel per representation (AML Fig. 3, P2VANet Figs. 1, 3-4);
- :func:`montage_figure`: queries with their candidates, the model's choice framed green when
  right and red when wrong, the true match marked (P2VANet Fig. 9).

Figures are built on :class:`matplotlib.figure.Figure` (no pyplot, no global state) and saved
without a software-version stamp, so the same inputs give the same bytes.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl

from model.evaluation import metric_key, roc_points

__all__ = ["accuracy_vs_k_frame", "roc_frame", "write_csv", "tsne_points", "tsne_figure",
           "MontageRow", "montage_figure", "save_figure"]

MARKERS = {"voice": "o", "face": "^"}
RIGHT, WRONG = "#1a9850", "#d73027"  # green, red
EXACT_TSNE = 1000  # points up to which t-SNE uses exact gradients


# ---- data files --------------------------------------------------------------------------------

def accuracy_vs_k_frame(metrics: Mapping[str, float | int | None], split: str, direction: str,
                        ks: Sequence[int], rules: Sequence[str] = ("head", "cosine")
                        ) -> pl.DataFrame:
    """``k, acc, ci_low, ci_high`` (the model's score) and ``acc_<rule>`` per scoring rule,
    from the ``<split>.<dir>[.<rule>].match.curve.k<k>.acc`` keys."""
    rows = []
    for k in ks:
        key = metric_key(split, direction, None, "match", "curve", f"k{k}", "acc")
        row = {"k": int(k), "acc": metrics.get(key), "ci_low": metrics.get(f"{key}.ci_low"),
               "ci_high": metrics.get(f"{key}.ci_high")}
        for rule in rules:
            row[f"acc_{rule}"] = metrics.get(metric_key(split, direction, rule, "match", "curve",
                                                        f"k{k}", "acc"))
        rows.append(row)
    schema = {"k": pl.Int64, "acc": pl.Float64, "ci_low": pl.Float64, "ci_high": pl.Float64,
              **{f"acc_{r}": pl.Float64 for r in rules}}
    return pl.DataFrame(rows, schema=schema)


def roc_frame(scores: np.ndarray, same: np.ndarray) -> pl.DataFrame:
    """``fpr, tpr, threshold`` of one pair list (scikit-learn's ROC)."""
    return pl.DataFrame(roc_points(scores, same))


def write_csv(path: str | os.PathLike, frame: pl.DataFrame, digits: int = 6) -> None:
    """``frame`` as CSV with floats rounded to ``digits`` (stable, diff-friendly files)."""
    floats = [c for c, t in frame.schema.items() if t.is_float()]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    frame.with_columns(pl.col(floats).round(digits)).write_csv(path)


# ---- figures -------------------------------------------------------------------------------------

def _figure(width: float, height: float):  # -> matplotlib.figure.Figure
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(fig, path: str | os.PathLike) -> None:
    """PNG without the software-version stamp (reproducible bytes)."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", metadata={"Software": None})


def tsne_points(features: np.ndarray, *, seed: int = 0, perplexity: float = 30.0) -> np.ndarray:
    """2-D t-SNE ``(N, 2)`` of L2-normalised rows (cosine geometry, the score the model uses);
    the perplexity is capped at ``(N - 1) / 3`` for small sets. Exact gradients up to
    :data:`EXACT_TSNE` points (faster than Barnes-Hut there), Barnes-Hut above; 500 iterations
    (250 of them early exaggeration), enough for a few hundred points."""
    from sklearn.manifold import TSNE

    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 4:
        raise ValueError(f"t-SNE needs at least 4 points (N, D); got {x.shape}")
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    perplexity = float(min(perplexity, (x.shape[0] - 1) / 3.0))
    method = "exact" if x.shape[0] <= EXACT_TSNE else "barnes_hut"
    return TSNE(n_components=2, perplexity=perplexity, init="pca", learning_rate="auto",
                method=method, max_iter=500, random_state=seed).fit_transform(x)


def tsne_figure(panels: Mapping[str, np.ndarray], identity: Sequence[str],
                modality: Sequence[str], *, seed: int = 0, perplexity: float = 30.0,
                title: str | None = None):
    """One t-SNE panel per entry of ``panels`` (title -> ``(N, D)`` features of the same ``N``
    items); colour = identity (up to 20 distinct colours), marker = modality.

    Returns ``(figure, {title: (N, 2) coordinates})``.
    """
    import matplotlib
    from matplotlib.lines import Line2D

    identity, modality = np.asarray(identity), np.asarray(modality)
    names = sorted(set(identity.tolist()))
    if len(names) > 20:
        raise ValueError(f"at most 20 identities can be told apart by colour; got {len(names)}")
    fig = _figure(5.0 * len(panels), 5.0)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    colours = matplotlib.colormaps["tab20"]
    coords = {}
    for ax, (panel, features) in zip(axes, panels.items(), strict=True):
        xy = tsne_points(features, seed=seed, perplexity=perplexity)
        coords[panel] = xy
        for i, name in enumerate(names):
            for mod, marker in MARKERS.items():
                sel = (identity == name) & (modality == mod)
                if sel.any():
                    ax.scatter(xy[sel, 0], xy[sel, 1], s=22, marker=marker,
                               color=colours(i % 20), edgecolors="black", linewidths=0.3)
        ax.set_title(panel, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    handles = [Line2D([], [], linestyle="", marker=m, color="grey", label=mod)
               for mod, m in MARKERS.items()]
    axes[-1].legend(handles=handles, loc="best", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig, coords


@dataclass(frozen=True)
class MontageRow:
    """One query and its candidates for :func:`montage_figure`.

    ``query`` and each candidate are images: ``(H, W, 3)`` uint8 faces or ``(F, T)`` float
    spectrograms. ``label`` is the true candidate's position, ``choice`` the model's.
    """

    query: np.ndarray
    candidates: Sequence[np.ndarray]
    label: int
    choice: int
    scores: Sequence[float]
    caption: str = ""


def _show(ax, image: np.ndarray) -> None:
    if image.ndim == 2:  # spectrogram (F, T): low frequencies at the bottom
        ax.imshow(image, origin="lower", aspect="auto", cmap="magma", interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def montage_figure(rows: Sequence[MontageRow], title: str | None = None):
    """A grid: each row a query, then its ``k`` candidates with their scores. The model's choice
    is framed green (correct) or red (wrong); the true match is labelled ``true``."""
    if not rows:
        raise ValueError("a montage needs at least one row")
    k = max(len(r.candidates) for r in rows)
    fig = _figure(1.6 * (k + 1), 1.9 * len(rows))
    axes = fig.subplots(len(rows), k + 1, squeeze=False)
    for r, row in enumerate(rows):
        _show(axes[r, 0], row.query)
        axes[r, 0].set_title(row.caption or "query", fontsize=7)
        for c in range(k):
            ax = axes[r, c + 1]
            if c >= len(row.candidates):
                ax.axis("off")
                continue
            _show(ax, row.candidates[c])
            text = f"{row.scores[c]:.3f}" + (" true" if c == row.label else "")
            ax.set_title(text, fontsize=7, fontweight="bold" if c == row.label else "normal")
            if c == row.choice:
                colour = RIGHT if row.choice == row.label else WRONG
                for spine in ax.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(4)
    if title:
        fig.suptitle(title, fontsize=10)
    return fig
