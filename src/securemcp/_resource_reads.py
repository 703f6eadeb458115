"""How audit records name a resource read (DESIGN guarantee 5: arguments are recorded as a hash).

A resource template (RFC 6570 URI Template) is the resource analogue of a tool with arguments:
the URI a caller reads carries the values of the template's parameters
(``users://alice@example.com/ssn``, ``q://search?token=...``). So a template read is recorded like
a tool call: ``target`` is the template's URI template (``users://{email}/ssn``) and the
parameter values go where a tool's arguments go, hashed into ``args_sha256`` (and stored,
redacted, only when the log records arguments). The values are those FastMCP's matcher extracts
and hands to the template function (before its type conversion), so every spelling of one read
(``alice%40example.com``, a fragment, query parameters the template does not name) hashes the
same. A concrete resource's URI names a fixed resource and is recorded as it is.

A record written before the URI was resolved (a failed authentication) cannot tell a concrete
URI from parameter values, and the text is whatever an unauthenticated caller sent: it keeps
only the URI's scheme (RFC 3986 section 3.1), e.g. ``users://``.

This module speaks FastMCP's URI-template matcher (``fastmcp.resources.template``).
"""

from __future__ import annotations

import re
from typing import Any, Final

from fastmcp.resources.template import match_uri_template

__all__ = ["audited_read", "template_arguments", "unresolved_target"]

#: An RFC 3986 scheme (``ALPHA *( ALPHA / DIGIT / "+" / "-" / "." )``), of a sane length.
_SCHEME: Final = re.compile(r"[A-Za-z][A-Za-z0-9+.-]{0,31}")


def audited_read(uri: str, uri_template: str | None) -> tuple[str, dict[str, Any]]:
    """``(target, arguments)`` of the audit records of a read of ``uri``, resolved to a concrete
    resource (``uri_template`` is ``None``: the URI, no arguments) or to a template (its URI
    template, and the parameter values read from ``uri``)."""
    if uri_template is None:
        return uri, {}
    return uri_template, template_arguments(uri, uri_template)


def template_arguments(uri: str, uri_template: str) -> dict[str, Any]:
    """The parameter values FastMCP reads from ``uri`` for the template ``uri_template``.

    Path parameters percent-decoded, the query parameters the template names (first value, or
    every value of an exploded ``{?name*}``), under the function's parameter names. A URI the
    template does not match (it should not happen: the template was resolved for it) is kept
    whole under ``uri``, so the record still hashes what was read rather than nothing.
    """
    try:
        params = match_uri_template(uri, uri_template)
    except Exception:  # a matcher failure must not fail the call's audit record
        params = None
    return params if params is not None else {"uri": uri}


def unresolved_target(uri: str) -> str:
    """The target of a resource read recorded before its URI was resolved: its scheme only
    (``users://`` for ``users://alice@example.com/ssn``, ``urn:`` for ``urn:isbn:0451``), or
    ``""`` when the text does not start with a scheme."""
    scheme, colon, rest = uri.partition(":")
    if not colon or _SCHEME.fullmatch(scheme) is None:
        return ""
    return f"{scheme}://" if rest.startswith("//") else f"{scheme}:"
