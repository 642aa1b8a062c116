"""The generator-truth ceiling: how well 1:2 matching can go when the true parameters are known.

A scorer sees each identity's true generator parameters, the voice's (:class:`Voice`) and the
face's (:class:`Look`), with no rendering, channel, pose or per-clip noise. From each side it
estimates the shared traits (gender, nationality group, age, body size) with models fitted on a
large independent population, and scores a voice-face pair with the Bayes factor of "same
identity" under those estimates, treating the traits as independent:

    log sum_g p_v(g) p_f(g) / pi(g)  +  log sum_c p_v(c) p_f(c) / pi(c)
    + sum_{t in age, body} log integral N(t; mu_v, s_v) N(t; mu_f, s_f) / N(t; 0, 1) dt

(posterior means from the regressions, posterior variances their held-out residual variances).
The nearer a modality's parameters determine the shared traits, the nearer this is to the Bayes
rate; it is an estimate of what a perfect feature extractor could reach, not a learned result.
Trials follow the tuples stage: U draws the negative from all other identities, G from those
of the query's gender; V->F asks which of two faces is the voice's, F->V which of two voices.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from pipeline.synth import face as F
from pipeline.synth import voice as V
from pipeline.synth.names import GROUPS, Person, draw_age, nationality_list

TRAITS = ("age", "body")


def population(n: int, seed: int) -> list[Person]:
    """``n`` people with VoxCeleb1's gender share (55% men) and nationality mix; names unused."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(99,)))
    nations = nationality_list(n)
    order = rng.permutation(n)
    return [Person(name=f"P{k}", gender="m" if rng.random() < 0.55 else "f",
                   nationality=nations[order[k]], age=round(draw_age(rng), 1),
                   body=round(float(rng.normal()), 3)) for k in range(n)]


def _numeric(obj: object) -> list[float]:
    """The dataclass's fields as numbers (tuples flattened; strings skipped)."""
    out: list[float] = []
    for value in dataclasses.asdict(obj).values():
        if isinstance(value, (tuple, list)):
            out.extend(float(v) for v in value)
        elif not isinstance(value, str):
            out.append(float(value))
    return out


