"""Checkpoints without pickle: tensors in safetensors, everything else in JSON.

A checkpoint is a directory written atomically (:func:`pipeline.common.io.atomic_dir`) with

- ``tensors.safetensors``: every tensor, by name;
- ``checkpoint.json``: ``format``, ``version``, ``kind`` (``model`` or ``resume``), the tensor
  file's SHA-256 and the name, dtype and shape of every tensor in it, and ``meta``, the
  caller's JSON tree (for a model: the model config, the input dims, the param values, the
  normalisation statistics and class maps, the selection, e.g. ``{"selected_on": "val",
  "metric": ..., "value": ..., "epoch": ...}``).

Loading parses JSON and safetensors only: it never executes code and never calls
``torch.load``. A tensor file that does not match its JSON (another checkpoint's, truncated,
edited) is refused with :class:`CheckpointError` before any tensor reaches a model.

A *resume* checkpoint (:func:`save_resume` / :func:`load_resume`) holds the model, the
optimiser and scheduler states, the RNG states (torch CPU and CUDA, Python's ``random``, and
named ``numpy.random.Generator`` bit-generator states as JSON) and the epoch and step. Nested
states are flattened: each tensor becomes a named safetensors entry and its place in the JSON
tree a ``{"__tensor__": name}`` reference; tuples and dicts with non-string keys (an
optimiser's per-parameter state) are tagged so that they come back exactly as they were.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from pipeline.common.io import atomic_dir

__all__ = ["CheckpointError", "ResumeState", "save_checkpoint", "load_checkpoint", "save_model",
           "load_model", "model_meta", "save_resume", "load_resume", "resume_meta", "FORMAT",
           "VERSION", "TENSORS", "META"]

FORMAT = "avmatch-checkpoint"
VERSION = 1
TENSORS = "tensors.safetensors"
META = "checkpoint.json"
KINDS = ("model", "resume")
_TENSOR, _TUPLE, _ITEMS = "__tensor__", "__tuple__", "__items__"


class CheckpointError(ValueError):
    """A checkpoint is missing, corrupt, of another kind, or does not fit the model."""


# ---- JSON tree <-> tensors ----------------------------------------------------------------------

def _flatten(obj: Any, name: str, tensors: dict[str, torch.Tensor]) -> Any:
    """JSON-ready copy of ``obj`` with its tensors moved into ``tensors`` under path names."""
    if isinstance(obj, torch.Tensor):
        if name in tensors:
            raise CheckpointError(f"two tensors would be stored as {name!r}")
        tensors[name] = obj.detach().cpu().contiguous().clone()  # clone: no shared storage
        return {_TENSOR: name}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, tuple):
        return {_TUPLE: [_flatten(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_flatten(v, f"{name}.{i}", tensors) for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        if all(isinstance(k, str) and not k.startswith("__") for k in obj):
            return {k: _flatten(v, f"{name}.{k}", tensors) for k, v in obj.items()}
        for k in obj:
            if not (k is None or isinstance(k, (bool, int, float, str))):
                raise CheckpointError(f"cannot store the key {k!r} of {name}")
        return {_ITEMS: [[k, _flatten(v, f"{name}.{k}", tensors)] for k, v in obj.items()]}
    raise CheckpointError(f"cannot store a {type(obj).__name__} at {name} (tensors, numbers, "
                          "strings, lists, tuples and dicts only)")


def _unflatten(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`_flatten`."""
    if isinstance(obj, list):
        return [_unflatten(v, tensors) for v in obj]
    if not isinstance(obj, dict):
        return obj
    if set(obj) == {_TENSOR}:
        if obj[_TENSOR] not in tensors:
            raise CheckpointError(f"tensor {obj[_TENSOR]!r} is referenced but not stored")
        return tensors[obj[_TENSOR]]
    if set(obj) == {_TUPLE}:
        return tuple(_unflatten(v, tensors) for v in obj[_TUPLE])
    if set(obj) == {_ITEMS}:
        return {k: _unflatten(v, tensors) for k, v in obj[_ITEMS]}
    return {k: _unflatten(v, tensors) for k, v in obj.items()}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _entry(t: torch.Tensor) -> dict[str, Any]:
    return {"dtype": str(t.dtype).removeprefix("torch."), "shape": list(t.shape)}


# ---- generic save / load ------------------------------------------------------------------------

