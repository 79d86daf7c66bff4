"""The argument parser: the global options, then one subcommand per module of this package."""

from __future__ import annotations

import argparse
from types import ModuleType

from turborank.cli import demo, merge_runs, rank, serve, verify
from turborank.cli import eval as eval_command
from turborank.cli.common import fail
from turborank.cli.version import VersionAction

# Subcommand name -> its module (HELP, add_arguments(parser), run(args) -> exit status), in the
# order `turborank --help` lists them.
COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "rank": rank,
    "serve": serve,
    "eval": eval_command,
    "merge-runs": merge_runs,
    "verify": verify,
}


class DefaultsShown(argparse.HelpFormatter):
    """``--help`` shows each option's default after its help, unless the help already says it or
    there is none worth showing (unset, off, or a flag)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if "default" in text or default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return f"{text} (default: {default})" if text else f"default: {default}"


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of usage + message
        raise SystemExit(fail(f"{message} (see `{self.prog} --help`)", code=2))


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="turborank", description="Fast, faithful JinaBERT rerankers.")
    parser.add_argument("--version", action=VersionAction, help="print the version and the stack, then exit")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, command in COMMANDS.items():
        command.add_arguments(sub.add_parser(name, help=command.HELP, formatter_class=DefaultsShown))
    return parser
