"""The hot path: ``AuditLog.decision`` / ``outcome`` write exactly what the generic path would.

They fill a template instead of canonicalizing a record dict (``securemcp.audit._lines``). These
tests hold them to the generic path: the line must be byte-identical to ``jcs.dumps`` of the
record ``decision_record`` / ``outcome_record`` build (with the line's own header), an input the
generic path refuses must be refused with the same error and nothing written, the secrets guard
must catch a credential in every caller-controlled field, and a log written this way verifies.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import random
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from securemcp.audit import (
    AuditLog,
    Ed25519Signer,
    JsonLinesSink,
    Keyring,
    SecretInRecord,
    jcs,
    verify,
)
from securemcp.audit._lines import decision_json, identity_json
from securemcp.audit.guard import check_encoded, screen, sensitive_key
from securemcp.audit.records import args_sha256, decision_record, outcome_record
from securemcp.audit.storage import list_segments
from securemcp.context import Actor, Principal
from securemcp.policy.decision import Decision, Effect

SIGNER = Ed25519Signer.generate("fast-path")
KEYRING = Keyring([SIGNER.verifier_key()])
HEADER = {"v": 1, "log": "securemcp.local/audit/x", "seq": 0, "ts": "2026-01-01T00:00:00.000000Z"}
HEADER = {**HEADER, "prev": "0" * 64}

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLXNpZ25hdHVyZQ"
BEARER = "Bearer abcdefghij0123456789xyz"
SECRETS = (
    JWT,
    BEARER,
    f"x {JWT} y",
    f"header: {BEARER.lower()}",
    "DPoP Zm9vYmFyYmF6cXV4MTIzNDU2",
    BEARER.replace(" ", "\t"),  # written "Bearer\\t..." in JSON: no space on the line
    BEARER.replace(" ", "\n\x0b"),
)

# --- strategies ---------------------------------------------------------------------------

SPECIAL = st.sampled_from(
    [
        '"',
        "\\",
        "\\u0000",
        "\x00",
        "\x07",
        "\b",
        "\f",
        "\n",
        "\r",
        "\t",
        "\x0b",
        "\x1f",
        "\x7f",
        "\x80",
        "\u2028",
        "\u2029",
        "\ufeff",
        "\uffff",
        "é",
        "€",
        "😀",
        "\U0010ffff",
        "/",
        "</script>",
        "eyJ",
        ".",
        " ",
        "bearer",
        "null",
        "}",
    ]
)
TEXT = st.one_of(
    st.text(st.characters(exclude_categories=["Cs"]), max_size=20),
    st.lists(SPECIAL, max_size=6).map("".join),
    st.sampled_from(["allow", "tools/call", "add", "calc", "ok", ""]),
)
OPT = st.none() | TEXT

ACTORS = st.lists(st.builds(Actor, subject=TEXT, issuer=OPT, client_id=OPT), max_size=3).map(tuple)
PRINCIPALS = st.builds(
    Principal,
    subject=TEXT,
    issuer=TEXT,
    client_id=OPT,
    tenant=OPT,
    act=ACTORS,
    verified=st.booleans(),
    authenticated_by=TEXT,
)
# A few principals reused across examples, as a verifier reuses one per token (memo hits).
REUSED = [
    Principal(subject="alice@example.com", issuer="https://idp.example.com", tenant="acme"),
    Principal(
        subject='quo"te\\é😀',
        issuer="https://idp.example\u2028",
        client_id="cli\x01",
        act=(Actor(subject="agent-7", issuer="https://idp"), Actor(subject="ci")),
        verified=False,
        authenticated_by="development",
    ),
]
ACT_CLAIM = st.recursive(
    st.fixed_dictionaries({"sub": TEXT}, optional={"iss": OPT, "client_id": OPT}),
    lambda inner: st.fixed_dictionaries({"sub": TEXT, "act": inner}),
    max_leaves=3,
)
MAPPINGS = st.fixed_dictionaries(
    {},
    optional={
        "sub": OPT,
        "subject": OPT,
        "iss": OPT,
        "issuer": OPT,
        "client_id": OPT,
        "tenant": OPT,
        "authenticated_by": OPT,
        "verified": st.booleans() | st.none() | st.integers(0, 2),
        "act": ACT_CLAIM | st.lists(ACT_CLAIM, max_size=2),
        "actor": st.lists(ACT_CLAIM, max_size=2),
        "token": TEXT,  # never read
    },
)
IDENTITIES = st.none() | PRINCIPALS | st.sampled_from(REUSED) | MAPPINGS

REUSED_DECISIONS = [
    Decision.allow(rule="scopes", policy_version="sha256:9f86d081"),
    Decision.deny("missing scope calc:write", rule="scopes"),
]
DECISIONS = st.builds(
    Decision,
    effect=st.sampled_from(list(Effect)),
    reason=TEXT,
    rule=OPT,
    policy_version=OPT,
)
CONSTRAINED = st.builds(
    Decision.constrain,
    TEXT,
    timeout_seconds=st.none() | st.floats(0.001, 100),
    max_result_bytes=st.none() | st.integers(0, 10**6),
    rule=OPT,
)
RESULTS = st.one_of(
    st.sampled_from(["allow", "deny", "require_approval", "constrain"]),
    OPT,
    DECISIONS,
    st.sampled_from(REUSED_DECISIONS),
    CONSTRAINED,
    st.sampled_from(list(Effect)),
    st.integers(-3, 3),
)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    TEXT,
)
JSON = st.recursive(
    JSON_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(TEXT, inner, max_size=3),
    max_leaves=6,
)
ARGUMENTS = st.none() | st.dictionaries(TEXT, JSON, max_size=5)
# Call ids and targets are strings in practice; other values take the generic path.
IDS = TEXT | st.integers(-(2**60), 2**60) | st.none()
DURATIONS = st.one_of(
    st.floats(min_value=0, max_value=1e7),
    st.floats(),  # negative, NaN, infinite: refused by both paths
    st.integers(0, 2**64),
    st.sampled_from([0.0, -0.0, 1e-7, 0.0004, 0.0005, 0.734, 5.0, 1e15 + 0.5, 1e16, 2.0**53, 1e21]),
)

# --- the generic path, as a reference ---------------------------------------------------------


def generic_line(body: dict[str, Any], header: dict[str, Any]) -> bytes:
    """What the generic path writes for ``body`` (raises what it raises, in its order)."""
    screen(body)
    line = jcs.dumps({**body, **header})
    check_encoded(line)
    return line


class Tail:
    """Reads what one log appends to its (single) segment."""

    def __init__(self, log: AuditLog) -> None:
        self.log = log
        self.path = list_segments(log.directory)[-1][1]
        self.offset = self.path.stat().st_size

    def new(self) -> bytes:
        with self.path.open("rb") as handle:
            handle.seek(self.offset)
            data = handle.read()
        self.offset += len(data)
        return data


def appended(
    log: AuditLog, tail: Tail, call: Callable[[], int], reference: Callable[[], dict[str, Any]]
) -> None:
    """Run ``call`` on the fast path and hold it to the generic path's ``reference`` record."""
    size = log.size
    try:
        body: dict[str, Any] | None = reference()
        expected: type[BaseException] | None = None
    except (ValueError, TypeError) as exc:  # the builder itself refuses
        body, expected = None, type(exc)
    if body is not None:
        try:
            generic_line(body, HEADER)
        except (ValueError, TypeError, SecretInRecord) as exc:
            expected = type(exc)
    if expected is not None:
        with pytest.raises(expected):
            call()
        assert log.size == size and tail.new() == b"", "a refused record left something behind"
        return
    seq = call()
    data = tail.new()
    assert seq == size and log.size == size + 1
    assert data.endswith(b"\n") and data.count(b"\n") == 1
    line = data[:-1]
    parsed = json.loads(line)
    header = {name: parsed[name] for name in HEADER}
    assert header["seq"] == seq and header["log"] == log.origin
    assert body is not None
    assert line == generic_line(body, header)


