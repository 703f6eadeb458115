"""Step timings: where a guarded call's time went (authenticate, authorize, audit).

While the call's SERVER span records, the pipeline times every step that ran and puts each
duration on the span (``securemcp.step.<step>.duration``). A step also becomes an INTERNAL child
span where that helps a reader: by default (``auto``) the step that refused or failed the call
and any step at least the slow-step threshold long; ``all`` gives every step its child, ``off``
none. Without a recording span nothing is timed (the no-SDK hot path is unchanged).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

from otel_support import span_fixtures
from securemcp import FastMCP
from securemcp.audit import AuditLog
from securemcp.policy import Decision
from securemcp.telemetry import STEP_NAMES, Telemetry
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"
SECRET_ARGUMENT = "step-span-secret-argument"

_tracing, spans = span_fixtures()


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


STEP_DURATIONS = {
    "securemcp.authenticate": "securemcp.step.authenticate.duration",
    "securemcp.authorize": "securemcp.step.authorize.duration",
    "securemcp.audit.decision": "securemcp.step.audit.decision.duration",
    "securemcp.audit.outcome": "securemcp.step.audit.outcome.duration",
}


@pytest.fixture
def step_spans(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Set ``SECUREMCP_STEP_SPANS`` (and the slow-step threshold) for servers built afterwards.

    The threshold defaults to 50 ms here, not 1 ms: a first call's steps (token verification,
    opening the audit log) on a loaded CI machine can take a millisecond, and these tests are
    about which steps become spans, not about the default's value.
    """

    def configure(mode: str | None, slow_step_ms: str | None = "50") -> None:
        for name, value in (
            ("SECUREMCP_STEP_SPANS", mode),
            ("SECUREMCP_SLOW_STEP_MS", slow_step_ms),
        ):
            if value is None:
                monkeypatch.delenv(name, raising=False)
            else:
                monkeypatch.setenv(name, value)

    configure(None)
    return configure


SLOW_POLICY_S = 0.1  # a policy decision point twice the tests' threshold


def build(idp: FakeIdentityProvider, audit: Any, *, slow_policy_s: float = 0.0) -> FastMCP:
    def policy(request: Any) -> Decision:
        if slow_policy_s:
            time.sleep(slow_policy_s)  # a slow policy decision point
        if request.principal.subject == "mallory":
            return Decision.deny(f"blocked: {request.arguments.get('text')}")
        return Decision.allow()

    mcp = FastMCP("steps", auth=idp.verifier(audience=AUDIENCE), audit=audit, policy=policy)

    @mcp.tool(scopes=["use"])
    def echo(text: str) -> str:
        return f"len={len(text)}"

    return mcp


def call_span(exporter: InMemorySpanExporter) -> ReadableSpan:
    (span,) = [
        s
        for s in exporter.get_finished_spans()
        if s.kind == trace.SpanKind.SERVER
        and (s.attributes or {}).get("mcp.method.name") == "tools/call"
    ]
    return span


def steps_of(exporter: InMemorySpanExporter, parent: ReadableSpan) -> list[ReadableSpan]:
    assert parent.context is not None
    children = [
        s
        for s in exporter.get_finished_spans()
        if s.parent is not None and s.parent.span_id == parent.context.span_id
    ]
    assert all(s.kind == trace.SpanKind.INTERNAL for s in children)
    return sorted(children, key=lambda s: s.start_time or 0)


def durations_of(span: ReadableSpan) -> dict[str, float]:
    attributes = dict(span.attributes or {})
    return {
        step: float(attributes[name]) for step, name in STEP_DURATIONS.items() if name in attributes
    }


