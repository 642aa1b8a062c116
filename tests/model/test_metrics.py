"""Metrics against hand-worked cases and scikit-learn; chance and oracle scorers; the bootstrap."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve, top_k_accuracy_score

from model import metrics as M

# ---- matching --------------------------------------------------------------------------------

def test_match_hits_by_hand() -> None:
    scores = np.array([[0.9, 0.1, 0.0], [0.2, 0.8, 0.3], [0.5, 0.5, 0.1], [0.4, 0.4, 0.4],
                       [0.1, 0.6, 0.6]])
    labels = np.array([0, 0, 1, 2, 0])
    # hit; miss; tie of 2 with the positive; tie of 3; positive below a tie
    np.testing.assert_allclose(M.match_hits(scores, labels), [1.0, 0.0, 0.5, 1 / 3, 0.0])
    assert M.match_accuracy(scores, labels) == pytest.approx((1 + 0.5 + 1 / 3) / 5)


@pytest.mark.parametrize("k", [2, 10])
def test_constant_scorer_gets_exactly_chance_on_every_list(k: int) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, k, 500)
    for value in (0.0, 0.37, -5.0):
        hits = M.match_hits(np.full((500, k), value), labels)
        assert np.all(hits == 1.0 / k)  # every row, any positive position
    # the evaluation layout: positive always first
    assert M.match_accuracy(np.ones((50, k)), np.zeros(50, np.int64)) == 1.0 / k


def test_oracle_scorer_gets_one() -> None:
    rng = np.random.default_rng(1)
    labels = rng.integers(0, 10, 300)
    scores = (np.arange(10)[None, :] == labels[:, None]).astype(float)  # knows the identity
    assert M.match_accuracy(scores, labels) == 1.0


def test_accuracy_agrees_with_sklearn_top1_without_ties() -> None:
    rng = np.random.default_rng(2)
    scores = rng.normal(size=(400, 4))
    labels = rng.integers(0, 4, 400)
    scores[np.arange(400), labels] += 0.8  # better than chance
    expected = top_k_accuracy_score(labels, scores, k=1, labels=range(4))
    assert M.match_accuracy(scores, labels) == pytest.approx(expected, abs=1e-12)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        M.match_hits(np.array([[np.nan, 1.0]]), np.array([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        M.match_hits(np.zeros((1, 2)), np.array([2]))
    with pytest.raises(ValueError, match="integer"):
        M.match_hits(np.zeros((1, 2)), np.array([0.0]))


def test_auc_and_eer_by_hand() -> None:
    # positives 0.9 0.8 0.4, negatives 0.7 0.3 0.2: 8 of 9 (pos, neg) pairs ordered -> AUC 8/9;
    # at threshold 0.7: FNR = 1/3 (0.4 rejected), FPR = 1/3 (0.7 accepted) -> EER 1/3 exactly.
    scores = np.array([0.9, 0.8, 0.4, 0.7, 0.3, 0.2])
    same = np.array([1, 1, 1, 0, 0, 0], bool)
    assert M.roc_auc(scores, same) == pytest.approx(8 / 9)
    assert M.equal_error_rate(scores, same) == pytest.approx((1 / 3, 0.7))


def test_eer_interpolates_between_roc_points() -> None:
    # positives 0.9 0.8 0.5, negatives 0.6 0.3. ROC points (FPR, FNR): t=0.8 -> (0, 1/3),
    # t=0.6 -> (1/2, 1/3). FNR - FPR goes 1/3 -> -1/6, crossing at 2/3 of the way:
    # EER = 2/3 * 1/2 = 1/3, threshold = 0.8 + 2/3 * (0.6 - 0.8).
    scores = np.array([0.9, 0.8, 0.5, 0.6, 0.3])
    same = np.array([1, 1, 1, 0, 0], bool)
    eer, threshold = M.equal_error_rate(scores, same)
    assert eer == pytest.approx(1 / 3)
    assert threshold == pytest.approx(0.8 - 2 / 15)


def test_verification_agrees_with_sklearn_and_a_threshold_sweep() -> None:
    rng = np.random.default_rng(3)
    same = rng.random(2000) < 0.5
    scores = rng.normal(size=2000) + 1.2 * same
    out = M.verification(scores, same)
    assert out["auc"] == pytest.approx(roc_auc_score(same, scores))
    fpr, tpr, _ = roc_curve(same, scores)
    # EER lies between the FPR and FNR of the ROC point closest to FPR = FNR
    i = int(np.argmin(np.abs(1 - tpr - fpr)))
    assert min(fpr[i], 1 - tpr[i]) - 1e-3 <= out["eer"] <= max(fpr[i], 1 - tpr[i]) + 1e-3
    frr = (scores[same] < out["threshold"]).mean()
    far = (scores[~same] >= out["threshold"]).mean()
    assert frr == pytest.approx(out["eer"], abs=0.01) and far == pytest.approx(out["eer"], abs=0.01)


def test_constant_and_oracle_verification() -> None:
    same = np.arange(100) % 2 == 0
    constant = M.verification(np.zeros(100), same)
    assert constant["auc"] == 0.5 and constant["eer"] == pytest.approx(0.5)
    oracle = M.verification(same.astype(float), same)
    assert oracle["auc"] == 1.0 and oracle["eer"] == 0.0
    with pytest.raises(ValueError, match="both same and different"):
        M.roc_auc(np.zeros(3), np.ones(3, bool))


# ---- retrieval -------------------------------------------------------------------------------

def test_retrieval_by_hand() -> None:
    # gallery identities a b a c b; query 0 is a, query 1 is b.
    gallery = np.array(["a", "b", "a", "c", "b"])
    scores = np.array([[0.1, 0.9, 0.8, 0.3, 0.2],   # a: ranks b a* c b a*  -> hits at ranks 2, 5
                       [0.5, 0.4, 0.3, 0.2, 0.1]])  # b: ranks a b* a c b*  -> hits at ranks 2, 5
    result = M.retrieval(scores, np.array(["a", "b"]), gallery, ks=(1, 2, 5))
    ap = (1 / 2 + 2 / 5) / 2  # precision at each relevant rank, averaged over the 2 relevant
    np.testing.assert_allclose(result.per_query["ap"], [ap, ap])
    np.testing.assert_allclose(result.per_query["r1"], [0, 0])
    np.testing.assert_allclose(result.per_query["r2"], [1, 1])
    assert result.means() == pytest.approx({"r1": 0.0, "r2": 1.0, "r5": 1.0, "map": ap})


def test_average_precision_matches_sklearn_with_ties() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        scores = np.round(rng.normal(size=30), 1)  # many ties
        relevant = rng.random(30) < 0.3
        relevant[0] = True
        assert M.average_precision(scores, relevant) == pytest.approx(
            average_precision_score(relevant, scores), abs=1e-12)


def test_recall_at_k_is_the_expectation_over_random_tie_breaks() -> None:
    scores = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0.1])
    relevant = np.array([False, False, True, False, True, False])
    result = M.retrieval(scores[None, :], np.array([1]), np.where(relevant, 1, 0), ks=(1, 2, 3, 4))
    for k in (1, 2, 3, 4):
        hits = []
        for perm in itertools.permutations(range(6)):  # every tie-break order, equally likely
            order = sorted(range(6), key=lambda j, p=perm: (-scores[j], p[j]))
            hits.append(relevant[order[:k]].any())
        assert result.per_query[f"r{k}"][0] == pytest.approx(np.mean(hits)), k


def test_retrieval_exclusion_mask_and_groups_agree() -> None:
    rng = np.random.default_rng(5)
    q_id, g_id = rng.integers(0, 4, 12), rng.integers(0, 4, 40)
    q_vid, g_vid = q_id * 10 + rng.integers(0, 2, 12), g_id * 10 + rng.integers(0, 2, 40)
    scores = rng.normal(size=(12, 40)) + 2.0 * (q_id[:, None] == g_id[None, :])
    mask = q_vid[:, None] == g_vid[None, :]
    by_mask = M.retrieval(scores, q_id, g_id, exclude=mask)
    by_group = M.retrieval(scores, q_id, g_id, query_group=q_vid, gallery_group=g_vid)
    for key in by_mask.per_query:
        np.testing.assert_array_equal(by_mask.per_query[key], by_group.per_query[key])
    np.testing.assert_array_equal(by_mask.gallery_sizes, 40 - mask.sum(axis=1))
    # excluded items are gone: AP equals sklearn's on the kept items only
    i = 0
    keep = ~mask[i]
    assert by_mask.per_query["ap"][i] == pytest.approx(
        average_precision_score(g_id[keep] == q_id[i], scores[i, keep]))


def test_query_without_relevant_items_is_invalid() -> None:
    result = M.retrieval(np.array([[0.3, 0.2], [0.1, 0.9]]), np.array([0, 1]), np.array([0, 1]),
                         exclude=np.array([[True, False], [False, False]]))
    assert result.valid.tolist() == [False, True]
    assert np.isnan(result.per_query["ap"][0]) and result.means()["map"] == 1.0


def test_constant_and_oracle_retrieval() -> None:
    q_id = np.repeat(np.arange(10), 2)
    g_id = np.repeat(np.arange(10), 5)  # 50 gallery items, 5 relevant per query
    constant = M.retrieval(np.zeros((20, 50)), q_id, g_id).means()
    chance = {k: 1 - np.prod([(45 - j) / (50 - j) for j in range(k)]) for k in (1, 5, 10)}
    assert constant["r1"] == pytest.approx(chance[1]) == pytest.approx(0.1)
    assert constant["r5"] == pytest.approx(chance[5]) and constant["r10"] == pytest.approx(chance[10])
    assert constant["map"] == pytest.approx(0.1)  # one threshold: precision = prevalence
    oracle = M.retrieval((q_id[:, None] == g_id[None, :]).astype(float), q_id, g_id).means()
    assert oracle == {"r1": 1.0, "r5": 1.0, "r10": 1.0, "map": 1.0}


# ---- bootstrap -------------------------------------------------------------------------------

def correlated_hits(n_ids: int = 40, per_id: int = 25, seed: int = 6) -> tuple[np.ndarray, np.ndarray]:
    """Tuples whose hits depend strongly on the query identity (easy or hard identities)."""
    rng = np.random.default_rng(seed)
    p = np.where(rng.random(n_ids) < 0.5, 0.15, 0.85)
    ids = np.repeat(np.arange(n_ids), per_id)
    return (rng.random(ids.size) < p[ids]).astype(float), ids


def test_bootstrap_is_deterministic_and_contains_the_point() -> None:
    hits, ids = correlated_hits()
    names = np.array([f"id{i:05d}" for i in ids])
    a = M.bootstrap_mean(hits, names, seed=3)
    b = M.bootstrap_mean(hits, names, seed=3)
    c = M.bootstrap_mean(hits, names, seed=4)
    assert a == b and a != c
    assert a.ci_low <= a.point <= a.ci_high
    assert (a.n_identities, a.n_items, a.n_resamples, a.level) == (40, 1000, 1000, 0.95)
    assert a.point == pytest.approx(hits.mean())
    # the item order does not matter, only which items belong to which identity
    perm = np.random.default_rng(0).permutation(hits.size)
    assert M.bootstrap_mean(hits[perm], names[perm], seed=3) == a


def test_generic_and_vectorized_bootstraps_agree() -> None:
    hits, ids = correlated_hits(n_ids=15, per_id=7)
    generic = M.cluster_bootstrap(np.mean, [hits], ids, n_resamples=300, seed=9)
    fast = M.bootstrap_mean(hits, ids, n_resamples=300, seed=9)
    assert generic.point == fast.point
    assert generic.ci_low == pytest.approx(fast.ci_low) and generic.ci_high == pytest.approx(fast.ci_high)


def test_identity_bootstrap_is_wider_than_a_tuple_bootstrap_on_correlated_data() -> None:
    hits, ids = correlated_hits()
    by_identity = M.bootstrap_mean(hits, ids, seed=0)
    by_tuple = M.bootstrap_mean(hits, np.arange(hits.size), seed=0)
    width_id = by_identity.ci_high - by_identity.ci_low
    width_tuple = by_tuple.ci_high - by_tuple.ci_low
    assert width_id > 2 * width_tuple, (width_id, width_tuple)
    # without within-identity correlation the two agree roughly
    rng = np.random.default_rng(1)
    iid = (rng.random(hits.size) < 0.5).astype(float)
    a, b = M.bootstrap_mean(iid, ids, seed=0), M.bootstrap_mean(iid, np.arange(iid.size), seed=0)
    assert 0.6 < (a.ci_high - a.ci_low) / (b.ci_high - b.ci_low) < 1.6


def test_bootstrap_of_auc_eer_and_map() -> None:
    rng = np.random.default_rng(7)
    ids = np.repeat(np.arange(20), 30)
    same = rng.random(ids.size) < 0.5
    scores = rng.normal(size=ids.size) + same * (0.5 + rng.random(20)[ids])
    auc = M.cluster_bootstrap(M.auc_statistic, [scores, same], ids, n_resamples=200, seed=0)
    assert auc.point == pytest.approx(roc_auc_score(same, scores))
    assert auc.ci_low <= auc.point <= auc.ci_high and auc.n_invalid == 0
    eer = M.cluster_bootstrap(M.eer_statistic, [scores, same], ids, n_resamples=200, seed=0)
    assert eer.ci_low <= eer.point <= eer.ci_high
    assert eer.point == pytest.approx(M.equal_error_rate(scores, same)[0])
    # per-query AP from retrieval -> mAP with a CI, clusters = query identity
    q_id = np.repeat(np.arange(8), 3)
    g_id = np.repeat(np.arange(8), 4)
    res = M.retrieval(rng.normal(size=(24, 32)) + (q_id[:, None] == g_id[None, :]), q_id, g_id)
    est = M.bootstrap_mean(res.per_query["ap"][res.valid], q_id[res.valid], seed=0)
    assert est.point == pytest.approx(res.means()["map"]) and est.n_identities == 8
    flat = est.flat("test.v2f.retrieval.map")
    assert set(flat) == {"test.v2f.retrieval.map", "test.v2f.retrieval.map.ci_low",
                         "test.v2f.retrieval.map.ci_high", "test.v2f.retrieval.map.n_identities",
                         "test.v2f.retrieval.map.n_items"}


def test_undefined_resamples_are_counted_not_hidden() -> None:
    # two identities, each with only one class: resamples drawing one identity twice have no AUC
    scores = np.array([0.9, 0.8, 0.2, 0.1])
    same = np.array([True, True, False, False])
    est = M.cluster_bootstrap(M.auc_statistic, [scores, same], np.array([0, 0, 1, 1]),
                              n_resamples=100, seed=0)
    assert est.point == 1.0 and 0 < est.n_invalid < 100
    assert est.ci_low == est.ci_high == 1.0


# ---- stratified ------------------------------------------------------------------------------

def test_relation_of_negatives_to_the_query() -> None:
    query = np.array(["m", "m", "f", "f", None])
    candidates = np.array([["m", "m", "m"], ["m", "f", "f"], ["f", "m", "f"], ["f", None, "f"],
                           ["m", "m", "f"]], dtype=object)
    labels = np.array([0, 0, 2, 1, 0])
    # row 1: negatives f, f -> diff; row 2: negatives f, m -> mixed
    assert M.relation(query, candidates, labels).tolist() == ["same", "diff", "mixed", "same", "unknown"]


def test_stratified_accuracy_by_hand() -> None:
    gender = np.array(["same", "same", "diff", "diff", "same"])
    nation = np.array(["same", "diff", "diff", "diff", "same"])
    hits = np.array([1.0, 0.0, 1.0, 0.5, 0.0])
    ids = np.array([1, 1, 2, 3, 3])
    out = M.stratified_accuracy(hits, M.strata(gender, nation), ids, n_resamples=50)
    assert sorted(out) == ["gender_diff_nationality_diff", "gender_same_nationality_diff",
                           "gender_same_nationality_same"]
    assert out["gender_same_nationality_same"].point == 0.5
    assert out["gender_same_nationality_same"].n_identities == 2
    assert out["gender_diff_nationality_diff"].point == 0.75
    assert out["gender_same_nationality_diff"].n_items == 1
