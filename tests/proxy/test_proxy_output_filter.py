"""An injected credential never reaches the client, however the upstream encodes it.

The output filter searches the answer's text, the concatenation of its text blocks, its
URL-decoded form and every base64 ``data`` / ``blob`` field decoded, for each secret verbatim,
JSON-escaped and base64/base64url-encoded. The upstream's error text is searched the same way
before it is cut to length, and withheld whole if it holds a credential.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import urllib.parse
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import mcp.types as t
import pytest
from fastmcp import FastMCP as PlainFastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers
from fastmcp.utilities.types import Image
from mcp import MCPError
from proxy_support import audited_proxy, config, locked

from securemcp.errors import UpstreamError, UpstreamOutputRejected
from securemcp.proxy.config import upstream_from
from securemcp.proxy.credentials import SecretSource, StaticBearer
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.upstream import Upstream
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http

SECRET = "sk_live_4eC39HqLyjWDarjtT1zdp7dc+/abc="


@pytest.fixture
def upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    monkeypatch.setenv("VENDOR_KEY", SECRET)
    auth = StaticBearer(SecretSource(env="VENDOR_KEY"), header="X-API-Key", scheme=None)
    pins = PinState(tmp_path / "lock.json", quiet=True)
    return Upstream(upstream_from("vendor", url="http://127.0.0.1:9/mcp"), auth, pins)


def result(*content: Any) -> t.CallToolResult:
    return t.CallToolResult(content=list(content), isError=False)


def b64(text: str, alphabet: Any = base64.b64encode) -> str:
    return alphabet(text.encode()).decode()  # type: ignore[no-any-return]


LEAKS = {
    "base64 image data": result(
        t.ImageContent(type="image", data=b64(f"X-API-Key: {SECRET}"), mimeType="image/png")
    ),
    "base64 audio data": result(
        t.AudioContent(type="audio", data=b64(f"k={SECRET}"), mimeType="audio/wav")
    ),
    "embedded blob resource": result(
        t.EmbeddedResource(
            type="resource",
            resource=t.BlobResourceContents(
                uri="file:///headers", blob=b64(f"X-API-Key: {SECRET}\n"), mimeType="text/plain"
            ),
        )
    ),
    "URL-encoded text": result(
        t.TextContent(type="text", text="?key=" + urllib.parse.quote(SECRET, safe=""))
    ),
    "form-encoded text": result(
        t.TextContent(type="text", text="key=" + urllib.parse.quote_plus(SECRET))
    ),
    "split over two text blocks": result(
        t.TextContent(type="text", text=SECRET[:18]), t.TextContent(type="text", text=SECRET[18:])
    ),
    "base64 inside text, any alignment": result(
        t.TextContent(type="text", text="dump: " + b64(f"xy {SECRET} z"))
    ),
    "base64url inside text": result(
        t.TextContent(type="text", text=b64(f"a{SECRET}", base64.urlsafe_b64encode))
    ),
}


@pytest.mark.parametrize("name", sorted(LEAKS))
def test_an_encoded_injected_credential_is_withheld(upstream: Upstream, name: str) -> None:
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(LEAKS[name])


def test_answers_without_the_credential_pass(upstream: Upstream) -> None:
    upstream.check_output(
        result(
            t.TextContent(type="text", text="sk_live_ is a prefix, not the key"),
            t.ImageContent(type="image", data=b64("just pixels"), mimeType="image/png"),
            t.TextContent(type="text", text="not base64 at all: %%%"),
        )
    )


def test_resource_blobs_are_decoded(upstream: Upstream) -> None:
    contents = t.BlobResourceContents(uri="debug://x", blob=b64(f"Auth: {SECRET}"))
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(t.ReadResourceResult(contents=[contents]))


async def test_upstream_error_text_is_redacted_before_it_is_cut(
    upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    """A secret straddling the 500-character cut of the upstream's error message: before, the
    cut came first, so the secret's prefix no longer matched and was logged."""
    message = "x" * 480 + f" key {SECRET} rejected"

    async def send(client: Any) -> Any:
        raise MCPError(-32603, message)

    async def nothing(*_: Any) -> None:
        return None

    upstream._verify_pins = nothing  # type: ignore[method-assign]
    upstream._check_live = lambda *_: None  # type: ignore[method-assign]
    with pytest.raises(UpstreamError) as refused:
        await upstream._send(SimpleNamespace(client=None), "tool", "t", send, None)  # type: ignore[arg-type]
    assert SECRET[:12] not in (refused.value.reason or "")
    assert "reason withheld" in (refused.value.reason or "")


