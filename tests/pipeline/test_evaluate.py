"""The evaluate stage end to end on the generated corpus with a checkpoint from the real trainer:
metrics.json keys and ranges, plots, summary, determinism, leak refusals and rejects."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
import typer
from PIL import Image
from typer.testing import CliRunner

from pipeline import evaluate
from pipeline.evaluate import EvaluateConfig, run
from tests.pipeline.evaluate_fixtures import eval_data, tiny_checkpoint  # noqa: F401

app = typer.Typer()
app.command()(evaluate.cli)  # the lead registers it as `avmatch evaluate`

PARAMS = {"bootstrap_resamples": 200, "threads": 1, "tsne_perplexity": 5.0}
SPLITS = ("test", "seen_heard")
DIRECTIONS = ("v2f", "f2v")
RULES = (None, "head", "cosine")
UNITS = {"match": "n_tuples", "verify": "n_pairs", "retrieval": "n_queries"}
OUTPUTS = ("metrics.json", "summary.md", "evaluate_summary.json", "evaluate_rejects.parquet",
           "plots")


def params_file(tmp_path: Path, **overrides) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(json.dumps({"evaluate": {**PARAMS, **overrides}}))  # JSON is YAML
    return path


def invoke(data: Path, checkpoint: Path, out: Path, params: Path, *extra: str):
    return CliRunner().invoke(app, [str(data), str(checkpoint), str(out), "--params", str(params),
                                    *extra])


@pytest.fixture(scope="module")
def reports(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
            tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("reports")
    result = invoke(eval_data, tiny_checkpoint, out, params_file(out))
    assert result.exit_code == 0, result.output
    return out


def key(split: str, direction: str, rule: str | None, *parts: str) -> str:
    return ".".join([split, direction, *([rule] if rule else []), *parts])


def headline_keys(summary: dict) -> list[tuple[str, str]]:
    """``(key, unit)`` of every estimate the stored lists call for."""
    out = []
    for split in SPLITS:
        lists = summary["lists"][split]
        for d in DIRECTIONS:
            for rule in RULES:
                for name in lists:
                    kind, direction, constraint, *k = name.split("/")
                    if direction != d:
                        continue
                    parts = (("match", k[0], constraint, "acc") if kind == "matching"
                             else ("verify", constraint, "auc"))
                    out.append((key(split, d, rule, *parts), UNITS[parts[0]]))
                    if kind == "pairs":
                        out.append((key(split, d, rule, "verify", constraint, "eer"), "n_pairs"))
                for k in (2, 3):
                    out.append((key(split, d, rule, "match", "curve", f"k{k}", "acc"), "n_tuples"))
                if d in summary["retrieval"][split]:  # seen_heard here: no query has a
                    for name in ("map", "r1", "r5", "r10"):  # relevant item in another video
                        out.append((key(split, d, rule, "retrieval", name), "n_queries"))
    return out


def test_metrics_json_has_every_key_in_range(reports: Path) -> None:
    metrics = json.loads((reports / "metrics.json").read_text())
    summary = json.loads((reports / "evaluate_summary.json").read_text())
    assert summary["multiway_k"] == 3 and summary["rejected"] == 0
    expected = headline_keys(summary)
    assert len(expected) > 100
    for name, unit in expected:
        value = metrics[name]
        assert 0.0 <= value <= 1.0, name
        assert metrics[f"{name}.ci_low"] <= value <= metrics[f"{name}.ci_high"], name
        assert metrics[f"{name}.n_identities"] >= 1 and metrics[f"{name}.{unit}"] >= 1, name
    # the headline keys of the issue, and the model's score is its declared rule's
    rule = summary["model_score"]
    assert rule in ("head", "cosine")
    for split in SPLITS:
        for d in DIRECTIONS:
            for parts in (("match", "k2", "U", "acc"), ("verify", "U", "auc"),
                          ("retrieval", "map")):
                if parts[0] == "retrieval" and split == "seen_heard":
                    assert f"{split} {d} retrieval: nothing to rank (0 queries" in str(
                        summary["notes"])
                    continue
                assert metrics[key(split, d, None, *parts)] == metrics[key(split, d, rule, *parts)]
            # the curve's largest k is the stored 1:K list itself
            assert metrics[key(split, d, None, "match", "curve", "k3", "acc")] == (
                metrics[key(split, d, None, "match", "k3", "U", "acc")])
            strata = [k for k in metrics if k.startswith(key(split, d, None, "match", "k2", "U",
                                                             "strata"))
                      and k.endswith(".acc")]
            assert strata, f"no strata for {split} {d}"
            assert sum(metrics[f"{k}.n_tuples"] for k in strata) == (
                metrics[key(split, d, None, "match", "k2", "U", "acc.n_tuples")])
            assert metrics[f"val.{d}.verify.U.threshold"] is not None
            assert 0.0 <= metrics[f"val.{d}.verify.U.eer"] <= 1.0
    assert all(isinstance(v, (int, float)) or v is None for v in metrics.values())


def test_plots_summary_and_counts(reports: Path) -> None:
    plots = reports / "plots"
    for split in SPLITS:
        for d in DIRECTIONS:
            curve = pl.read_csv(plots / "accuracy_vs_k" / f"{split}_{d}.csv")
            assert curve["k"].to_list() == [2, 3]
            assert curve.columns[:4] == ["k", "acc", "ci_low", "ci_high"]
            roc = pl.read_csv(plots / "roc" / f"{split}_{d}_U.csv")
            assert roc.columns == ["fpr", "tpr", "threshold"]
            assert roc["fpr"].is_sorted() and roc["tpr"][-1] == 1.0
    for name in ("tsne.png", "montage.png"):
        image = Image.open(plots / name)
        assert image.format == "PNG" and min(image.size) > 100
    summary_md = (reports / "summary.md").read_text()
    assert "| Split | Score | Binary (ACC) V-F | Binary (ACC) F-V | Multi-way (ACC) V-F" in summary_md
    assert "| test | " in summary_md and "| seen_heard | " in summary_md
    summary = json.loads((reports / "evaluate_summary.json").read_text())
    assert summary["selection"]["selected_on"] == "val"
    assert set(summary["timings"]) >= {"read_and_check", "embed", "metrics", "tsne", "montage"}
    assert summary["checks"]["test"]["identities"] == 3
    assert summary["figures"]["tsne"]["identities"] == 3
    assert summary["figures"]["montage"]["queries"] >= 1
    assert pl.read_parquet(reports / "evaluate_rejects.parquet").height == 0


def test_same_inputs_give_identical_outputs(reports: Path, eval_data: Path,  # noqa: F811
                                            tiny_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    run(eval_data, tiny_checkpoint, tmp_path, EvaluateConfig(**PARAMS))
    for name in ("metrics.json", "summary.md", "plots/tsne.png", "plots/montage.png",
                 "plots/accuracy_vs_k/test_v2f.csv", "plots/roc/seen_heard_f2v_U.csv"):
        assert (tmp_path / name).read_bytes() == (reports / name).read_bytes(), name


# ---- refusals -----------------------------------------------------------------------------------

def edited_checkpoint(checkpoint: Path, tmp_path: Path, edit) -> Path:
    copy = tmp_path / "best"
    shutil.copytree(checkpoint, copy)
    record = json.loads((copy / "checkpoint.json").read_text())
    edit(record["meta"])
    (copy / "checkpoint.json").write_text(json.dumps(record))
    return copy


def data_copy(data: Path, tmp_path: Path, copy: tuple[str, ...] = ()) -> Path:
    """A data tree linking to ``data``, with the directories in ``copy`` copied (editable)."""
    root = tmp_path / "data"
    root.mkdir()
    for name in ("features", "manifest", "tuples"):
        if name in copy:
            shutil.copytree((data / name).resolve(), root / name)
        else:
            (root / name).symlink_to((data / name).resolve(), target_is_directory=True)
    return root


def assert_refused(result, out: Path, message: str) -> None:
    assert result.exit_code == 1
    assert message in result.output
    assert "Traceback" not in result.output
    assert not any((out / name).exists() for name in OUTPUTS)


def test_refuses_a_checkpoint_selected_on_test(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                               tmp_path: Path) -> None:
    bad = edited_checkpoint(tiny_checkpoint, tmp_path,
                            lambda meta: meta["selection"].update(selected_on="test"))
    out = tmp_path / "reports"
    result = invoke(eval_data, bad, out, params_file(tmp_path))
    assert_refused(result, out, "selected on 'test', not on 'val'")


def test_refuses_test_identities_the_checkpoint_was_trained_on(
        eval_data: Path, tiny_checkpoint: Path, tmp_path: Path) -> None:  # noqa: F811
    identities = pl.read_parquet(eval_data / "manifest" / "identities.parquet")
    test_id = identities.filter(pl.col("split") == "test")["id"][0]
    bad = edited_checkpoint(tiny_checkpoint, tmp_path,
                            lambda meta: meta["data"]["labels"]["identities"].append(test_id))
    out = tmp_path / "reports"
    result = invoke(eval_data, bad, out, params_file(tmp_path))
    assert_refused(result, out, "test tuples involve 1 identity the checkpoint was trained on")
    assert test_id in result.output


def test_refuses_seen_heard_items_from_a_train_video(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                                      tmp_path: Path) -> None:
    data = data_copy(eval_data, tmp_path, copy=("manifest",))
    table = data / "manifest" / "utterances.parquet"
    utterances = pl.read_parquet(table)
    held = utterances.filter(pl.col("split") == "seen_heard").head(1)
    # a train utterance from the same video as a seen_heard one: that video is no longer unseen
    leak = held.with_columns(pl.lit("train").alias("split"), (pl.col("id") + "_copy").alias("id"))
    pl.concat([utterances, leak]).write_parquet(table)
    out = tmp_path / "reports"
    result = invoke(data, tiny_checkpoint, out, params_file(tmp_path))
    assert_refused(result, out, "seen_heard items come from 1 video(s) of the train split")


def test_refuses_tuples_that_reference_another_split(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                                     tmp_path: Path) -> None:
    data = data_copy(eval_data, tmp_path, copy=("tuples",))
    path = data / "tuples" / "test" / "pairs.parquet"
    pairs = pl.read_parquet(path)
    train_voice = pl.read_parquet(eval_data / "manifest" / "utterances.parquet").filter(
        pl.col("split") == "train")["id"][0]
    pairs.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(pl.lit(train_voice))
                       .otherwise(pl.col("query_id")).alias("query_id")
                       ).filter(pl.col("direction") == "v2f").write_parquet(path)
    out = tmp_path / "reports"
    result = invoke(data, tiny_checkpoint, out, params_file(tmp_path))
    assert_refused(result, out, "test tuples reference 1 voice item(s) of splits other than test "
                                "(['train'])")


def test_unknown_items_are_rejected_counted_and_limited(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                                        tmp_path: Path) -> None:
    data = data_copy(eval_data, tmp_path, copy=("tuples",))
    path = data / "tuples" / "test" / "pairs.parquet"
    pairs = pl.read_parquet(path)
    ghost = pairs.head(1).with_columns(pl.lit("id99999/ghost/00001").alias("query_id"))
    pl.concat([pairs, ghost]).write_parquet(path)
    out = tmp_path / "strict"
    result = invoke(data, tiny_checkpoint, out, params_file(tmp_path, max_reject_fraction=0.0))
    assert_refused(result, out, "evaluate: 1 of")
    assert "not_in_manifest" in result.output
    out = tmp_path / "reports"
    result = invoke(data, tiny_checkpoint, out, params_file(tmp_path))
    assert result.exit_code == 0, result.output
    rejects = pl.read_parquet(out / "evaluate_rejects.parquet")
    assert rejects["id"].to_list() == ["id99999/ghost/00001"]
    assert rejects["reason"].to_list() == ["not_in_manifest"]
    summary = json.loads((out / "evaluate_summary.json").read_text())
    assert summary["rejected"] == 1 and summary["dropped_rows"]["test"]["pairs"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    d = pairs["direction"][0]
    n = pairs.filter((pl.col("direction") == d) & (pl.col("constraint") == pairs["constraint"][0]))
    assert metrics[f"test.{d}.verify.{pairs['constraint'][0]}.auc.n_pairs"] == n.height
    assert np.isfinite(metrics[f"test.{d}.verify.{pairs['constraint'][0]}.auc"])


def test_a_missing_checkpoint_is_a_clear_error(eval_data: Path, tmp_path: Path) -> None:  # noqa: F811
    out = tmp_path / "reports"
    result = invoke(eval_data, tmp_path / "nowhere", out, params_file(tmp_path))
    assert_refused(result, out, "not a checkpoint directory")


# ---- imported protocol lists ---------------------------------------------------------------------

def sss_paths(manifest: Path) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """Item id -> its path as a "Seeking the Shape of Sound" list writes it: voices relative to
    ``wav/``; faces by the path under ``unzippedFaces/`` (exact) and as ``<Name>/<8 digits>.jpg``
    (the published form; on face tracks it names the frame number)."""
    voices = pl.read_parquet(manifest / "utterances.parquet")
    faces = pl.read_parquet(manifest / "faces.parquet")
    voice = {i: p.split("/wav/", 1)[1] for i, p in voices.select("id", "path").iter_rows()}
    face = {i: p.split("/unzippedFaces/", 1)[1] for i, p in faces.select("id", "path").iter_rows()}
    short = {i: f"{face[i].split('/', 1)[0]}/{int(frame):08d}.jpg"
             for i, frame in faces.select("id", "frame").iter_rows()}
    return voice, face, short


def import_lists(data: Path, protocols: Path, verification: str, retrieval: str) -> None:
    from pipeline.sources.protocol_lists import import_list

    protocols.mkdir(exist_ok=True)
    for fmt, text, stem in (("sss-verification", verification, "sss_verify"),
                            ("sss-retrieval", retrieval, "sss_retrieval")):
        (protocols / f"{stem}.txt").write_text(text, encoding="utf-8")
        import_list(fmt, protocols / f"{stem}.txt", data / "manifest",
                    protocols / f"{stem}.parquet")


IMPORTED = ["sss_verify.parquet", "sss_retrieval.parquet"]


@pytest.fixture(scope="module")
def imported_reports(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                     tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """Evaluate with two imported lists: the stage's own test v2f U pairs written as a published
    verification list (exact face paths), and a retrieval list in the published short form."""
    tmp = tmp_path_factory.mktemp("imported")
    voice, face, short = sss_paths(eval_data / "manifest")
    pairs = pl.read_parquet(eval_data / "tuples" / "test" / "pairs.parquet").filter(
        (pl.col("direction") == "v2f") & (pl.col("constraint") == "U"))
    verification = "".join(f"{voice[q]} {face[c]} {int(same)}\n"
                           for q, c, same in pairs.select("query_id", "candidate_id", "same")
                           .iter_rows())
    faces = pl.read_parquet(eval_data / "manifest" / "faces.parquet").filter(
        pl.col("split") == "test")
    gallery = " ".join(short[i] for i in faces.unique("identity", keep="first",
                                                      maintain_order=True)["id"])
    queries = pl.read_parquet(eval_data / "manifest" / "utterances.parquet").filter(
        pl.col("split") == "test").head(4)["id"]
    retrieval = "".join(f"{voice[q]} {gallery}\n" for q in queries)
    import_lists(eval_data, tmp / "protocols", verification, retrieval)
    out = tmp / "reports"
    result = invoke(eval_data, tiny_checkpoint, out, params_file(tmp, imported=IMPORTED),
                    "--protocols", str(tmp / "protocols"))
    assert result.exit_code == 0, result.output
    return out, {"pairs": pairs.height, "queries": len(queries)}


def test_imported_lists_are_evaluated_like_test(imported_reports: tuple[Path, dict]) -> None:
    out, counts = imported_reports
    metrics = json.loads((out / "metrics.json").read_text())
    for rule in RULES:
        stage = key("test", "v2f", rule, "verify", "U", "auc")
        ours = key("imported.sss_verify", "v2f", rule, "verify", "U", "auc")
        # the same pairs, read from a published-format list: the same numbers
        assert metrics[ours] == pytest.approx(metrics[stage], abs=1e-12)
        assert metrics[ours.replace(".auc", ".eer")] == pytest.approx(
            metrics[stage.replace(".auc", ".eer")], abs=1e-12)
        assert metrics[f"{ours}.n_pairs"] == counts["pairs"]
        for name in ("map", "r1", "r5", "r10"):
            value = metrics[key("imported.sss_retrieval", "v2f", rule, "retrieval", name)]
            assert 0.0 <= value <= 1.0
    assert metrics["imported.sss_retrieval.v2f.retrieval.map.n_queries"] == counts["queries"]
    summary = json.loads((out / "evaluate_summary.json").read_text())
    assert summary["imported"] == ["imported.sss_retrieval", "imported.sss_verify"]
    assert summary["retrieval"]["imported.sss_retrieval"]["v2f"]["queries"] == counts["queries"]
    assert (out / "plots" / "roc" / "imported.sss_verify_v2f_U.csv").is_file()
    text = (out / "summary.md").read_text()
    assert "## Imported protocol lists" in text and "imported.sss_verify" in text


def test_refuses_an_imported_list_with_a_val_item(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                                  tmp_path: Path) -> None:
    voice, _, short = sss_paths(eval_data / "manifest")
    utterances = pl.read_parquet(eval_data / "manifest" / "utterances.parquet")
    faces = pl.read_parquet(eval_data / "manifest" / "faces.parquet")
    test_voice = utterances.filter(pl.col("split") == "test")["id"][0]
    val_face = faces.filter(pl.col("split") == "val")["id"][0]
    test_face = faces.filter(pl.col("split") == "test")["id"][0]
    import_lists(eval_data, tmp_path / "protocols",
                 f"{voice[test_voice]} {short[test_face]}\n{voice[test_voice]} {short[val_face]}\n",
                 f"{voice[test_voice]} {short[test_face]} {short[val_face]}\n")
    out = tmp_path / "reports"
    result = invoke(eval_data, tiny_checkpoint, out,
                    params_file(tmp_path, imported=["sss_verify.parquet"]),
                    "--protocols", str(tmp_path / "protocols"))
    assert_refused(result, out, "imported.sss_verify tuples reference 1 face item(s) of splits "
                                "other than test (['val'])")


@pytest.mark.parametrize("names", [["lists/a.parquet"], ["a.txt"], ["a b.parquet"],
                                   ["a.parquet", "a.parquet"]])
def test_imported_names_are_checked(names: list[str]) -> None:
    from pipeline.common.config import ConfigError

    with pytest.raises(ConfigError, match="evaluate.imported"):
        EvaluateConfig(imported=tuple(names))


def test_a_missing_imported_list_is_a_clear_error(eval_data: Path, tiny_checkpoint: Path,  # noqa: F811
                                                  tmp_path: Path) -> None:
    out = tmp_path / "reports"
    result = invoke(eval_data, tiny_checkpoint, out,
                    params_file(tmp_path, imported=["sss_verify.parquet"]),
                    "--protocols", str(tmp_path))
    assert_refused(result, out, "avmatch tuples import FORMAT FILE")


def test_the_curve_truncates_whole_streams_before_dropping_rows(
        eval_data: Path, tiny_checkpoint: Path) -> None:  # noqa: F811
    """A 1:K row whose item has no embedding leaves the accuracy-vs-k curve after the stream is
    truncated, so the other rows keep the positions `truncate_table` gives the whole stream."""
    from model.data import DataPaths, FeatureSource
    from model.evaluation import Bootstrap
    from model.metrics import match_accuracy
    from model.scoring import ItemEmbeddings, embed_items, score_matching
    from pipeline.tupling.truncation import truncate_table

    net, meta = evaluate.load_network(tiny_checkpoint)
    paths = DataPaths.under(eval_data)
    tables = evaluate.SplitTables.read(paths.tuples, "test", ("matching",))
    source = FeatureSource.from_state(paths, meta["data"])
    refs = tables.references()
    emb = {m: embed_items(net, source, m, sorted(refs[m]), batch_size=64, device="cpu")
           for m in ("voice", "face")}
    rows = tables.matching.filter((pl.col("direction") == "v2f") & (pl.col("constraint") == "U"))
    base = rows.filter(pl.col("k") == rows["k"].max())
    missing = base["candidate_ids"][0][-1]
    faces = [u for u in emb["face"].ids if u != missing]
    owner = dict(zip(emb["face"].ids, emb["face"].identity_ids, strict=True))
    emb["face"] = ItemEmbeddings(faces, emb["face"].take(faces), [owner[u] for u in faces])
    ctx = evaluate.Context(net, evaluate.ManifestView.read(paths.manifest), Bootstrap(50, 0, 0.95),
                           net.cfg.score, [])
    metrics, ks = evaluate.curve_block(ctx, "test", tables.matching, emb)
    keep = pl.Series([missing not in c for c in base["candidate_ids"].to_list()])
    assert 0 < keep.sum() < base.height
    for k in ks["v2f"]:
        cut = truncate_table(base, k).filter(keep)  # the whole stream truncated, then the drop
        scores = score_matching(net, cut, emb)[net.cfg.score]
        expected = match_accuracy(scores, cut["label"].to_numpy())
        key = f"test.v2f.match.curve.k{k}.acc"
        assert metrics[key] == pytest.approx(expected, abs=1e-12)
        assert metrics[f"{key}.n_tuples"] == keep.sum()
