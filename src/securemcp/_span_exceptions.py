"""Exception events on FastMCP's request spans, without the exception's message (guarantee 5).

FastMCP records an exception raised while it handles a request on the request's ``SERVER``
span (``fastmcp.server.telemetry.record_span_exception``): an ``exception`` event carrying the
message and the stack trace, and the message again as the span's status description. A message
can quote what the caller sent (pydantic's validation errors say ``input_value=...``, even with
``mask_error_details=True``) or anything a tool put into it, so an argument value or a secret
would reach the operator's tracing backend. The MCP SDK's own span middleware sanitizes
validation errors for the same reason (OpenTelemetry semantic conventions, "Recording errors":
instrumentations should not record sensitive data).

The OpenTelemetry SDK then records the escaping exception once more when FastMCP's span context
manager exits (``use_span``: an event with message and stack trace, and the status description
``"<type>: <message>"``).

For every span of a call securemcp guards, and every request span of a securemcp server from
the moment it opens (a request can fail before any call is guarded: ``tools/call`` params that
do not validate, such as ``arguments`` sent as a JSON string, fail with a pydantic message
quoting them), this module keeps what an operator needs to find the failure (``error.type``, an
``exception`` event with ``exception.type`` only, ``ERROR`` status with an identifier-only
description) and drops messages and stack traces: it swaps FastMCP's recorder for one that does
this, and gives each such span its own ``record_exception`` and ``set_status`` that do the same
for whoever calls them (the SDK included). The audit log and the server log keep the details.
Spans of servers securemcp does not guard are untouched.

Once the pipeline has recorded its decision on a span (``securemcp.decision``), the span's status
and ``error.type`` are the pipeline's (a reason code from the documented vocabulary): FastMCP's
recorder then leaves the span alone, instead of adding ``exception`` events for the ``MCPError``
a refusal becomes and replacing the reason code with ``MCPError``.

A securemcp server's request span that fails before the pipeline decides gets an
``error.type`` from securemcp's vocabulary (:func:`record_request_failure`): ``invalid_params``
for params that do not validate (JSON-RPC ``-32602``), never the exception's type (OpenTelemetry
semantic conventions for MCP: ``error.type`` is low-cardinality, the JSON-RPC error code).

This is one of the few modules that touch FastMCP internals (``fastmcp.server.telemetry``).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Callable
from functools import partial
from typing import Any, Final

from fastmcp.exceptions import NotFoundError, ToolError
from fastmcp.exceptions import ValidationError as FastMCPValidationError
from fastmcp.server import telemetry as _fastmcp_telemetry
from mcp import MCPError
from mcp.types import INVALID_PARAMS, INVALID_REQUEST, METHOD_NOT_FOUND
from opentelemetry.trace import Span, Status, StatusCode
from pydantic import ValidationError as PydanticValidationError

from securemcp.context import _CURRENT

__all__ = [
    "guard_span",
    "install",
    "is_guarded",
    "record_request_failure",
    "redact_span",
    "request_error_type",
]

#: Spans of guarded calls (the request's seam span outlives the pipeline's frame: FastMCP
#: records an exception on it again once the pipeline has re-raised).
_GUARDED: weakref.WeakSet[Any] = weakref.WeakSet()
#: Spans whose exceptions are recorded without messages: every guarded span, and every request
#: span of a securemcp server from the moment it opens (:func:`redact_span`).
_REDACTED: weakref.WeakSet[Any] = weakref.WeakSet()

_fastmcp_record = _fastmcp_telemetry.record_span_exception


#: A status description kept as is: an identifier (an error code or a type name), nothing else.
_IDENTIFIER = re.compile(r"[A-Za-z_][\w.\-]{0,127}")
#: The SDK's ``"<type>: <message>"`` description: the type is kept.
_TYPED_MESSAGE = re.compile(r"([A-Za-z_][\w.]{0,127}): ")


def is_guarded(span: Span) -> bool:
    """Whether ``span`` is already the span of a call securemcp guards."""
    return span in _GUARDED


def guard_span(span: Span) -> None:
    """Mark ``span`` (a recording span) as belonging to a call securemcp guards, and redact the
    exceptions recorded on it (:func:`redact_span`)."""
    if span in _GUARDED:
        return
    _GUARDED.add(span)
    redact_span(span)


def redact_span(span: Span, *, keep_identifiers: bool = True) -> None:
    """Record exceptions on ``span`` (a recording span) without their messages or stack traces,
    whoever records them, without claiming it for a call (:func:`is_guarded` stays false).

    A status description is kept only when it is an identifier (an error code, a type name),
    or the type of the SDK's ``"<type>: <message>"``; with ``keep_identifiers=False`` it is
    always dropped. That is for spans whose descriptions are another party's text, such as the
    proxy's calls to an upstream server (:mod:`securemcp.proxy.spans`): an upstream's error
    message may be nothing but an identifier-shaped secret, or start with one.

    The span's own ``record_exception`` and ``set_status`` are replaced by ones that hold it by
    weak reference: a strong one would make every such span part of a reference cycle, kept
    alive (with all its attributes) until the garbage collector runs, and make it run twice as
    often.
    """
    if span in _REDACTED:
        return
    _REDACTED.add(span)
    reference = weakref.ref(span)
    describe = _identifier if keep_identifiers else _no_description
    try:
        span.record_exception = partial(_record_exception, reference)  # type: ignore[method-assign]
        span.set_status = partial(_set_status, type(span).set_status, describe, reference)  # type: ignore[method-assign]
    except AttributeError:  # a span type without instance attributes: FastMCP's path only
        pass


def _record_exception(
    reference: weakref.ref[Span],
    exception: BaseException,
    attributes: Any = None,
    *args: Any,
    **kwargs: Any,
) -> None:
    """``Span.record_exception`` without the message, the stack trace or extra attributes."""
    span = reference()
    if span is not None:
        span.add_event("exception", {"exception.type": _qualified_name(type(exception))})


def _set_status(
    set_status: Any,
    describe: Callable[[str | None], str | None],
    reference: weakref.ref[Span],
    status: Status | StatusCode,
    description: str | None = None,
) -> None:
    """``Span.set_status`` keeping only what ``describe`` keeps of the description."""
    span = reference()
    if span is None:
        return
    if isinstance(status, Status):
        status = Status(status.status_code, describe(status.description))
        set_status(span, status)
    else:
        set_status(span, status, describe(description))


def _no_description(description: str | None) -> None:
    return None


def _identifier(description: str | None) -> str | None:
    if not description or _IDENTIFIER.fullmatch(description):
        return description
    typed = _TYPED_MESSAGE.match(description)
    return typed.group(1) if typed is not None else None


def record_span_exception(span: Span, e: Exception) -> None:
    """FastMCP's recorder, minus the exception message and stack trace on redacted spans, and a
    no-op once the pipeline has recorded its decision on the span."""
    if span not in _REDACTED:
        if _CURRENT.get() is None or not span.is_recording():
            _fastmcp_record(span, e)
            return
        guard_span(span)  # a span FastMCP opened inside a guarded call
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    if "securemcp.decision" in attributes:
        # The pipeline recorded the call: its error.type and status (the reason code) stand, and
        # the exception is the refusal's MCPError or one already recorded where it was raised.
        return
    error_type = "tool_error" if isinstance(e, ToolError) else type(e).__qualname__
    span.set_attribute("error.type", error_type)
    span.record_exception(e)
    span.set_status(Status(StatusCode.ERROR, error_type))


#: ``error.type`` of a request a securemcp server answered with a JSON-RPC error before any call
#: was guarded, by the error's code (JSON-RPC 2.0 section 5.1; any other code: ``_OTHER``).
_JSONRPC_ERROR_TYPES: Final = {
    INVALID_REQUEST: "invalid_request",
    METHOD_NOT_FOUND: "method_not_found",
    INVALID_PARAMS: "invalid_params",
}


#: The name and ``mcp.method.name`` of a request for a method the server does not serve.
_UNKNOWN_METHOD: Final = "_OTHER"


def request_error_type(exc: Exception) -> str:
    """The ``error.type`` of a securemcp server's request that failed before the pipeline recorded
    a decision, from securemcp's vocabulary (``securemcp.telemetry.ERROR_TYPES``).

    OpenTelemetry semantic conventions for MCP: ``error.type`` is low-cardinality, the JSON-RPC
    error's code for a request answered with one. Params that do not validate (pydantic's
    ``ValidationError``, answered ``-32602``) are ``invalid_params``; an unknown component is
    ``not_found``; a JSON-RPC error by its code; anything else ``_OTHER`` (the ``exception`` event
    still names the exception's type).
    """
    if isinstance(exc, ToolError):
        return "tool_error"
    if isinstance(exc, (PydanticValidationError, FastMCPValidationError)):
        return "invalid_params"
    if isinstance(exc, NotFoundError):
        return "not_found"
    if isinstance(exc, MCPError):
        return _JSONRPC_ERROR_TYPES.get(exc.error.code, "_OTHER")
    if isinstance(exc, TimeoutError):
        return "timeout"
    return "_OTHER"


def record_request_failure(span: Span, exc: Exception) -> None:
    """Record ``exc``, escaping a securemcp server's request span (redacted since it opened), with
    an ``error.type`` from the vocabulary (:func:`request_error_type`); a no-op once the pipeline
    has recorded its decision on the span, as in :func:`record_span_exception`. A request for a
    method the server does not serve is renamed ``_OTHER``."""
    if not span.is_recording():
        return
    attributes = getattr(span, "attributes", None) or {}
    if "securemcp.decision" in attributes:
        return
    redact_span(span)  # already, from the moment it opened: kept for any other caller
    error_type = request_error_type(exc)
    if error_type == "method_not_found":
        # The method is text the caller chose (unbounded, and it may hold anything): it leaves
        # the span's name and mcp.method.name, as HTTP's conventions do with unknown methods.
        span.update_name(_UNKNOWN_METHOD)
        span.set_attribute("mcp.method.name", _UNKNOWN_METHOD)
    span.set_attribute("error.type", error_type)
    span.record_exception(exc)
    span.set_status(Status(StatusCode.ERROR, error_type))


def _qualified_name(kind: type[BaseException]) -> str:
    module = kind.__module__
    return kind.__qualname__ if module == "builtins" else f"{module}.{kind.__qualname__}"


def install() -> None:
    """Route FastMCP's span exception recording through :func:`record_span_exception`."""
    if getattr(_fastmcp_telemetry, "record_span_exception", None) is not record_span_exception:
        _fastmcp_telemetry.record_span_exception = record_span_exception
