"""The ``tuples`` stage: invariants of the drawn tables, feature-store filtering, balanced
positions, truncation, retrieval exclusion, seeds, shortfall, rejects.

These tests run on manifest tables written here with polars and on id-only feature stores in the
stores' own formats (an HDF5 ``ids`` dataset, a Parquet ``id`` column: the only part the stage
reads), so edge cases stay under our control. ``test_tuples_features.py`` runs the real feature
stages on a generated corpus and then the CLI. Configs are the shipped ``params.yaml`` section
plus explicit overrides.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import polars as pl
import pytest

from pipeline.common.config import ConfigError, build
from pipeline.common.rejects import Rejects, TooManyRejects
from pipeline.tuples import TuplesConfig, build_tables, draw_all, load, retrieval_frame, run
from pipeline.tupling import check as tuples_check
from pipeline.tupling import layout
from pipeline.tupling.inputs import FEATURE_STORES, read_stores
from pipeline.tupling.sample import balanced_positions, sample_distinct
from pipeline.tupling.truncation import truncate, truncate_table
from tests.params import default_mismatches, shipped_config, shipped_section

NATIONALITIES = ("USA", "USA", "UK", "India")
SMALL = dict(train_binary=60, train_multiway=23, val_binary=20, val_multiway=10, test_binary=40,
             test_multiway=30, seen_heard_binary=20, seen_heard_multiway=10, train_pairs=30,
             val_pairs=10, test_pairs=40, seen_heard_pairs=20)
EVAL_SPLITS = ("val", "test", "seen_heard")
SPLITS = ("train", *EVAL_SPLITS)
TABLES = ("matching", "pairs", "retrieval")


def config(**overrides: object) -> TuplesConfig:
    """The shipped ``tuples`` params with ``SMALL`` counts and explicit overrides."""
    return shipped_config(TuplesConfig, "tuples", **{**SMALL, **overrides})


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
                             "video": f"{ident['id']}_vid{v:02d}", "split": split, "path": "x"})
    return rows


def write_manifest(path: Path, *, n_train: int = 24, n_val: int = 12, n_test: int = 24,
                   videos: int = 4, held_out: int = 2, test_genders: str = "mf",
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


def write_stores(features: Path, manifest: Path, *, lacking: dict[str, list[str]] | None = None,
                 reasons: dict[str, dict[str, str]] | None = None, extra: int = 0) -> Path:
    """Id lists of the four feature stores in their formats: every manifest item of the
    modality except ``lacking[stage]``, plus ``extra`` ids the manifest does not have;
    ``reasons[stage]`` becomes that stage's rejects table."""
    features.mkdir(parents=True, exist_ok=True)
    lacking, reasons = lacking or {}, reasons or {}
    tables = {"voice": "utterances", "face": "faces"}
    for modality, stores in FEATURE_STORES.items():
        ids = pl.read_parquet(manifest / f"{tables[modality]}.parquet")["id"].unique(maintain_order=True).to_list()
        for stage, name in stores:
            held = [i for i in ids if i not in set(lacking.get(stage, ()))] + [f"stray/{stage}/{i}" for i in range(extra)]
            if name.endswith(".h5"):
                with h5py.File(features / name, "w") as f:
                    if stage == "spectrograms":  # fixed-length UTF-8, as the spectrograms stage writes
                        f.create_dataset("ids", data=np.array([i.encode() for i in held], dtype="S64"))
                    else:  # variable-length UTF-8, as the faces stage writes
                        f.create_dataset("ids", data=np.array(held, dtype=object), dtype=h5py.string_dtype())
            else:
                pl.DataFrame({"id": held, "value": np.zeros(len(held), np.float32)}).write_parquet(features / name)
            stage_rejects = Rejects(stage)
            for uid, reason in reasons.get(stage, {}).items():
                stage_rejects.add(reason, id=uid, path=f"{uid}.file")
            stage_rejects.write(features / f"{stage}_rejects.parquet")
    return features


