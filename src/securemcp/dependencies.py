"""Inject the call's :class:`~securemcp.context.SecurityContext` as a tool parameter.

``def tool(x: int, sec: SecurityContext = CurrentSecurityContext())``: the parameter is filled by
FastMCP's dependency injection and does not appear in the tool's input schema, so a client can
never supply it.
"""

from __future__ import annotations

from types import TracebackType
from typing import cast

from fastmcp.dependencies import Dependency

from securemcp.context import SecurityContext, current

__all__ = ["CurrentSecurityContext"]


class _CurrentSecurityContext(Dependency[SecurityContext]):
    async def __aenter__(self) -> SecurityContext:
        return current()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        return None


def CurrentSecurityContext() -> SecurityContext:
    """Default value that injects the current call's security context."""
    return cast(SecurityContext, _CurrentSecurityContext())