async def test_a_fast_allowed_call_times_every_step_on_its_span_without_child_spans(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": SECRET_ARGUMENT})
    parent = call_span(spans)
    assert steps_of(spans, parent) == []  # nothing failed and nothing was slow: one span
    durations = durations_of(parent)
    assert list(durations) == list(STEP_NAMES)
    assert parent.start_time is not None and parent.end_time is not None
    assert all(0 <= d < 0.05 for d in durations.values())  # under the 50 ms threshold
    assert sum(durations.values()) <= (parent.end_time - parent.start_time) / 1e9


async def test_with_all_every_step_is_a_child_span_in_order_inside_its_span(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    step_spans("all")
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": SECRET_ARGUMENT})
    parent = call_span(spans)
    steps = steps_of(spans, parent)
    assert [s.name for s in steps] == list(STEP_NAMES)
    assert parent.start_time is not None and parent.end_time is not None
    durations = durations_of(parent)
    previous_end = parent.start_time
    for step in steps:
        assert step.start_time is not None and step.end_time is not None
        assert previous_end <= step.start_time <= step.end_time <= parent.end_time
        previous_end = step.end_time
        assert durations[step.name] == pytest.approx((step.end_time - step.start_time) / 1e9)
        assert step.status.status_code == StatusCode.UNSET
        assert step.context is not None and parent.context is not None
        assert step.context.trace_id == parent.context.trace_id
        assert SECRET_ARGUMENT not in str(dict(step.attributes or {}))


async def test_a_slow_step_gets_its_child_span_and_the_fast_ones_do_not(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"), slow_policy_s=SLOW_POLICY_S)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})
    parent = call_span(spans)
    (step,) = steps_of(spans, parent)
    assert step.name == "securemcp.authorize"
    assert step.status.status_code == StatusCode.UNSET
    assert step.start_time is not None and step.end_time is not None
    assert step.end_time - step.start_time >= SLOW_POLICY_S * 1e9
    assert durations_of(parent)["securemcp.authorize"] >= SLOW_POLICY_S


async def test_the_slow_step_threshold_is_configurable(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    step_spans("auto", "1000")
    mcp = build(idp, AuditLog(tmp_path / "audit"), slow_policy_s=SLOW_POLICY_S)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})
    parent = call_span(spans)
    assert steps_of(spans, parent) == []  # 100 ms is not slow against 1 s
    assert durations_of(parent)["securemcp.authorize"] >= SLOW_POLICY_S


async def test_a_forged_token_fails_in_the_authenticate_step(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.bad_token("signed_by_stranger")) as client:
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    parent = call_span(spans)
    (step,) = steps_of(spans, parent)
    assert step.name == "securemcp.authenticate"
    assert step.status.status_code == StatusCode.ERROR
    assert (step.attributes or {}).get("error.type") == "invalid_token"
    assert list(durations_of(parent)) == ["securemcp.authenticate"]


@pytest.mark.parametrize(
    ("subject", "scopes", "error_type"),
    [("bob", [], "insufficient_scope"), ("mallory", ["use"], "policy_denied")],
)
@pytest.mark.parametrize("mode", ["auto", "all"])
async def test_a_refusal_fails_in_the_authorize_step_and_writes_no_decision_step(
    spans: InMemorySpanExporter,
    idp: FakeIdentityProvider,
    tmp_path: Path,
    step_spans: Any,
    mode: str,
    subject: str,
    scopes: list[str],
    error_type: str,
) -> None:
    step_spans(mode)
    mcp = build(idp, AuditLog(tmp_path / "audit"))
    async with connect(mcp, idp.token(subject, scopes=scopes)) as client:
        result = await client.call_tool("echo", {"text": SECRET_ARGUMENT}, raise_on_error=False)
    assert result.is_error
    parent = call_span(spans)
    steps = steps_of(spans, parent)
    expected = ["securemcp.authorize"] if mode == "auto" else list(STEP_NAMES[:2])
    assert [s.name for s in steps] == expected
    assert [s.status.status_code for s in steps][:-1] == [StatusCode.UNSET] * (len(steps) - 1)
    assert steps[-1].status.status_code == StatusCode.ERROR
    assert (steps[-1].attributes or {}).get("error.type") == error_type
    assert list(durations_of(parent)) == list(STEP_NAMES[:2])
    for step in steps:
        assert SECRET_ARGUMENT not in str(dict(step.attributes or {}))
        assert SECRET_ARGUMENT not in str(step.status.description)


async def test_with_off_a_refusal_has_no_child_span_but_keeps_its_timings_and_error(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, tmp_path: Path, step_spans: Any
) -> None:
    step_spans("off")
    mcp = build(idp, AuditLog(tmp_path / "audit"), slow_policy_s=0.003)
    async with connect(mcp, idp.token("mallory", scopes=["use"])) as client:
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    parent = call_span(spans)
    assert steps_of(spans, parent) == []
    assert (parent.attributes or {}).get("error.type") == "policy_denied"
    assert durations_of(parent)["securemcp.authorize"] >= 0.003


async def test_without_an_audit_log_there_are_no_audit_steps(
    spans: InMemorySpanExporter, idp: FakeIdentityProvider, step_spans: Any
) -> None:
    step_spans("all")
    mcp = build(idp, False)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})
    parent = call_span(spans)
    steps = steps_of(spans, parent)
    assert [s.name for s in steps] == ["securemcp.authenticate", "securemcp.authorize"]
    assert list(durations_of(parent)) == ["securemcp.authenticate", "securemcp.authorize"]


