"""params.yaml, dvc.yaml, the CLI and the stage configs agree with each other."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import pytest
import yaml

from pipeline.cli import app
from pipeline.common.config import build, section

ROOT = Path(__file__).resolve().parents[1]
PARAMS = yaml.safe_load((ROOT / "params.yaml").read_text())
DVC = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
SOURCES = "\n".join(p.read_text() for d in ("pipeline", "model") for p in (ROOT / d).rglob("*.py"))

# params.yaml section -> the frozen dataclass that reads it
SECTIONS = {
    "data": "pipeline.acquire:DataConfig",
    "synth": "pipeline.synth.corpus:SynthConfig",
    "manifest": "pipeline.manifest:ManifestConfig",
    "spectrograms": "pipeline.spectrograms:SpectrogramConfig",
    "faces": "pipeline.faces:FacesConfig",
    "audio_attributes": "pipeline.audio_attributes:AudioAttributesConfig",
    "face_attributes_train": "pipeline.face_attributes_train:FaceAttributesTrainConfig",
    "face_attributes": "pipeline.face_attributes:FaceAttributesConfig",
    "tuples": "pipeline.tuples:TuplesConfig",
    "model": "model.avnet:ModelConfig",
    "train": "model.trainer:TrainConfig",
    "evaluate": "pipeline.evaluate:EvaluateConfig",
}
# top-level scalar params: P2VANet Eq. 18's loss weights, read by the train stage
TOP_LEVEL = {"lambda1", "lambda2", "lambda3", "lambda4"}
# CLI commands that are tools rather than DVC stages
NOT_STAGES = {"synth"}


def config_class(spec: str) -> type:
    module, name = spec.split(":")
    return getattr(importlib.import_module(module), name)


def commands() -> set[str]:
    """The CLI's stage commands: its commands and groups (``tuples``), not the tools of the
    inference and report panels."""
    from pipeline.cli import TOOL_PANELS

    entries = [*app.registered_commands, *app.registered_groups]
    return {e.name for e in entries if e.rich_help_panel not in TOOL_PANELS}


def test_every_params_section_has_a_config() -> None:
    assert {k for k, v in PARAMS.items() if isinstance(v, dict)} == set(SECTIONS)
    assert {k for k, v in PARAMS.items() if not isinstance(v, dict)} == TOP_LEVEL


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_params_are_read_by_the_train_stage(name: str) -> None:
    from pipeline.train import LAMBDAS, stage_params

    assert name in LAMBDAS and stage_params(PARAMS)["lambdas"][name] == PARAMS[name]
    assert any(name in DVC[s].get("params", []) for s in DVC), f"no stage lists {name}"


@pytest.mark.parametrize("name", sorted(SECTIONS))
def test_dataclass_defaults_are_the_shipped_params(name: str) -> None:
    """params.yaml is the single source of defaults: every dataclass default equals it."""
    from tests.params import default_mismatches

    assert default_mismatches(config_class(SECTIONS[name]), name) == {}


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


def project_imports(path: Path) -> set[str]:
    """Project modules (``pipeline.*``, ``model.*``) that ``path`` imports, at any depth in the file."""
    import ast

    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {n for n in names if n.split(".")[0] in ("pipeline", "model")}
    return found


def module_file(name: str) -> Path | None:
    """The source file of a project module (a package's ``__init__.py``), or None."""
    base = ROOT / name.replace(".", "/")
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


def import_closure(path: Path) -> set[str]:
    """Every project source file that ``path`` needs, transitively (package ``__init__`` files
    with no code of their own are left out)."""
    seen: set[Path] = set()
    todo = [path]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        for name in project_imports(current):
            parts = name.split(".")
            # importing a.b.c runs a/__init__.py and a/b/__init__.py first
            for found in (module_file(".".join(parts[:i])) for i in range(1, len(parts) + 1)):
                if found is not None:
                    todo.append(found)
    return {p.relative_to(ROOT).as_posix() for p in seen if not docstring_only_init(p)}


def docstring_only_init(path: Path) -> bool:
    """A package ``__init__.py`` that runs nothing but its docstring."""
    import ast

    if path.name != "__init__.py":
        return False
    body = ast.parse(path.read_text()).body
    return all(isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) for node in body)


@pytest.mark.parametrize("stage", sorted(DVC))
def test_dvc_deps_list_every_module_the_stage_imports(stage: str) -> None:
    """A change to any module a stage runs (e.g. pipeline/common/io.py) invalidates the stage."""
    needed = import_closure(ROOT / "pipeline" / f"{stage}.py")
    listed = {d for d in DVC[stage]["deps"] if d.endswith(".py")}
    assert needed - listed == set(), f"{stage}: dvc.yaml deps miss {sorted(needed - listed)}"
    assert listed - needed == set(), f"{stage}: dvc.yaml deps list unused {sorted(listed - needed)}"


def test_pipeline_imports_are_acyclic() -> None:
    """No import cycle among the project's modules, and no stage imports another stage."""
    files = sorted(p for d in ("pipeline", "model") for p in (ROOT / d).rglob("*.py"))
    graph = {p: {module_file(n) for n in project_imports(p)} - {None, p} for p in files}
    state: dict[Path, int] = {}

    def visit(node: Path, trail: list[Path]) -> None:
        state[node] = 1
        for nxt in graph.get(node, ()):
            if state.get(nxt) == 1:
                cycle = [p.relative_to(ROOT).as_posix() for p in trail[trail.index(nxt):] + [nxt]]
                pytest.fail(f"import cycle: {' -> '.join(cycle)}")
            if not state.get(nxt):
                visit(nxt, trail + [nxt])
        state[node] = 2

    for node in files:
        if not state.get(node):
            visit(node, [node])
    stages = {ROOT / "pipeline" / f"{s}.py" for s in DVC}
    for stage in stages:
        crossing = (graph[stage] & stages) - {stage}
        assert not crossing, f"{stage.name} imports another stage: {sorted(p.name for p in crossing)}"
