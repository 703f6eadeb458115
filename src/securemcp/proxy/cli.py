"""``securemcp proxy ...``: serve, lock and check a secure proxy for third-party MCP servers.

::

    securemcp proxy serve CONFIG [--transport stdio|http] [--host H] [--port P] [--path /mcp]
                                             runs until stopped; 2 on a configuration error
    securemcp proxy lock CONFIG [--upstream NAME ...] [--accept-findings]
                                             0 pinned, 1 some definitions flagged and not pinned,
                                             2 configuration error or an upstream unreachable
    securemcp proxy check CONFIG [--upstream NAME ...]
                                             0 lockfile matches the upstreams, 1 drift,
                                             2 configuration error or an upstream unreachable
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

__all__ = ["register"]


def _load(path: str) -> Any:
    from securemcp.errors import ConfigurationError
    from securemcp.proxy.config import load_config

    try:
        return load_config(path)
    except ConfigurationError as exc:
        print(f"securemcp proxy: {exc}", file=sys.stderr)
        return None


def _lock(args: argparse.Namespace, *, write: bool) -> int:
    from securemcp.errors import ConfigurationError
    from securemcp.proxy.locking import lock_upstreams

    config = _load(args.config)
    if config is None:
        return 2
    try:
        _, reports = asyncio.run(
            lock_upstreams(
                config,
                only=args.upstream,
                accept_findings=getattr(args, "accept_findings", False),
                write=write,
            )
        )
    except ConfigurationError as exc:
        print(f"securemcp proxy: {exc}", file=sys.stderr)
        return 2
    for report in reports:
        print("\n".join(report.lines()))
    if any(r.error for r in reports):
        print("securemcp proxy: an upstream could not be reached; nothing written", file=sys.stderr)
        return 2
    if write:
        print(f"lockfile: {config.lockfile}")
        return 1 if any(r.refused for r in reports) else 0
    return 0 if all(r.diff.is_clean and not r.refused for r in reports) else 1


def _serve(args: argparse.Namespace) -> int:
    from securemcp.errors import ConfigurationError
    from securemcp.proxy.server import create_proxy

    config = _load(args.config)
    if config is None:
        return 2
    try:
        proxy = create_proxy(config)
    except ConfigurationError as exc:
        print(f"securemcp proxy: {exc}", file=sys.stderr)
        return 2
    if args.transport == "stdio":
        proxy.run(transport="stdio", show_banner=False)
    else:
        proxy.run(
            transport="http", host=args.host, port=args.port, path=args.path, show_banner=False
        )
    return 0


def register(subparsers: Any) -> None:
    """Add the ``proxy`` command to the top-level CLI's subparsers."""
    proxy = subparsers.add_parser(
        "proxy", help="put third-party MCP servers behind securemcp (serve, lock, check)"
    )
    commands = proxy.add_subparsers(dest="proxy_command", metavar="COMMAND", required=True)

    serve = commands.add_parser("serve", help="run the proxy")
    serve.add_argument("config", help="the proxy configuration file (TOML)")
    serve.add_argument("--transport", choices=["stdio", "http"], default="stdio")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--path", default="/mcp")
    serve.set_defaults(func=_serve)

    lock = commands.add_parser("lock", help="review and pin the upstreams' current definitions")
    lock.add_argument("config", help="the proxy configuration file (TOML)")
    lock.add_argument("--upstream", action="append", help="only this upstream (repeatable)")
    lock.add_argument(
        "--accept-findings",
        action="store_true",
        help="pin definitions flagged for hidden instructions too (after reviewing them)",
    )
    lock.set_defaults(func=lambda args: _lock(args, write=True))

    check = commands.add_parser("check", help="compare the lockfile with the upstreams")
    check.add_argument("config", help="the proxy configuration file (TOML)")
    check.add_argument("--upstream", action="append", help="only this upstream (repeatable)")
    check.set_defaults(func=lambda args: _lock(args, write=False))
