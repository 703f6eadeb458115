"""A payments server behind securemcp: a rules file, human approvals and rate limits.

* ``examples/payments_policy.toml`` decides every call (hot-reloaded when it changes);
* transfers of 1,000 or more wait for an approver (``securemcp approvals list|approve``);
* each user may make 30 calls a minute, each client address 120 before authentication.

Run it over HTTP with a real identity provider by setting ``auth=JWTVerifier(...)``; the test in
``examples/test_payments_server.py`` runs it in memory with the fake identity provider.
"""

from __future__ import annotations

from pathlib import Path

from securemcp import FastMCP, current
from securemcp.policy import RateLimit

HERE = Path(__file__).parent


def build(auth: object = None, approvals: object = None) -> FastMCP:
    mcp = FastMCP(
        "payments",
        auth=auth,
        policy=str(HERE / "payments_policy.toml"),
        approvals=approvals,
        rate_limits=[
            RateLimit("per-user", "30/minute"),
            RateLimit("per-address", "120/minute", per="address"),
        ],
    )

    @mcp.tool(scopes=["payments:read"], annotations={"readOnlyHint": True})
    def balance(currency: str = "EUR") -> dict[str, object]:
        """The caller's balance."""
        return {"owner": current().principal.subject, "currency": currency, "amount": 5000}

    @mcp.tool(scopes=["payments:write"])
    def transfer(to: str, amount: float, currency: str = "EUR", memo: str = "") -> str:
        """Send money (policy: under 1,000 runs at once, 1,000 or more needs an approval)."""
        return f"sent {amount:.2f} {currency} to {to} for {current().principal.subject}"

    return mcp


mcp = build()

if __name__ == "__main__":
    mcp.run(show_banner=False)
