"""securemcp: the production security layer for FastMCP servers.

Change ``from fastmcp import FastMCP`` to ``from securemcp import FastMCP`` and add ``scopes=`` to
decorators: every tool call, resource read and prompt then runs in a fresh per-call security
context with a verified identity and a scope decision.

Imports are lazy (like FastMCP's own), so ``import securemcp`` costs about what ``import fastmcp``
does; FastMCP's stable public names are re-exported so the one-line import change is the whole
migration.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from fastmcp import Client as Client
    from fastmcp import Context as Context
    from fastmcp import settings as settings
    from fastmcp.prompts import Message as Message
    from fastmcp.prompts import Prompt as Prompt
    from fastmcp.prompts import PromptResult as PromptResult
    from fastmcp.resources import Resource as Resource
    from fastmcp.resources import ResourceResult as ResourceResult
    from fastmcp.resources import ResourceTemplate as ResourceTemplate
    from fastmcp.tools import FunctionTool as FunctionTool
    from fastmcp.tools import Tool as Tool
    from fastmcp.tools import ToolResult as ToolResult

    from securemcp.context import Actor as Actor
    from securemcp.context import Principal as Principal
    from securemcp.context import SecurityContext as SecurityContext
    from securemcp.context import current as current
    from securemcp.dependencies import CurrentSecurityContext as CurrentSecurityContext
    from securemcp.scopes import with_scopes as with_scopes
    from securemcp.server import FastMCP as FastMCP
    from securemcp.server import Server as Server

# name -> (module, attribute)
_LAZY: dict[str, tuple[str, str]] = {
    # securemcp's own API
    "FastMCP": ("securemcp.server", "FastMCP"),
    "Server": ("securemcp.server", "Server"),
    "current": ("securemcp.context", "current"),
    "SecurityContext": ("securemcp.context", "SecurityContext"),
    "Principal": ("securemcp.context", "Principal"),
    "Actor": ("securemcp.context", "Actor"),
    "CurrentSecurityContext": ("securemcp.dependencies", "CurrentSecurityContext"),
    "with_scopes": ("securemcp.scopes", "with_scopes"),
    # FastMCP's stable names: `from securemcp import X` works wherever `from fastmcp import X` did
    "Client": ("fastmcp", "Client"),
    "Context": ("fastmcp", "Context"),
    "settings": ("fastmcp", "settings"),
    "Tool": ("fastmcp.tools", "Tool"),
    "FunctionTool": ("fastmcp.tools", "FunctionTool"),
    "ToolResult": ("fastmcp.tools", "ToolResult"),
    "Resource": ("fastmcp.resources", "Resource"),
    "ResourceTemplate": ("fastmcp.resources", "ResourceTemplate"),
    "ResourceResult": ("fastmcp.resources", "ResourceResult"),
    "Prompt": ("fastmcp.prompts", "Prompt"),
    "Message": ("fastmcp.prompts", "Message"),
    "PromptResult": ("fastmcp.prompts", "PromptResult"),
}

__all__ = sorted([*_LAZY, "__version__"])


def __getattr__(name: str) -> Any:
    try:
        module_name, attribute = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'securemcp' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module_name), attribute)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