@pytest.fixture(scope="module")
def fast_log(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AuditLog, Tail]]:
    directory = tmp_path_factory.mktemp("fast") / "audit"
    log = AuditLog(
        directory,
        signer=SIGNER,
        fsync="never",
        checkpoint_every=50,
        server="default-server",
        segment_max_bytes=2**40,
    ).open()
    yield log, Tail(log)
    log.close()
    report = verify(directory, keyring=KEYRING)
    assert report.status == "verified" and report.records == log.size, report


# --- byte identity ----------------------------------------------------------------------------


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    call_id=IDS,
    method=TEXT,
    target=IDS,
    result=RESULTS,
    identity=IDENTITIES,
    arguments=ARGUMENTS,
    reason=TEXT | st.integers(0, 3),
    rule=OPT,
    policy_version=OPT,
    trace_id=OPT,
    server=OPT,
    record_arguments=st.none() | st.booleans(),
    component_version=OPT | st.sampled_from(["2", "1.0.0", "v2"]) | st.integers(0, 3),
    version_resolved=st.booleans(),
    requested_version=OPT | st.sampled_from(["2", ">=1,<3"]),
)
def test_decision_lines_are_the_generic_records_bytes(
    fast_log: tuple[AuditLog, Tail],
    call_id: Any,
    method: str,
    target: Any,
    result: Any,
    identity: Any,
    arguments: dict[str, Any] | None,
    reason: Any,
    rule: str | None,
    policy_version: str | None,
    trace_id: str | None,
    server: str | None,
    record_arguments: bool | None,
    component_version: Any,
    version_resolved: bool,
    requested_version: Any,
) -> None:
    log, tail = fast_log
    if not version_resolved:
        component_version = None  # what the pipeline passes when it cannot resolve the version
    kw: dict[str, Any] = {
        "call_id": call_id,
        "method": method,
        "target": target,
        "result": result,
        "identity": identity,
        "arguments": arguments,
        "reason": reason,
        "rule": rule,
        "policy_version": policy_version,
        "trace_id": trace_id,
        "component_version": component_version,
        "version_resolved": version_resolved,
        "requested_version": requested_version,
    }
    appended(
        log,
        tail,
        lambda: log.decision(**kw, server=server, record_arguments=record_arguments),
        lambda: decision_record(
            **kw,
            server=server if server is not None else log.server,
            record_arguments=bool(record_arguments),
            redact_keys=log.redact_keys,
        ),
    )


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    call_id=IDS,
    method=TEXT,
    target=IDS,
    outcome=st.sampled_from(["ok", "tool_error", "error", "timeout", "refused"]) | TEXT,
    duration_ms=DURATIONS,
    identity=IDENTITIES,
    error=OPT,
    trace_id=OPT,
    server=OPT,
)
def test_outcome_lines_are_the_generic_records_bytes(
    fast_log: tuple[AuditLog, Tail],
    call_id: Any,
    method: str,
    target: Any,
    outcome: str,
    duration_ms: Any,
    identity: Any,
    error: str | None,
    trace_id: str | None,
    server: str | None,
) -> None:
    log, tail = fast_log
    kw: dict[str, Any] = {
        "call_id": call_id,
        "method": method,
        "target": target,
        "outcome": outcome,
        "duration_ms": duration_ms,
        "identity": identity,
        "error": error,
        "trace_id": trace_id,
    }
    appended(
        log,
        tail,
        lambda: log.outcome(**kw, server=server),
        lambda: outcome_record(**kw, server=server if server is not None else log.server),
    )


