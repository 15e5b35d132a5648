"""Command-line entry point: ``dpcdvae [--debug] <command> ...``.

Every command is a thin argparse wrapper around a typed, importable function, so the Python API
and the CLI are the same thing. Each subpackage owns its commands in ``<pkg>/commands.py`` with a
``register(subparsers)`` function; heavy imports (torch, pymatgen) happen inside the handlers.
A user mistake is answered with one line ``dpcdvae: error: <message>`` and exit status 1; ``--debug``
shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from dpcdvae.errors import DPCDVAEError, missing_dependency_message, one_line

# module -> the commands it registers (named here so that a module that cannot be imported, e.g. for
# a missing optional dependency, still answers those commands with one line saying what to install)
_COMMAND_MODULES: dict[str, tuple[str, ...]] = {
    "dpcdvae.data.commands": ("data",),
    "dpcdvae.training.commands": ("train", "train-property", "export"),
    "dpcdvae.sampling.commands": ("sample", "reconstruct"),
    "dpcdvae.evaluation.commands": ("evaluate",),
    "dpcdvae.demo": ("demo",),
}

CLIError = DPCDVAEError  # the former name, kept for backwards compatibility

# what main() answers with one line (everything else is a bug: traceback)
USER_ERRORS = (DPCDVAEError, ValueError, FileNotFoundError, FileExistsError, IsADirectoryError,
               NotADirectoryError, PermissionError)


def _unavailable(sub: argparse._SubParsersAction, command: str, message: str) -> None:
    """Register ``command`` as a stub that answers ``message`` (whatever its arguments)."""
    p = sub.add_parser(command, help=f"(unavailable: {message})", add_help=False)

    def fail(args: argparse.Namespace) -> int:
        raise DPCDVAEError(message)

    p.set_defaults(func=fail, _accepts_any_args=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dpcdvae", description="DP-CDVAE crystal generation")
    from dpcdvae import __version__

    parser.add_argument("--version", action="version", version=f"dpcdvae {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, commands in _COMMAND_MODULES.items():
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as err:
            for command in commands:
                _unavailable(sub, command, missing_dependency_message(err, f"dpcdvae {command}"))
            continue
        mod.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and not getattr(args, "_accepts_any_args", False):
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        ret = args.func(args)
    except KeyboardInterrupt:
        if args.debug:
            raise
        print("dpcdvae: interrupted", file=sys.stderr)
        return 130
    except ModuleNotFoundError as err:  # a lazy import of an optional dependency in a handler
        if args.debug:
            raise
        print(f"dpcdvae: error: {missing_dependency_message(err, f'dpcdvae {args.command}')}", file=sys.stderr)
        return 1
    except USER_ERRORS as err:
        if args.debug:
            raise
        print(f"dpcdvae: error: {one_line(err)}", file=sys.stderr)
        return 1
    return int(ret or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
