"""The ``tuples`` stage: invariants of the drawn tables, seeds, truncation, shortfall, rejects.

Most tests run on manifest tables written here with polars (real Parquet files, edge cases
under our control); one smoke test runs the CLI on the ``tiny_manifest`` fixture built by the
real manifest stage from a generated corpus.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from typer.testing import CliRunner

from pipeline.common.config import ConfigError, build
from pipeline.common.rejects import TooManyRejects
from pipeline.tuples import TuplesConfig, load, run, truncate
from pipeline.tupling import check as tuples_check
from pipeline.tupling.sample import sample_distinct

NATIONALITIES = ("USA", "USA", "UK", "India")
SMALL = dict(train_binary=60, train_multiway=23, val_binary=20, val_multiway=10, test_binary=40,
             test_multiway=30, seen_heard_binary=20, seen_heard_multiway=10, train_pairs=30,
             val_pairs=10, test_pairs=40, seen_heard_pairs=20)


def identity_rows(split: str, n: int, start: int, genders: str = "mf") -> list[dict]:
    return [{"id": f"id{start + i:05d}", "name": f"{split}{i}", "gender": genders[i % len(genders)],
             "nationality": NATIONALITIES[i % len(NATIONALITIES)], "set": "dev", "split": split,
             "n_utterances": 0, "n_faces": 0} for i in range(n)]


def item_rows(identities: list[dict], videos: int, per_video: int, held_out: int, face: bool) -> list[dict]:
    rows = []
    for ident in identities:
        for v in range(videos):
            split = "seen_heard" if ident["split"] == "train" and v >= videos - held_out else ident["split"]
            for j in range(per_video):
                suffix = f"{j * 25:07d}" if face else f"{j + 1:05d}"
                rows.append({"id": f"{ident['id']}/vid{v:02d}/{suffix}", "identity": ident["id"],
                             "video": f"vid{v:02d}", "split": split, "path": "x"})
    return rows


def write_manifest(path: Path, *, n_train: int = 24, n_val: int = 12, n_test: int = 24,
                   videos: int = 3, held_out: int = 1, test_genders: str = "mf",
                   extra_faces: list[dict] | None = None, extra_utterances: list[dict] | None = None) -> Path:
    """Write identities/utterances/faces Parquet tables shaped like the manifest stage's."""
    idents = (identity_rows("train", n_train, 10000) + identity_rows("val", n_val, 20000)
              + identity_rows("test", n_test, 30000, test_genders))
    path.mkdir(parents=True, exist_ok=True)
    utts = item_rows(idents, videos, 2, held_out, face=False) + (extra_utterances or [])
    faces = item_rows(idents, videos, 3, held_out, face=True) + (extra_faces or [])
    pl.DataFrame(idents).write_parquet(path / "identities.parquet")
    pl.DataFrame(utts).write_parquet(path / "utterances.parquet")
    pl.DataFrame(faces).write_parquet(path / "faces.parquet")
    return path


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("tuples") / "manifest")


