"""The metric table: keys, intervals and counts; chance and oracle scorers; scikit-learn agreement."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from sklearn.metrics import accuracy_score, average_precision_score, roc_auc_score, roc_curve

from model.evaluation import (
    Bootstrap,
    bootstrap_verification,
    clean,
    detail_table,
    format_estimate,
    headline_table,
    matching_metrics,
    metric_key,
    retrieval_metrics,
    strata_metrics,
    threshold_metrics,
    verification_metrics,
)
from model.metrics import auc_statistic, cluster_bootstrap, eer_statistic

BOOT = Bootstrap(n_resamples=200, seed=3)
SPLITS = ("val", "test", "seen_heard")
DIRECTIONS = {"v2f": ("voice", "face"), "f2v": ("face", "voice")}


def check_estimate(metrics: dict, key: str, count: str) -> None:
    point = metrics[key]
    assert metrics[f"{key}.ci_low"] <= point <= metrics[f"{key}.ci_high"]
    assert metrics[f"{key}.n_identities"] >= 1 and metrics[f"{key}.{count}"] >= 1


def test_metric_keys_follow_the_scheme() -> None:
    assert metric_key("test", "v2f", None, "match", "k2", "U", "acc") == "test.v2f.match.k2.U.acc"
    assert metric_key("test", "v2f", "model", "verify", "U", "auc") == "test.v2f.verify.U.auc"
    assert metric_key("seen_heard", "f2v", "cosine", "retrieval", "map") == (
        "seen_heard.f2v.cosine.retrieval.map")


def test_matching_by_hand_with_interval_and_counts() -> None:
    scores = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5], [0.7, 0.3]])
    labels = np.array([0, 0, 1, 1])  # hit, miss, tie (1/2), miss
    clusters = np.array(["a", "a", "b", "c"])
    metrics, hits = matching_metrics("t.v2f.match.k2.U.acc", scores, labels, clusters, BOOT)
    assert hits.tolist() == [1.0, 0.0, 0.5, 0.0]
    assert metrics["t.v2f.match.k2.U.acc"] == pytest.approx(1.5 / 4)
    assert metrics["t.v2f.match.k2.U.acc.n_identities"] == 3
    assert metrics["t.v2f.match.k2.U.acc.n_tuples"] == 4
    check_estimate(metrics, "t.v2f.match.k2.U.acc", "n_tuples")


def test_matching_agrees_with_sklearn_without_ties() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(300, 10))
    labels = rng.integers(0, 10, 300)
    metrics, _ = matching_metrics("acc", scores, labels, rng.integers(0, 20, 300), BOOT)
    assert metrics["acc"] == pytest.approx(accuracy_score(labels, scores.argmax(axis=1)))


@pytest.mark.parametrize("k", range(2, 11))
def test_constant_scorer_gets_chance_and_oracle_gets_one(k: int) -> None:
    rng = np.random.default_rng(k)
    labels = rng.integers(0, k, 120)
    clusters = rng.integers(0, 15, 120)
    constant, _ = matching_metrics("acc", np.zeros((120, k)), labels, clusters, BOOT)
    assert constant["acc"] == pytest.approx(1.0 / k, abs=1e-12)
    assert constant["acc.ci_low"] == pytest.approx(1.0 / k) == constant["acc.ci_high"]
    oracle = (np.arange(k)[None] == labels[:, None]).astype(float)
    assert matching_metrics("acc", oracle, labels, clusters, BOOT)[0]["acc"] == 1.0


def test_verification_agrees_with_sklearn_and_its_bootstrap() -> None:
    rng = np.random.default_rng(1)
    same = rng.random(400) < 0.5
    scores = np.round(rng.normal(size=400) + same, 1)  # rounded: many ties
    clusters = rng.integers(0, 25, 400)
    metrics = verification_metrics("t.v2f.verify.U", scores, same, clusters, BOOT)
    assert metrics["t.v2f.verify.U.auc"] == pytest.approx(roc_auc_score(same, scores))
    fpr, tpr, _ = roc_curve(same, scores)
    fnr = 1 - tpr
    eer = metrics["t.v2f.verify.U.eer"]
    assert np.min(np.maximum(fpr, fnr)) >= eer - 1e-12  # the EER lies where the curves cross
    assert np.max(np.minimum(fpr, fnr)) <= eer + 1e-12
    for name in ("auc", "eer"):
        check_estimate(metrics, f"t.v2f.verify.U.{name}", "n_pairs")
        assert metrics[f"t.v2f.verify.U.{name}.n_pairs"] == 400
        assert metrics[f"t.v2f.verify.U.{name}.n_identities"] == 25
    # the vectorised bootstrap reproduces model.metrics' generic one (same draws, same statistic)
    fast = bootstrap_verification(scores, same, clusters, BOOT)
    for name, statistic in (("auc", auc_statistic), ("eer", eer_statistic)):
        slow = cluster_bootstrap(statistic, [scores, same], clusters,
                                 n_resamples=BOOT.n_resamples, seed=BOOT.seed)
        assert fast[name].point == pytest.approx(slow.point, abs=1e-12)
        assert fast[name].ci_low == pytest.approx(slow.ci_low, abs=1e-12)
        assert fast[name].ci_high == pytest.approx(slow.ci_high, abs=1e-12)
    chunked = bootstrap_verification(scores, same, clusters, BOOT, chunk_cells=50)
    assert chunked["auc"] == fast["auc"] and chunked["eer"] == fast["eer"]


def test_eer_by_hand_and_val_threshold() -> None:
    scores = np.array([0.1, 0.4, 0.35, 0.8])
    same = np.array([False, False, True, True])
    metrics = verification_metrics("v", scores, same, np.array([0, 1, 2, 3]), BOOT)
    assert metrics["v.auc"] == pytest.approx(0.75)  # the pair (0.4 neg, 0.35 pos) is misordered
    assert metrics["v.eer"] == pytest.approx(0.5)
    found = threshold_metrics("val.v2f.verify.U", scores, same)
    assert found["val.v2f.verify.U.eer"] == pytest.approx(0.5)
    threshold = found["val.v2f.verify.U.threshold"]
    accept = scores >= threshold
    fpr = (accept & ~same).sum() / (~same).sum()
    fnr = (~accept & same).sum() / same.sum()
    assert fpr == fnr == 0.5


def test_constant_and_oracle_verification() -> None:
    rng = np.random.default_rng(2)
    same = np.arange(200) % 2 == 0
    clusters = rng.integers(0, 10, 200)
    constant = verification_metrics("v", np.ones(200), same, clusters, BOOT)
    assert constant["v.auc"] == 0.5 and constant["v.eer"] == 0.5
    oracle = verification_metrics("v", same.astype(float), same, clusters, BOOT)
    assert oracle["v.auc"] == 1.0 and oracle["v.eer"] == 0.0
    assert oracle["v.auc.ci_low"] == oracle["v.auc.ci_high"] == 1.0


def test_retrieval_by_hand_and_against_sklearn() -> None:
    scores = np.array([[0.9, 0.8, 0.1, 0.7],
                       [0.2, 0.3, 0.9, 0.1]])
    query = np.array(["a", "b"])
    gallery = np.array(["a", "b", "a", "b"])
    metrics, lost = retrieval_metrics("r", scores, query, gallery, boot=BOOT, ks=(1, 2))
    assert lost == 0
    assert metrics["r.r1"] == 0.5 and metrics["r.r2"] == 1.0  # query b's top item is an "a"
    assert metrics["r.map"] == pytest.approx((0.75 + 0.5) / 2)  # AP a: (1/1 + 2/4) / 2; b: (1/2 + 2/4) / 2
    aps = [average_precision_score(gallery == q, s) for q, s in zip(query, scores, strict=True)]
    assert metrics["r.map"] == pytest.approx(np.mean(aps))
    assert metrics["r.map.n_queries"] == 2 and metrics["r.map.n_identities"] == 2


def test_retrieval_leaves_out_the_query_video() -> None:
    scores = np.array([[0.9, 0.5, 0.1]])
    query, gallery = np.array(["a"]), np.array(["a", "b", "a"])
    # the top item is the query's own video: left out, the other "a" is ranked 2nd of 2
    metrics, _ = retrieval_metrics("r", scores, query, gallery, query_group=np.array(["v1"]),
                                   gallery_group=np.array(["v1", "v2", "v3"]), boot=BOOT,
                                   ks=(1, 2))
    assert metrics["r.r1"] == 0.0 and metrics["r.r2"] == 1.0 and metrics["r.map"] == 0.5
    with pytest.raises(ValueError, match="no query has a relevant"):
        retrieval_metrics("r", scores[:, :2], query, gallery[:2], query_group=np.array(["v1"]),
                          gallery_group=np.array(["v1", "v2"]), boot=BOOT)


def test_strata_by_hand() -> None:
    hits = np.array([1.0, 0.0, 1.0, 1.0])
    labels = np.array([0, 1, 0, 1])
    q_gender = np.array(["m", "f", "m", "f"], dtype=object)
    c_gender = np.array([["m", "m"], ["f", "f"], ["m", "f"], ["m", "f"]], dtype=object)
    q_nation = np.array(["US"] * 4, dtype=object)
    c_nation = np.array([["US", "UK"]] * 4, dtype=object)
    metrics = strata_metrics("s", hits, labels, q_gender, c_gender, q_nation, c_nation,
                             np.array([1, 2, 3, 4]), BOOT)
    # tuple 0: negative m (same gender), nationality UK (diff); tuple 1: negative f (same),
    # nationality US (same); tuple 2: negative f (diff), UK (diff); tuple 3: negative m, US
    assert metrics["s.gender_same_nationality_diff.acc"] == 1.0
    assert metrics["s.gender_same_nationality_same.acc"] == 0.0
    assert metrics["s.gender_diff_nationality_diff.acc"] == 1.0
    assert metrics["s.gender_diff_nationality_same.acc"] == 1.0
    assert metrics["s.gender_same_nationality_same.acc.n_tuples"] == 1


def test_bootstrap_is_deterministic_and_contains_the_point() -> None:
    rng = np.random.default_rng(4)
    scores, labels = rng.normal(size=(300, 2)), rng.integers(0, 2, 300)
    clusters = rng.integers(0, 30, 300)
    first = matching_metrics("a", scores, labels, clusters, BOOT)[0]
    assert first == matching_metrics("a", scores, labels, clusters, BOOT)[0]
    other = matching_metrics("a", scores, labels, clusters, Bootstrap(200, seed=4))[0]
    assert other["a.ci_low"] != first["a.ci_low"] or other["a.ci_high"] != first["a.ci_high"]
    same = rng.random(300) < 0.5
    v1 = bootstrap_verification(scores[:, 0] + same, same, clusters, BOOT)
    v2 = bootstrap_verification(scores[:, 0] + same, same, clusters, BOOT)
    assert v1 == v2
    for est in v1.values():
        assert est.ci_low <= est.point <= est.ci_high


def test_identity_interval_is_wider_than_a_tuple_interval_on_correlated_tuples() -> None:
    rng = np.random.default_rng(5)
    skill = rng.random(30)  # per-identity accuracy: tuples of one identity are correlated
    clusters = np.repeat(np.arange(30), 40)
    hits = (rng.random(1200) < skill[clusters]).astype(float)
    scores = np.stack([hits, 1 - hits], axis=1)
    labels = np.zeros(1200, dtype=np.int64)
    by_identity = matching_metrics("a", scores, labels, clusters, BOOT)[0]
    by_tuple = matching_metrics("a", scores, labels, np.arange(1200), BOOT)[0]
    width = lambda m: m["a.ci_high"] - m["a.ci_low"]  # noqa: E731
    assert width(by_identity) > 2 * width(by_tuple)


def test_clean_and_tables() -> None:
    metrics = clean({"b": 0.1234567891, "a": 3, "c": math.nan, "d": np.float32(0.5)})
    assert list(metrics) == ["a", "b", "c", "d"]
    assert metrics == {"a": 3, "b": 0.123457, "c": None, "d": 0.5}
    keys = {}
    for split in ("test", "seen_heard"):
        for d in ("v2f", "f2v"):
            for rule in (None, "head", "cosine"):
                for parts in (("match", "k2", "U", "acc"), ("match", "k10", "U", "acc"),
                              ("verify", "U", "auc"), ("retrieval", "map")):
                    key = metric_key(split, d, rule, *parts)
                    keys.update({key: 0.931, f"{key}.ci_low": 0.91, f"{key}.ci_high": 0.95})
    assert format_estimate(keys, "test.v2f.match.k2.U.acc") == "93.1 [91.0, 95.0]"
    assert format_estimate(keys, "missing") == "-"
    table = headline_table(keys, ("test", "seen_heard"), "head")
    lines = table.splitlines()
    assert "Binary (ACC) V-F" in lines[0] and "Verification (AUC) F-V" in lines[0]
    assert len(lines) == 2 + 4  # header, rule, 2 splits x 2 rules
    assert lines[2].startswith("| test | head (model) | 93.1 [91.0, 95.0]")
    detail = detail_table(keys, ("test",), "cosine", [("mAP", ("retrieval", "map"))])
    assert "| test | v2f | cosine (model) | 93.1 [91.0, 95.0] |" in detail


# ---- real lists: the tuples stage's tables on the generated corpus ---------------------------------

def owners(data: Path) -> dict[str, dict[str, str]]:
    out = {}
    for m, name in (("voice", "utterances"), ("face", "faces")):
        table = pl.read_parquet(data / "manifest" / f"{name}.parquet", columns=["id", "identity"])
        out[m] = dict(table.iter_rows())
    return out


def test_constant_and_oracle_scorers_on_every_stored_list(tiny_data: Path) -> None:
    """Every matching, pairs and retrieval list the tuples stage wrote: a constant scorer gets
    exactly chance (1/k, AUC 0.5), a scorer that knows the identities gets 1.0."""
    owner = owners(tiny_data)
    checked = 0
    for split in SPLITS:
        matching = pl.read_parquet(tiny_data / "tuples" / split / "matching.parquet")
        for (d, _c, k), rows in matching.group_by(["direction", "constraint", "k"]):
            q_mod, c_mod = DIRECTIONS[d]
            labels = rows["label"].to_numpy().astype(np.int64)
            clusters = np.array([owner[q_mod][u] for u in rows["query_id"]])
            constant = matching_metrics("acc", np.zeros((rows.height, k)), labels, clusters, BOOT)
            assert constant[0]["acc"] == pytest.approx(1.0 / k, abs=1e-12)
            oracle = np.array([[owner[c_mod][x] == owner[q_mod][q] for x in cands]
                               for q, cands in zip(rows["query_id"], rows["candidate_ids"],
                                                   strict=True)], dtype=float)
            assert matching_metrics("acc", oracle, labels, clusters, BOOT)[0]["acc"] == 1.0
            checked += 1
        pairs = pl.read_parquet(tiny_data / "tuples" / split / "pairs.parquet")
        for (d, _c), rows in pairs.group_by(["direction", "constraint"]):
            q_mod, c_mod = DIRECTIONS[d]
            same = rows["same"].to_numpy()
            clusters = np.array([owner[q_mod][u] for u in rows["query_id"]])
            constant = verification_metrics("v", np.zeros(rows.height), same, clusters, BOOT)
            assert constant["v.auc"] == 0.5 and constant["v.eer"] == 0.5
            oracle = np.array([owner[q_mod][q] == owner[c_mod][x] for q, x in
                               zip(rows["query_id"], rows["candidate_id"], strict=True)], float)
            assert verification_metrics("v", oracle, same, clusters, BOOT)["v.auc"] == 1.0
            checked += 1
        for row in pl.read_parquet(tiny_data / "tuples" / split / "retrieval.parquet").iter_rows(
                named=True):
            if not row["query_ids"]:
                continue
            q_ident, g_ident = np.array(row["query_identities"]), np.array(row["gallery_identities"])
            groups = ({"query_group": np.array(row["query_videos"]),
                       "gallery_group": np.array(row["gallery_videos"])}
                      if row["exclude_same_video"] else {})
            oracle = (q_ident[:, None] == g_ident[None]).astype(float)
            found, lost = retrieval_metrics("r", oracle, q_ident, g_ident, boot=BOOT, **groups)
            assert lost == 0 and found["r.map"] == found["r.r1"] == 1.0
            constant, _ = retrieval_metrics("r", np.zeros_like(oracle), q_ident, g_ident,
                                            boot=BOOT, **groups)
            assert constant["r.map"] < 1.0 and constant["r.r1"] < 1.0
            checked += 1
    assert checked >= 6