def test_durations_at_the_edges_of_canonical_form(fast_log: tuple[AuditLog, Tail]) -> None:
    log, tail = fast_log
    for value in (0, 0.0, 0.0004, 0.0005, 0.001, 0.734, 1.5, 5.0, 123456.789, 1e15 + 0.125, 1e16):
        kw: dict[str, Any] = {"call_id": "c", "method": "m", "target": "t", "outcome": "ok"}
        appended(
            log,
            tail,
            lambda kw=kw, value=value: log.outcome(**kw, duration_ms=value),
            lambda kw=kw, value=value: outcome_record(**kw, duration_ms=value, server=log.server),
        )
    for bad in (-1.0, math.nan, math.inf, 1e21, 2**60):
        with pytest.raises(ValueError):
            log.outcome(call_id="c", method="m", target="t", outcome="ok", duration_ms=bad)


NEGATIVE_ZERO_EDGES = (
    -0.0,
    0.0,
    -0,
    5e-324,
    1e-7,
    0.0004999,
    0.0005,
    999999999.9995,
    1e9 - 1e-6,
    1e9,
)


def test_negative_zero_duration_is_written_as_the_generic_canonical_zero(log_dir: Path) -> None:
    """-0.0 passes the fast path's range test; RFC 8785 writes it "0", never "-0" (which the
    verifier rejects as non-canonical). Fails if the fast path formats -0.0 as is."""
    log = AuditLog(log_dir, signer=SIGNER, fsync="never").open()
    tail = Tail(log)
    kw: dict[str, Any] = {"call_id": "c", "method": "m", "target": "t", "outcome": "ok"}
    for value in NEGATIVE_ZERO_EDGES:
        appended(
            log,
            tail,
            lambda value=value: log.outcome(**kw, duration_ms=value),
            lambda value=value: outcome_record(**kw, duration_ms=value, server=log.server),
        )
    log.outcome(**kw, duration_ms=-0.0)
    assert b'"duration_ms":0,' in tail.new()
    log.close()
    report = verify(log_dir, keyring=KEYRING)
    assert report.status == "verified", report
    assert report.records == 3 + len(NEGATIVE_ZERO_EDGES)