@pytest.fixture(scope="module")
def drawn(manifest_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuples_out") / "tuples"
    run(manifest_dir, out, TuplesConfig(**SMALL))
    return out


def read(out: Path, name: str) -> pl.DataFrame:
    return pl.read_parquet(out / f"{name}.parquet")


def item_index(manifest_dir: Path) -> dict[str, dict]:
    """id -> {modality, identity, video, split, gender, nationality, home} from the raw tables."""
    idents = {r["id"]: r for r in pl.read_parquet(manifest_dir / "identities.parquet").iter_rows(named=True)}
    index = {}
    for modality, table in (("voice", "utterances"), ("face", "faces")):
        for r in pl.read_parquet(manifest_dir / f"{table}.parquet").iter_rows(named=True):
            ident = idents[r["identity"]]
            index[r["id"]] = {"modality": modality, "identity": r["identity"], "video": r["video"],
                              "split": r["split"], "gender": ident["gender"],
                              "nationality": ident["nationality"], "home": ident["split"]}
    return index


def test_matching_tuples_hold_every_invariant(manifest_dir: Path, drawn: Path) -> None:
    index, matching = item_index(manifest_dir), read(drawn, "matching")
    assert set(matching["split"]) == {"train", "val", "test", "seen_heard"}
    assert set(matching["direction"]) == {"v2f", "f2v"}
    assert set(matching.filter(pl.col("split") == "test")["constraint"]) == {"U", "G", "N", "GN"}
    assert set(matching["k"]) == {2, 10}
    for row in matching.iter_rows(named=True):
        q_mod, c_mod = ("voice", "face") if row["direction"] == "v2f" else ("face", "voice")
        query, cands = index[row["query_id"]], [index[c] for c in row["candidate_ids"]]
        assert len(cands) == row["k"] and query["modality"] == q_mod
        assert all(c["modality"] == c_mod and c["split"] == row["split"] for c in cands)
        assert query["split"] == row["split"]
        pos = cands[row["label"]]
        negs = [c for i, c in enumerate(cands) if i != row["label"]]
        assert pos["identity"] == query["identity"]
        if row["split"] != "seen_heard":
            assert pos["video"] != query["video"], "positive must come from another video"
        assert len({c["identity"] for c in negs} | {query["identity"]}) == row["k"]
        if "G" in row["constraint"]:
            assert all(c["gender"] == query["gender"] for c in negs)
        if "N" in row["constraint"]:
            assert all(c["nationality"] == query["nationality"] for c in negs)


def test_unconstrained_negatives_are_not_secretly_constrained(drawn: Path, manifest_dir: Path) -> None:
    index = item_index(manifest_dir)
    rows = read(drawn, "matching").filter((pl.col("constraint") == "U") & (pl.col("k") == 10))
    mixed = sum(len({index[c]["gender"] for c in r["candidate_ids"]}) > 1 for r in rows.iter_rows(named=True))
    assert mixed > rows.height // 2


def test_pairs_are_balanced_and_correct(manifest_dir: Path, drawn: Path) -> None:
    index, pairs = item_index(manifest_dir), read(drawn, "pairs")
    assert set(pairs["split"]) == {"train", "val", "test", "seen_heard"}
    for (split, direction, constraint), group in pairs.group_by("split", "direction", "constraint"):
        assert group["same"].sum() * 2 == group.height, (split, direction, constraint)
        assert group.height == SMALL[f"{split}_pairs"]
    for row in pairs.iter_rows(named=True):
        q, c = index[row["query_id"]], index[row["candidate_id"]]
        assert (q["modality"], c["modality"]) == (("voice", "face") if row["direction"] == "v2f" else ("face", "voice"))
        assert q["split"] == c["split"] == row["split"]
        assert (q["identity"] == c["identity"]) == row["same"]
        if not row["same"] and row["constraint"] == "G":
            assert q["gender"] == c["gender"]


def test_retrieval_lists_full_galleries(manifest_dir: Path, drawn: Path) -> None:
    index, retrieval = item_index(manifest_dir), read(drawn, "retrieval")
    assert retrieval.height == 8  # 4 splits x 2 directions, not a cross product
    for row in retrieval.iter_rows(named=True):
        q_mod, c_mod = ("voice", "face") if row["direction"] == "v2f" else ("face", "voice")
        expected_gallery = sorted(i for i, r in index.items() if r["modality"] == c_mod and r["split"] == row["split"])
        expected_queries = sorted(i for i, r in index.items() if r["modality"] == q_mod and r["split"] == row["split"])
        assert row["gallery_ids"] == expected_gallery
        assert row["query_ids"] == expected_queries


def test_splits_never_mix(manifest_dir: Path, drawn: Path) -> None:
    index = item_index(manifest_dir)
    used: dict[str, set[str]] = {}
    matching, pairs = read(drawn, "matching"), read(drawn, "pairs")
    for row in matching.iter_rows(named=True):
        for item in [row["query_id"], *row["candidate_ids"]]:
            used.setdefault(row["split"], set()).add(item)
    for row in pairs.iter_rows(named=True):
        used[row["split"]].update([row["query_id"], row["candidate_id"]])
    identities = {s: {index[i]["identity"] for i in ids} for s, ids in used.items()}
    assert not any(index[i]["split"] == "seen_heard" for i in used["train"])
    assert not identities["train"] & identities["val"] and not identities["train"] & identities["test"]
    assert not identities["val"] & identities["test"]
    assert all(index[i]["home"] == "train" for i in used["seen_heard"])


def test_labels_balanced_in_train_and_positive_first_elsewhere(drawn: Path) -> None:
    matching = read(drawn, "matching")
    for (_, _, k), group in matching.filter(pl.col("split") == "train").group_by("direction", "constraint", "k"):
        counts = np.bincount(group["label"].to_numpy(), minlength=k)
        assert counts.max() - counts.min() <= 1 and len(counts) == k
    assert (matching.filter(pl.col("split") != "train")["label"] == 0).all()


def test_summary_reports_counts_and_checks(drawn: Path) -> None:
    summary = json.loads((drawn / "summary.json").read_text())
    assert summary["checks"] and all(v == 0 for v in summary["checks"].values())
    stream = summary["streams"]["matching/train/v2f/U/k10"]
    assert stream["requested"] == stream["written"] == SMALL["train_multiway"]
    assert sum(stream["label_counts"]) == stream["written"]
    assert summary["streams"]["pairs/test/f2v/G/k2"]["positive_fraction"] == 0.5
    assert summary["rows"]["matching"] == read(drawn, "matching").height


def test_seed_column_follows_documented_offsets(drawn: Path) -> None:
    matching = read(drawn, "matching")
    row = matching.filter((pl.col("split") == "test") & (pl.col("direction") == "f2v")
                          & (pl.col("constraint") == "G") & (pl.col("k") == 10)).row(0, named=True)
    assert row["seed"] == 0 * 1_000_000 + 3 * 100_000 + 1 * 10_000 + 2 * 1_000 + 2 * 100 + 10


def test_same_seed_gives_identical_tables(manifest_dir: Path, drawn: Path, tmp_path: Path) -> None:
    run(manifest_dir, tmp_path / "again", TuplesConfig(**SMALL))
    for name in ("matching", "pairs", "retrieval"):
        assert read(drawn, name).equals(read(tmp_path / "again", name)), name
    run(manifest_dir, tmp_path / "other", TuplesConfig(**{**SMALL, "seed": 1}))
    assert not read(drawn, "matching").equals(read(tmp_path / "other", "matching"))


def test_train_counts_do_not_change_test_tuples(manifest_dir: Path, drawn: Path, tmp_path: Path) -> None:
    run(manifest_dir, tmp_path / "more", TuplesConfig(**{**SMALL, "train_binary": 90, "train_pairs": 8,
                                                         "train_constraints": ("U", "G")}))
    for name in ("matching", "pairs"):
        before, after = read(drawn, name), read(tmp_path / "more", name)
        assert not before.filter(pl.col("split") == "train").equals(after.filter(pl.col("split") == "train"))
        for split in ("val", "test", "seen_heard"):
            assert before.filter(pl.col("split") == split).equals(after.filter(pl.col("split") == split)), split


def test_truncation_gives_every_1_to_k_tuple(drawn: Path, manifest_dir: Path) -> None:
    index = item_index(manifest_dir)
    full = read(drawn, "matching").filter((pl.col("split") == "test") & (pl.col("k") == 10))
    for k in range(2, 11):
        cut = truncate(full, k)
        assert cut.height == full.height and (cut["k"] == k).all()
        assert cut["candidate_ids"].to_list() == [c[:k] for c in full["candidate_ids"].to_list()]
        for row in cut.iter_rows(named=True):
            identities = [index[c]["identity"] for c in row["candidate_ids"]]
            assert identities[row["label"]] == index[row["query_id"]]["identity"]
            assert len(set(identities)) == k
    with pytest.raises(ValueError, match="position"):
        truncate(read(drawn, "matching").filter(pl.col("split") == "train"), 2)


def test_shortfall_is_reported_not_hidden(tmp_path: Path) -> None:
    """Test split: 24 identities, 3 female: G with k = 10 cannot serve female queries."""
    manifest = write_manifest(tmp_path / "m", n_val=0, test_genders="mmmmmmmf")
    summary = run(manifest, tmp_path / "out", TuplesConfig(**SMALL))
    stream = summary["streams"]["matching/test/v2f/G/k10"]
    assert stream["shortfall"] > 0 and stream["written"] + stream["shortfall"] == SMALL["test_multiway"]
    assert stream["shortfall_reasons"] == {"too_few_negatives": stream["shortfall"]}
    assert any(line.startswith("matching/test/v2f/G/k10: wrote") for line in summary["shortfalls"])
    assert summary["streams"]["matching/test/v2f/G/k2"]["shortfall"] == 0
    assert summary["streams"]["matching/test/v2f/U/k10"]["shortfall"] == 0
    assert summary["streams"]["matching/val/v2f/U/k2"]["shortfall_reasons"] == {"no_queries": SMALL["val_binary"]}
    index = item_index(manifest)
    g10 = read(tmp_path / "out", "matching").filter(
        (pl.col("split") == "test") & (pl.col("constraint") == "G") & (pl.col("k") == 10))
    assert g10.height and all(index[q]["gender"] == "m" for q in g10["query_id"])
    written = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert written["streams"]["matching/test/v2f/G/k10"]["shortfall"] == stream["shortfall"]


def test_positive_same_video_option(tmp_path: Path) -> None:
    manifest = write_manifest(tmp_path / "m", videos=1, held_out=0)
    cfg = TuplesConfig(**SMALL)
    strict = run(manifest, tmp_path / "strict", cfg)["streams"]["matching/test/v2f/U/k2"]
    assert strict["written"] == 0 and strict["shortfall_reasons"] == {"no_positive": SMALL["test_binary"]}
    loose = run(manifest, tmp_path / "loose", replace(cfg, positive_same_video=True))["streams"]["matching/test/v2f/U/k2"]
    assert loose["written"] == SMALL["test_binary"] == loose["same_video_positives"]


def test_bad_manifest_rows_are_rejected_and_counted(tmp_path: Path) -> None:
    bad_faces = [{"id": "id99999/vid00/0000000", "identity": "id99999", "video": "vid00", "split": "test", "path": "x"},
                 {"id": "id10000/vid00/0000000", "identity": "id10000", "video": "vid00", "split": "train", "path": "x"}]
    bad_utts = [{"id": "id10001/vid00/00009", "identity": "id10001", "video": "vid00", "split": "val", "path": "x"}]
    manifest = write_manifest(tmp_path / "m", extra_faces=bad_faces, extra_utterances=bad_utts)
    summary = run(manifest, tmp_path / "out", TuplesConfig(**SMALL))
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects["reason"]) == ["duplicate_id", "split_mismatch", "unknown_identity"]
    assert summary["rejected"] == 3 and summary["rejects_by_reason"]["unknown_identity"] == 1
    with pytest.raises(TooManyRejects, match="unknown_identity"):
        run(manifest, tmp_path / "strict", TuplesConfig(**{**SMALL, "max_reject_fraction": 0.0}))
    assert not (tmp_path / "strict").exists()