def features(people: list[Person], difficulty: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-identity voice and face parameter vectors, drawn as the corpus draws them."""
    hair, beards = list(F.HAIR_COLOURS), list(F.BEARDS)
    voice_rows, face_rows = [], []
    for k, person in enumerate(people):
        rng = np.random.default_rng(np.random.SeedSequence(entropy=seed, spawn_key=(98, k)))
        voice = V.draw_voice(person, difficulty, rng)
        look = F.draw_look(person, rng)
        accent = [float(voice.accent == g) for g in GROUPS]
        voice_rows.append(_numeric(voice) + [np.log(voice.f0_hz)] + accent)
        face_rows.append(_numeric(look) + [float(look.hair_name == h) for h in hair]
                         + [float(look.beard == b) for b in beards])
    return np.asarray(voice_rows), np.asarray(face_rows)


def targets(people: list[Person]) -> dict[str, np.ndarray]:
    ages = np.array([p.age for p in people])
    return {"gender": np.array([p.gender == "m" for p in people], dtype=int),
            "group": np.array([GROUPS.index(p.group) for p in people]),
            "age": (ages - 42.0) / 13.0, "body": np.array([p.body for p in people])}


@dataclasses.dataclass(frozen=True)
class Posterior:
    gender: np.ndarray  # (n, 2)
    group: np.ndarray  # (n, groups)
    mean: dict[str, np.ndarray]
    var: dict[str, float]


def fit_posterior(x_fit: np.ndarray, y_fit: dict, x_cal: np.ndarray, y_cal: dict, seed: int):
    """Trait estimators from one modality's parameters; returns ``x -> Posterior``."""
    from sklearn.ensemble import HistGradientBoostingClassifier, HistGradientBoostingRegressor

    kw = {"max_iter": 200, "learning_rate": 0.08, "random_state": seed}
    cls = {t: HistGradientBoostingClassifier(**kw).fit(x_fit, y_fit[t]) for t in ("gender", "group")}
    reg = {t: HistGradientBoostingRegressor(**kw).fit(x_fit, y_fit[t]) for t in TRAITS}
    var = {t: float(np.mean((reg[t].predict(x_cal) - y_cal[t]) ** 2)) for t in TRAITS}

    def posterior(x: np.ndarray) -> Posterior:
        group = np.zeros((len(x), len(GROUPS)))
        group[:, cls["group"].classes_] = cls["group"].predict_proba(x)
        return Posterior(cls["gender"].predict_proba(x), group,
                         {t: reg[t].predict(x) for t in TRAITS}, var)

    return posterior


def bayes_score(v: Posterior, f: Posterior, vi: np.ndarray, fi: np.ndarray,
                prior_gender: np.ndarray, prior_group: np.ndarray) -> np.ndarray:
    """log Bayes factor of 'same identity' for voice rows ``vi`` against face rows ``fi``."""
    eps = 1e-6
    score = np.log((v.gender[vi] * f.gender[fi] / prior_gender).sum(axis=1) + eps)
    score += np.log((v.group[vi] * f.group[fi] / np.maximum(prior_group, eps)).sum(axis=1) + eps)
    for t in TRAITS:
        a, b = min(v.var[t], 0.999), min(f.var[t], 0.999)
        prec = 1.0 / a + 1.0 / b - 1.0
        mv, mf = v.mean[t][vi], f.mean[t][fi]
        m = (mv / a + mf / b) / prec
        score += -0.5 * (mv ** 2 / a + mf ** 2 / b - prec * m ** 2) - 0.5 * np.log(a * b * prec)
    return score


def trials(genders: np.ndarray, n: int, constraint: str, rng: np.random.Generator):
    """(query, positive=query, negative) identity indices; G keeps the query's gender."""
    q = rng.integers(len(genders), size=n)
    neg = np.empty(n, dtype=int)
    for k, i in enumerate(q):
        pool = np.flatnonzero((genders == genders[i]) if constraint == "G" else np.ones(len(genders), bool))
        pool = pool[pool != i]
        neg[k] = pool[rng.integers(len(pool))]
    return q, neg


def ceiling(difficulty: float, identities: int = 3000, n_trials: int = 10000, seed: int = 0) -> dict:
    """1:2 U and G accuracy of the Bayes scorer on held-out identities (a quarter of
    ``identities``), both directions, and of the gender-only oracle on the same trials."""
    people = population(identities, seed)
    xv, xf = features(people, difficulty, seed)
    y = targets(people)
    n = len(people)
    fit, cal, test = np.arange(0, n // 2), np.arange(n // 2, 3 * n // 4), np.arange(3 * n // 4, n)
    sub = lambda idx: {k: v[idx] for k, v in y.items()}  # noqa: E731
    pv = fit_posterior(xv[fit], sub(fit), xv[cal], sub(cal), seed)(xv[test])
    pf = fit_posterior(xf[fit], sub(fit), xf[cal], sub(cal), seed)(xf[test])
    prior_g = np.bincount(y["gender"][fit], minlength=2) / len(fit)
    prior_c = np.bincount(y["group"][fit], minlength=len(GROUPS)) / len(fit)
    rng = np.random.default_rng(seed)
    out: dict[str, float] = {}
    genders = y["gender"][test]
    for constraint in ("U", "G"):
        q, neg = trials(genders, n_trials, constraint, rng)
        s = lambda vi, fi: bayes_score(pv, pf, vi, fi, prior_g, prior_c)  # noqa: E731
        v2f = s(q, q) - s(q, neg)  # the voice q against faces q and neg
        f2v = s(q, q) - s(neg, q)  # the face q against voices q and neg
        for name, margin in (("v2f", v2f), ("f2v", f2v)):
            out[f"{name}_{constraint}"] = round(float(np.mean(margin > 0) + 0.5 * np.mean(margin == 0)), 4)
        # The gender-only oracle: the candidate of the query's gender wins, ties are coin flips
        # (the same in both directions: it sees metadata, not signals).
        differ = genders[q] != genders[neg]
        out[f"gender_oracle_{constraint}"] = round(float(np.mean(differ) + 0.5 * np.mean(~differ)), 4)
    out["r2_voice"] = {t: round(1 - pv.var[t], 3) for t in TRAITS}
    out["r2_face"] = {t: round(1 - pf.var[t], 3) for t in TRAITS}
    return out
