"""The ``securemcp`` command."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

__all__ = ["main"]

#: Modules contributing subcommands through ``register(subparsers)``.
_COMMAND_MODULES = ("securemcp.audit.cli", "securemcp.policy.cli", "securemcp.proxy.cli")


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="securemcp",
        description="securemcp: the production security layer for FastMCP servers.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser(
        "demo",
        help="run a zero-configuration demo: two users, scopes, a hidden tool, a forged token",
    )
    for module in _COMMAND_MODULES:
        importlib.import_module(module).register(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the CLI; returns the process exit code (2 for usage errors)."""
    parser = _build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from securemcp import __version__

        print(f"securemcp {__version__}")
        return 0
    if args.command == "demo":
        from securemcp.demo import main as demo_main

        return demo_main()
    func = getattr(args, "func", None)
    if func is not None:
        return int(func(args))
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