def corrupt_negative(matching: pl.DataFrame) -> pl.DataFrame:
    """Make the first test row's first negative a same-identity item (the positive itself)."""
    row = matching.with_row_index("i").filter((pl.col("split") == "test") & (pl.col("k") == 10)).row(0, named=True)
    cands = list(row["candidate_ids"])
    cands[1] = cands[0]
    return matching.with_columns(pl.when(pl.int_range(pl.len()) == row["i"]).then(pl.lit(cands))
                                 .otherwise(pl.col("candidate_ids")).alias("candidate_ids"))


@pytest.mark.parametrize("corrupt, check", [
    (corrupt_negative, "negative_identity"),
    (lambda m: m.with_columns(label=pl.when(pl.col("split") == "test").then(1).otherwise(pl.col("label"))),
     "eval_positive_first"),
    (lambda m: m.with_columns(split=pl.when(pl.col("split") == "val").then(pl.lit("test")).otherwise(pl.col("split"))),
     "item_in_split"),
])
def test_validation_catches_broken_tables(manifest_dir: Path, drawn: Path,
                                          corrupt: Callable[[pl.DataFrame], pl.DataFrame], check: str) -> None:
    from pipeline.common.rejects import Rejects

    manifest, _ = load(manifest_dir, Rejects("tuples"))
    tables = {name: read(drawn, name) for name in ("matching", "pairs", "retrieval")}
    cfg = TuplesConfig(**SMALL)
    assert all(v == 0 for v in tuples_check.validate(manifest, tables, cfg).values())
    tables["matching"] = corrupt(tables["matching"])
    with pytest.raises(tuples_check.TupleCheckError, match=check):
        tuples_check.validate(manifest, tables, cfg)


