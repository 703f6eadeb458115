"""Guarantee 4 through the server: nothing executes unaudited.

Each call leaves a decision record before the body runs and an outcome record after, sharing a
call id; refusals and authentication failures are recorded; if the log cannot be written the
call is refused and the body never runs; the log written by real calls verifies offline.
"""

from __future__ import annotations

import asyncio
import errno
from pathlib import Path
from typing import Any

import pytest

from securemcp import FastMCP, current
from securemcp.audit import AuditLog, Ed25519Signer, Keyring, iter_records, verify
from securemcp.testing import FakeIdentityProvider, connect

AUDIENCE = "https://mcp.securemcp.test/mcp"


@pytest.fixture
def signer() -> Ed25519Signer:
    return Ed25519Signer.generate("test-audit")


@pytest.fixture
def idp() -> FakeIdentityProvider:
    return FakeIdentityProvider(audience=AUDIENCE)


def build(
    idp: FakeIdentityProvider, log: AuditLog, *, tenant_claim: str | None = None
) -> tuple[FastMCP, dict[str, int]]:
    runs = {"echo": 0, "admin": 0, "boom": 0}
    verifier = idp.verifier(audience=AUDIENCE, tenant_claim=tenant_claim)
    mcp = FastMCP("audited", auth=verifier, audit=log)

    @mcp.tool(scopes=["echo"])
    def echo(text: str) -> str:
        runs["echo"] += 1
        return f"{current().principal.subject}: {len(text)}"

    @mcp.tool(scopes=["admin"])
    def admin() -> str:
        runs["admin"] += 1
        return "admin"

    @mcp.tool
    def boom() -> str:
        runs["boom"] += 1
        raise ValueError("kaboom")

    return mcp, runs


def _raw_log(directory: Path) -> bytes:
    return b"".join(path.read_bytes() for path in sorted(directory.glob("audit-*.jsonl")))


def _records(directory: Path) -> list[dict[str, Any]]:
    return list(iter_records(directory))


async def test_decision_before_and_outcome_after_every_call(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path, signer=signer)
    mcp, _ = build(idp, log, tenant_claim="tenant")
    token = idp.token("alice", scopes=["echo"], tenant="acme")
    async with connect(mcp, token) as client:
        await client.call_tool("echo", {"text": "secret-argument-value"})
        await client.call_tool("boom", {}, raise_on_error=False)
    log.close()
    calls = [r for r in _records(tmp_path) if r["type"] in ("decision", "outcome")]
    by_call: dict[str, list[dict[str, Any]]] = {}
    for record in calls:
        by_call.setdefault(record["call_id"], []).append(record)
    assert len(by_call) == 2
    for pair in by_call.values():
        assert [r["type"] for r in pair] == ["decision", "outcome"]
        decision, outcome = pair
        assert decision["seq"] < outcome["seq"]
        assert decision["identity"]["subject"] == "alice"
        assert decision["identity"]["issuer"] == idp.issuer
        assert decision["identity"]["tenant"] == "acme"
        assert decision["decision"]["result"] == "allow"
    outcomes = {pair[0]["target"]: pair[1] for pair in by_call.values()}
    assert outcomes["echo"]["outcome"] == "ok"
    assert outcomes["boom"]["outcome"] == "tool_error"
    echo_decision = next(p[0] for p in by_call.values() if p[0]["target"] == "echo")
    assert echo_decision["args_sha256"] and "args" not in echo_decision
    raw = _raw_log(tmp_path)
    assert b"secret-argument-value" not in raw
    assert token.encode() not in raw
    assert token.split(".")[2].encode() not in raw
    report = verify(tmp_path, keyring=Keyring([signer.verifier_key()]))
    assert report.ok, report


async def test_refusals_and_auth_failures_are_recorded(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path, signer=signer)
    mcp, runs = build(idp, log)
    async with connect(mcp, idp.token("bob", scopes=[])) as client:
        assert (await client.call_tool("admin", {}, raise_on_error=False)).is_error
    async with connect(mcp, idp.bad_token("expired")) as client:
        assert (await client.call_tool("echo", {"text": "x"}, raise_on_error=False)).is_error
    log.close()
    records = _records(tmp_path)
    denial = next(r for r in records if r["type"] == "decision")
    assert denial["decision"]["result"] == "deny"
    assert denial["decision"]["reason"] == "insufficient_scope"
    assert denial["identity"]["subject"] == "bob"
    failure = next(r for r in records if r["type"] == "auth_failure")
    assert failure["target"] == "echo"
    assert "expired" in failure["reason"]  # the specific reason is in the audit, not the reply
    assert not [r for r in records if r["type"] == "outcome"]
    assert runs == {"echo": 0, "admin": 0, "boom": 0}


