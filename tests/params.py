"""The shipped params.yaml, for tests that mean "the shipped configuration" plus overrides."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, TypeVar

from pipeline.common.config import build, load_params, section

T = TypeVar("T")

PARAMS_FILE = Path(__file__).resolve().parents[1] / "params.yaml"
ABSENT = "<not in params.yaml>"  # a dataclass field that params.yaml does not state


def shipped_params() -> dict[str, Any]:
    """The repository's params.yaml as a dict (read afresh, so callers may modify it)."""
    return load_params(PARAMS_FILE)


def shipped_section(section_name: str, **overrides: Any) -> dict[str, Any]:
    """The params.yaml section ``section_name`` as a dict, with ``overrides`` applied.

    A config class may read a field from another section (``shared_params``, e.g.
    ``ManifestConfig.min_face_size`` is ``faces.min_size``); pass the class to
    :func:`shipped_config` to fill those in.
    """
    values = section(shipped_params(), section_name)
    return {**values, **overrides}


def shipped_config(cls: type[T], section_name: str, **overrides: Any) -> T:
    """``cls`` built from the shipped params.yaml section ``section_name`` plus ``overrides``.

    Fields the class reads from another section (its ``shared_params`` mapping
    ``field -> (section, key)``) come from there, as the stage's CLI does. Unknown override
    names raise ``ConfigError``, like unknown params keys.
    """
    params = shipped_params()
    values = section(params, section_name)
    for name, (other, key) in getattr(cls, "shared_params", {}).items():
        if key in section(params, other):
            values[name] = section(params, other)[key]
    return build(cls, {**values, **overrides}, name=section_name)


def default_mismatches(cls: type, section_name: str) -> dict[str, tuple[Any, Any]]:
    """``{field: (dataclass default, shipped value)}`` for every field whose default disagrees
    with params.yaml or that params.yaml does not state (shipped value ``ABSENT``); empty when
    the dataclass defaults are exactly the shipped configuration."""
    params = shipped_params()
    stated = set(section(params, section_name))
    for name, (other, key) in getattr(cls, "shared_params", {}).items():
        if key in section(params, other):
            stated.add(name)
    shipped = shipped_config(cls, section_name)
    defaults = cls()
    out = {}
    for f in dataclasses.fields(cls):
        default, value = getattr(defaults, f.name), getattr(shipped, f.name)
        if f.name not in stated:
            out[f.name] = (default, ABSENT)
        elif default != value:
            out[f.name] = (default, value)
    return out