@pytest.fixture(scope="module")
def manifest_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_manifest(tmp_path_factory.mktemp("tuples") / "manifest")


@pytest.fixture(scope="module")
def features_dir(manifest_dir: Path) -> Path:
    return write_stores(manifest_dir.parent / "features", manifest_dir)


@pytest.fixture(scope="module")
def drawn(manifest_dir: Path, features_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("tuples_out") / "tuples"
    run(manifest_dir, features_dir, out, config())
    return out


def read(out: Path, name: str) -> pl.DataFrame:
    """The whole ``name`` table: its four split files, concatenated in split order."""
    return pl.concat([pl.read_parquet(out / split / f"{name}.parquet") for split in SPLITS])


def files(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}


EXPECTED_FILES = {f"{split}/{name}.parquet" for split in SPLITS for name in TABLES} | {
    "rejects.parquet", "summary.json"}


def test_output_has_one_directory_per_split(drawn: Path) -> None:
    assert files(drawn) == EXPECTED_FILES
    summary = json.loads((drawn / "summary.json").read_text())
    for name in TABLES:
        schemas = set()
        for split in SPLITS:
            part = pl.read_parquet(layout.table_path(drawn, split, name))
            assert part.height and part["split"].unique().to_list() == [split], (split, name)
            assert summary["rows_by_split"][split][name] == part.height
            schemas.add(tuple(part.schema.items()))
        assert len(schemas) == 1, name
        assert sum(summary["rows_by_split"][s][name] for s in SPLITS) == summary["rows"][name]


def test_split_files_concatenate_to_the_whole_tables(manifest_dir: Path, features_dir: Path,
                                                     drawn: Path) -> None:
    """The split files hold exactly the rows of the whole tables the stage's functions build
    in memory (the former single-file layout), in the same order, with the same schema."""
    manifest, _, _ = load(manifest_dir, Rejects("tuples"), read_stores(features_dir))
    cfg = config()
    whole, _ = draw_all(manifest, cfg)
    whole["retrieval"], _ = retrieval_frame(manifest, cfg.retrieval_same_video)
    assert {name: t.height for name, t in whole.items()} == json.loads(
        (drawn / "summary.json").read_text())["rows"]
    stored = layout.read_tables(drawn)
    for name in TABLES:
        assert read(drawn, name).equals(whole[name]), name
        assert stored[name].equals(whole[name]), name
        assert stored[name].schema == whole[name].schema
    train_val = layout.read_tables(drawn, ("train", "val"))
    for name in TABLES:
        assert train_val[name].equals(whole[name].filter(pl.col("split").is_in(["train", "val"]))), name
    again, _, _ = build_tables(manifest, cfg)
    assert all(again[name].equals(whole[name]) for name in TABLES)


def test_empty_splits_get_files_and_old_layouts_are_replaced(manifest_dir: Path, features_dir: Path,
                                                             tmp_path: Path) -> None:
    out = tmp_path / "tuples"
    out.mkdir()
    pl.DataFrame({"split": ["test"]}).write_parquet(out / "matching.parquet")  # the former layout
    counts = {k: 0 for k in SMALL} | {"val_binary": 6}
    summary = run(manifest_dir, features_dir, out, config(**counts, eval_constraints=["U"]))
    assert files(out) == EXPECTED_FILES  # the whole directory was swapped, nothing stale is left
    assert summary["rows_by_split"]["test"] == {"matching": 0, "pairs": 0, "retrieval": 2}
    test = pl.read_parquet(out / "test" / "matching.parquet")
    val = pl.read_parquet(out / "val" / "matching.parquet")
    assert test.height == 0 and test.schema == val.schema and val.height == 2 * 6  # v2f, f2v


def test_layout_refuses_unknown_splits_and_tables(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown split"):
        layout.table_path(tmp_path, "dev", "matching")
    with pytest.raises(ValueError, match="unknown tuples table"):
        layout.table_path(tmp_path, "train", "rejects")
    with pytest.raises(ValueError, match="1 rows have no split directory"):
        layout.by_split(pl.DataFrame({"split": ["train", "dev", "val"], "x": [1, 2, 3]}))
    with pytest.raises(ValueError, match="no splits"):
        layout.read_table(tmp_path, "matching", ())


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


def effective_gallery(row: dict, i: int) -> list[str]:
    """The gallery of query ``i`` of a retrieval row, by the documented rule."""
    video = row["query_videos"][i]
    return [g for g, v in zip(row["gallery_ids"], row["gallery_videos"], strict=True)
            if not (row["exclude_same_video"] and v == video)]


def test_retrieval_leaves_each_querys_own_video_out(manifest_dir: Path, drawn: Path) -> None:
    index, retrieval = item_index(manifest_dir), read(drawn, "retrieval")
    assert retrieval.height == 8  # 4 splits x 2 directions, not a cross product
    summary = json.loads((drawn / "summary.json").read_text())
    assert summary["retrieval_same_video"] is False
    for row in retrieval.iter_rows(named=True):
        q_mod, c_mod = ("voice", "face") if row["direction"] == "v2f" else ("face", "voice")
        in_split = {i: r for i, r in index.items() if r["split"] == row["split"]}
        assert row["exclude_same_video"] is True
        assert row["gallery_ids"] == sorted(i for i, r in in_split.items() if r["modality"] == c_mod)
        assert row["gallery_identities"] == [index[g]["identity"] for g in row["gallery_ids"]]
        assert row["gallery_videos"] == [index[g]["video"] for g in row["gallery_ids"]]
        assert row["query_identities"] == [index[q]["identity"] for q in row["query_ids"]]
        assert row["query_videos"] == [index[q]["video"] for q in row["query_ids"]]
        excluded = 0
        for i, query in enumerate(row["query_ids"]):
            gallery = effective_gallery(row, i)
            assert all(index[g]["video"] != index[query]["video"] for g in gallery)
            assert any(index[g]["identity"] == index[query]["identity"] for g in gallery)
            excluded += len(row["gallery_ids"]) - len(gallery)
        assert excluded > 0
        stats = summary["retrieval"][f"{row['split']}/{row['direction']}"]
        assert stats["excluded_pairs"] == excluded and stats["queries"] == len(row["query_ids"])
        assert row["query_ids"] == sorted(i for i, r in in_split.items() if r["modality"] == q_mod)


def test_retrieval_same_video_option(tmp_path: Path) -> None:
    """One video per identity: no query has a relevant item outside its own video."""
    manifest = write_manifest(tmp_path / "m", videos=1, held_out=0)
    features = write_stores(tmp_path / "f", manifest)
    counts = {k: 0 for k in SMALL}
    strict = run(manifest, features, tmp_path / "strict", config(**counts))
    loose = run(manifest, features, tmp_path / "loose", config(**counts, retrieval_same_video=True))
    assert strict["retrieval_same_video"] is False and loose["retrieval_same_video"] is True
    kept, cut = read(tmp_path / "loose", "retrieval"), read(tmp_path / "strict", "retrieval")
    assert cut["exclude_same_video"].all() and not kept["exclude_same_video"].any()
    test = kept.filter((pl.col("split") == "test") & (pl.col("direction") == "v2f")).row(0, named=True)
    assert len(test["query_ids"]) == 24 * 2 and effective_gallery(test, 0) == test["gallery_ids"]
    assert all(len(q) == 0 for q in cut["query_ids"])
    assert strict["retrieval"]["test/v2f"]["queries_without_relevant"] == 24 * 2
    assert kept["gallery_ids"].to_list() == cut["gallery_ids"].to_list()


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


def test_positions_are_balanced_in_every_split(drawn: Path) -> None:
    matching = read(drawn, "matching")
    assert set(matching["split"]) == {"train", *EVAL_SPLITS}
    for (seed,), stream in matching.group_by("seed"):
        k = int(stream["k"][0])
        counts = np.bincount(stream["label"].to_numpy(), minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1, seed
    for split in EVAL_SPLITS:
        assert (matching.filter(pl.col("split") == split)["label"] > 0).any(), "positive not always first"


def tie_break_first(k: int, m: int) -> np.ndarray:
    """A collapsed scorer: the same score for every candidate, ties broken by argmax."""
    return np.argmax(np.zeros((m, k)), axis=1)


def test_a_tie_breaking_scorer_gets_chance_on_every_eval_list(drawn: Path) -> None:
    matching = read(drawn, "matching").filter(pl.col("split").is_in(EVAL_SPLITS))
    multiway = matching.filter(pl.col("k") == 10)
    lists = [(k, matching.filter(pl.col("k") == k)) for k in (2, 10)]
    lists += [(k, truncate_table(multiway, k)) for k in range(2, 10)]
    checked = set()
    for k, table in lists:
        for (split, _), group in table.group_by("split", "seed"):
            labels = group["label"].to_numpy()
            m = len(labels)
            for picks in (tie_break_first(k, m), np.full(m, k - 1)):  # first or last on ties
                accuracy = float((picks == labels).mean())
                assert abs(accuracy - 1 / k) < 1 / m + 1e-12, (k, m, accuracy)
            checked.add((split, k))
        pooled = float((tie_break_first(k, table.height) == table["label"].to_numpy()).mean())
        assert abs(pooled - 1 / k) <= 0.02, (k, pooled)
    assert checked == {(split, k) for split in EVAL_SPLITS for k in range(2, 11)}


def test_summary_reports_counts_and_checks(drawn: Path) -> None:
    summary = json.loads((drawn / "summary.json").read_text())
    assert summary["checks"] and all(v == 0 for v in summary["checks"].values())
    assert {"label_balance", "retrieval_exclusion", "retrieval_query_set"} <= set(summary["checks"])
    stream = summary["streams"]["matching/train/v2f/U/k10"]
    assert stream["requested"] == stream["written"] == SMALL["train_multiway"]
    assert sum(stream["label_counts"]) == stream["written"]
    assert summary["streams"]["pairs/test/f2v/G/k2"]["positive_fraction"] == 0.5
    assert summary["rows"]["matching"] == read(drawn, "matching").height
    assert summary["streams"]["matching/seen_heard/v2f/U/k2"]["written"] == SMALL["seen_heard_binary"]
    assert summary["features"]["voice"]["missing_features"] == {"spectrograms": 0, "audio_attributes": 0,
                                                                 "dropped": 0}


def test_seed_column_follows_documented_offsets(drawn: Path) -> None:
    matching = read(drawn, "matching")
    row = matching.filter((pl.col("split") == "test") & (pl.col("direction") == "f2v")
                          & (pl.col("constraint") == "G") & (pl.col("k") == 10)).row(0, named=True)
    assert row["seed"] == 0 * 1_000_000 + 3 * 100_000 + 1 * 10_000 + 2 * 1_000 + 2 * 100 + 10


def test_same_seed_gives_identical_tables(manifest_dir: Path, features_dir: Path, drawn: Path,
                                          tmp_path: Path) -> None:
    run(manifest_dir, features_dir, tmp_path / "again", config())
    for name in ("matching", "pairs", "retrieval"):
        assert read(drawn, name).equals(read(tmp_path / "again", name)), name
    run(manifest_dir, features_dir, tmp_path / "other", config(seed=1))
    assert not read(drawn, "matching").equals(read(tmp_path / "other", "matching"))


def test_train_counts_do_not_change_test_tuples(manifest_dir: Path, features_dir: Path, drawn: Path,
                                                tmp_path: Path) -> None:
    run(manifest_dir, features_dir, tmp_path / "more",
        config(train_binary=90, train_pairs=8, train_constraints=["U", "G"]))
    for name in ("matching", "pairs"):
        before, after = read(drawn, name), read(tmp_path / "more", name)
        assert not before.filter(pl.col("split") == "train").equals(after.filter(pl.col("split") == "train"))
        for split in EVAL_SPLITS:
            assert before.filter(pl.col("split") == split).equals(after.filter(pl.col("split") == split)), split


def test_truncation_follows_the_documented_rule(drawn: Path, manifest_dir: Path) -> None:
    index = item_index(manifest_dir)
    full = read(drawn, "matching").filter((pl.col("split") == "test") & (pl.col("k") == 10))
    assert truncate_table(full, 10).equals(full)
    for k in range(2, 10):
        cut = truncate_table(full, k)
        assert cut.height == full.height and (cut["k"] == k).all() and cut["seed"].equals(full["seed"])
        assert cut.equals(truncate_table(full, k)), "seeded"
        for old, new in zip(full.iter_rows(named=True), cut.iter_rows(named=True), strict=True):
            positive = old["candidate_ids"][old["label"]]
            negatives = [c for i, c in enumerate(old["candidate_ids"]) if i != old["label"]][:k - 1]
            assert new["candidate_ids"][new["label"]] == positive
            assert [c for i, c in enumerate(new["candidate_ids"]) if i != new["label"]] == negatives
            assert len({index[c]["identity"] for c in new["candidate_ids"]}) == k
        for (seed,), stream in cut.group_by("seed"):
            counts = np.bincount(stream["label"].to_numpy(), minlength=k)
            assert counts.max() - counts.min() <= 1, (seed, k)
            m = stream.height
            expected = balanced_positions(np.random.default_rng([seed, k]), m, k)
            assert stream["label"].to_list() == expected.tolist()
    with pytest.raises(ValueError, match="fewer candidates"):
        truncate_table(read(drawn, "matching").filter(pl.col("split") == "test"), 3)


def test_truncate_rearranges_scores_like_ids() -> None:
    """The evaluator may cut score arrays instead of ids: the same rearrangement."""
    rng = np.random.default_rng(0)
    ids = np.array([[f"r{r}c{c}" for c in range(10)] for r in range(37)])
    label = rng.integers(0, 10, size=37)
    scores = rng.random((37, 10))
    lookup = {i: s for i, s in zip(ids.ravel(), scores.ravel(), strict=True)}
    cut_ids, label_ids = truncate(ids, label, 4, 123)
    cut_scores, label_scores = truncate(scores, label, 4, 123)
    assert (label_ids == label_scores).all() and cut_ids.shape == (37, 4)
    assert np.array_equal(np.vectorize(lookup.get)(cut_ids), cut_scores)
    with pytest.raises(ValueError, match="1:11"):
        truncate(ids, label, 11, 0)


def test_shortfall_is_reported_not_hidden(tmp_path: Path) -> None:
    """Test split: 24 identities, 3 female: G with k = 10 cannot serve female queries."""
    manifest = write_manifest(tmp_path / "m", n_val=0, test_genders="mmmmmmmf")
    summary = run(manifest, write_stores(tmp_path / "f", manifest), tmp_path / "out", config())
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
    features = write_stores(tmp_path / "f", manifest)
    strict = run(manifest, features, tmp_path / "strict", config())["streams"]["matching/test/v2f/U/k2"]
    assert strict["written"] == 0 and strict["shortfall_reasons"] == {"no_positive": SMALL["test_binary"]}
    loose = run(manifest, features, tmp_path / "loose", config(positive_same_video=True))
    stream = loose["streams"]["matching/test/v2f/U/k2"]
    assert stream["written"] == SMALL["test_binary"] == stream["same_video_positives"]


def test_bad_manifest_rows_are_rejected_and_counted(tmp_path: Path) -> None:
    bad_faces = [{"id": "id99999/vid00/0000000", "identity": "id99999", "video": "vid00", "split": "test", "path": "x"},
                 {"id": "id10000/vid00/0000000", "identity": "id10000", "video": "vid00", "split": "train", "path": "x"}]
    bad_utts = [{"id": "id10001/vid00/00009", "identity": "id10001", "video": "vid00", "split": "val", "path": "x"}]
    manifest = write_manifest(tmp_path / "m", extra_faces=bad_faces, extra_utterances=bad_utts)
    features = write_stores(tmp_path / "f", manifest)
    summary = run(manifest, features, tmp_path / "out", config())
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects["reason"]) == ["duplicate_id", "split_mismatch", "unknown_identity"]
    assert summary["rejected"] == 3 and summary["rejects_by_reason"]["unknown_identity"] == 1
    with pytest.raises(TooManyRejects, match="unknown_identity"):
        run(manifest, features, tmp_path / "strict", config(max_reject_fraction=0.0))
    assert not (tmp_path / "strict").exists()


def test_items_missing_from_a_feature_store_are_dropped_and_listed(manifest_dir: Path, tmp_path: Path) -> None:
    utts = pl.read_parquet(manifest_dir / "utterances.parquet").filter(pl.col("split") == "test")["id"]
    faces = pl.read_parquet(manifest_dir / "faces.parquet").filter(pl.col("split") == "test")["id"]
    silent, odd, cropless = utts[0], utts[3], faces[5]
    features = write_stores(
        tmp_path / "f", manifest_dir, extra=2,
        lacking={"spectrograms": [silent], "audio_attributes": [silent, odd], "face_attributes": [cropless]},
        reasons={"spectrograms": {silent: "silent"}, "audio_attributes": {silent: "silent"}})
    summary = run(manifest_dir, features, tmp_path / "out", config())
    rejects = pl.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert sorted(rejects.select("id", "reason", "detail", "kept").iter_rows()) == sorted([
        (silent, "missing_features", "spectrograms: silent; audio_attributes: silent", False),
        (odd, "missing_features", "audio_attributes: not in audio_attributes.parquet", False),
        (cropless, "missing_features", "face_attributes: not in face_attributes.parquet", False)])
    assert summary["rejects_by_reason"] == {"missing_features": 3} and summary["rejected"] == 3
    voice, face = summary["features"]["voice"], summary["features"]["face"]
    assert voice["missing_features"] == {"spectrograms": 1, "audio_attributes": 2, "dropped": 2}
    assert face["missing_features"] == {"faces": 0, "face_attributes": 1, "dropped": 1}
    assert voice["stores"]["spectrograms"]["not_in_manifest"] == 2
    assert summary["inputs"]["utterances"] == len(pl.read_parquet(manifest_dir / "utterances.parquet")) - 2
    used = set()
    for name in ("matching", "pairs", "retrieval"):
        table = read(tmp_path / "out", name)
        for column, dtype in table.schema.items():
            if column.endswith("_id"):
                used |= set(table[column])
            elif column.endswith("_ids") and dtype == pl.List(pl.Utf8):
                used |= set(table[column].explode().drop_nulls())
    assert used and not used & {silent, odd, cropless}
    with pytest.raises(TooManyRejects, match="missing_features"):
        run(manifest_dir, features, tmp_path / "strict", config(max_reject_fraction=0.001))


def test_a_missing_store_fails_naming_its_stage(manifest_dir: Path, tmp_path: Path) -> None:
    features = write_stores(tmp_path / "f", manifest_dir)
    (features / "face_attributes.parquet").unlink()
    with pytest.raises(FileNotFoundError, match="face_attributes"):
        run(manifest_dir, features, tmp_path / "out", config())
    assert not (tmp_path / "out").exists()


def corrupt_negative(tables: dict[str, pl.DataFrame]) -> None:
    """Make the first test row's first negative a same-identity item (the positive itself)."""
    matching = tables["matching"]
    row = matching.with_row_index("i").filter((pl.col("split") == "test") & (pl.col("k") == 10)).row(0, named=True)
    cands = list(row["candidate_ids"])
    cands[(row["label"] + 1) % 10] = cands[row["label"]]
    tables["matching"] = matching.with_columns(pl.when(pl.int_range(pl.len()) == row["i"]).then(pl.lit(cands))
                                               .otherwise(pl.col("candidate_ids")).alias("candidate_ids"))


def positive_first(tables: dict[str, pl.DataFrame]) -> None:
    """The old layout: test positives moved to position 0 (still correct, no longer balanced)."""
    cands = pl.col("candidate_ids")
    moved = pl.concat_list(cands.list.get(pl.col("label")),
                           cands.list.head(pl.col("label")), cands.list.slice(pl.col("label") + 1))
    test = pl.col("split") == "test"
    tables["matching"] = tables["matching"].with_columns(
        candidate_ids=pl.when(test).then(moved).otherwise(cands),
        label=pl.when(test).then(0).otherwise(pl.col("label")).cast(pl.Int32))


def edit_retrieval(**columns: pl.Expr) -> Callable[[dict[str, pl.DataFrame]], None]:
    def corrupt(tables: dict[str, pl.DataFrame]) -> None:
        tables["retrieval"] = tables["retrieval"].with_columns(**columns)
    return corrupt


@pytest.mark.parametrize("corrupt, check", [
    (corrupt_negative, "negative_identity"),
    (positive_first, "label_balance"),
    (lambda t: t.update(matching=t["matching"].with_columns(
        split=pl.when(pl.col("split") == "val").then(pl.lit("test")).otherwise(pl.col("split")))), "item_in_split"),
    (edit_retrieval(exclude_same_video=pl.lit(False)), "retrieval_exclusion"),
    (edit_retrieval(gallery_ids=pl.col("gallery_ids").list.slice(1)), "retrieval_aligned"),
    (edit_retrieval(gallery_ids=pl.col("gallery_ids").list.slice(1),
                    gallery_identities=pl.col("gallery_identities").list.slice(1),
                    gallery_videos=pl.col("gallery_videos").list.slice(1)), "retrieval_full_gallery"),
    (edit_retrieval(query_videos=pl.col("query_videos").list.eval(pl.lit("elsewhere"))), "retrieval_annotations"),
    (edit_retrieval(query_ids=pl.col("query_ids").list.slice(1),
                    query_identities=pl.col("query_identities").list.slice(1),
                    query_videos=pl.col("query_videos").list.slice(1)), "retrieval_query_set"),
])
def test_validation_catches_broken_tables(manifest_dir: Path, features_dir: Path, drawn: Path,
                                          corrupt: Callable[[dict[str, pl.DataFrame]], None], check: str) -> None:
    manifest, _, _ = load(manifest_dir, Rejects("tuples"), read_stores(features_dir))
    tables = {name: read(drawn, name) for name in ("matching", "pairs", "retrieval")}
    cfg = config()
    rules = dict(same_video_ok=cfg.same_video_rules(), retrieval_same_video=cfg.retrieval_same_video)
    assert all(v == 0 for v in tuples_check.validate(manifest, tables, **rules).values())
    corrupt(tables)
    with pytest.raises(tuples_check.TupleCheckError, match=check):
        tuples_check.validate(manifest, tables, **rules)


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


def test_dataclass_defaults_are_the_shipped_params() -> None:
    """params.yaml is the one source of defaults: a partial params file changes nothing else."""
    assert default_mismatches(TuplesConfig, "tuples") == {}
    assert set(shipped_section("tuples")) == {f.name for f in dataclasses.fields(TuplesConfig)}
    assert TuplesConfig() == shipped_config(TuplesConfig, "tuples")
