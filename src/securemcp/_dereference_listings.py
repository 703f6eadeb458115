"""FastMCP's schema dereferencing middleware, entered only for the two listings it rewrites.

FastMCP installs ``DereferenceRefsMiddleware`` on every server (``dereference_schemas=True``, the
default): it inlines JSON Schema ``$ref`` definitions in ``tools/list`` and
``resources/templates/list`` results, for clients that cannot follow them. For every other
message it has nothing to do, yet FastMCP's generic middleware dispatch still runs it: each
``tools/call`` builds three handler closures (``on_message``, ``on_request``, ``on_call_tool``)
and awaits a coroutine through each, only for all three to pass the call on unchanged. On our
benchmark host that is about 2% of a server-side ``tools/call`` with an OpenTelemetry SDK.

:class:`DereferenceListings` is that middleware with one change: a message other than those two
listings goes straight to the next handler, which is exactly what FastMCP's pass-through hooks
do with it. The listings run FastMCP's own dispatch and hooks. securemcp servers get it in place
of FastMCP's instance (:func:`install`); servers securemcp does not build keep FastMCP's.

This module relies on FastMCP internals (the middleware class and the hooks it overrides);
``tests/test_dereference_listings.py`` pins them.
"""

from __future__ import annotations

from typing import Any, Final

from fastmcp.server.middleware.dereference import DereferenceRefsMiddleware
from fastmcp.server.middleware.middleware import CallNext, MiddlewareContext

__all__ = ["REWRITTEN_METHODS", "DereferenceListings", "install"]

#: The messages whose results FastMCP's dereferencing rewrites (its two overridden hooks).
REWRITTEN_METHODS: Final = frozenset({"tools/list", "resources/templates/list"})


class DereferenceListings(DereferenceRefsMiddleware):
    """``DereferenceRefsMiddleware``, passing every message it does not rewrite straight on."""

    async def __call__(self, context: MiddlewareContext[Any], call_next: CallNext[Any, Any]) -> Any:
        if context.method in REWRITTEN_METHODS:
            return await super().__call__(context, call_next)
        return await call_next(context)


def install(server: Any) -> bool:
    """Give ``server`` (a securemcp server) :class:`DereferenceListings` in place of FastMCP's.

    Returns whether FastMCP's middleware was found (``dereference_schemas=False`` servers have
    none, and keep none).
    """
    chain = server.middleware
    for index, middleware in enumerate(chain):
        if type(middleware) is DereferenceRefsMiddleware:
            chain[index] = DereferenceListings()
            return True
    return False
