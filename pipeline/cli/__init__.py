"""The one `recap` command. Each subcommand lives in its own module, imported only when that
subcommand runs, so `recap --help` stays fast and a subcommand loads only what it needs; the help
lines of the others are read from their docstrings without importing them."""

from __future__ import annotations

import argparse
import ast
import contextlib
import importlib
import importlib.metadata
import importlib.util
import os
import sys
from pathlib import Path

# subcommand -> module exposing `add_arguments(parser)`, `run(args) -> int` and a docstring
COMMANDS: dict[str, str] = {
    "samples": "pipeline.cli.samples",
    "ingest": "pipeline.cli.ingest",
    "info": "pipeline.cli.info",
    "filter": "pipeline.cli.filter",
    "remove": "pipeline.cli.remove",
    "report": "pipeline.cli.report",
    "caption": "pipeline.cli.caption",
    "export": "pipeline.cli.export",
    "index": "pipeline.cli.index",
    "search": "pipeline.cli.search",
    "serve": "pipeline.cli.serve",
    "train": "trainer.cli",
    "sample": "trainer.sample_cli",
}


def command_doc(module_name: str) -> str:
    """A command module's docstring, read from its source (importing it would load its job)."""
    spec = importlib.util.find_spec(module_name)
    return (ast.get_docstring(ast.parse(Path(spec.origin).read_text())) or "").strip()


def installed_version() -> str:
    """recap's version as pip installed it; a source tree run with `python -m pipeline.cli` has none."""
    try:
        return importlib.metadata.version("recap")
    except importlib.metadata.PackageNotFoundError:
        return "(not installed: run from a source tree)"


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The `recap` parser; with `only`, just that subcommand's module is imported and given its
    options (the others are listed with their help line)."""
    parser = argparse.ArgumentParser(
        prog="recap",
        description="Curate raw web video into a clip library, captions, search and training shards.",
    )
    parser.add_argument("--version", action="version", version=f"recap {installed_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        doc = command_doc(module_name)
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        if only is None or name == only:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_run=module.run, _parser=p)
    return parser


def _bars_hidden_if_asked(args: argparse.Namespace) -> contextlib.AbstractContextManager:
    """`--no-progress`: every bar of the command hidden, in the processes it starts too."""
    if not getattr(args, "no_progress", False):
        return contextlib.nullcontext()
    from trainer.progress import hidden_bars  # lazy: tqdm only for a command that draws bars
    return hidden_bars()


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    command = next((a for a in argv if not a.startswith("-")), "")
    parser = build_parser(only=command)
    args, unknown = parser.parse_known_args(argv)
    if unknown:   # said by the subcommand's parser, with its usage line, not the top-level one
        getattr(args, "_parser", parser).error(f"unrecognized arguments: {' '.join(unknown)}")
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        with _bars_hidden_if_asked(args):
            status = int(args._run(args) or 0)
        sys.stdout.flush()              # a closed pipe shows here, not at exit
        return status
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # the reader went away (`recap info LIB | head`): stop quietly, and let the interpreter's
        # final flush of stdout go nowhere instead of raising again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
