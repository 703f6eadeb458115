"""Deployment mode, as the auth layer sees it (``SECUREMCP_ENV=production``).

Kept inside :mod:`securemcp.auth` so verifiers can validate their configuration without importing
the server or pipeline modules.
"""

from __future__ import annotations

import os

__all__ = ["is_production"]


def is_production() -> bool:
    """``True`` when ``SECUREMCP_ENV=production`` (insecure development settings are refused)."""
    return os.environ.get("SECUREMCP_ENV", "").strip().lower() == "production"
