"""Free-text redaction of credentials (guarantee 5), shared with the audit log's secrets guard."""

from __future__ import annotations

from securemcp._redaction import REDACTED, redact_secrets, redacted_exception
from securemcp.testing import FakeIdentityProvider

JWT = FakeIdentityProvider().token("alice")


def test_jwts_and_authorization_values_are_cut_out() -> None:
    text = f"refused {JWT}; header was Bearer abcDEF0123456789xyz and DPoP {JWT}"
    redacted = redact_secrets(text)
    assert JWT not in redacted
    assert "abcDEF0123456789xyz" not in redacted
    assert redacted.count(REDACTED) == 3
    assert redacted.startswith("refused ")


def test_prose_about_tokens_is_kept() -> None:
    for text in ("missing bearer token", "Bearer scheme required", "token expired at 12:00"):
        assert redact_secrets(text) == text


def test_known_secrets_are_cut_out_whatever_their_shape() -> None:
    assert redact_secrets("bad key opaque-secret-42!", ("opaque-secret-42",)) == (
        f"bad key {REDACTED}!"
    )
    # a short credential is cut out where it stands alone, never out of longer words
    assert redact_secrets("the cat sat", ("cat",)) == f"the {REDACTED} sat"
    assert redact_secrets("unknown key 'k3y9'", ("k3y9",)) == f"unknown key '{REDACTED}'"
    assert redact_secrets("concatenate k3y9x", ("cat", "k3y9")) == "concatenate k3y9x"
    assert redact_secrets("a+b a.b", ("a+b",)) == f"{REDACTED} a.b"  # not a pattern
    assert redact_secrets("nothing", ("",)) == "nothing"


def test_exception_text_keeps_the_traceback_but_not_the_credential() -> None:
    try:
        raise ValueError(f"cannot parse {JWT!r}")
    except ValueError as exc:
        text = redacted_exception(exc)
    assert JWT not in text
    assert "Traceback" in text
    assert "ValueError: cannot parse" in text


def test_every_refusal_reason_is_redacted_whoever_raises_it() -> None:
    """Reasons reach the server log and the audit log; a quoted credential is cut at the source."""
    from securemcp.errors import InvalidCredential, PolicyDenied, UpstreamError

    for error in (
        InvalidCredential(reason=f"rejected {JWT}"),
        PolicyDenied(reason=f"hook saw Authorization: Bearer {'a1' * 12}"),
        UpstreamError(reason=f"upstream echoed {JWT}"),
    ):
        assert error.reason is not None
        assert JWT not in error.reason
        assert "a1" * 12 not in error.reason
        assert REDACTED in error.reason
        assert JWT not in str(error)  # and the client message never held it
    assert PolicyDenied(reason="rule 3 denies writes").reason == "rule 3 denies writes"
