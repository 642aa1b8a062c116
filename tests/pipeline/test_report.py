"""``avmatch report``: the ablation tables from ``dvc exp show --json``, and queueing the grid.

The experiments JSON is hand-written in the structure DVC 3 writes (checked against
``dvc exp show --json`` of a scratch repository: a list of commits, each with ``data.params``
and ``data.metrics`` per file and ``experiments``: ranges of ``revs`` with an ``executor``
state). The last test runs the real DVC: it queues a tiny grid in a scratch repository and
reports the real ``dvc exp show --json``.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.report import (
    diff,
    flatten,
    parse_ablations,
    parse_exp_show,
    queue_commands,
    read_ablations,
    render,
)

ROOT = Path(__file__).resolve().parents[2]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
AML = {"model.vae": "none", "model.private": "none", "model.public": "none",
       "model.loss_weighting": "aml"}
runner = CliRunner()


def with_overrides(overrides: dict[str, Any], params: dict[str, Any] = PARAMS) -> dict[str, Any]:
    out = copy.deepcopy(params)
    for key, value in overrides.items():
        *parents, leaf = key.split(".")
        node = out
        for part in parents:
            node = node[part]
        node[leaf] = value
    return out


def metrics(acc2: float, acc10: float | None = None, auc: float = 0.7, ci: bool = True
            ) -> dict[str, Any]:
    """A flat ``reports/metrics.json`` as the evaluate stage writes it (both directions)."""
    out: dict[str, Any] = {}
    for i, direction in enumerate(("v2f", "f2v")):
        values = {f"test.{direction}.match.k2.U.acc": acc2 - 0.02 * i,
                  f"test.{direction}.verify.U.auc": auc - 0.02 * i}
        if acc10 is not None:
            values[f"test.{direction}.match.k10.U.acc"] = acc10 - 0.02 * i
        for key, value in values.items():
            out[key] = value
            out[f"{key}.n_identities"] = 31
            if ci:
                out[f"{key}.ci_low"], out[f"{key}.ci_high"] = value - 0.05, value + 0.05
    out["val.v2f.verify.U.threshold"] = 0.1
    return out


def state(rev: str, name: str | None, params: dict, metric_data: dict | None,
          timestamp: str = "2026-01-02T10:00:00", error: dict | None = None) -> dict[str, Any]:
    """One ``ExpState`` as DVC 3 serialises it."""
    return {"rev": rev, "name": name,
            "data": {"rev": rev, "timestamp": timestamp,
                     "params": {"params.yaml": {"data": params}},
                     "metrics": ({"reports/metrics.json": {"data": metric_data}}
                                 if metric_data is not None else {}),
                     "deps": {"pipeline/train.py": {"hash": "0" * 32, "size": 1, "nfiles": None}},
                     "outs": {}, "meta": {}},
            "error": error, "experiments": None}


def experiment(rev: str, name: str, overrides: dict, metric_data: dict | None,
               executor: str | None = None, timestamp: str = "2026-01-02T10:00:00",
               base: dict = PARAMS) -> dict[str, Any]:
    """One ``ExpRange``: a run in the workspace (no executor) or from the queue."""
    local = {"root": None, "log": None, "pid": None, "returncode": None, "task_id": rev}
    return {"revs": [state(rev, name, with_overrides(overrides, base), metric_data, timestamp)],
            "executor": None if executor is None else {"state": executor, "name": "dvc-task",
                                                       "local": local},
            "name": name}


def exp_show() -> list[dict[str, Any]]:
    vox2 = with_overrides({"data.source": "voxceleb2", "manifest.layout": "voxceleb2"})
    main = state("a" * 40, "main", PARAMS, metrics(0.70, 0.30), "2026-01-01T09:00:00")
    main["experiments"] = [
        experiment("b" * 40, "p2v-t3-baseline", {"model.vae": "none", "model.private": "none",
                                                 "model.public": "none"}, metrics(0.61, 0.21)),
        experiment("c" * 40, "p2v-t3-baseline-old", {"model.vae": "none",
                                                     "model.private": "none",
                                                     "model.public": "none"},
                   metrics(0.55, 0.15), "success", "2026-01-01T11:00:00"),
        experiment("d" * 40, "p2v-t3-vae", {"model.private": "none", "model.public": "none"},
                   metrics(0.64, 0.24, ci=False), "success"),
        experiment("e" * 40, "aml-t7-a", {**AML, "model.adversarial": "none",
                                          "model.metric": "none"}, metrics(0.58, 0.18)),
        experiment("f" * 40, "p2v-t7-l1-0.5", {"lambda1": 0.5}, metrics(0.66, 0.26)),
        experiment("1" * 40, "p2v-t6-concat", {"model.private": "concat",
                                               "model.public": "none"}, None, "queued"),
        experiment("2" * 40, "aml-t8-gan", {**AML, "model.adversarial": "gan"}, None, "failed"),
        experiment("3" * 40, "longer", {"train.epochs": 12}, metrics(0.9, 0.5)),
    ]
    vox = state("9" * 40, "vox2", vox2, metrics(0.80, 0.40), "2026-01-03T09:00:00")
    vox["experiments"] = [experiment("8" * 40, "p2v-t4-vox2-vae-pub", {
        "model.private": "none", "model.public": "gender"}, metrics(0.77, 0.37), base=vox2)]
    workspace = state("workspace", None, with_overrides({"lambda1": 0.5}), metrics(0.66, 0.26))
    workspace["data"]["timestamp"] = None
    return [workspace, main, vox]


def section(text: str, heading: str) -> list[list[str]]:
    """The table rows (cells) under the first ``### heading...`` of a rendered report."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"### {heading}"))
    rows = []
    for line in lines[start + 4:]:  # heading, blank line, header, separator
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip().strip("|").split(" | ")])
    return rows


