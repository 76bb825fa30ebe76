"""MkDocs hooks: the command-line reference page is generated from the parser at build time,
so it cannot drift from ``scalenet --help``."""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- the parser's help, generated at build time -->"


def cli_reference() -> str:
    """Markdown: each command's ``--help``, as ``scalenet COMMAND --help`` prints it at 100 columns."""
    os.environ["COLUMNS"] = "100"  # argparse wraps to the terminal width: fix it for the page
    from scalenet.cli import build_parser

    parser = build_parser()
    parser.prog = "scalenet"
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))  # noqa: SLF001
    out = ["## scalenet", "", "```", parser.format_help().rstrip(), "```", ""]
    for name, sub in subparsers.choices.items():
        out += [f"## scalenet {name}", "", "```", sub.format_help().rstrip(), "```", ""]
    return "\n".join(out)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 - MkDocs's signature
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown
