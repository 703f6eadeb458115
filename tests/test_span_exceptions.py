"""securemcp._span_exceptions: a guarded span keeps exception types, never messages."""

from __future__ import annotations

from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import Status, StatusCode

from securemcp._span_exceptions import guard_span, redact_span

SECRET = "s3cret-argument-value"


def test_a_guarded_span_drops_messages_whoever_records_them() -> None:
    """The SDK's own ``use_span`` exit calls these methods directly, bypassing FastMCP."""
    span = TracerProvider().get_tracer("test").start_span("tools/call x")
    guard_span(span)
    span.record_exception(ValueError(f"no such key: {SECRET}"), {"extra": SECRET})
    span.set_status(Status(StatusCode.ERROR, f"ValueError: no such key: {SECRET}"))
    span.end()
    (event,) = span.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError"}
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description == "ValueError"  # the type survives, the message does not


def test_identifier_descriptions_are_kept_and_free_text_dropped() -> None:
    span = TracerProvider().get_tracer("test").start_span("tools/call x")
    guard_span(span)
    span.set_status(StatusCode.ERROR, "policy_denied")
    assert span.status.description == "policy_denied"
    span.set_status(StatusCode.ERROR, f"amount {SECRET} is too high")
    assert span.status.description is None
    span.end()


def test_a_strictly_redacted_span_keeps_no_description() -> None:
    """Another party's text (an upstream's error) may be an identifier-shaped secret."""
    span = TracerProvider().get_tracer("test").start_span("tools/call x")
    redact_span(span, keep_identifiers=False)
    span.set_status(StatusCode.ERROR, SECRET)  # identifier-shaped: kept by the default mode
    assert span.status.description is None
    span.set_status(Status(StatusCode.ERROR, f"{SECRET}: quoted back"))
    assert span.status.status_code == StatusCode.ERROR
    assert span.status.description is None
    span.record_exception(ValueError(SECRET))
    span.end()
    (event,) = span.events
    assert dict(event.attributes or {}) == {"exception.type": "ValueError"}


def test_an_unguarded_span_is_left_alone() -> None:
    span = TracerProvider().get_tracer("test").start_span("tools/call x")
    span.record_exception(ValueError(SECRET))
    span.end()
    (event,) = span.events
    assert SECRET in str(dict(event.attributes or {}))


def test_a_guarded_span_is_freed_as_soon_as_it_is_dropped() -> None:
    """Guarding makes no reference cycle: the span does not wait for the garbage collector."""
    import gc
    import weakref

    span = TracerProvider().get_tracer("test").start_span("guarded")
    guard_span(span)
    span.set_status(StatusCode.ERROR, "ValueError: secret text")  # the guarded methods work
    span.record_exception(ValueError("secret text"))
    assert span.status.description == "ValueError"
    assert [dict(e.attributes or {}) for e in span.events] == [{"exception.type": "ValueError"}]
    span.end()
    reference = weakref.ref(span)
    gc.disable()
    try:
        del span
        assert reference() is None
    finally:
        gc.enable()
