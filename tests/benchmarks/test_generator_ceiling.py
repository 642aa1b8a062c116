"""The generator-truth ceiling on drawn parameters (nothing rendered): it moves with difficulty
as the corpus promises, and difficulty 1.0 leaves gender only."""

import numpy as np
import pytest

from benchmarks.generator_ceiling import (
    bayes_score,
    ceiling,
    features,
    fit_posterior,
    population,
    targets,
)


@pytest.fixture(scope="module")
def by_difficulty():
    return {d: ceiling(d, identities=1600, n_trials=6000, seed=1) for d in (0.0, 0.5, 1.0)}


def test_difficulty_one_leaves_gender_only(by_difficulty):
    top = by_difficulty[1.0]
    for direction in ("v2f", "f2v"):
        assert abs(top[f"{direction}_G"] - 0.5) < 0.04  # same-gender negatives: nothing left
        assert abs(top[f"{direction}_U"] - top["gender_oracle_U"]) < 0.04
    assert top["gender_oracle_G"] == 0.5


def test_signal_falls_with_difficulty(by_difficulty):
    for key in ("v2f_U", "f2v_U", "v2f_G", "f2v_G"):
        assert by_difficulty[0.0][key] > by_difficulty[0.5][key] > by_difficulty[1.0][key]
    # the default keeps a within-gender signal well above chance
    assert by_difficulty[0.5]["v2f_G"] > 0.7


def test_bayes_score_prefers_the_true_identity_on_average():
    people = population(600, seed=3)
    xv, xf = features(people, 0.0, seed=3)
    y = targets(people)
    fit, test = np.arange(400), np.arange(400, 600)
    sub = {k: v[fit] for k, v in y.items()}
    pv = fit_posterior(xv[fit], sub, xv[fit], sub, 0)(xv[test])
    pf = fit_posterior(xf[fit], sub, xf[fit], sub, 0)(xf[test])
    prior_g, prior_c = np.array([0.45, 0.55]), np.bincount(y["group"], minlength=pv.group.shape[1]) / 600
    idx = np.arange(len(test))
    same = bayes_score(pv, pf, idx, idx, prior_g, prior_c)
    other = bayes_score(pv, pf, idx, np.roll(idx, 1), prior_g, prior_c)
    assert same.mean() > other.mean() + 1.0
