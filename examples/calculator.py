"""The README's before/after: a FastMCP calculator moved to securemcp with one import.

Run it over stdio (development identity, loudly marked unverified):

    python examples/calculator.py

or with a real identity provider, see docs/identity.md.
"""

from __future__ import annotations

from securemcp import FastMCP, current

mcp = FastMCP("calculator")


@mcp.tool
def add(a: float, b: float) -> float:
    """Add two numbers (no scope needed)."""
    return a + b


@mcp.tool(scopes=["calc:write"])
def store(name: str, value: float) -> str:
    """Store a named value; needs the calc:write scope."""
    return f"stored {name}={value} for {current().principal.subject}"


@mcp.tool(scopes=["calc:admin"])
def reset() -> str:
    """Reset everything; needs calc:admin."""
    return "reset"


if __name__ == "__main__":
    mcp.run(show_banner=False)
