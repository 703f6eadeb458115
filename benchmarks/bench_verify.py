"""Cost of one ``authenticate()``: a cached token vs a fresh one, per algorithm and verifier.

"cached" re-presents the same token (the verified-token cache: a SHA-256 and a dict lookup);
"fresh" presents a token never seen before (strict parse, header policy, signature check, claims,
principal), keys already in the JWKS cache. Also the RFC 7662 introspection verifier's cache hit.

    python benchmarks/bench_verify.py [N]
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import time

from _common import AUDIENCE


async def per_call_us(fn, tokens: list[str]) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    for token in tokens:
        await fn(token)
    return (time.perf_counter() - start) / len(tokens) * 1e6


async def main(n: int) -> None:
    from securemcp.testing import FakeIdentityProvider

    for algorithm in ("RS256", "ES256", "EdDSA"):
        idp = FakeIdentityProvider(algorithm=algorithm, audience=AUDIENCE)
        verifier = idp.verifier(jwks=idp.jwks, http_client=None)
        one = idp.token("alice", scopes=["calc:write"])
        await verifier.authenticate(one)  # warm: cached from now on
        fresh_tokens = [idp.token(f"user-{i}", scopes=["calc:write"]) for i in range(n)]
        cached = statistics.median(
            [await per_call_us(verifier.authenticate, [one] * n) for _ in range(5)]
        )
        fresh = await per_call_us(verifier.authenticate, fresh_tokens)
        print(
            f"authenticate() {algorithm:<6} cached {cached:7.2f} us   fresh {fresh:8.1f} us   "
            f"ratio {fresh / cached:6.0f}x"
        )

    # introspection: cache hit only (a miss is a network round trip to the AS)
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parents[1] / "tests" / "auth"))
    from auth_support import FakeIntrospection

    from securemcp.auth import IntrospectionVerifier

    endpoint = FakeIntrospection()
    introspection = IntrospectionVerifier(
        "https://as.example.test/introspect",
        endpoint.client_id,
        endpoint.client_secret,
        audience=AUDIENCE,
        http_client=endpoint.client(),
    )
    token = endpoint.issue("opaque-token-for-benchmark", audience=AUDIENCE)
    await introspection.authenticate(token)
    cached = statistics.median(
        [await per_call_us(introspection.authenticate, [token] * n) for _ in range(5)]
    )
    print(f"authenticate() introspection cached {cached:7.2f} us")


async def guard_overhead(n: int) -> None:
    """Per-request cost of the HTTP guard (header checks, cached verification, body scope check)."""
    import json

    from securemcp import FastMCP
    from securemcp.auth.http import protect_http_app
    from securemcp.testing import FakeIdentityProvider

    idp = FakeIdentityProvider(audience=AUDIENCE)
    server = FastMCP("bench", auth=idp.verifier(jwks=idp.jwks, http_client=None))

    @server.tool(scopes=["calc:write"])
    def add(a: int, b: int) -> int:
        return a + b

    class Inner:
        async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
            await receive()

    from starlette.applications import Starlette

    app = Starlette()
    app.state.path = "/mcp"
    protect_http_app(server, app)
    guard = app.user_middleware[0].cls(Inner(), **app.user_middleware[0].kwargs)
    token = idp.token("alice", scopes=["calc:write"])
    body = json.dumps(
        {"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "add"}}
    ).encode()
    headers = [
        (b"host", b"127.0.0.1:8000"),
        (b"authorization", f"Bearer {token}".encode()),
        (b"content-type", b"application/json"),
        (b"accept", b"application/json, text/event-stream"),
        (b"content-length", str(len(body)).encode()),
    ]
    scope = {"type": "http", "method": "POST", "path": "/mcp", "headers": headers}

    async def receive():  # type: ignore[no-untyped-def]
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message):  # type: ignore[no-untyped-def]
        pass

    async def one(_: str) -> None:
        await guard(dict(scope, query_string=b""), receive, send)

    await one("")
    cost = statistics.median([await per_call_us(one, [""] * n) for _ in range(5)])
    print(f"HTTP guard per tools/call request (cached token, body scope check) {cost:7.2f} us")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    asyncio.run(main(count))
    asyncio.run(guard_overhead(count))