def _masked(value: Any) -> Any:
    """Every value under a key naming a secret as ``[REDACTED]`` (``None`` kept), at any depth:
    what ``args_sha256`` hashes in place of a secret (see docs/audit.md)."""
    if isinstance(value, dict):
        return {
            name: "[REDACTED]"
            if item is not None and isinstance(name, str) and sensitive_key(name)
            else _masked(item)
            for name, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [_masked(item) for item in value]
    return value


def _reference_args_sha256(arguments: Any) -> str | None:
    if arguments is None:
        return None
    arguments = _masked(arguments)  # hypothesis finds keys such as "TOKEN"
    try:
        data = jcs.dumps(arguments)
    except (TypeError, ValueError):
        data = json.dumps(
            arguments, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=repr
        ).encode("utf-8", "surrogatepass")
    return hashlib.sha256(data).hexdigest()


@given(ARGUMENTS | st.dictionaries(st.text(max_size=4), JSON, max_size=4))
def test_args_sha256_is_the_hash_of_the_canonical_arguments(arguments: Any) -> None:
    assert args_sha256(arguments) == _reference_args_sha256(arguments)


def test_args_sha256_edge_values() -> None:
    for arguments in (
        {"a": 2**53 - 1, "b": -(2**53 - 1)},
        {"a": 2**53},
        {"a": 1e21, "b": 5.0, "c": 0.1},
        {"é": 1, "z": 2, "\U0001f600": 3, "\uffff": 4},
        {"a": "\ud800"},
        {"a": [1, {"b": 2.5}], "c": (1, 2)},
        {"a": object()},
        {1: "x"},
        {},
    ):
        assert args_sha256(arguments) == _reference_args_sha256(arguments), arguments


# --- the secrets guard ----------------------------------------------------------------------

DECISION_FIELDS = ("call_id", "method", "target", "trace_id", "server", "reason", "rule")
DECISION_FIELDS += ("policy_version", "result", "component_version")
OUTCOME_FIELDS = ("call_id", "method", "target", "trace_id", "server", "error")
IDENTITY_FIELDS = ("subject", "issuer", "client_id", "tenant", "authenticated_by", "actor")


def _identity_with(field: str, secret: str, kind: str) -> Any:
    values: dict[str, Any] = {"subject": "alice", "issuer": "https://idp", "client_id": "cli"}
    if field == "actor":
        act = (Actor(subject=secret),)
        if kind == "principal":
            return Principal(**values, act=act)
        return {"sub": "alice", "act": {"sub": "agent", "act": {"sub": secret}}}
    values[field] = secret
    if kind == "principal":
        return Principal(**values)
    return values


@pytest.fixture
def guarded(log_dir: Path) -> Iterator[tuple[AuditLog, Tail]]:
    log = AuditLog(log_dir, signer=SIGNER, fsync="never", server="calc").open()
    yield log, Tail(log)
    log.close()
    assert verify(log_dir, keyring=KEYRING).status == "verified"


def _refused(log: AuditLog, tail: Tail, call: Callable[[], Any]) -> None:
    size = log.size
    with pytest.raises(SecretInRecord):
        call()
    assert log.size == size and tail.new() == b""


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("field", DECISION_FIELDS)
def test_a_credential_in_a_decision_field_is_refused(
    guarded: tuple[AuditLog, Tail], field: str, secret: str
) -> None:
    log, tail = guarded
    kw: dict[str, Any] = {"call_id": "c", "method": "tools/call", "target": "t", "result": "allow"}
    _refused(log, tail, lambda: log.decision(**{**kw, field: secret}))
    if field in ("reason", "rule", "policy_version"):  # inside a policy Decision object
        decision = Decision(Effect.ALLOW, **{field: secret})
        _refused(log, tail, lambda: log.decision(**{**kw, "result": decision}))
        _refused(log, tail, lambda: log.decision(**{**kw, "result": decision}))  # cached
    log.decision(**kw)  # the log still works


@pytest.mark.parametrize("secret", SECRETS)
@pytest.mark.parametrize("field", OUTCOME_FIELDS)
def test_a_credential_in_an_outcome_field_is_refused(
    guarded: tuple[AuditLog, Tail], field: str, secret: str
) -> None:
    log, tail = guarded
    kw: dict[str, Any] = {"call_id": "c", "method": "m", "target": "t", "outcome": "error"}
    _refused(log, tail, lambda: log.outcome(**{**kw, field: secret}, duration_ms=1.25))
    log.outcome(**kw, duration_ms=1.25)


@pytest.mark.parametrize("kind", ["principal", "mapping"])
@pytest.mark.parametrize("field", IDENTITY_FIELDS)
def test_a_credential_in_the_identity_is_refused_every_time(
    guarded: tuple[AuditLog, Tail], field: str, kind: str
) -> None:
    log, tail = guarded
    for secret in SECRETS:
        identity = _identity_with(field, secret, kind)
        for _ in range(2):  # the second time, a principal's fragment comes from the memo
            _refused(
                log,
                tail,
                lambda identity=identity: log.decision(
                    call_id="c", method="m", target="t", result="allow", identity=identity
                ),
            )
            _refused(
                log,
                tail,
                lambda identity=identity: log.outcome(
                    call_id="c",
                    method="m",
                    target="t",
                    outcome="ok",
                    duration_ms=1,
                    identity=identity,
                ),
            )


def test_a_credential_under_a_sensitive_argument_name_is_refused_when_recorded(
    guarded: tuple[AuditLog, Tail],
) -> None:
    log, tail = guarded
    for arguments in ({"text": JWT}, {"nested": [{"auth": BEARER}]}):
        log.decision(
            call_id="c",
            method="m",
            target="t",
            result="allow",
            arguments=arguments,
            record_arguments=True,
        )
        assert b"[REDACTED]" in tail.new()  # redacted, not refused
        log.decision(call_id="c", method="m", target="t", result="allow", arguments=arguments)
        assert JWT.encode() not in tail.new()  # hashed only


def test_lone_surrogates_are_refused_with_nothing_written(
    guarded: tuple[AuditLog, Tail],
) -> None:
    log, tail = guarded
    size = log.size
    bad = "x\ud800y"
    calls: list[Callable[[], Any]] = [
        lambda: log.decision(call_id=bad, method="m", target="t", result="allow"),
        lambda: log.decision(call_id="c", method="m", target="t", result="allow", reason=bad),
        lambda: log.outcome(call_id="c", method="m", target=bad, outcome="ok", duration_ms=1),
        lambda: log.outcome(
            call_id="c", method="m", target="t", outcome="ok", duration_ms=1, error=bad
        ),
    ]
    principal = Principal(subject=bad, issuer="https://idp")
    for _ in range(2):
        calls.append(
            lambda: log.decision(
                call_id="c", method="m", target="t", result="allow", identity=principal
            )
        )
    for call in calls:
        with pytest.raises(ValueError):
            call()
    assert log.size == size and tail.new() == b""


# --- the rest of the writer is unchanged ------------------------------------------------------


def test_sinks_get_the_generic_record_and_the_same_line(log_dir: Path) -> None:
    stream = io.StringIO()
    seen: list[dict[str, Any]] = []

    class Collect:
        def emit(self, record: dict[str, Any]) -> None:
            seen.append(dict(record))

        def emit_checkpoint(self, text: str) -> None:
            return None

    principal = REUSED[1]
    with AuditLog(
        log_dir, signer=SIGNER, fsync="never", sinks=[JsonLinesSink(stream), Collect()]
    ) as log:
        log.decision(
            call_id="c1",
            method="tools/call",
            target="add",
            result=REUSED_DECISIONS[0],
            identity=principal,
            arguments={"a": 1},
            trace_id="t",
        )
        log.outcome(
            call_id="c1",
            method="tools/call",
            target="add",
            outcome="ok",
            duration_ms=0.5,
            identity=principal,
        )
    local = b"".join(path.read_bytes() for _, path in list_segments(log_dir))
    exported = [
        line.encode() for line in stream.getvalue().split("\n")[:-1] if '"checkpoint"' not in line
    ]
    assert exported == local.split(b"\n")[:-1]
    assert [r["type"] for r in seen] == ["log_open", "decision", "outcome", "log_close"]
    assert seen[1]["identity"]["actor"][0]["subject"] == "agent-7"
    assert [jcs.dumps(r) for r in seen] == local.split(b"\n")[:-1]


def test_a_log_written_on_the_fast_path_verifies(log_dir: Path) -> None:
    """Many varied calls across segment rotations and checkpoints, from several threads."""
    rng = random.Random(8785)
    principals = [*REUSED, None, {"sub": "bob", "iss": "https://idp", "verified": True}]
    log = AuditLog(
        log_dir, signer=SIGNER, fsync="never", checkpoint_every=97, segment_max_bytes=64 * 1024
    ).open()

    def worker(name: str) -> None:
        for index in range(300):
            identity = rng.choice(principals)
            call_id = f"{name}-{index}"
            log.decision(
                call_id=call_id,
                method="tools/call",
                target=rng.choice(["add", "é", None]),
                result=rng.choice([*REUSED_DECISIONS, "allow", "deny"]),
                identity=identity,
                arguments={"a": index, "b": [1.5, "x"]},
                trace_id=f"{index:032x}",
                component_version=rng.choice([None, "2", "1.0é"]),
            )
            log.outcome(
                call_id=call_id,
                method="tools/call",
                target="add",
                outcome=rng.choice(["ok", "error"]),
                duration_ms=rng.random() * 100,
                identity=identity,
                error=rng.choice([None, "tool_error"]),
            )

    threads = [threading.Thread(target=worker, args=(f"w{n}",)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    log.close()
    report = verify(log_dir, keyring=KEYRING)
    assert report.status == "verified" and report.records == 2 + 4 * 600, report
    assert report.segments > 1 and report.closed


def test_fragment_memos_are_bounded_and_safe_against_reused_ids() -> None:
    from securemcp.audit import _lines

    for index in range(3000):
        identity_json(Principal(subject=f"s{index}", issuer="i"))
        decision_json(Decision.allow(rule=f"r{index}"), "", None, None)
        decision_json("allow", f"reason {index}", None, None)
    assert len(_lines._IDENTITY_JSON) <= 1024
    assert len(_lines._DECISION_OBJECT_JSON) <= 1024
    assert len(_lines._DECISION_JSON) <= 1024
    a = Principal(subject="a", issuer="i")
    text, ok = identity_json(a)
    assert ok and '"subject":"a"' in text
    b = Principal(subject="b", issuer="i")
    _lines._IDENTITY_JSON[id(b)] = (a, text, ok)  # a stale entry under b's id
    assert '"subject":"b"' in identity_json(b)[0]
    # overrides bypass the memo of a decision object
    decision = REUSED_DECISIONS[0]
    assert '"reason":"why"' in (decision_json(decision, "why", None, None) or ("", False))[0]
    assert '"reason":""' in (decision_json(decision, "", None, None) or ("", False))[0]


def test_recorded_arguments_are_redacted_with_the_log_keys(tmp_path: Path) -> None:
    with AuditLog(
        tmp_path / "a", signer=SIGNER, fsync="never", redact_keys=("pin",), record_arguments=True
    ) as log:
        log.decision(call_id="c", method="m", target="t", result="allow", arguments={"pin": "1234"})
    data = b"".join(p.read_bytes() for _, p in list_segments(tmp_path / "a"))
    assert b"1234" not in data and b'"pin":"[REDACTED]"' in data


def test_an_unversioned_decision_line_is_unchanged_and_a_versioned_one_names_its_version(
    log_dir: Path,
) -> None:
    """``component_version`` appears only for a versioned component, in RFC 8785 member order,
    on the fast path and on the generic path (sinks make the log build the generic record)."""
    kw: dict[str, Any] = {"call_id": "c1", "method": "tools/call", "target": "purge"}
    kw |= {"result": "allow", "identity": REUSED[0], "arguments": {"repo": "prod"}}
    stream = io.StringIO()
    for directory, sinks in (
        (log_dir, []),
        (log_dir.parent / "with-sink", [JsonLinesSink(stream)]),
    ):
        with AuditLog(directory, signer=SIGNER, fsync="never", sinks=sinks) as log:
            tail = Tail(log)
            log.decision(**kw)
            log.decision(**kw, component_version=None)
            log.decision(**kw, component_version="2")
            lines = tail.new().splitlines()
        plain, unset, versioned = (json.loads(line) for line in lines)
        assert "component_version" not in plain and "component_version" not in unset
        assert versioned["component_version"] == "2"
        assert lines[2].index(b'"call_id"') < lines[2].index(b'"component_version"')
        assert lines[2].index(b'"component_version"') < lines[2].index(b'"decision"')
        assert verify(directory, keyring=KEYRING).status == "verified"
    assert '"component_version":"2"' in stream.getvalue()


def test_an_unresolved_version_is_recorded_as_null_with_the_version_asked_for(
    log_dir: Path,
) -> None:
    """A component that forwards calls to a versioned one elsewhere (a proxy) cannot say which
    version runs: its decision records ``component_version: null`` and the caller's
    ``requested_version`` (``null`` when it asked for none), on both paths; records of
    unversioned and of resolved components are byte-identical to what they were."""
    kw: dict[str, Any] = {"call_id": "c1", "method": "tools/call", "target": "purge"}
    kw |= {"result": "allow", "identity": REUSED[0], "arguments": {"repo": "prod"}}
    outputs = []
    for directory, sinks in (
        (log_dir, []),
        (log_dir.parent / "with-sink", [JsonLinesSink(io.StringIO())]),
    ):
        with AuditLog(directory, signer=SIGNER, fsync="never", sinks=sinks) as log:
            tail = Tail(log)
            log.decision(**kw, version_resolved=False, requested_version="2")
            log.decision(**kw, version_resolved=False)
            log.decision(**kw, version_resolved=False, requested_version=">=1,<3")
            log.decision(**kw, requested_version="2")  # resolved: the version asked is not news
            log.decision(**kw, component_version="2", requested_version="2")
            lines = tail.new().splitlines()
        outputs.append([line.split(b',"log":')[0] for line in lines])  # without header values
        asked, unasked, ranged, plain, versioned = (json.loads(line) for line in lines)
        assert (asked["component_version"], asked["requested_version"]) == (None, "2")
        assert (unasked["component_version"], unasked["requested_version"]) == (None, None)
        assert ranged["requested_version"] == ">=1,<3"
        assert "component_version" not in plain and "requested_version" not in plain
        assert versioned["component_version"] == "2" and "requested_version" not in versioned
        assert lines[0].index(b'"prev"') < lines[0].index(b'"requested_version"')
        assert lines[0].index(b'"requested_version"') < lines[0].index(b'"seq"')
        assert verify(directory, keyring=KEYRING).status == "verified"
    assert outputs[0] == outputs[1]


@pytest.mark.parametrize("secret", SECRETS)
def test_a_credential_in_the_requested_version_is_refused(
    guarded: tuple[AuditLog, Tail], secret: str
) -> None:
    log, tail = guarded
    kw: dict[str, Any] = {"call_id": "c", "method": "tools/call", "target": "t", "result": "allow"}
    _refused(
        log, tail, lambda: log.decision(**kw, version_resolved=False, requested_version=secret)
    )
    log.decision(**kw, version_resolved=False, requested_version="2")  # the log still works