def row(rows: list[list[str]], label: str) -> list[str]:
    return next(r for r in rows if r[0] == label)


# ---- docs/ablations.md --------------------------------------------------------------------------

def test_the_docs_rows_and_their_overrides() -> None:
    ablations = read_ablations(ROOT / "docs" / "ablations.md")
    headings = [t.heading.split(" — ")[0] for t in ablations.tables]
    assert headings == ["P²VANet Table III", "P²VANet Table IV", "P²VANet Table IV",
                        "P²VANet Table V", "P²VANet Table VI", "P²VANet Table VII",
                        "AML Table VII", "AML Table VIII", "AML Table IX"]
    t3 = ablations.tables[0]
    assert [r.cells[0] for r in t3.rows][:2] == ["Baseline", "+ VAE"]
    assert t3.rows[0].setting.overrides == {"model.vae": "none", "model.private": "none",
                                            "model.public": "none"}
    assert t3.rows[-1].setting.overrides == {}  # "none (the defaults)"
    vox, vox2 = ablations.tables[1], ablations.tables[2]
    assert (vox.dataset, vox2.dataset) == ("VoxCeleb", "VoxCeleb2")
    # "as Table III + VAE + pub" resolves to Table III's row; VoxCeleb2 has only gender
    assert vox.rows[3].setting.overrides == {"model.private": "none"}
    assert vox2.rows[3].setting.overrides == {"model.private": "none", "model.public": "gender"}
    lambdas = ablations.tables[5]
    assert [r.label for r in lambdas.rows[:3]] == ["λ1 (reading A)", "λ1 (reading B)", "λ1"]
    assert lambdas.rows[0].setting.overrides == {"lambda1": 0.5}
    aml_a = ablations.tables[6].rows[0]
    assert aml_a.cells == ("(a)", "–", "–", "83.13 / 30.36")
    assert aml_a.setting.overrides == {**AML, "model.adversarial": "none", "model.metric": "none"}
    assert ablations.tables[7].rows[2].label == "WGAN (= Table VII (d))"


def test_parser_on_a_small_doc() -> None:
    doc = """# x
## Paper
```bash
V="-S model.vae=none"
dvc exp run --queue -n named-row $V -S 'train.directions=[f2v]'
```
### Table I — small
| row | paper | overrides |
| --- | --- | --- |
| A | 1 | `$V -S 'train.directions=[f2v]'` |
|  | 2 | `-S lambda1=1` (one) or `-S lambda1=2` (two) |
| C | 3 | the defaults |
| D | 4 | nothing runnable |
"""
    ablations = parse_ablations(doc)
    (table,) = ablations.tables
    assert [r.label for r in table.rows] == ["A", "A (one)", "A (two)", "C", "D"]
    assert table.rows[0].setting.overrides == {"model.vae": "none", "train.directions": ["f2v"]}
    assert table.rows[0].setting.args == ("-S", "model.vae=none", "-S", "train.directions=[f2v]")
    assert table.rows[1].setting.overrides == {"lambda1": 1}
    assert table.rows[3].setting.overrides == {} and table.rows[4].setting is None
    base = {"model.vae": "both", "train.directions": ["v2f", "f2v"], "lambda1": 1.0}
    commands = queue_commands(ablations, base)
    assert commands[0] == ["dvc", "exp", "run", "--queue", "-n", "named-row", "-S",
                           "model.vae=none", "-S", "train.directions=[f2v]"]
    # lambda1=1 equals the base (1.0): the same params as "the defaults", queued once
    assert [c[5] for c in commands] == ["named-row", "pap-t1-a-one", "pap-t1-a-two"]