def test_sample_distinct_is_exact() -> None:
    rng = np.random.default_rng(0)
    out = sample_distinct(rng, np.array([3] * 50 + [12] * 50), np.array([1] * 50 + [-1] * 50), 2)
    assert all(sorted(r) == [0, 2] for r in out[:50].tolist())
    assert all(len(set(r)) == 2 and max(r) < 12 for r in out[50:].tolist())
    wide = sample_distinct(rng, np.full(4000, 5), np.full(4000, 4), 4)
    assert (np.sort(wide, axis=1) == np.arange(4)).all()
    first = np.bincount(sample_distinct(rng, np.full(20000, 6), np.full(20000, 2), 1)[:, 0], minlength=6)
    assert first[2] == 0 and np.all(np.abs(first[[0, 1, 3, 4, 5]] / 20000 - 0.2) < 0.02)


def test_config_rejects_unknown_keys_and_values() -> None:
    with pytest.raises(ConfigError, match="train_binay"):
        build(TuplesConfig, {"train_binay": 5}, name="tuples")
    with pytest.raises(ValueError, match="unknown constraint"):
        build(TuplesConfig, {"eval_constraints": ["U", "A"]}, name="tuples")
    assert build(TuplesConfig, {"eval_constraints": ["U"]}).eval_constraints == ("U",)


def test_cli_on_tiny_manifest(tiny_manifest: Path, tmp_path: Path) -> None:
    from pipeline.cli import app

    params = tmp_path / "params.yaml"
    params.write_text("tuples:\n  train_binary: 40\n  train_multiway: 10\n  test_binary: 30\n"
                      "  test_multiway: 10\n  test_pairs: 20\n")
    result = CliRunner().invoke(app, ["tuples", str(tiny_manifest), str(tmp_path / "tuples"),
                                      "--params", str(params)])
    assert result.exit_code == 0, result.output
    summary = json.loads((tmp_path / "tuples" / "summary.json").read_text())
    assert all(v == 0 for v in summary["checks"].values())
    assert summary["streams"]["matching/train/v2f/U/k2"]["written"] > 0
    ids = set(pl.read_parquet(tiny_manifest / "faces.parquet")["id"])
    matching = pl.read_parquet(tmp_path / "tuples" / "matching.parquet")
    v2f = matching.filter(pl.col("direction") == "v2f")
    assert set(v2f["candidate_ids"].explode()) <= ids