def _plain(obj: Any, name: str = "meta") -> Any:
    """``obj`` as plain JSON (tuples become lists); anything else is refused."""
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (list, tuple)):
        return [_plain(v, f"{name}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, Mapping):
        bad = [k for k in obj if not isinstance(k, str)]
        if bad:
            raise CheckpointError(f"{name}: JSON keys must be strings, got {bad[:3]}")
        return {k: _plain(v, f"{name}.{k}") for k, v in obj.items()}
    raise CheckpointError(f"{name}: cannot store a {type(obj).__name__} in JSON "
                          "(tensors go into the tensor file)")


def _write(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], meta_json: Any,
           kind: str) -> None:
    stored = {name: t.detach().cpu().contiguous().clone() for name, t in tensors.items()}
    json.dumps(meta_json, allow_nan=True)  # fail before touching the disk
    with atomic_dir(path) as tmp:
        # one metadata key: safetensors orders several at random, and the bytes must not vary
        save_file(stored, str(tmp / TENSORS), metadata={"format": "pt"})
        record = {"format": FORMAT, "version": VERSION, "kind": kind,
                  "tensors": {"file": TENSORS, "sha256": _sha256(tmp / TENSORS),
                              "entries": {n: _entry(t) for n, t in sorted(stored.items())}},
                  "meta": meta_json}
        text = json.dumps(record, indent=2, sort_keys=True, allow_nan=True)
        (tmp / META).write_text(text + "\n", encoding="utf-8")


def save_checkpoint(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                    meta: Mapping[str, Any]) -> None:
    """Write ``tensors`` and the JSON ``meta`` as the model checkpoint directory ``path``.

    Atomic: a failure (e.g. a ``meta`` value JSON cannot hold) leaves the previous checkpoint
    at ``path`` untouched.
    """
    _write(path, tensors, _plain(dict(meta)), "model")


def _read_record(path: Path, kind: str) -> dict[str, Any]:
    meta_path = path / META
    if not meta_path.is_file():
        raise CheckpointError(f"{path}: not a checkpoint directory (no {META})")
    try:
        record = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CheckpointError(f"{meta_path}: corrupt JSON ({err})") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not an {FORMAT} file")
    if record.get("version") != VERSION:
        raise CheckpointError(f"{meta_path}: format version {record.get('version')!r}, "
                              f"this code reads version {VERSION}")
    if record.get("kind") != kind:
        raise CheckpointError(f"{path}: a {record.get('kind')!r} checkpoint, expected {kind!r}")
    return record


def _read(path: str | os.PathLike, kind: str, device: str | torch.device
          ) -> tuple[dict[str, torch.Tensor], Any]:
    path = Path(path)
    record = _read_record(path, kind)
    info = record["tensors"]
    tensor_path = path / info["file"]
    if not tensor_path.is_file():
        raise CheckpointError(f"{path}: tensor file {info['file']} is missing")
    if _sha256(tensor_path) != info["sha256"]:
        raise CheckpointError(f"{tensor_path} does not match {path / META} (SHA-256 differs): "
                              "the file is corrupt or belongs to another checkpoint")
    try:
        tensors = load_file(str(tensor_path), device=str(device))
    except SafetensorError as err:
        raise CheckpointError(f"{tensor_path}: corrupt safetensors file ({err})") from err
    found = {n: _entry(t) for n, t in tensors.items()}
    if found != info["entries"]:
        raise CheckpointError(f"{tensor_path}: tensors differ from the list in {META}")
    return tensors, record["meta"]


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"
                    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """``(tensors, meta)`` of the model checkpoint directory ``path``, verified against its
    JSON (SHA-256 of the tensor file, tensor names, dtypes and shapes)."""
    return _read(path, "model", device)


# ---- model checkpoints --------------------------------------------------------------------------

def save_model(path: str | os.PathLike, model: torch.nn.Module, meta: Mapping[str, Any]) -> None:
    """The model's ``state_dict`` plus ``meta`` (config, params, data state, selection)."""
    save_checkpoint(path, model.state_dict(), meta)


def load_state(model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """``model.load_state_dict(state)`` with a clear error for missing, unexpected or
    mis-shaped entries (checked before anything is copied)."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = sorted(n for n in set(expected) & set(state) if expected[n].shape != state[n].shape)
    if missing or unexpected or shapes:
        raise CheckpointError(
            f"{source} does not fit {type(model).__name__}: missing {missing[:5]} "
            f"({len(missing)}), unexpected {unexpected[:5]} ({len(unexpected)}), "
            f"shape mismatch {shapes[:5]} ({len(shapes)})")
    model.load_state_dict(state, strict=True)


def load_model(path: str | os.PathLike, model: torch.nn.Module | None = None,
               device: str | torch.device = "cpu") -> dict[str, Any]:
    """The ``meta`` of a model checkpoint; its weights are loaded into ``model`` when given.

    Typical use: ``meta = load_model(p)``, build the model from ``meta``, then
    ``load_model(p, model)``.
    """
    tensors, meta = load_checkpoint(path, device)
    if model is not None:
        load_state(model, tensors, str(path))
    return meta


# ---- resume checkpoints -------------------------------------------------------------------------

@dataclass(frozen=True)
class ResumeState:
    """Where a resumed run continues: ``epoch``, ``step`` and the caller's ``extra`` / ``meta``."""

    epoch: int
    step: int
    extra: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


def _rng_state(rngs: Mapping[str, np.random.Generator]) -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state(), "python": random.getstate(),
                             "numpy": {n: g.bit_generator.state for n, g in rngs.items()}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: Mapping[str, Any], rngs: Mapping[str, np.random.Generator]) -> None:
    torch.set_rng_state(state["torch"].cpu())
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda"]])
    missing = sorted(set(rngs) - set(state["numpy"]))
    if missing:
        raise CheckpointError(f"no saved state for the numpy generator(s) {missing}")
    for name, gen in rngs.items():
        saved = state["numpy"][name]
        if saved["bit_generator"] != type(gen.bit_generator).__name__:
            raise CheckpointError(f"numpy generator {name!r} was a {saved['bit_generator']}, "
                                  f"not a {type(gen.bit_generator).__name__}")
        gen.bit_generator.state = saved


def save_resume(path: str | os.PathLike, *, model: torch.nn.Module,
                optimizers: Mapping[str, torch.optim.Optimizer], epoch: int, step: int,
                schedulers: Mapping[str, Any] | None = None,
                rngs: Mapping[str, np.random.Generator] | None = None,
                extra: Mapping[str, Any] | None = None,
                meta: Mapping[str, Any] | None = None) -> None:
    """Everything a run needs to continue exactly: model, optimisers, schedulers (or any object
    with ``state_dict``/``load_state_dict``, e.g. a weight average), RNG states
    (torch, CUDA, Python ``random``, the named numpy generators), ``epoch`` and ``step``, plus
    the caller's ``extra`` state (e.g. the best val metric so far) and ``meta``."""
    tree = {"model": dict(model.state_dict()),
            "optimizers": {n: o.state_dict() for n, o in optimizers.items()},
            "schedulers": {n: s.state_dict() for n, s in (schedulers or {}).items()},
            "rng": _rng_state(rngs or {}), "epoch": int(epoch), "step": int(step),
            "extra": dict(extra or {})}
    tensors: dict[str, torch.Tensor] = {}
    state = _flatten(tree, "state", tensors)
    _write(path, tensors, {"state": state, "meta": _plain(dict(meta or {}))}, "resume")


def resume_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The caller's ``meta`` of a resume checkpoint, read from its JSON alone (no tensors are
    loaded; :func:`load_resume` verifies the tensor file)."""
    return dict(_read_record(Path(path), "resume")["meta"]["meta"])


def model_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The ``meta`` of a model checkpoint, read from its JSON alone (no tensors are loaded)."""
    return dict(_read_record(Path(path), "model")["meta"])


