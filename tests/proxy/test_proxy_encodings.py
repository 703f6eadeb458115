"""Injected credentials are found hex-encoded, in base64 wrapped with any whitespace, and in
double base64 (guarantee 5).

Before: the output filter looked for a configured secret verbatim, JSON-escaped and base64 at any
alignment, and for an exchanged token verbatim and in base64 broken only by line breaks. An
upstream that echoed the credential as hex (``binascii.hexlify``, either case), as base64 broken
by spaces or tabs (``fold``, a hex-dump style grouping), or base64-encoded twice handed it to the
caller. Compressed encodings remain out of reach (docs/proxy.md, known limits).
"""

from __future__ import annotations

import base64
import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mcp.types as t
import pytest
from fastmcp import FastMCP as PlainFastMCP
from fastmcp.exceptions import ToolError
from fastmcp.server.dependencies import get_http_headers
from proxy_support import audited_proxy, config, locked
from test_proxy_exchanged_tokens import token_exchange
from test_proxy_output_filter import EXCHANGED, SECRET, exchange_upstream

from securemcp.errors import UpstreamOutputRejected
from securemcp.proxy.config import upstream_from
from securemcp.proxy.credentials import SecretSource, StaticBearer
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.upstream import Upstream
from securemcp.testing import FakeIdentityProvider, connect
from securemcp.testing.http import serve_http


def b64(data: str | bytes, encode: Callable[[bytes], bytes] = base64.b64encode) -> str:
    raw = data.encode() if isinstance(data, str) else data
    return encode(raw).decode()


def wrapped(text: str, width: int, separators: tuple[str, ...]) -> str:
    """``text`` cut every ``width`` characters, the pieces joined by ``separators`` in turn."""
    pieces = [text[i : i + width] for i in range(0, len(text), width)]
    joined = pieces[0]
    for piece, separator in zip(pieces[1:], itertools.cycle(separators), strict=False):
        joined += separator + piece
    return joined


#: How a careless upstream may echo a request header holding the credential ``s``.
ENCODINGS: dict[str, Callable[[str], str]] = {
    "hex, lower case": lambda s: "dump: " + f"Authorization: {s}".encode().hex(),
    "hex, upper case": lambda s: "dump: " + f"Authorization: {s}".encode().hex().upper(),
    "hex, glued to a hex digit": lambda s: "id=f" + f"x{s}".encode().hex(),
    "hex, bytes spaced": lambda s: " ".join(f"{b:02x}" for b in f"k {s}".encode()),
    "base64 wrapped with spaces": lambda s: wrapped(b64(f"Authorization: {s}"), 8, (" ",)),
    "base64 wrapped with tabs": lambda s: "h:\t" + wrapped(b64(f"xy{s}"), 10, ("\t",)),
    "base64 wrapped with mixed whitespace": lambda s: wrapped(
        b64(f"GET /\r\nAuthorization: {s}"), 7, (" ", "\t", " \r\n ", "\x0c", "\x0b", "  ")
    ),
    "base64url wrapped with spaces": lambda s: wrapped(
        b64(f"a{s}", base64.urlsafe_b64encode), 5, (" ",)
    ),
    "double base64": lambda s: b64(b64(f"Authorization: Bearer {s}")),
    "double base64, shifted twice": lambda s: "d=" + b64("x" + b64(f"yz{s} end") + "!"),
    "double base64url, inner wrapped": lambda s: b64(
        wrapped(b64(f"k={s}"), 76, ("\n",)), base64.urlsafe_b64encode
    ),
}


def text_answer(text: str) -> t.CallToolResult:
    return t.CallToolResult(content=[t.TextContent(type="text", text=text)], isError=False)


