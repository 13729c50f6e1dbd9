"""`optimum-cli export memlora`: `memlora export`, registered under optimum's `export` command.

optimum-cli imports every module of the `optimum.commands.register` namespace package (the memlora wheel
installs this one there) and registers its `REGISTER_COMMANDS`. The command is `memlora export` itself,
not a second front end: the argparse options (what `--help` lists) are derived from the click parameters
of `memlora.export.command.main`, and the arguments reach memlora's click command unparsed, so validation,
errors (one line, exit code 2) and output are memlora's own.
"""

from __future__ import annotations

import argparse
from argparse import ArgumentParser, Namespace
from typing import TYPE_CHECKING

from optimum.commands.base import BaseOptimumCLICommand, CommandInfo
from optimum.commands.export.base import ExportCommand

if TYPE_CHECKING:
    from typer.core import TyperCommand

PROG = "optimum-cli export memlora"
HELP_FLAGS = ("-h", "--help")


def _export_command() -> TyperCommand:
    """`memlora export` as a click command, built without importing `memlora.cli` (its logging and
    environment defaults would reach every optimum-cli command: optimum-cli builds all parsers at start)."""
    import typer

    from memlora.export.command import main

    app = typer.Typer(add_completion=False)
    app.command()(main)
    return typer.main.get_command(app)


def _add_options(parser: ArgumentParser, command: TyperCommand) -> None:
    """One argparse option per click option, as click shows it (name, metavar, help with its default):
    for `--help` only, since the arguments are parsed by click."""
    ctx = command.make_context(PROG, [], resilient_parsing=True)
    for param in command.params:
        shown, help_text = param.get_help_record(ctx)
        shape = {"action": "store_true"} if param.is_flag else {"metavar": shown.rpartition(" ")[2]}
        parser.add_argument(*param.opts, *param.secondary_opts, help=help_text.replace("%", "%%"),
                            default=argparse.SUPPRESS, **shape)


def _keep_arguments(parser: ArgumentParser) -> None:
    """Make `parser` hand its arguments over unparsed as `argv` (argparse would reject an unknown option
    in its own words); a help flag still prints argparse's help."""
    parse = parser.parse_known_args

    def parse_known_args(args: list[str], namespace: Namespace | None = None) -> tuple[Namespace, list[str]]:
        if any(flag in args for flag in HELP_FLAGS):
            return parse(args, namespace)
        namespace, _ = parse([], namespace)
        namespace.argv = list(args)
        return namespace, []

    parser.parse_known_args = parse_known_args


class MemloraExportCommand(BaseOptimumCLICommand):
    """`optimum-cli export memlora ARGS` runs `memlora export ARGS`."""

    COMMAND = CommandInfo(name="memlora", help="Export a model and its memlora LoRA adapters into a memlora "
                                               "bundle (the options of `memlora export`).")

    @staticmethod
    def parse_args(parser: ArgumentParser) -> None:
        _add_options(parser, _export_command())
        _keep_arguments(parser)

    def run(self) -> None:
        import typer

        from memlora.cli import app

        command = typer.main.get_command(app).commands["export"]
        command.main(args=self.args.argv, prog_name=PROG, standalone_mode=True)  # click reports and exits


REGISTER_COMMANDS = [(MemloraExportCommand, ExportCommand)]
