"""The whole pipeline through DVC, as a user runs it: `dvc repro` on a tiny generated corpus in a
temporary copy of the repository, then `dvc exp run -S lambda1=1.0` and `dvc metrics diff`.

The copy holds the working tree's files (tracked and untracked, minus ignored ones), so this
tests the code as it stands. `params.yaml` is shrunk to a tiny corpus and model; every stage,
command, dependency and output comes from the shipped `dvc.yaml`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.pipeline.evaluate_fixtures import TINY_MODEL, TINY_TRAIN, TINY_TUPLES

ROOT = Path(__file__).resolve().parents[1]
FEATURE_STAGES = ("acquire", "manifest", "spectrograms", "faces", "audio_attributes",
                  "face_attributes_train", "face_attributes", "tuples")
TINY = {
    "synth": {"identities": 20, "videos_per_identity": 3, "utterance_seconds": [1.0, 1.5],
              "frames_per_video": 2, "face_size": 64, "celeba_identities": 12,
              "celeba_images_per_identity": 2, "seed": 11},
    "face_attributes_train": {"epochs": 1, "batch_size": 16},
    "tuples": {**TINY_TUPLES, "eval_constraints": ["U", "G"]},
    "model": TINY_MODEL,
    "train": {k: v for k, v in TINY_TRAIN.items() if k != "resume"},
    "evaluate": {"bootstrap_resamples": 100, "tsne_perplexity": 5.0, "tsne_identities": 3,
                 "montage_queries": 2},
}


def dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    exe = shutil.which("dvc", path=str(Path(sys.executable).parent)) or shutil.which("dvc")
    cmd = [exe, *args] if exe else [sys.executable, "-m", "dvc", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    result = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, f"dvc {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=avmatch-test", "-c",
                           "user.email=test@avmatch.invalid", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout


def copy_repo(dest: Path) -> Path:
    """The working tree's non-ignored files, committed to a fresh git repository."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    git(dest, "init", "-q")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "copy")  # as in a clone (DVCLive fails in a repo without commits)
    return dest


def shrink_params(repo: Path) -> None:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def lock_outs(repo: Path) -> dict[str, dict[str, str]]:
    """stage -> {output path: md5} from dvc.lock."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    return {name: {o["path"]: o.get("md5") for o in stage.get("outs", [])}
            for name, stage in stages.items()}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after `dvc repro` on the tiny corpus, committed with its results."""
    repo = copy_repo(tmp_path_factory.mktemp("repo"))
    shrink_params(repo)  # the shipped dvc.lock no longer matches: every stage runs
    dvc(repo, "repro")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "tiny run")
    return repo


def test_repro_runs_every_stage_and_writes_sane_metrics(repo: Path) -> None:
    stages = yaml.safe_load((repo / "dvc.yaml").read_text())["stages"]
    assert set(lock_outs(repo)) == set(stages)  # every stage ran and is locked
    metrics = json.loads((repo / "reports" / "metrics.json").read_text())
    for split in ("test", "seen_heard"):
        for d in ("v2f", "f2v"):
            for key in (f"{split}.{d}.match.k2.U.acc", f"{split}.{d}.match.k3.U.acc",
                        f"{split}.{d}.verify.U.auc", f"{split}.{d}.cosine.match.k2.U.acc"):
                value = metrics[key]
                assert 0.0 <= value <= 1.0, key
                assert metrics[f"{key}.ci_low"] <= value <= metrics[f"{key}.ci_high"], key
                assert metrics[f"{key}.n_identities"] >= 2, key
            assert 0.0 <= metrics[f"{split}.{d}.verify.U.eer"] <= 1.0
    assert 0.0 <= metrics["test.v2f.retrieval.map"] <= 1.0
    assert all(v is None or isinstance(v, (int, float)) for v in metrics.values())
    plots = repo / "reports" / "plots"
    for name in ("tsne.png", "montage.png", "accuracy_vs_k/test_v2f.csv",
                 "accuracy_vs_k/test_f2v.csv", "roc/test_v2f_U.csv", "roc/seen_heard_f2v_G.csv"):
        assert (plots / name).stat().st_size > 0, name
    assert (plots / "tsne.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curves = repo / "reports" / "train" / "plots" / "metrics"
    assert (curves / "train" / "total.tsv").is_file() and (curves / "val").is_dir()
    assert "Binary (ACC)" in (repo / "reports" / "summary.md").read_text()
    shown = dvc(repo, "metrics", "show", "--json").stdout
    assert "test.v2f.match.k2.U.acc" in shown


def test_lambda1_experiment_reruns_train_only_and_changes_metrics(repo: Path) -> None:
    before = lock_outs(repo)
    run = dvc(repo, "exp", "run", "-S", "lambda1=1.0")
    after = lock_outs(repo)
    for stage in FEATURE_STAGES:  # the feature stages were not rerun: same outputs
        assert after[stage] == before[stage], stage
        assert f"Running stage '{stage}'" not in run.stdout, stage
    assert "Running stage 'train'" in run.stdout and "Running stage 'evaluate'" in run.stdout
    assert after["train"] != before["train"]
    diff = json.loads(dvc(repo, "metrics", "diff", "--json").stdout)
    changed = diff.get("reports/metrics.json", {})
    assert changed, "dvc metrics diff shows no change in reports/metrics.json"
    assert any(k.startswith(("test.", "seen_heard.")) and v["diff"] for k, v in changed.items())
    params = json.loads(dvc(repo, "params", "diff", "--json").stdout)
    assert params["params.yaml"]["lambda1"]["old"] == 1.5
    assert params["params.yaml"]["lambda1"]["new"] == 1.0
