"""Shared test settings: no banners, no update checks, no network."""

from __future__ import annotations

import os

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.pop("SECUREMCP_ENV", None)
os.environ.pop("SECUREMCP_DEV_SCOPES", None)
