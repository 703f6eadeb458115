"""A stand-in for a third-party MCP server you cannot modify (plain FastMCP, stdio).

The secure proxy in this folder puts it behind securemcp: see ``proxy.toml`` and
``docs/proxy.md``.
"""

from __future__ import annotations

from fastmcp import FastMCP

vendor = FastMCP("vendor-crm")
CUSTOMERS = {1: "Ada Lovelace", 2: "Grace Hopper"}


@vendor.tool(annotations={"readOnlyHint": True})
def find_customer(customer_id: int) -> str:
    """Look up a customer's name by id."""
    return CUSTOMERS.get(customer_id, "unknown")


@vendor.tool(annotations={"destructiveHint": True})
def delete_customer(customer_id: int) -> str:
    """Delete a customer record."""
    CUSTOMERS.pop(customer_id, None)
    return "deleted"


@vendor.tool
def export_everything() -> str:
    """Export the whole database."""
    return repr(CUSTOMERS)


if __name__ == "__main__":
    vendor.run(transport="stdio", show_banner=False)