@pytest.mark.parametrize("mode", ["auto", "all"])
async def test_an_unwritable_audit_log_fails_in_the_decision_step(
    spans: InMemorySpanExporter,
    idp: FakeIdentityProvider,
    tmp_path: Path,
    step_spans: Any,
    mode: str,
) -> None:
    step_spans(mode)
    log = AuditLog(tmp_path / "audit")
    mcp = build(idp, log)
    async with connect(mcp, idp.token("alice", scopes=["use"])) as client:
        await client.call_tool("echo", {"text": "x"})  # opens the log
        log._fail("disk gone (test)")
        spans.clear()
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    steps = steps_of(spans, call_span(spans))
    expected = list(STEP_NAMES[:3]) if mode == "all" else ["securemcp.audit.decision"]
    assert [s.name for s in steps] == expected
    assert (steps[-1].attributes or {}).get("error.type") == "audit_unavailable"


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SECUREMCP_STEP_SPANS", "everything", "SECUREMCP_STEP_SPANS"),
        ("SECUREMCP_SLOW_STEP_MS", "fast", "SECUREMCP_SLOW_STEP_MS"),
        ("SECUREMCP_SLOW_STEP_MS", "-1", "slow-step threshold"),
        ("SECUREMCP_SLOW_STEP_MS", "nan", "slow-step threshold"),
    ],
)
def test_a_misspelt_step_span_setting_is_refused_when_the_server_is_built(
    monkeypatch: pytest.MonkeyPatch,
    idp: FakeIdentityProvider,
    variable: str,
    value: str,
    message: str,
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ValueError, match=message):
        build(idp, False)


def test_arguments_override_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SECUREMCP_STEP_SPANS", "off")
    monkeypatch.setenv("SECUREMCP_SLOW_STEP_MS", "nonsense")
    telemetry = Telemetry(step_spans="all", slow_step_ms=2.5)
    assert telemetry.step_spans == "all"
    assert telemetry._slow_step_ns == 2_500_000
    with pytest.raises(ValueError, match="step_spans"):
        Telemetry(step_spans="sometimes")  # type: ignore[arg-type]


def test_the_defaults_are_auto_and_one_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SECUREMCP_STEP_SPANS", raising=False)
    monkeypatch.delenv("SECUREMCP_SLOW_STEP_MS", raising=False)
    telemetry = Telemetry()
    assert telemetry.step_spans == "auto"
    assert telemetry._slow_step_ns == 1_000_000
