"""The ``avmatch`` command line: one sub-command per pipeline stage, plus tools.

Stage modules keep heavy imports (torch, timm, opensmile) inside their functions, so
``avmatch --help`` stays fast. Tools that are not DVC stages sit in their own help panels
(:data:`TOOL_PANELS`): the inference commands on users' files and the reports.

``tuples`` is a group: ``avmatch tuples MANIFEST FEATURES OUT`` (the stage; also
``avmatch tuples draw ...``) and ``avmatch tuples import FORMAT FILE OUT`` (a published list).
"""

from __future__ import annotations

import logging
from typing import Any

import typer
from typer.core import TyperGroup

from pipeline import (
    acquire,
    audio_attributes,
    evaluate,
    face_attributes,
    face_attributes_train,
    faces,
    infer,
    manifest,
    report,
    spectrograms,
    train,
    tuples,
)
from pipeline.sources import protocol_lists
from pipeline.synth import corpus as synth

INFERENCE_PANEL = "Use a trained model (not pipeline stages)"
REPORT_PANEL = "Reports (not pipeline stages)"
TOOL_PANELS = (INFERENCE_PANEL, REPORT_PANEL)


class DefaultCommandGroup(TyperGroup):
    """A group whose first argument, when it is not one of its commands (nor ``--help``), is
    the start of the arguments of its ``default_command``: ``avmatch tuples M F O --params p``
    runs ``avmatch tuples draw M F O --params p``."""

    default_command = "draw"

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ctx.help_option_names:
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)

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
tuples_app = typer.Typer(cls=DefaultCommandGroup, no_args_is_help=True,
                         help="Draw the tuple tables (the stage: `avmatch tuples MANIFEST FEATURES "
                              "OUT`), or import a published list (`avmatch tuples import`).")
tuples_app.command("draw", help=f"(default) {tuples.cli.__doc__}")(tuples.cli)
tuples_app.command("import", help=protocol_lists.import_cli.__doc__)(protocol_lists.import_cli)
app.add_typer(tuples_app, name="tuples")
app.command("train", help=train.cli.__doc__)(train.cli)
app.command("evaluate", help=evaluate.cli.__doc__)(evaluate.cli)

# Tools: inference on users' files, reports.
for name, command in (("match", infer.match_cli), ("verify", infer.verify_cli),
                      ("retrieve", infer.retrieve_cli)):
    app.command(name, help=command.__doc__, rich_help_panel=INFERENCE_PANEL)(command)
report_app = typer.Typer(no_args_is_help=True, help="Reports over DVC experiments.")
report_app.command("ablations", help=report.ablations_cli.__doc__)(report.ablations_cli)
report_app.command("queue-ablations", help=report.queue_cli.__doc__)(report.queue_cli)
app.add_typer(report_app, name="report", rich_help_panel=REPORT_PANEL)


if __name__ == "__main__":  # pragma: no cover
    app()