async def test_audit_unavailable_refuses_and_the_body_never_runs(
    idp: FakeIdentityProvider,
    signer: Ed25519Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = AuditLog(tmp_path, signer=signer)
    mcp, runs = build(idp, log)
    async with connect(mcp, idp.token("alice", scopes=["echo"])) as client:
        assert not (await client.call_tool("echo", {"text": "x"})).is_error

        def disk_full(fd: int, data: bytes) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")

        monkeypatch.setattr("securemcp.audit.log._write_all", disk_full)
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.is_error
    assert result.content[0].text.startswith("audit_unavailable:")
    assert "space" not in result.content[0].text  # no internal detail
    assert runs["echo"] == 1  # only the call made while the log worked


async def test_a_closed_log_refuses_calls(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path, signer=signer)
    mcp, runs = build(idp, log)
    async with connect(mcp, idp.token("alice", scopes=["echo"])) as client:
        log.close()  # e.g. closed by an operator or a failing shutdown while serving
        result = await client.call_tool("echo", {"text": "x"}, raise_on_error=False)
    assert result.content[0].text.startswith("audit_unavailable:")
    assert runs["echo"] == 0


async def test_an_unwritable_audit_folder_stops_start_up(
    idp: FakeIdentityProvider, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the audit folder should be")
    mcp, runs = build(idp, AuditLog(blocker / "audit"))
    with pytest.raises(Exception, match="cannot open its audit log"):
        async with connect(mcp, idp.token("alice", scopes=["echo"])):
            pass
    assert runs["echo"] == 0


async def test_one_pair_of_records_per_call_through_a_mounted_server(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path, signer=signer)
    parent = FastMCP("parent", auth=idp.verifier(audience=AUDIENCE), audit=log)
    child = FastMCP("child", audit=log)

    @child.tool
    def inner() -> str:
        return current().principal.subject

    parent.mount(child, namespace="c")
    async with connect(parent, idp.token("alice")) as client:
        assert (await client.call_tool("c_inner", {})).data == "alice"
    log.close()
    call_records = [r for r in _records(tmp_path) if r["type"] in ("decision", "outcome")]
    assert [(r["type"], r["server"]) for r in call_records] == [
        ("decision", "parent"),
        ("outcome", "parent"),
    ]


async def test_thousand_concurrent_calls_are_all_audited_and_verify(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    log = AuditLog(tmp_path, signer=signer, checkpoint_every=100)
    mcp, runs = build(idp, log)

    async def user(index: int) -> None:
        async with connect(mcp, idp.token(f"user-{index}", scopes=["echo"])) as client:
            await asyncio.gather(*(client.call_tool("echo", {"text": str(n)}) for n in range(20)))

    await asyncio.gather(*(user(i) for i in range(50)))
    log.close()
    records = _records(tmp_path)
    decisions = [r for r in records if r["type"] == "decision"]
    outcomes = {r["call_id"]: r for r in records if r["type"] == "outcome"}
    assert len(decisions) == 1000
    assert runs["echo"] == 1000
    for decision in decisions:  # every decision has its outcome, same caller
        outcome = outcomes[decision["call_id"]]
        assert outcome["identity"]["subject"] == decision["identity"]["subject"]
        assert outcome["seq"] > decision["seq"]
    assert verify(tmp_path, keyring=Keyring([signer.verifier_key()])).ok


@pytest.mark.http
async def test_refusals_at_the_http_layer_are_audited(
    idp: FakeIdentityProvider, signer: Ed25519Signer, tmp_path: Path
) -> None:
    import httpx

    from securemcp.testing import serve_http

    log = AuditLog(tmp_path, signer=signer)
    mcp, runs = build(idp, log)
    forged = idp.bad_token("signed_by_stranger")
    async with serve_http(mcp) as url, httpx.AsyncClient() as raw:
        response = await raw.post(
            url,
            headers={"Authorization": f"Bearer {forged}"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list", "params": {}},
        )
    assert response.status_code == 401
    log.close()
    failures = [r for r in _records(tmp_path) if r["type"] == "auth_failure"]
    assert len(failures) == 1
    assert failures[0]["reason"].startswith("http: ")
    assert forged.encode() not in _raw_log(tmp_path)
    assert runs == {"echo": 0, "admin": 0, "boom": 0}


async def test_a_result_whose_outcome_cannot_be_audited_is_withheld(
    idp: FakeIdentityProvider,
    signer: Ed25519Signer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The decision is written, the body runs, then the outcome write fails: fail closed."""
    log = AuditLog(tmp_path, signer=signer)
    mcp, runs = build(idp, log)
    original = log.outcome

    def outcome_fails(**kwargs: Any) -> int:
        from securemcp.audit import AuditUnavailable

        raise AuditUnavailable(reason="disk full while writing the outcome")

    async with connect(mcp, idp.token("alice", scopes=["echo"])) as client:
        monkeypatch.setattr(log, "outcome", outcome_fails)
        result = await client.call_tool("echo", {"text": "classified"}, raise_on_error=False)
        monkeypatch.setattr(log, "outcome", original)
    assert runs["echo"] == 1  # the body ran (its decision was recorded first)...
    assert result.is_error  # ...but its result never reached the client
    assert result.content[0].text.startswith("audit_unavailable:")
    assert "alice: " not in result.content[0].text
    log.close()
    decisions = [r for r in _records(tmp_path) if r["type"] == "decision"]
    assert [d["target"] for d in decisions] == ["echo"]


@pytest.mark.parametrize("record_arguments", [False, True])
async def test_a_template_read_is_recorded_by_its_template_with_its_values_hashed(
    idp: FakeIdentityProvider,
    tmp_path: Path,
    record_arguments: bool,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Guarantee 5 for resources: a template read's parameter values (an email, a token in the
    query) are arguments, recorded as a hash under the template's URI template, on the fast
    path and (recording arguments, redacted) on the generic one. Every spelling of one read
    hashes the same; a concrete resource keeps its URI; a read refused before its URI was
    resolved keeps the scheme only. The server log names refusals the same way."""
    from securemcp.audit.records import args_sha256

    caplog.set_level("INFO", logger="securemcp")

    log = AuditLog(tmp_path, record_arguments=record_arguments)
    mcp = FastMCP("resources", auth=idp.verifier(audience=AUDIENCE), audit=log)

    @mcp.resource("cfg://app")
    def app() -> str:
        return "app"

    @mcp.resource("users://{email}/ssn")
    def ssn(email: str) -> str:
        return "078-05-1120"

    @mcp.resource("q://search{?token,page}")
    def search(token: str = "", page: int = 0) -> str:
        return "results"

    @mcp.resource("vault://{name}", scopes=["vault"])
    def vault(name: str) -> str:
        return "sealed"

    async with connect(mcp, idp.token("alice")) as client:
        await client.read_resource("users://alice@example.com/ssn")
        await client.read_resource("users://alice%40example.com/ssn#frag")
        await client.read_resource("q://search?page=2&token=hunter2-one-time&junk=1")
        await client.read_resource("cfg://app")
        with pytest.raises(Exception, match="insufficient_scope"):
            await client.read_resource("vault://launch-codes")
    async with connect(mcp, idp.bad_token("expired")) as client:
        with pytest.raises(Exception, match="invalid_token"):
            await client.read_resource("users://bob@example.com/ssn")
    log.close()
    records = _records(tmp_path)
    decisions = [r for r in records if r["type"] == "decision"]
    outcomes = [r for r in records if r["type"] == "outcome"]
    email = {"email": "alice@example.com"}
    query = {"token": "hunter2-one-time", "page": "2"}
    assert [(r["target"], r["args_sha256"]) for r in decisions] == [
        ("users://{email}/ssn", args_sha256(email)),
        ("users://{email}/ssn", args_sha256(email)),
        ("q://search{?token,page}", args_sha256(query)),
        ("cfg://app", args_sha256({})),
        ("vault://{name}", args_sha256({"name": "launch-codes"})),
    ]
    assert decisions[-1]["decision"]["reason"] == "insufficient_scope"
    assert [r["target"] for r in outcomes] == [r["target"] for r in decisions[:4]]
    (failure,) = [r for r in records if r["type"] == "auth_failure"]
    assert failure["target"] == "users://"
    if record_arguments:
        assert [r.get("args") for r in decisions] == [
            email,
            email,
            {"token": "[REDACTED]", "page": "2"},
            {},
            {"name": "launch-codes"},
        ]
    else:
        assert not any("args" in r for r in decisions)
        raw = _raw_log(tmp_path)
        for value in (b"alice@example.com", b"alice%40", b"launch-codes", b"bob@example"):
            assert value not in raw
    assert b"hunter2" not in _raw_log(tmp_path)
    assert "refused resources/read 'vault://{name}'" in caplog.text
    assert "launch-codes" not in caplog.text and "bob@example" not in caplog.text
