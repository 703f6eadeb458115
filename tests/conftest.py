"""Shared test settings: no banners, no update checks, no network, a private audit folder."""

from __future__ import annotations

import os
import tempfile

os.environ.setdefault("FASTMCP_SHOW_SERVER_BANNER", "false")
os.environ.setdefault("FASTMCP_CHECK_FOR_UPDATES", "off")
os.environ.pop("SECUREMCP_ENV", None)
os.environ.pop("SECUREMCP_DEV_SCOPES", None)

# Servers built by the tests write the default audit log; keep it (and its development key)
# out of the working tree, in one folder per test session.
_SESSION_DIR = tempfile.mkdtemp(prefix="securemcp-tests-")
os.environ["SECUREMCP_AUDIT_DIR"] = os.path.join(_SESSION_DIR, "audit")
os.environ["SECUREMCP_KEY_DIR"] = os.path.join(_SESSION_DIR, "keys")
