"""Bounded HTTP GET of JSON documents for discovery and JWKS (RFC 8414, OpenID Connect Discovery).

Every outbound request the auth layer makes goes through :func:`fetch_json`, so URL policy lives in
one place: :func:`check_fetch_url` refuses anything but ``http``/``https`` (no ``file:`` or
``data:``: CVE-2026-48522) and is the hook where an SSRF guard (private address ranges, DNS
pinning) will be added. Responses are capped in size and time, redirects are not followed, and the
body is parsed with the same strict JSON parser as tokens.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final
from urllib.parse import urlsplit

import httpx

from securemcp.auth._compact import loads_strict

__all__ = ["DEFAULT_MAX_BYTES", "DEFAULT_TIMEOUT", "FetchError", "check_fetch_url", "fetch_json"]

#: Largest metadata or JWKS document accepted.
DEFAULT_MAX_BYTES: Final = 256 * 1024
#: Total time allowed for one fetch, in seconds.
DEFAULT_TIMEOUT: Final = 5.0


class FetchError(Exception):
    """A discovery or JWKS document could not be fetched or parsed (internal, not client-facing)."""


def check_fetch_url(url: str) -> str:
    """Return ``url`` if the auth layer may fetch it, else raise ``ValueError`` saying why."""
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise ValueError(f"{url!r} is not a valid URL") from exc
    if parts.scheme not in {"http", "https"}:
        raise ValueError(f"{url!r} must be an http:// or https:// URL")
    if not parts.hostname:
        raise ValueError(f"{url!r} has no host")
    if parts.username is not None or parts.password is not None:
        raise ValueError(f"{url!r} must not contain credentials")
    return url


async def _get(client: httpx.AsyncClient, url: str, max_bytes: int) -> bytes:
    async with client.stream(
        "GET", url, headers={"Accept": "application/json"}, follow_redirects=False
    ) as response:
        if response.status_code != 200:
            raise FetchError(f"GET {url} returned HTTP {response.status_code}")
        declared = response.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > max_bytes:
            raise FetchError(f"GET {url} response larger than {max_bytes} bytes")
        body = bytearray()
        async for chunk in response.aiter_bytes():
            body += chunk
            if len(body) > max_bytes:
                raise FetchError(f"GET {url} response larger than {max_bytes} bytes")
        return bytes(body)


async def fetch_json(
    client: httpx.AsyncClient | None,
    url: str,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    time_limit: float = DEFAULT_TIMEOUT,
) -> dict[str, Any]:
    """GET ``url`` and return its body as a JSON object, or raise :class:`FetchError`."""
    try:
        check_fetch_url(url)
    except ValueError as exc:
        raise FetchError(str(exc)) from exc
    try:
        async with asyncio.timeout(time_limit):
            if client is None:
                async with httpx.AsyncClient(timeout=time_limit, follow_redirects=False) as own:
                    body = await _get(own, url, max_bytes)
            else:
                body = await _get(client, url, max_bytes)
    except TimeoutError as exc:
        raise FetchError(f"GET {url} timed out after {time_limit} s") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"GET {url} failed: {type(exc).__name__}") from exc
    try:
        document = loads_strict(body)
    except ValueError as exc:
        raise FetchError(f"GET {url} did not return strict JSON") from exc
    if not isinstance(document, dict):
        raise FetchError(f"GET {url} did not return a JSON object")
    return document