async def refused_with(upstream: Upstream, message: str) -> str:
    """The reason of the UpstreamError an upstream JSON-RPC error ``message`` gives."""

    async def send(client: Any) -> Any:
        raise MCPError(-32603, message)

    async def nothing(*_: Any) -> None:
        return None

    upstream._verify_pins = nothing  # type: ignore[method-assign]
    upstream._check_live = lambda *_: None  # type: ignore[method-assign]
    with pytest.raises(UpstreamError) as refused:
        await upstream._send(SimpleNamespace(client=None), "tool", "t", send, None)  # type: ignore[arg-type]
    return refused.value.reason or ""


@pytest.mark.parametrize("name", ["verbatim", "base64", "base64url", "URL-encoded"])
async def test_an_encoded_credential_in_upstream_error_text_withholds_the_text(
    upstream: Upstream, name: str
) -> None:
    """Before: error text was redacted only of verbatim secrets and JWT-shaped text, so a
    base64 dump of the request headers went into the reason and the server log."""
    shown = {
        "base64": b64(f"X-API-Key: {SECRET}"),
        "base64url": b64(f"X-API-Key: {SECRET}", base64.urlsafe_b64encode),
        "URL-encoded": urllib.parse.quote(SECRET, safe=""),
        "verbatim": SECRET,
    }[name]
    reason = await refused_with(upstream, f"bad request, headers={shown}")
    assert reason == "vendor: JSON-RPC error -32603 (reason withheld: contained a credential)"
    assert upstream.redacted(reason) == reason  # what request() logs


