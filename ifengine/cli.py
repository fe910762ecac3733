"""Command line: argument parsing only; every command calls the same API a Python user would."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

log = logging.getLogger("ifengine.cli")

# Each command is ifengine/commands/<name>.py with register(subparsers).
COMMANDS = ("generate", "export", "build", "plan", "bench", "info", "serve")


class OneLineParser(argparse.ArgumentParser):
    """Usage errors as one line, like every other CLI error; the full usage is a --help away."""

    def error(self, message: str):
        self.exit(2, f"ifengine: error: {message} (see `{self.prog} --help`)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="ifengine", description="ifengine: a lean inference engine for the DeepFloyd IF cascade."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        # a listed command whose module is missing is a broken install: fail, never drop it silently
        importlib.import_module(f"ifengine.commands.{name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    if not getattr(args, "run", None):
        parser.print_help()
        return 2
    from .engines.errors import TensorRTUnavailable
    from .errors import MissingExtra

    try:
        return args.run(args)
    except (ValueError, OSError, FloatingPointError, TensorRTUnavailable, MissingExtra) as err:
        # user-facing problems (bad input, missing files, numeric failure) get one clear line, no traceback
        log.debug("details", exc_info=True)
        sys.stderr.write(f"ifengine: error: {err}\n")
        return 2


if __name__ == "__main__":
    sys.exit(main())
