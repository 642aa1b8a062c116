"""Plot data files for DVC and the PNG figures: contents, determinism, what is marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from PIL import Image
from sklearn.metrics import roc_curve

from model.evaluation import metric_key
from model.plots import (
    RIGHT,
    WRONG,
    MontageRow,
    accuracy_vs_k_frame,
    montage_figure,
    roc_frame,
    save_figure,
    tsne_figure,
    tsne_points,
    write_csv,
)


def test_accuracy_vs_k_frame_reads_the_curve_keys(tmp_path: Path) -> None:
    metrics = {}
    for k in range(2, 5):
        for rule in (None, "head", "cosine"):
            key = metric_key("test", "v2f", rule, "match", "curve", f"k{k}", "acc")
            metrics[key] = 1.0 / k + (0.1 if rule == "cosine" else 0.0)
            metrics[f"{key}.ci_low"], metrics[f"{key}.ci_high"] = 0.0, 1.0
    frame = accuracy_vs_k_frame(metrics, "test", "v2f", [2, 3, 4])
    assert frame.columns == ["k", "acc", "ci_low", "ci_high", "acc_head", "acc_cosine"]
    assert frame["k"].to_list() == [2, 3, 4]
    assert frame["acc"].to_list() == pytest.approx([1 / 2, 1 / 3, 1 / 4])
    assert frame["acc_cosine"].to_list() == pytest.approx([0.6, 1 / 3 + 0.1, 0.35])
    write_csv(tmp_path / "curve.csv", frame)
    back = pl.read_csv(tmp_path / "curve.csv")
    assert back["acc"].to_list() == [0.5, 0.333333, 0.25]  # rounded to 6 digits


def test_roc_frame_is_sklearns_curve() -> None:
    rng = np.random.default_rng(0)
    same = rng.random(200) < 0.5
    scores = rng.normal(size=200) + same
    frame = roc_frame(scores, same)
    fpr, tpr, _ = roc_curve(same, scores)
    assert frame["fpr"].to_numpy() == pytest.approx(fpr)
    assert frame["tpr"].to_numpy() == pytest.approx(tpr)
    assert (frame["fpr"][0], frame["tpr"][0]) == (0.0, 0.0)
    assert (frame["fpr"][-1], frame["tpr"][-1]) == (1.0, 1.0)
    assert np.isfinite(frame["threshold"].to_numpy()).all()


def clusters(n_ids: int, per_id: int, dim: int, seed: int = 0) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_ids, dim)) * 5
    x = np.repeat(centres, per_id, axis=0) + rng.normal(size=(n_ids * per_id, dim))
    return x, [f"id{i}" for i in range(n_ids) for _ in range(per_id)]


def test_tsne_separates_clusters_and_is_deterministic(tmp_path: Path) -> None:
    x, identity = clusters(4, 10, 32)
    xy = tsne_points(x, seed=0, perplexity=10)
    assert xy.shape == (40, 2)
    assert np.array_equal(xy, tsne_points(x, seed=0, perplexity=10))
    centres = np.stack([xy[i * 10:(i + 1) * 10].mean(axis=0) for i in range(4)])
    spread = max(np.linalg.norm(xy[i * 10:(i + 1) * 10] - centres[i], axis=1).max()
                 for i in range(4))
    gaps = [np.linalg.norm(centres[i] - centres[j]) for i in range(4) for j in range(i)]
    assert min(gaps) > spread  # clusters of the input stay apart in 2-D
    modality = ["voice", "face"] * 20
    fig, coords = tsne_figure({"before": x, "after": x * 2.0}, identity, modality, seed=0,
                              perplexity=10, title="t")
    assert set(coords) == {"before", "after"}
    save_figure(fig, tmp_path / "a.png")
    fig, _ = tsne_figure({"before": x, "after": x * 2.0}, identity, modality, seed=0,
                         perplexity=10, title="t")
    save_figure(fig, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert Image.open(tmp_path / "a.png").size == (1000, 500)  # two 5-inch panels at 100 dpi


def test_tsne_refuses_more_identities_than_colours() -> None:
    x, identity = clusters(21, 2, 8)
    with pytest.raises(ValueError, match="at most 20 identities"):
        tsne_figure({"h": x}, identity, ["voice"] * len(identity))
    with pytest.raises(ValueError, match="at least 4 points"):
        tsne_points(np.zeros((3, 2)))


def spine_colour(ax) -> str:
    from matplotlib.colors import to_hex

    return to_hex(ax.spines["top"].get_edgecolor())


def test_montage_marks_right_and_wrong_choices(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    face = lambda: rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)  # noqa: E731
    spectrogram = rng.normal(size=(20, 30)).astype(np.float32)
    rows = [MontageRow(spectrogram, [face(), face()], label=0, choice=0, scores=[0.9, 0.1],
                       caption="voice: A"),
            MontageRow(spectrogram, [face(), face(), face()], label=2, choice=1,
                       scores=[0.1, 0.8, 0.3], caption="voice: B")]
    fig = montage_figure(rows, title="m")
    axes = np.array(fig.axes).reshape(2, 4)
    assert spine_colour(axes[0, 1]) == RIGHT  # right choice: green
    assert spine_colour(axes[1, 2]) == WRONG  # wrong choice: red
    assert spine_colour(axes[1, 3]) not in (RIGHT, WRONG)  # the true match is labelled, not framed
    assert axes[1, 3].get_title() == "0.300 true" and axes[0, 1].get_title() == "0.900 true"
    assert not axes[0, 3].axison  # a shorter row leaves its last cell empty
    save_figure(fig, tmp_path / "montage.png")
    assert Image.open(tmp_path / "montage.png").format == "PNG"
    with pytest.raises(ValueError, match="at least one row"):
        montage_figure([])