async def test_an_encoded_exchanged_token_in_upstream_error_text_withholds_the_text(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    shown = b64(f"Authorization: Bearer {EXCHANGED}")  # not JWT-shaped
    reason = await refused_with(upstream, f"denied; request dump {shown}")
    assert reason == "vendor: JSON-RPC error -32603 (reason withheld: contained a credential)"


async def test_upstream_error_text_without_a_credential_is_kept_when_arguments_are_recorded(
    upstream: Upstream,
) -> None:
    upstream.record_arguments = True
    reason = await refused_with(upstream, "unknown tool; see eyJhbGciOiJub25lIn0.e30.sig")
    assert reason == "vendor: JSON-RPC error -32603: unknown tool; see [redacted]"


async def test_upstream_error_text_is_not_shown_by_default(upstream: Upstream) -> None:
    """The text can quote the caller's arguments: only its length and digest are shown."""
    reason = await refused_with(upstream, "bad account 4417")
    assert reason == (
        "vendor: JSON-RPC error -32603 (upstream text withheld: 16 characters, sha256 "
        f"{hashlib.sha256(b'bad account 4417').hexdigest()[:12]})"
    )


@pytest.mark.http
async def test_credential_echoed_in_binary_content_never_reaches_the_client(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    secret = "vendor-service-credential-0123456789"
    monkeypatch.setenv("VENDOR_TOKEN", secret)
    server = PlainFastMCP("vendor")

    def auth() -> str:
        return get_http_headers(include={"authorization"}).get("authorization") or ""

    @server.tool
    def echo_image() -> Image:
        return Image(data=("debug: " + auth()).encode(), format="png")

    @server.resource("debug://request", mime_type="application/octet-stream")
    def dump() -> bytes:
        return ("Authorization: " + auth()).encode()

    idp = FakeIdentityProvider()
    async with serve_http(server) as url:
        cfg = await locked(
            config(
                tmp_path,
                {
                    "vendor": {
                        "url": url,
                        "auth": {"type": "bearer", "secret_env": "VENDOR_TOKEN"},
                        "tools": {"echo_image": {}},
                        "resources": {"debug://request": {}},
                    }
                },
            )
        )
        proxy, _ = audited_proxy(cfg, idp, tmp_path)
        with caplog.at_level(logging.INFO):
            async with connect(proxy, idp.token("alice")) as client:
                with pytest.raises(ToolError, match="upstream_output_rejected"):
                    await client.call_tool("echo_image", {})
                with pytest.raises(Exception, match="upstream_output_rejected"):
                    await client.read_resource("debug://request")
    assert secret not in caplog.text


def test_an_answer_too_large_to_search_is_withheld_before_any_work(
    upstream: Upstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fail closed: an answer beyond the searchable size is withheld, and it is refused on its
    JSON size before any decoded view (URL-decoding, base64) is built."""
    from securemcp.proxy import upstream as module

    built: list[str] = []
    real_unquote = module.unquote
    monkeypatch.setattr(module, "unquote", lambda text: built.append("u") or real_unquote(text))
    big = result(t.TextContent(type="text", text="%41" * (module._MAX_ANSWER // 3 + 1)))
    with pytest.raises(UpstreamOutputRejected) as withheld:
        upstream.check_output(big)
    assert "too large" in (withheld.value.reason or "")
    assert built == []
    small = result(t.TextContent(type="text", text="%41" * 1000))
    upstream.check_output(small)
    assert built  # the check does build views for an answer it can search


# --- a configured secret shaped like a JWT ---------------------------------------------------

#: A vendor API key that is itself a JWT (long-lived, one for every caller of the proxy).
STATIC_JWT = (
    "eyJhbGciOiJIUzI1NiJ9.eyJpc3MiOiJ2ZW5kb3IiLCJzdWIiOiJzZWN1cmVtY3AtcHJveHkifQ"
    ".Zm9yZ2VkLXNpZ25hdHVyZS12YWx1ZQ"
)
#: A key that merely starts like one.
STATIC_EYJ = "eyJvendor-api-key-0123456789"

ENCODINGS = {
    "verbatim": lambda s: f"key: {s}",
    "verbatim, glued to more base64url": lambda s: f"key: eyJx{s}AAAA",
    "base64 inside text": lambda s: "dump: " + b64(f"x {s} y"),
    "base64url inside text, shifted": lambda s: b64(f"ab{s}", base64.urlsafe_b64encode),
}


def static_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str) -> Upstream:
    monkeypatch.setenv("VENDOR_JWT_KEY", secret)
    auth = StaticBearer(SecretSource(env="VENDOR_JWT_KEY"))
    pins = PinState(tmp_path / "lock.json", quiet=True)
    return Upstream(upstream_from("vendor", url="http://127.0.0.1:9/mcp"), auth, pins)


@pytest.mark.parametrize("secret", [STATIC_JWT, STATIC_EYJ], ids=["jwt", "eyJ-prefixed"])
@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_configured_secret_shaped_like_a_jwt_is_searched_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, secret: str, encoding: str
) -> None:
    """Only tokens the proxy obtained by exchange are found by JWT lookup; a configured secret
    is searched for in every encoding whatever it looks like."""
    upstream = static_upstream(tmp_path, monkeypatch, secret)
    text = ENCODINGS[encoding](secret)
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(result(t.TextContent(type="text", text=text)))


def test_exchanged_jwts_are_looked_up_not_searched_one_by_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of per-caller tokens cost one JWT extraction per view, not a search each; the
    exchange's client secret is still searched in every encoding."""
    from securemcp.proxy import upstream as module
    from securemcp.proxy.credentials import TokenExchange

    monkeypatch.setenv("EXCHANGE_CLIENT_SECRET", "exchange-client-secret-0123")
    exchange = TokenExchange(
        token_endpoint="https://idp.example/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="EXCHANGE_CLIENT_SECRET"),
        audience="https://vendor.example/mcp",
    )
    tokens = [
        f"eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ1{i:05d}In0.c2lnbmF0dXJl{i:05d}" for i in range(2000)
    ]
    for i, token in enumerate(tokens):
        exchange._remember((f"caller-{i}", b"subject"), token, float("inf"))
    pins = PinState(tmp_path / "lock.json", quiet=True)
    upstream = Upstream(upstream_from("vendor", url="http://127.0.0.1:9/mcp"), exchange, pins)
    searched: list[str] = []
    real_needles = module._needles
    monkeypatch.setattr(module, "_needles", lambda s: searched.append(s) or real_needles(s))
    upstream.check_output(result(t.TextContent(type="text", text="nothing to see")))
    assert searched == ["exchange-client-secret-0123"]
    for leak in (f"Bearer {tokens[1234]}", b64("exchange-client-secret-0123")):
        with pytest.raises(UpstreamOutputRejected):
            upstream.check_output(result(t.TextContent(type="text", text=leak)))
    # An evicted token is no longer the exchange's: it leaves the lookup with its cache entry.
    exchange._forget(("caller-1234", b"subject"))
    assert not exchange.issued_jwt(tokens[1234])


# --- tokens obtained by token exchange: found however they are encoded ------------------------

#: An exchanged token as an authorization server issues it (RS256: a 342-character signature).
EXCHANGED = (
    "eyJhbGciOiJSUzI1NiIsInR5cCI6ImF0K2p3dCJ9"
    ".eyJzdWIiOiJhbGljZSIsImF1ZCI6Imh0dHBzOi8vdmVuZG9yLmV4YW1wbGUvbWNwIn0."
    + base64.urlsafe_b64encode(bytes((7 * i + 3) % 256 for i in range(256))).decode().rstrip("=")
)


def mime(text: str) -> str:
    return "\n".join(text[i : i + 76] for i in range(0, len(text), 76))


EXCHANGED_ENCODINGS = {
    "verbatim": lambda s: f"Bearer {s}",
    "glued both sides": lambda s: f"xx{s}yy",
    "glued to more base64url": lambda s: f"eyJx{s}AAAA",
    "base64, aligned": lambda s: "dump: " + b64(s),
    "base64, one byte in": lambda s: "dump: " + b64(f"x{s}"),
    "base64, two bytes in": lambda s: "dump: " + b64(f"xy{s} and more"),
    "base64url, shifted, unpadded": lambda s: b64(f"ab{s}", base64.urlsafe_b64encode).rstrip("="),
    "base64 glued to base64 characters": lambda s: "Q" + b64(f"Authorization: Bearer {s}"),
    "base64 wrapped in lines": lambda s: mime(b64(f"GET / HTTP/1.1\r\nAuthorization: {s}")),
    "URL-encoded base64": lambda s: "?d=" + urllib.parse.quote(b64(f"z{s}"), safe=""),
}


def exchange_upstream(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *tokens: str
) -> tuple[Upstream, Any]:
    from securemcp.proxy.credentials import TokenExchange

    monkeypatch.setenv("EXCHANGE_CLIENT_SECRET", "exchange-client-secret-0123")
    exchange = TokenExchange(
        token_endpoint="https://idp.example/token",
        client_id="securemcp-proxy",
        client_secret=SecretSource(env="EXCHANGE_CLIENT_SECRET"),
        audience="https://vendor.example/mcp",
    )
    for i, token in enumerate(tokens):
        exchange._remember((f"caller-{i}", b"subject"), token, float("inf"))
    pins = PinState(tmp_path / "lock.json", quiet=True)
    upstream = Upstream(upstream_from("vendor", url="http://127.0.0.1:9/mcp"), exchange, pins)
    return upstream, exchange


@pytest.mark.parametrize("encoding", sorted(EXCHANGED_ENCODINGS))
def test_an_exchanged_token_is_found_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    """Before: an exchanged JWT was found only as a whole JWT-shaped string, so glued to other
    characters, or base64-encoded inside text, it reached the client."""
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    text = EXCHANGED_ENCODINGS[encoding](EXCHANGED)
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(result(t.TextContent(type="text", text=text)))


def test_an_exchanged_token_is_found_in_binary_content_and_split_blocks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    leaks = [
        result(t.ImageContent(type="image", data=b64(f"hdr {EXCHANGED}"), mimeType="image/png")),
        result(  # a base64 text inside a blob
            t.ImageContent(type="image", data=b64("pixels " + b64(EXCHANGED)), mimeType="image/png")
        ),
        result(
            t.TextContent(type="text", text=EXCHANGED[:150]),
            t.TextContent(type="text", text=EXCHANGED[150:]),
        ),
        t.CallToolResult(content=[], structuredContent={b64(EXCHANGED): 1}, isError=False),
    ]
    for leak in leaks:
        with pytest.raises(UpstreamOutputRejected):
            upstream.check_output(leak)


def test_other_jwts_and_base64_are_not_mistaken_for_an_exchanged_token(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    header_and_claims = EXCHANGED[: EXCHANGED.rindex(".") + 1]
    another = header_and_claims + base64.urlsafe_b64encode(bytes(256)).decode().rstrip("=")
    upstream.check_output(
        result(
            t.TextContent(type="text", text=f"{another} {b64(another)} {header_and_claims}"),
            t.TextContent(type="text", text=b64(bytes(range(256)).decode("latin-1"))),
            t.ImageContent(type="image", data=b64("just pixels" * 100), mimeType="image/png"),
        )
    )


def test_a_token_cached_twice_is_looked_for_until_both_entries_are_gone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The authorization server may return one token for two cache entries (two subject tokens
    of one caller): evicting one entry must not drop from the index a token still in use."""
    upstream, exchange = exchange_upstream(tmp_path, monkeypatch, EXCHANGED, EXCHANGED)
    leak = result(t.TextContent(type="text", text=f"xx{EXCHANGED}"))
    exchange._forget(("caller-0", b"subject"))
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(leak)
    exchange._forget(("caller-1", b"subject"))
    upstream.check_output(leak)


def test_an_opaque_exchanged_token_is_searched_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    opaque = "opaque-exchanged-token-0123456789abcdef"
    upstream, exchange = exchange_upstream(tmp_path, monkeypatch, opaque)
    assert opaque in exchange.searched_secrets()
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(result(t.TextContent(type="text", text=b64(f"k={opaque}"))))


class CountedText(str):
    """A view that counts the token confirmations (``startswith``) made on it."""

    confirmations = 0

    def startswith(self, *args: Any) -> bool:
        CountedText.confirmations += 1
        return super().startswith(*args)


def test_signature_slices_sprayed_by_the_upstream_cost_bounded_work() -> None:
    """An upstream knows the signatures of the tokens it is sent. Before: an answer sprayed
    with '.<16-character signature slice>' cost one Python-level confirmation per occurrence in
    every view and decoding (7.5 M characters: 2.2 s of a blocked event loop). Now the answer
    is withheld after a bounded number of failed confirmations (fail closed)."""
    from securemcp.proxy.issued import MAX_NEAR_MISSES, IssuedTokens

    index = IssuedTokens()
    index.add(EXCHANGED)
    signature = EXCHANGED.rsplit(".", 1)[1]
    spray = CountedText(f".{signature[:16]} " * 20_000)
    CountedText.confirmations = 0
    assert index.found_in([spray])
    assert CountedText.confirmations <= MAX_NEAR_MISSES + 1
    # A few near misses do not withhold an answer; a token after them is still found.
    assert not index.found_in([f".{signature[:16]} " * 3])
    assert index.found_in([f".{signature[:16]} " * 3 + EXCHANGED])


def test_a_secret_file_is_read_once_per_answer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The answer check read a file-based secret twice (to decide whether to search, then to
    search): an extra file read on every proxied call, and a file rotated in between could make
    the value searched for differ from the one the check decided on."""
    secret_file = tmp_path / "secret"
    secret_file.write_text("s3cr3t-value-123456")
    secret_file.chmod(0o600)
    reads: list[int] = []
    original = SecretSource.read

    def counting(self: SecretSource) -> str:
        reads.append(1)
        return original(self)

    monkeypatch.setattr(SecretSource, "read", counting)
    upstream = Upstream(
        upstream_from("v", url="http://127.0.0.1:9/mcp"),
        StaticBearer(SecretSource(file=str(secret_file))),
        PinState(str(tmp_path / "lock.json"), quiet=True),
    )
    upstream.check_output(t.CallToolResult(content=[t.TextContent(type="text", text="hello")]))
    assert len(reads) == 1
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(
            t.CallToolResult(content=[t.TextContent(type="text", text="s3cr3t-value-123456")])
        )
