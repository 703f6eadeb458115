"""The secrets guard: no token, proof, header or secret ever reaches a record."""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path
from typing import Any

import pytest
from audit_helpers import records

from securemcp.audit import REDACTED, AuditLog, Ed25519Signer, SecretInRecord, jcs
from securemcp.audit.guard import looks_like_secret, redact, screen, sensitive_key
from securemcp.audit.records import decision_record


def b64url(data: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


JWT = f"{b64url({'alg': 'RS256', 'typ': 'at+jwt'})}.{b64url({'sub': 'alice'})}.c2lnbmF0dXJl"
DPOP = f"{b64url({'typ': 'dpop+jwt', 'alg': 'ES256'})}.{b64url({'htm': 'POST'})}.c2ln"
UNSECURED = f"{b64url({'alg': 'none'})}.{b64url({'sub': 'x'})}."


@pytest.mark.parametrize(
    "record",
    [
        {"type": "decision", "decision": {"reason": f"rejected token {JWT}"}},
        {"type": "auth_failure", "reason": DPOP},
        {"type": "auth_failure", "reason": UNSECURED},
        {"type": "auth_failure", "reason": "Bearer 8f3e2a1b9c7d6e5f4a3b2c1d"},
        {"type": "auth_failure", "reason": "got header DPoP xk29sl2ls0djwkeu28x"},
        {"type": "config_change", "details": {"Authorization": "anything"}},
        {"type": "config_change", "details": {"client_secret": "s3cr3t"}},
        {"type": "config_change", "details": {"headers": {"x-api-key": "k"}}},
        {"type": "config_change", "details": {"access_token": "opaque"}},
        {"type": "config_change", "details": {"passwords": ["a", "b"]}},
        {"type": "config_change", "details": {"set-cookie": "sid=1"}},
        # below a key that names a secret, every string is one, whatever its own key
        {"type": "config_change", "details": {"credentials": {"user": "u", "value": "s3cr3t"}}},
        {"type": "config_change", "details": {"secrets": [{"name": "db", "value": "s3cr3t"}]}},
        {"type": "config_change", "details": {"token": {"a": [{"b": {"c": "s3cr3t"}}]}}},
        # the whitespace after the scheme, escaped by the JSON encoder
        {"type": "auth_failure", "reason": "Bearer\t8f3e2a1b9c7d6e5f4a3b2c1d"},
        {"type": "auth_failure", "reason": "got bearer\n8f3e2a1b9c7d6e5f4a3b2c1d"},
        {"type": "auth_failure", "reason": "DPoP\x0b8f3e2a1b9c7d6e5f4a3b2c1d"},
        {"type": "auth_failure", "reason": "Bearer \t 8f3e2a1b9c7d6e5f4a3b2c1d"},
    ],
)
def test_records_with_secrets_are_refused(
    log_dir: Path, signer: Ed25519Signer, record: dict[str, Any]
) -> None:
    with AuditLog(log_dir, signer=signer) as log:
        size = log.size
        with pytest.raises(SecretInRecord):
            log.append(record)
        assert log.size == size
    assert "s3cr3t" not in "".join(p.read_text() for p in log_dir.glob("*.jsonl"))


@pytest.mark.parametrize(
    "record",
    [
        {"type": "auth_failure", "reason": "missing bearer token", "credential_sha256": "ab" * 32},
        {"type": "auth_failure", "reason": "the DPoP proof was replayed"},
        {"type": "config_change", "details": {"token_count": 5, "password_policy": None}},
        {"type": "config_change", "details": {"api_key": REDACTED, "secret": ""}},
        {"type": "config_change", "details": {"token_hash": "ab" * 32}},
        {"type": "config_change", "details": {"note": "eyJ is how JSON looks in base64"}},
        {"type": "config_change", "details": {"credential": {"kid_sha256": "ab" * 32, "n": 1}}},
        {"type": "config_change", "details": {"note": "Bearer\ttokens expire"}},
    ],
)
def test_harmless_records_are_accepted(
    log_dir: Path, signer: Ed25519Signer, record: dict[str, Any]
) -> None:
    with AuditLog(log_dir, signer=signer) as log:
        log.append(record)


def test_builder_fields_cannot_smuggle_a_token(log_dir: Path, signer: Ed25519Signer) -> None:
    with AuditLog(log_dir, signer=signer) as log:
        with pytest.raises(SecretInRecord):
            log.decision(call_id="c", method="tools/call", target="t", result="deny", reason=JWT)
        with pytest.raises(SecretInRecord):
            log.auth_failure(reason=f"bad token {JWT}")


def test_arguments_are_hashed_by_default(log_dir: Path, signer: Ed25519Signer) -> None:
    with AuditLog(log_dir, signer=signer) as log:
        log.decision(
            call_id="c",
            method="tools/call",
            target="login",
            result="allow",
            arguments={"user": "alice", "password": "hunter2", "token": JWT},
        )
    decision = records(log_dir)[1]
    assert "args" not in decision and len(decision["args_sha256"]) == 64
    assert "hunter2" not in json.dumps(records(log_dir))


@pytest.mark.parametrize(
    ("arguments", "same_as"),
    [
        ({"user": "bob", "otp_password": "482913"}, {"user": "bob", "otp_password": REDACTED}),
        ({"db": {"host": "h", "password": "pw"}}, {"db": {"host": "h", "password": REDACTED}}),
        ({"items": [{"token": "t1"}, {"n": 1}]}, {"items": [{"token": REDACTED}, {"n": 1}]}),
        ({"password": None, "a": 1}, {"password": None, "a": 1}),
        ({"pin": "1234", "a": 1}, {"pin": REDACTED, "a": 1}),  # an extra redact_keys entry
    ],
)
def test_the_arguments_hash_never_covers_a_secret(
    log_dir: Path, signer: Ed25519Signer, arguments: dict[str, Any], same_as: dict[str, Any]
) -> None:
    """A plain hash of a low-entropy secret (a PIN, a one-time code) is reversed by hashing
    candidates, so values under secret names are hashed as the redaction marker: the digest is
    the same whatever the secret was, on the fast path and the generic one alike."""
    expected = hashlib.sha256(jcs.dumps(same_as)).hexdigest()
    with AuditLog(log_dir, signer=signer, redact_keys=("pin",)) as log:
        log.decision(
            call_id="c", method="tools/call", target="t", result="allow", arguments=arguments
        )
        built = decision_record(
            call_id="c",
            method="tools/call",
            target="t",
            result="allow",
            arguments=arguments,
            redact_keys=("pin",),
        )
    digests = [r["args_sha256"] for r in records(log_dir) if r["type"] == "decision"]
    assert digests == [expected] == [built["args_sha256"]]
    if same_as != arguments:
        assert expected != hashlib.sha256(jcs.dumps(arguments)).hexdigest()


def test_recorded_arguments_are_redacted(log_dir: Path, signer: Ed25519Signer) -> None:
    with AuditLog(log_dir, signer=signer, record_arguments=True, redact_keys=("ssn",)) as log:
        log.decision(
            call_id="c",
            method="tools/call",
            target="login",
            result="allow",
            arguments={
                "user": "alice",
                "password": "hunter2",
                "nested": {"Authorization": "Bearer abc", "SSN": "078-05-1120", "n": 1},
                "blob": f"see {JWT}",
                "items": [{"api_key": "k1"}, "plain"],
            },
        )
        log.decision(  # opting out per call
            call_id="d",
            method="tools/call",
            target="login",
            result="allow",
            arguments={"user": "bob"},
            record_arguments=False,
        )
    first, second = records(log_dir)[1:3]
    assert first["args"] == {
        "user": "alice",
        "password": REDACTED,
        "nested": {"Authorization": REDACTED, "SSN": REDACTED, "n": 1},
        "blob": REDACTED,
        "items": [{"api_key": REDACTED}, "plain"],
    }
    assert "args" not in second


def test_helpers() -> None:
    assert sensitive_key("X-Api-Key") and sensitive_key("refresh_token")
    assert not sensitive_key("credential_sha256") and not sensitive_key("target")
    assert looks_like_secret(JWT) and not looks_like_secret("bearer of bad news")
    assert redact({"pw": "x"}, ("pw",)) == {"pw": REDACTED}
    assert screen({"a": [1, "b", None, True]}) is True
    assert screen({"a": 1.5}) is True  # repr and JCS agree
    assert screen({"a": 1e-7}) is False
    assert screen({"é": 1}) is False
