"""The ``avmatch`` command line: one sub-command per pipeline stage.

Stage modules keep heavy imports (torch, timm, opensmile) inside their functions, so
``avmatch --help`` stays fast.
"""

from __future__ import annotations

import logging

import typer

from pipeline import (
    acquire,
    audio_attributes,
    face_attributes,
    face_attributes_train,
    faces,
    manifest,
    spectrograms,
    tuples,
)
from pipeline.synth import corpus as synth

app = typer.Typer(help="Voice-face cross-modal matching pipeline (AML, P2VANet).",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    """Voice-face cross-modal matching pipeline. Run the stages in order, or use ``dvc repro``."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


# Stages in pipeline order. Each module exposes ``cli``, a typer command function.
app.command("synth", help=synth.cli.__doc__)(synth.cli)
app.command("acquire", help=acquire.cli.__doc__)(acquire.cli)
app.command("manifest", help=manifest.cli.__doc__)(manifest.cli)
# -- later stages register here, in pipeline order --
app.command("spectrograms", help=spectrograms.cli.__doc__)(spectrograms.cli)
app.command("faces", help=faces.cli.__doc__)(faces.cli)
app.command("audio_attributes", help=audio_attributes.cli.__doc__)(audio_attributes.cli)
app.command("face_attributes_train", help=face_attributes_train.cli.__doc__)(face_attributes_train.cli)
app.command("face_attributes", help=face_attributes.cli.__doc__)(face_attributes.cli)
app.command("tuples", help=tuples.cli.__doc__)(tuples.cli)


if __name__ == "__main__":  # pragma: no cover
    app()
