"""Command-line entry point: ``dpcdvae <command> ...``.

Every command is a thin argparse wrapper around a typed, importable function, so the Python API
and the CLI are the same thing. Each subpackage owns its commands in ``<pkg>/commands.py`` with a
``register(subparsers)`` function; heavy imports (torch, pymatgen) happen inside the handlers.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) pairs; a module that does not exist yet is skipped silently.
_COMMAND_MODULES = (
    "dpcdvae.data.commands",
    "dpcdvae.models.commands",
    "dpcdvae.sampling.commands",
    "dpcdvae.evaluation.commands",
    "dpcdvae.demo",
)


class CLIError(Exception):
    """An error with a one-line message for the user (no traceback)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpcdvae", description="DP-CDVAE crystal generation")
    from dpcdvae import __version__

    parser.add_argument("--version", action="version", version=f"dpcdvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in _COMMAND_MODULES:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name == name:
                continue
            raise
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        ret = args.func(args)
    except KeyboardInterrupt:
        print("dpcdvae: interrupted", file=sys.stderr)
        return 130
    except (CLIError, FileNotFoundError, ValueError) as err:
        print(f"dpcdvae: error: {err}", file=sys.stderr)
        return 1
    return int(ret or 0)


if __name__ == "__main__":  # pragma: no cover
    # run the imported module's main so that CLIError raised by handlers is the class caught there
    from dpcdvae.cli import main as _main

    sys.exit(_main())