def load_resume(path: str | os.PathLike, *, model: torch.nn.Module,
                optimizers: Mapping[str, torch.optim.Optimizer],
                schedulers: Mapping[str, Any] | None = None,
                rngs: Mapping[str, np.random.Generator] | None = None,
                device: str | torch.device = "cpu") -> ResumeState:
    """Restore what :func:`save_resume` saved into freshly built objects; return where to go on.

    The optimisers and schedulers must be built like the saved ones (same groups); the global
    torch / Python RNGs and the ``rngs`` generators are set to their saved states.
    """
    tensors, record = _read(path, "resume", "cpu")
    state = _unflatten(record["state"], tensors)
    for kind, given in (("optimizers", optimizers), ("schedulers", schedulers or {})):
        if set(given) != set(state[kind]):
            raise CheckpointError(f"{path}: saved {kind} {sorted(state[kind])}, "
                                  f"given {sorted(given)}")
    load_state(model, {k: v.to(device) for k, v in state["model"].items()}, str(path))
    for name, opt in optimizers.items():
        try:
            opt.load_state_dict(state["optimizers"][name])
        except (ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: optimiser {name!r} does not fit: {err}") from err
    for name, sched in (schedulers or {}).items():
        sched.load_state_dict(state["schedulers"][name])
    _set_rng_state(state["rng"], rngs or {})
    return ResumeState(epoch=state["epoch"], step=state["step"], extra=state["extra"],
                       meta=record["meta"])
