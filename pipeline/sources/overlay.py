"""Apply a params overlay (``configs/*.yaml``) onto ``params.yaml``, keeping its comments.

An overlay has the same sections and keys as ``params.yaml`` and lists only the values it
changes. Every section and key must already exist in the target (a renamed or misspelt key
fails loudly instead of being silently ignored). Used as::

    python -m pipeline.sources.overlay configs/voxceleb1.yaml   # rewrites params.yaml in place
    dvc exp run                                         # or `dvc repro`
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import typer
import yaml

from pipeline.common.config import ConfigError, load_params
from pipeline.common.io import atomic_file

log = logging.getLogger(__name__)


def changes(params: dict[str, Any], overlay: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (old, new)}`` for every value the overlay changes; unknown keys raise."""
    out: dict[str, tuple[Any, Any]] = {}
    for name, values in overlay.items():
        if name not in params:
            raise ConfigError(f"overlay section {name!r} is not in params.yaml "
                              f"(sections: {', '.join(params)})")
        if not isinstance(params[name], dict):  # a top-level value (lambda1..lambda4)
            if isinstance(values, dict):
                raise ConfigError(f"overlay {name!r} must be a value, as in params.yaml")
            if params[name] != values:
                out[name] = (params[name], values)
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"overlay section {name!r} must be a mapping")
        current = params[name] or {}
        unknown = sorted(set(values) - set(current))
        if unknown:
            raise ConfigError(f"overlay keys {unknown} are not in params.yaml section {name!r}")
        for key, value in values.items():
            if current[key] != value:
                out[f"{name}.{key}"] = (current[key], value)
    return out


def _yaml():
    from ruamel.yaml import YAML

    rt = YAML()
    rt.preserve_quotes = True
    rt.width = 100
    rt.indent(mapping=2, sequence=4, offset=2)
    rt.representer.add_representer(
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    rt.representer.add_representer(
        float, lambda rep, value: rep.represent_scalar("tag:yaml.org,2002:float", _float(value)))
    return rt


def _float(value: float) -> str:
    """A float as YAML 1.1 (PyYAML, DVC) reads it back as a float: ``5e-05`` is a string there,
    ``5.0e-05`` a float."""
    text = repr(float(value))
    if text in ("inf", "-inf", "nan"):
        return {"inf": ".inf", "-inf": "-.inf", "nan": ".nan"}[text]
    mantissa, e, exponent = text.partition("e")
    return f"{mantissa}.0e{exponent}" if e and "." not in mantissa else text


def _styled(value: Any) -> Any:
    """Lists of scalars in flow style (``[U, G]``), mappings and lists of them in block style."""
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    if isinstance(value, dict):
        out = CommentedMap()
        for k, v in value.items():
            out[k] = _styled(v)
        out.fa.set_block_style()
        return out
    if isinstance(value, list):
        seq = CommentedSeq(_styled(v) for v in value)
        if all(not isinstance(v, (dict, list)) for v in value):
            seq.fa.set_flow_style()
        else:
            seq.fa.set_block_style()
        return seq
    return value


def apply(params_path: Path, overlay_path: Path, out_path: Path | None = None) -> dict:
    """Write ``params_path`` with the overlay's values to ``out_path`` (default: in place)."""
    overlay = yaml.safe_load(Path(overlay_path).read_text(encoding="utf-8")) or {}
    if not isinstance(overlay, dict):
        raise ConfigError(f"{overlay_path}: top level must be a mapping")
    params = load_params(params_path)
    diff = changes(params, overlay)
    rt = _yaml()
    doc = rt.load(Path(params_path).read_text(encoding="utf-8"))
    for dotted in diff:
        name, _, key = dotted.partition(".")
        if not key:
            doc[name] = params[name] = overlay[name]
            continue
        doc[name][key] = _styled(overlay[name][key])
        params[name][key] = overlay[name][key]
    buf = io.StringIO()
    rt.dump(doc, buf)
    if yaml.safe_load(buf.getvalue()) != params:  # the round trip must change only these values
        raise ConfigError(f"applying {overlay_path} would change more than its values")
    with atomic_file(out_path or params_path) as tmp:
        tmp.write_text(buf.getvalue(), encoding="utf-8")
    for dotted, (old, new) in diff.items():
        log.info("%s: %r -> %r", dotted, old, new)
    return {k: v[1] for k, v in diff.items()}


def cli(
    overlay: Path = typer.Argument(..., help="A params overlay, e.g. configs/voxceleb1.yaml."),
    params: Path = typer.Option(Path("params.yaml"), help="The params file to update."),
    out: Path | None = typer.Option(None, help="Write here instead of updating --params."),
) -> None:
    """Copy a config's values (configs/*.yaml) into params.yaml, keeping its comments."""
    changed = apply(params, overlay, out)
    log.info("%d value(s) changed in %s", len(changed), out or params)


def main() -> None:
    """``python -m pipeline.sources.overlay CONFIG [--params params.yaml] [--out FILE]``."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    typer.run(cli)


if __name__ == "__main__":
    main()
