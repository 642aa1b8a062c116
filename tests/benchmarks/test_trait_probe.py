"""benchmarks.trait_probe: the read-outs on planted traits, and a probe of a checkpoint trained
on the tiny generated corpus against its generator's identities.csv."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks import trait_probe as P
from model import trainer as T
from model.data import DataPaths
from tests.model.test_avnet import DIMS, tiny_model
from tests.model.test_trainer import params


def _planted(n_ids: int = 60, per_id: int = 4, seed: int = 0) -> tuple[dict, dict]:
    """Identities with random traits, and items whose rows hold ``age`` plus noise (column 0)
    and ``group`` (column 1) among noise columns: train and val are disjoint identities."""
    rng = np.random.default_rng(seed)
    truth = {f"id{i}": {"gender": "mf"[i % 2], "group": "ab"[i // 2 % 2],  # balanced
                        **{t: float(rng.normal()) for t in P.TRAITS}} for i in range(n_ids)}
    reps = {}
    for name, signal in (("signal", 1.0), ("noise", 0.0)):
        x, identity = {}, {}
        for s, ids in (("train", list(truth)[: n_ids * 2 // 3]), ("val", list(truth)[n_ids * 2 // 3:])):
            identity[s] = [i for i in ids for _ in range(per_id)]
            rows = rng.normal(size=(len(identity[s]), 8))
            rows[:, 0] += signal * 3 * np.array([truth[i]["age"] for i in identity[s]])
            rows[:, 1] += signal * 3 * np.array([truth[i]["group"] == "a" for i in identity[s]])
            x[s] = rows
        reps[name] = P.Rep(x, identity)
    return reps, truth


def test_the_read_outs_find_a_planted_trait_and_not_noise() -> None:
    reps, truth = _planted()
    signal, noise = P.probe(reps["signal"], truth), P.probe(reps["noise"], truth)
    assert signal["age"] > 0.8 and abs(noise["age"]) < 0.4
    assert abs(signal["body"]) < 0.4  # a trait the rows do not hold
    assert signal["group_acc"] > 0.85 > signal["group_majority"]
    assert noise["group_acc"] < signal["group_acc"]


def test_traits_are_centred_per_gender_so_gender_alone_reads_nothing() -> None:
    reps, truth = _planted()
    for row in truth.values():  # age is now gender plus a little noise
        row["age"] = (40.0 if row["gender"] == "m" else 30.0) + 0.01 * row["body"]
    gender_only = P.Rep({s: np.array([[truth[i]["gender"] == "m"] for i in ids], float)
                         for s, ids in reps["noise"].identity.items()}, reps["noise"].identity)
    assert abs(P.within_gender_r(gender_only, truth, "age")) < 0.3


@pytest.mark.parametrize("vae", ["both", "none"])
def test_stage_views_follow_the_network_path_and_end_at_embed_views(vae: str) -> None:
    """Each stage is the view mean of what the module before it gives, ``h`` is exactly
    ``embed_views``'s, and a network without a VAE has no ``z``."""
    import torch

    model = tiny_model(vae=vae).eval()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 4, 3, DIMS.face_size, DIMS.face_size, generator=g)  # (V, N, 3, S, S)
    attr = torch.rand(4, DIMS.n_face_attr, generator=g)
    with torch.no_grad():
        stages = P.stage_views(model, "face", x, attr)
        assert list(stages) == [s for s in P.STAGES if vae != "none" or s != "z"]
        assert torch.equal(stages["h"], model.embed_views("face", x, attr))
        branch = torch.stack([model.branches["face"](x[v]) for v in range(2)])  # (V, N, 3200-like)
        torch.testing.assert_close(stages["branch"], branch.mean(0))
        feature = torch.stack([model.generator("face")(b) for b in branch]).mean(0)
        torch.testing.assert_close(stages["feature"], feature)
        if vae != "none":
            mu = torch.stack([model.embed("face", x[v], attr).z for v in range(2)]).mean(0)
            torch.testing.assert_close(stages["z"], mu)
    assert stages["branch"].shape == (4, model.branches["face"].num_features)


@pytest.fixture(scope="module")
def checkpoint(tiny_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe_model")
    T.run(tiny_data, out / "models", out / "live", params(train={"epochs": 1}, lambda1=1.5))
    return out / "models" / "best"


def test_a_probe_of_a_trained_checkpoint_on_the_tiny_corpus(tiny_data: Path, tiny_corpus: Path,
                                                            checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.json"
    report = P.main(["--data", str(tiny_data), "--checkpoint", str(checkpoint),
                     "--truth", str(tiny_corpus / "synthetic" / "identities.csv"),
                     "--out", str(out)])
    written = json.loads(out.read_text())[P.SECTION]
    assert {k: v for k, v in written.items() if k != "measured_at"} == json.loads(json.dumps(report))
    paths = DataPaths.under(tiny_data)
    owners = {m: P.item_owners(paths, m) for m in ("voice", "face")}
    for s in P.SPLITS:
        items = P.tuple_items(paths, s, owners)
        for m in ("voice", "face"):
            assert report["items"][f"{s}.{m}"] == len(items[m]) > 0
    for m in ("voice", "face"):
        # every stage of the tiny model's path (it has both VAEs and the CCA back-end)
        assert set(report[m]) == {*P.STAGES, "cca", "raw"}
        for row in report[m].values():
            assert set(row) == {*P.TRAITS, "group_acc", "group_majority"}
            assert all(v is None or -1.0 <= v <= 1.0 for v in row.values())
    assert report["identities"]["val"] >= 2