# ---- the report -----------------------------------------------------------------------------------

def test_report_tables_match_experiments_to_rows() -> None:
    baselines = parse_exp_show(exp_show())
    assert [b.commit.name for b in baselines] == ["main", "vox2"]  # the workspace is left out
    text = render(read_ablations(ROOT / "docs" / "ablations.md"), baselines)
    main, vox2 = text.split("## Baseline `vox2`")
    t3 = section(main, "P²VANet Table III")
    header = main.splitlines()[main.splitlines().index(
        next(x for x in main.splitlines() if x.startswith("### P²VANet Table III"))) + 2]
    assert header == ("| row | paper | overrides | experiment | 1:2 V-F | 1:2 F-V | 1:10 V-F | "
                      "1:10 F-V | AUC V-F | AUC F-V |")
    baseline = row(t3, "Baseline")
    assert baseline[3] == "`p2v-t3-baseline` (+1 more run)"  # the newer of two runs
    assert baseline[4:] == ["61.0 [56.0, 66.0]", "59.0 [54.0, 64.0]", "21.0 [16.0, 26.0]",
                            "19.0 [14.0, 24.0]", "70.0 [65.0, 75.0]", "68.0 [63.0, 73.0]"]
    assert baseline[2] == "`model.vae=none` `model.private=none` `model.public=none`"
    assert row(t3, "+ VAE")[4] == "64.0"  # no interval in its metrics: none invented
    ours = row(t3, "+ VAE + pri + pub (ours)")
    assert ours[2:5] == ["defaults", "`main` (baseline)", "70.0 [65.0, 75.0]"]
    assert row(t3, "+ VAE + pri")[3:] == ["not run"] + ["–"] * 6
    concat = row(section(main, "P²VANet Table VI"), "Concat")
    assert concat[3] == "`p2v-t6-concat` — queued" and concat[4] == "–"
    lambdas = section(main, "P²VANet Table VII")
    assert row(lambdas, "λ1 (reading A)")[3:5] == ["`p2v-t7-l1-0.5`", "66.0 [61.0, 71.0]"]
    assert row(lambdas, "λ1 (the default)")[3] == "`main` (baseline)"  # lambda1=1.5 is default
    aml = section(main, "AML Table VII")
    assert row(aml, "(a)")[:4] == ["(a)", "–", "–", "83.13 / 30.36"]
    assert row(aml, "(a)")[5:7] == ["`aml-t7-a`", "58.0 [53.0, 63.0]"]
    assert row(section(main, "AML Table VIII"), "GANs")[3] == "`aml-t8-gan` — failed"
    assert "P²VANet Table IV — ablation on VoxCeleb and VoxCeleb2, 1:2 matching (VoxCeleb)" in main
    assert "(VoxCeleb2)" not in main
    unmatched = section(main, "Experiments that match no row")
    assert unmatched == [["`longer`", "success", "`train.epochs=12`"]]
    # the VoxCeleb2 baseline: Table IV's VoxCeleb2 column only
    assert vox2.count("\n### ") == 1
    t4 = section(vox2, "P²VANet Table IV")
    assert row(t4, "+ VAE + pub")[4:6] == ["`p2v-t4-vox2-vae-pub`", "77.0 [72.0, 82.0]"]
    assert row(t4, "+ VAE + pri + pub")[4] == "not run"  # public=gender, never run on vox2


def test_params_diff_treats_yaml_numbers_and_lists_as_yaml_does() -> None:
    base = flatten({"a": {"x": 1.0, "l": ["v2f", "f2v"]}, "b": True})
    assert diff(flatten({"a": {"x": 1, "l": ["v2f", "f2v"]}, "b": True}), base) == {}
    assert diff(flatten({"a": {"x": 1, "l": ["f2v"]}, "b": 1}), base) == {"a.l": ["f2v"], "b": 1}
    assert diff({"new": 3, **base}, base) == {"new": 3}