def static_upstream(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Upstream:
    monkeypatch.setenv("VENDOR_KEY", SECRET)
    auth = StaticBearer(SecretSource(env="VENDOR_KEY"), header="X-API-Key", scheme=None)
    pins = PinState(tmp_path / "lock.json", quiet=True)
    return Upstream(upstream_from("vendor", url="http://127.0.0.1:9/mcp"), auth, pins)


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_a_static_secret_is_found_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    upstream = static_upstream(tmp_path, monkeypatch)
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(text_answer(ENCODINGS[encoding](SECRET)))


@pytest.mark.parametrize("encoding", sorted(ENCODINGS))
def test_an_exchanged_token_is_found_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    with pytest.raises(UpstreamOutputRejected):
        upstream.check_output(text_answer(ENCODINGS[encoding](EXCHANGED)))


def test_the_exchange_client_secret_is_found_in_every_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    for encode in ENCODINGS.values():
        with pytest.raises(UpstreamOutputRejected):
            upstream.check_output(text_answer(encode("exchange-client-secret-0123")))


def test_prose_hex_and_base64_without_a_credential_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whitespace joins words into base64 runs and hex runs; none of it is taken for a
    credential."""
    upstream, _ = exchange_upstream(tmp_path, monkeypatch, EXCHANGED)
    static = static_upstream(tmp_path, monkeypatch)
    header_and_claims = EXCHANGED[: EXCHANGED.rindex(".") + 1]
    answers = [
        "The quick brown fox jumps over the lazy dog " * 50,
        "deadbeef cafe f00d " * 40 + bytes(range(256)).hex() + bytes(range(256)).hex().upper(),
        wrapped(b64(bytes(range(256)) * 4), 8, (" ", "\t", "\n")),
        b64(b64(header_and_claims + "A" * 300)),
        f"{SECRET[:-3]} " + SECRET[:-3].encode().hex(),
    ]
    for answer in answers:
        upstream.check_output(text_answer(answer))
        static.check_output(text_answer(answer))


@pytest.mark.http
@pytest.mark.parametrize("credential", ["static", "exchanged"])
async def test_an_echoed_credential_never_reaches_the_client_in_any_encoding(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, credential: str
) -> None:
    """A real upstream that echoes the Authorization header it received, encoded."""
    server = PlainFastMCP("vendor")
    received: list[str] = []

    @server.tool
    def echo(encoding: str) -> str:
        authorization = get_http_headers(include={"authorization"}).get("authorization") or ""
        received.append(authorization)
        token = authorization.removeprefix("Bearer ")
        return ENCODINGS[encoding](token) if encoding else "nothing to see"

    idp = FakeIdentityProvider()
    monkeypatch.setenv("VENDOR_TOKEN", SECRET)
    upstream_auth: dict[str, Any] = {}
    async with serve_http(server) as url:
        tools = {"tools": {"echo": {}}}
        await locked(config(tmp_path, {"vendor": {"url": url, **tools}}))
        if credential == "static":
            auth = {"type": "bearer", "secret_env": "VENDOR_TOKEN"}
            cfg = config(tmp_path, {"vendor": {"url": url, "auth": auth, **tools}})
        else:
            cfg = config(tmp_path, {"vendor": {"url": url, **tools}})
            upstream_auth = {"vendor": token_exchange(idp, monkeypatch)}
        proxy, _ = audited_proxy(cfg, idp, tmp_path, upstream_auth=upstream_auth)
        async with connect(proxy, idp.token("alice")) as client:
            assert (await client.call_tool("echo", {"encoding": ""})).data == "nothing to see"
            for encoding in ENCODINGS:
                with pytest.raises(ToolError, match="upstream_output_rejected"):
                    await client.call_tool("echo", {"encoding": encoding})
    sent = {a.removeprefix("Bearer ") for a in received}
    assert (sent == {SECRET}) == (credential == "static")


def test_decoding_work_is_bounded_by_the_answer() -> None:
    """Nested encodings are decoded two levels deep, never further: the decoded text stays
    within a small multiple of the answer, however the upstream nests its encodings."""
    from securemcp.proxy.encodings import decodings

    prose = "".join(f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(300))
    nested = prose
    for _ in range(6):
        nested = b64(nested)
        for answer in (nested, nested.encode().hex(), wrapped(nested, 9, (" ", "\n"))):
            decoded = decodings([answer])
            assert decoded is not None
            assert sum(len(d) for d in decoded) <= 6 * len(answer)


def test_an_answer_too_costly_to_decode_is_withheld(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from securemcp.proxy import encodings

    upstream = static_upstream(tmp_path, monkeypatch)
    answer = text_answer(b64(bytes(range(256)) * 40))
    upstream.check_output(answer)
    monkeypatch.setattr(encodings, "MAX_DECODED", 10_000)
    with pytest.raises(UpstreamOutputRejected, match="upstream_output_rejected") as withheld:
        upstream.check_output(answer)
    assert "too large" in (withheld.value.reason or "")
    assert encodings.decodings([b64("short")]) is not None
