"""Params loading: one frozen dataclass per stage, built from its ``params.yaml`` section."""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A params section does not match its dataclass."""


def load_params(path: str | os.PathLike) -> dict[str, Any]:
    """Read ``params.yaml`` into a dict (an empty file gives an empty dict)."""
    with open(path, encoding="utf-8") as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def section(params: Mapping[str, Any], name: str) -> dict[str, Any]:
    """Return ``params[name]`` (a mapping), or an empty dict when absent."""
    value = params.get(name) or {}
    if not isinstance(value, Mapping):
        raise ConfigError(f"params section {name!r} must be a mapping")
    return dict(value)


def _coerce(value: Any, hint: Any) -> Any:
    """Turn YAML lists into tuples where the dataclass field is a tuple."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        return _coerce(value, args[0]) if value is not None and len(args) == 1 else value
    if origin is tuple and isinstance(value, list):
        args = typing.get_args(hint)
        inner = args[0] if args else Any
        return tuple(_coerce(v, inner) for v in value)
    if hint is Path and isinstance(value, str):
        return Path(value)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def build(cls: type[T], mapping: Mapping[str, Any] | None, *, name: str | None = None) -> T:
    """Build the frozen dataclass ``cls`` from ``mapping``; unknown keys raise ``ConfigError``."""
    mapping = dict(mapping or {})
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - known)
    label = name or cls.__name__
    if unknown:
        raise ConfigError(f"unknown key(s) in params section {label!r}: {', '.join(unknown)}; "
                          f"known keys are {', '.join(sorted(known))}")
    kwargs = {k: _coerce(v, hints.get(k, Any)) for k, v in mapping.items()}
    return cls(**kwargs)


def from_params(cls: type[T], params_path: str | os.PathLike, name: str) -> T:
    """Load ``params_path`` and build ``cls`` from its section ``name``."""
    return build(cls, section(load_params(params_path), name), name=name)


def from_sections(cls: type[T], params: Mapping[str, Any], name: str) -> T:
    """Build ``cls`` from section ``name`` plus the knobs it shares with other sections.

    ``cls.shared_params`` (optional) maps a field to the ``(section, key)`` that states it once,
    e.g. ``{"min_face_size": ("faces", "min_size")}``; setting such a field in section ``name``
    itself raises ``ConfigError``.
    """
    values = section(params, name)
    for field, (other, key) in getattr(cls, "shared_params", {}).items():
        if field in values:
            raise ConfigError(f"{name}.{field} is not a {name} param: set {other}.{key}, which "
                              f"this stage reads too (a shared knob is stated once)")
        if key in section(params, other):
            values[field] = section(params, other)[key]
    return build(cls, values, name=name)