def test_report_cli(tmp_path: Path) -> None:
    saved = tmp_path / "exps.json"
    saved.write_text(json.dumps(exp_show()))
    out = tmp_path / "reports" / "ablations.md"
    result = runner.invoke(app, ["report", "ablations", "--exp-json", str(saved), str(out),
                                 "--doc", str(ROOT / "docs" / "ablations.md")])
    assert result.exit_code == 0, result.output
    assert "2 baseline(s), 9 experiment(s)" in result.stdout
    assert out.read_text().startswith("# Ablations\n") and "p2v-t3-baseline" in out.read_text()
    (tmp_path / "bad.json").write_text("{not json")
    result = runner.invoke(app, ["report", "ablations", "--exp-json", str(tmp_path / "bad.json"),
                                 str(out)])
    assert result.exit_code == 1 and "bad.json: cannot read JSON" in result.stderr
    result = runner.invoke(app, ["report", "ablations", "--exp-json", str(saved), str(out),
                                 "--doc", str(tmp_path / "none.md")])
    assert result.exit_code == 1 and "the ablations doc is not there" in result.stderr


def test_queue_ablations_prints_one_command_per_distinct_row() -> None:
    result = runner.invoke(app, ["report", "queue-ablations", "--doc",
                                 str(ROOT / "docs" / "ablations.md"), "--params",
                                 str(ROOT / "params.yaml")])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[-1] == "dvc queue start"
    commands = [line.split() for line in lines[:-1]]
    assert commands[0] == ["dvc", "exp", "run", "--queue", "-n", "p2v-t3-baseline", "-S",
                           "model.vae=none", "-S", "model.private=none", "-S",
                           "model.public=none"]
    names = [c[5] for c in commands]
    assert len(names) == len(set(names)) == 29  # 28 rows of the papers + lambda1 = 0
    assert {"p2v-t3-full", "p2v-t7-l1-0.5", "p2v-t7-l1-2", "p2v-l1-0", "aml-t7-a",
            "aml-t9-triplet"} <= set(names)
    assert not any("vox2" in n for n in names)  # VoxCeleb2 rows need another data config
    vox2 = runner.invoke(app, ["report", "queue-ablations", "--dataset", "VoxCeleb2", "--doc",
                               str(ROOT / "docs" / "ablations.md"), "--params",
                               str(ROOT / "params.yaml")])
    assert [line.split()[5] for line in vox2.stdout.splitlines()[:-1]] == [
        "p2v-t4-vox2-baseline", "p2v-t4-vox2-vae", "p2v-t4-vox2-vae-pri", "p2v-t4-vox2-vae-pub",
        "p2v-t4-vox2-full"]


# ---- the real DVC ------------------------------------------------------------------------------------

SMALL_DOC = """# Ablations
## P²VANet
### Table III — ablation
| row | paper | overrides |
| --- | --- | --- |
| Baseline | 89.4 / 86.6 | `-S model.vae=none -S model.private=none -S model.public=none` |
| + VAE | 90.8 / 88.2 | `-S model.private=none -S model.public=none` |
| ours | 93.1 / 90.4 | none (the defaults) |
"""


def test_queue_and_report_with_dvc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`queue-ablations --run` queues real DVC experiments; `report ablations` runs
    `dvc exp show --json` and finds them (queued) and the baseline commit (with metrics)."""
    repo = tmp_path / "repo"
    (repo / "reports").mkdir(parents=True)
    (repo / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (repo / "ablations.md").write_text(SMALL_DOC)
    (repo / "reports" / "metrics.json").write_text(json.dumps(metrics(0.7, 0.3)))
    (repo / "dvc.yaml").write_text("stages:\n  evaluate:\n    cmd: python -c pass\n"
                                   "    params: [model]\n    metrics:\n"
                                   "      - reports/metrics.json:\n          cache: false\n")
    monkeypatch.setenv("DVC_NO_ANALYTICS", "1")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    for command in (["git", "init", "-q", "-b", "main"], ["dvc", "init", "-q"],
                    ["dvc", "config", "core.analytics", "false"], ["git", "add", "-A"],
                    ["git", "commit", "-qm", "baseline"]):
        subprocess.run(command, cwd=repo, check=True, env=env)
    monkeypatch.chdir(repo)
    result = runner.invoke(app, ["report", "queue-ablations", "--run", "--doc", "ablations.md"])
    assert result.exit_code == 0, result.output
    assert "queued 3 of 3 experiments" in result.stdout
    result = runner.invoke(app, ["report", "ablations", "out.md", "--doc", "ablations.md"])
    assert result.exit_code == 0, result.output
    rows = section((repo / "out.md").read_text(), "P²VANet Table III")
    assert row(rows, "Baseline")[3] == "`p2v-t3-baseline` — queued"
    assert row(rows, "+ VAE")[3] == "`p2v-t3-vae` — queued"
    ours = row(rows, "ours")  # the baseline commit has metrics; its queued twin has none yet
    assert ours[3:5] == ["`main` (baseline) (+1 more run)", "70.0 [65.0, 75.0]"]
