"""The `hebbret` command: parses arguments and calls the library; no logic of its own.

One module per command group, each with ``add_parser(subparsers)`` and its handlers; choices and
defaults come from :mod:`hebbret.config`, and each handler imports the library it calls, so
``hebbret --help`` imports neither torch, timm nor FAISS.
"""

from __future__ import annotations

import argparse
import logging

from ..version import __version__
from . import embed, eval, index, run, train

COMMANDS = (run, train, embed, index, eval)  # in the order `hebbret --help` lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hebbret", description=__doc__.split("\n\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"hebbret {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("faiss").setLevel(logging.WARNING)
    try:
        args.func(args)
    except (ValueError, FloatingPointError) as e:
        logging.getLogger("hebbret").error("%s", e)
        return 2
    except OSError as e:  # missing paths, permissions, a full disk: the path is in the message
        logging.getLogger("hebbret").error("%s", e if e.filename or not e.strerror else
                                           f"{e.strerror}")
        return 2
    return 0
