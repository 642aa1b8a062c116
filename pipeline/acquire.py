"""``acquire`` stage: put raw data in ``data/raw``: synthesize it, or point at a local tree.

Sources (``data.source``):
- ``synthetic`` (default): the embedded corpus from :mod:`pipeline.synth`, params section ``synth``.
- ``local``: an already-extracted tree at ``data.root`` in the real layout, used in place: only
  ``source.json`` is written, and every later stage reads through
  :func:`pipeline.layout.resolve_root`.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import typer

from pipeline import synth
from pipeline.config import build, load_params, section
from pipeline.io import atomic_dir, write_json
from pipeline.layout import SOURCE_FILE

log = logging.getLogger(__name__)

SOURCES = ("synthetic", "local")


@dataclass(frozen=True)
class DataConfig:
    source: str = "synthetic"
    root: str | None = None

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source must be one of {', '.join(SOURCES)}; got {self.source!r}")
        if self.source == "local" and not self.root:
            raise ValueError("data.source: local needs data.root, the path of the extracted tree")


def acquire_local(raw_dir: Path, root: str) -> dict:
    """Write ``source.json`` pointing at ``root`` (checked to exist)."""
    path = Path(root).expanduser().resolve()
    if not path.is_dir():
        raise FileNotFoundError(f"data.root {path} is not a directory")
    with atomic_dir(raw_dir) as tmp:
        (tmp / SOURCE_FILE).write_text(json.dumps({"root": str(path)}, indent=2) + "\n")
    log.info("using the local tree %s in place", path)
    return {"source": "local", "root": str(path)}


def acquire_synthetic(raw_dir: Path, cfg: synth.SynthConfig) -> dict:
    """Generate the embedded corpus into ``raw_dir`` (atomically)."""
    with atomic_dir(raw_dir) as tmp:
        summary = synth.synthesize(tmp, cfg)
    return {"source": "synthetic", **summary}


def run(raw_dir: Path, data: DataConfig, synth_cfg: synth.SynthConfig) -> dict:
    if data.source == "local":
        return acquire_local(raw_dir, data.root or "")
    return acquire_synthetic(raw_dir, synth_cfg)


def cli(
    raw_dir: Path = typer.Argument(..., help="Where the raw data goes (data/raw)."),
    params: Path = typer.Option(Path("params.yaml"), help="Params file; reads `data` and `synth`."),
    summary: Path | None = typer.Option(None, help="Optional JSON summary path."),
) -> None:
    """Download, verify and extract the raw data, or synthesize the embedded corpus."""
    values = load_params(params)
    data = build(DataConfig, section(values, "data"), name="data")
    synth_cfg = build(synth.SynthConfig, section(values, "synth"), name="synth")
    result = run(raw_dir, data, synth_cfg)
    if summary is not None:
        write_json(summary, result)
