"""The one `recap` command. Each subcommand lives in its own module, imported only when used,
so `recap --help` stays fast and a subcommand's heavy dependencies load only for that subcommand."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> module exposing `add_arguments(parser)`, `run(args) -> int` and a docstring
COMMANDS: dict[str, str] = {
    "samples": "pipeline.samples_cli",
    "ingest": "pipeline.ingest_cli",
    "info": "pipeline.info_cli",
    "filter": "pipeline.filter_cli",
    "report": "pipeline.report_cli",
    "caption": "pipeline.caption_cli",
    "export": "pipeline.export_cli",
    "index": "pipeline.index_cli",
    "search": "pipeline.search_cli",
    "train": "trainer.cli",
    "sample": "trainer.sample_cli",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="recap",
        description="Curate raw web video into a clip library, captions, search and training shards.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        doc = (module.__doc__ or "").strip()
        p = sub.add_parser(name, help=doc.splitlines()[0] if doc else None, description=doc,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
