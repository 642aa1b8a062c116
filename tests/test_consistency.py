"""params.yaml, dvc.yaml, the CLI and the stage configs agree with each other."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import app
from pipeline.config import build, section

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SOURCES = "\n".join(p.read_text() for d in ("pipeline", "model") for p in (ROOT / d).rglob("*.py"))

# params.yaml section -> the frozen dataclass that reads it
SECTIONS = {
    "data": "pipeline.acquire:DataConfig",
    "synth": "pipeline.synth:SynthConfig",
    "manifest": "pipeline.manifest:ManifestConfig",
    "spectrograms": "pipeline.spectrograms:SpectrogramConfig",
    "faces": "pipeline.faces:FacesConfig",
    "audio_attributes": "pipeline.audio_attributes:AudioAttributesConfig",
    "face_attributes_train": "pipeline.face_attributes_train:FaceAttributesTrainConfig",
    "face_attributes": "pipeline.face_attributes:FaceAttributesConfig",
    "tuples": "pipeline.tuples:TuplesConfig",
}
# CLI commands that are tools rather than DVC stages
NOT_STAGES = {"synth"}


def config_class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def commands() -> set[str]:
    return {c.name for c in app.registered_commands}


def test_every_params_section_has_a_config() -> None:
    assert set(PARAMS) == set(SECTIONS)


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_section_builds_and_every_key_is_read(name: str) -> None:
    values = section(PARAMS, name)
    build(config_class(SECTIONS[name]), values, name=name)  # unknown keys raise
    for key in values:
        assert re.search(rf"\.{key}\b", SOURCES), f"params key {name}.{key} is never read"


@pytest.mark.parametrize("stage", sorted(DVC))
def test_dvc_stage_matches_cli_and_params(stage: str) -> None:
    spec = DVC[stage]
    assert spec["cmd"].split()[:2] == ["avmatch", stage], "stage runs `avmatch <stage>`"
    assert stage in commands()
    assert f"pipeline/{stage}.py" in spec["deps"], "deps list the stage module"
    assert spec.get("outs") or spec.get("metrics") or spec.get("plots")
    for param in spec.get("params", []):
        head, _, key = str(param).partition(".")
        assert head in PARAMS, f"{stage}: params entry {param} is not in params.yaml"
        if key:
            assert key in PARAMS[head], f"{stage}: params entry {param} is not in params.yaml"
    for dep in spec["deps"]:
        assert dep.startswith("data/") or dep.startswith("models/") or (ROOT / dep).exists(), dep


def test_every_cli_stage_is_in_dvc_yaml() -> None:
    assert commands() - NOT_STAGES == set(DVC)


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    command = next(line for line in ci.splitlines() if line.startswith("python3 -m venv"))
    assert command in (ROOT / "README.md").read_text()
