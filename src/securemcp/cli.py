"""The ``securemcp`` command."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

__all__ = ["main"]


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
    parser.print_help(sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
