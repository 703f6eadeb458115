"""HTTP protections for a securemcp server's streamable HTTP / SSE app (MCP authorization).

:func:`protect_http_app` (called by :meth:`securemcp.FastMCP.http_app`) installs one pure ASGI
middleware, outermost of FastMCP's own, that for the MCP endpoint:

1. refuses a browser ``Origin`` that is neither the resource's own origin, a loopback
   same-origin, nor configured (403; MCP transports, DNS rebinding). No forwarded header takes
   part: the allowed origins come from configuration, and same-origin is judged by ``Host``;
2. refuses a token in the query string (RFC 6750 §2.3 / MCP "Token Requirements") and more than
   one ``Authorization`` header (RFC 6750 §2: one method only) with 400 ``invalid_request``;
3. answers a request without a bearer credential (or with another scheme) with 401 and a
   challenge without ``error`` (RFC 6750 §3.1), and a credential the verifier refuses with 401
   ``error="invalid_token"``; every challenge carries ``resource_metadata`` (RFC 9728 §5.1);
4. reads the JSON-RPC body (size-capped) of ``tools/call``, ``resources/read`` and ``prompts/get``,
   asks the pipeline which scopes the target needs and, if the verified token lacks any, answers
   403 ``error="insufficient_scope", scope="<every scope the call needs>"`` before FastMCP runs
   (RFC 6750 §3.1, MCP "Scope Challenge Handling") so the client can step up in one go.

It also serves RFC 9728 protected resource metadata (:mod:`securemcp.auth.resource`) and adds
``resource_metadata`` to any challenge FastMCP itself emits. Paths are matched as Starlette's
router matches them (``scope["root_path"]`` stripped), so the guard also runs when the app is
mounted under a prefix (a Starlette/FastAPI ``Mount``, uvicorn ``--root-path``); the advertised
``resource_metadata`` URL stays the one derived from the configured resource, whatever the
prefix. The client never learns which check failed; the specific reason is logged at INFO on the
``securemcp.auth`` logger.

Forwarded information is believed only from ``ProtectedResource(trusted_proxies=...)``, and only
the kind those proxies write (``forwarded_headers``: ``X-Forwarded-*`` by default, or RFC 7239
``Forwarded``): it selects among the configured resource URIs (metadata, ``resource_metadata``)
and names the client for the per-address limit and the refusal records
(:mod:`securemcp.auth._client_address`, :mod:`securemcp.auth._forwarded`).

Every refusal is traced and counted: the 403 step-up as the call it refuses, the others (1-3 and
the per-address 429, before any token work) as an HTTP ``SERVER`` span, since FastMCP never sees
the request (:meth:`securemcp.telemetry.Telemetry.refused_at_http`).
"""

from __future__ import annotations

import json
import logging
import math
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

from mcp.types import INTERNAL_ERROR

from securemcp.auth._client_address import client_address, forwarded_walk, trusted_peer
from securemcp.auth._throttle import FailureThrottle
from securemcp.auth.base import IdentityVerifier
from securemcp.auth.resource import (
    WELL_KNOWN_PREFIX,
    ProtectedResource,
    ResolvedResource,
    _is_loopback,
    normalize_origin,
)
from securemcp.context import Principal
from securemcp.errors import InsufficientScope, InvalidCredential
from securemcp.identity import failed_verification, remember_verified

if TYPE_CHECKING:
    from securemcp.components import ComponentFacts

__all__ = ["HTTPGuard", "protect_http_app"]

logger = logging.getLogger("securemcp.auth")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: Refusal reasons that mean "the server cannot check credentials right now" (HTTP 503).
UNAVAILABLE_REASONS: Final = frozenset({"jwks_unavailable", "introspection_unavailable"})

#: The ``error.type`` (telemetry) of each HTTP status the guard answers before trusting a token.
REFUSAL_ERROR_TYPES: Final = {
    400: "invalid_request",
    401: "invalid_token",
    403: "origin_not_allowed",
    429: "rate_limited",
    503: "verifier_unavailable",
}

_TARGET_PARAM: Final = {"tools/call": "name", "resources/read": "uri", "prompts/get": "name"}
_B64TOKEN: Final = re.compile(rb"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1
_QUERY_SEPARATORS: Final = re.compile(rb"[&;]")
_INVALID_TOKEN_TEXT: Final = "The access token is missing, invalid or expired."  # noqa: S105
_INVALID_REQUEST_TEXT: Final = "The request is malformed."
_INSUFFICIENT_SCOPE_TEXT: Final = "The access token lacks scopes this call requires."
_JSON: Final = (b"content-type", b"application/json")


def _quoted(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def challenge(
    *,
    error: str | None = None,
    description: str | None = None,
    scope: str | None = None,
    resource_metadata: str | None = None,
) -> bytes:
    """A ``WWW-Authenticate: Bearer ...`` value (RFC 6750 §3, RFC 9728 §5.1)."""
    parts = []
    if error:
        parts.append(f"error={_quoted(error)}")
    if description:
        parts.append(f"error_description={_quoted(description)}")
    if scope:
        parts.append(f"scope={_quoted(scope)}")
    if resource_metadata:
        parts.append(f"resource_metadata={_quoted(resource_metadata)}")
    return ("Bearer " + ", ".join(parts) if parts else "Bearer").encode()


async def _respond(
    send: Send, status: int, body: bytes, headers: list[tuple[bytes, bytes]] | None = None
) -> None:
    response_headers = [_JSON, (b"content-length", str(len(body)).encode()), *(headers or ())]
    await send({"type": "http.response.start", "status": status, "headers": response_headers})
    await send({"type": "http.response.body", "body": body})


def _oauth_body(error: str, description: str) -> bytes:
    return json.dumps({"error": error, "error_description": description}).encode()


@dataclass(frozen=True, slots=True)
class _State:
    """What the guard knows for the verifier currently in force."""

    verifier: IdentityVerifier | None
    resolved: ResolvedResource | None
    allowed_origins: frozenset[str]
    metadata_paths: frozenset[str]
    challenge_scope: str | None


@dataclass(slots=True)
class _Headers:
    authorization: list[bytes]
    origin: bytes | None = None
    origins: int = 0
    host: bytes | None = None
    forwarded_host: bytes | None = None
    forwarded_proto: bytes | None = None
    forwarded: bool = False  # an RFC 7239 ``Forwarded`` field is present
    content_length: int | None = None


def _read_headers(scope: Scope) -> _Headers:
    found = _Headers(authorization=[])
    for name, value in scope["headers"]:
        if name == b"authorization":
            found.authorization.append(value)
        elif name == b"origin":
            found.origin = value
            found.origins += 1
        elif name == b"host":
            found.host = value
        elif name == b"x-forwarded-host":
            found.forwarded_host = value
        elif name == b"x-forwarded-proto":
            found.forwarded_proto = value
        elif name == b"forwarded":
            found.forwarded = True
        elif name == b"content-length" and value.isdigit():
            found.content_length = int(value)
    return found


class _Refusal(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class HTTPGuard:
    """The ASGI middleware :func:`protect_http_app` installs (see the module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        server: Any,
        config: ProtectedResource,
        paths: frozenset[str],
        prefixes: tuple[str, ...] = (),
        mcp_path: str | None = None,
    ) -> None:
        self.app = app
        self._server = server
        self._pipeline = server._securemcp_pipeline
        self._config = config
        self._paths = paths
        self._prefixes = prefixes
        self._mcp_path = mcp_path
        self._state: _State | None = None
        self._state_source: object = object()
        self._failure_throttle = FailureThrottle(max_records=config.refusal_records_per_second)

    # --- configuration, recomputed only when the server's verifier changes ------------------

    def state(self) -> _State:
        """The guard's view of the verifier in force (cheap: an identity check per request)."""
        verifier = self._pipeline.verifier()
        state = self._state
        if state is not None and self._state_source is verifier:
            return state
        resolved = self._config.resolve(
            self._server.auth,
            server_name=getattr(self._server, "name", None),
            mcp_path=self._mcp_path,
        )
        origins = set(self._config.allowed_origins)
        metadata_paths: frozenset[str] = frozenset()
        challenge_scope = None
        if resolved is not None:
            origins |= resolved.origins
            metadata_paths = resolved.metadata_paths()
            challenge_scope = " ".join(sorted(resolved.required_scopes)) or None
        state = _State(verifier, resolved, frozenset(origins), metadata_paths, challenge_scope)
        self._state, self._state_source = state, verifier
        return state

    # --- ASGI ---------------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        # The path within this app, as Starlette's router matches it: under a prefix (a Starlette
        # or FastAPI ``Mount``, uvicorn ``--root-path``) ``path`` keeps the prefix and
        # ``root_path`` names it, so comparing ``path`` itself would let every request through.
        path = get_route_path(scope)
        if path in self._paths or path.startswith(self._prefixes or ("\0",)):
            await self._guard(scope, receive, send)
        elif path.startswith(WELL_KNOWN_PREFIX) and path in self.state().metadata_paths:
            await self._metadata(scope, send, path)
        else:
            await self.app(scope, receive, send)

    def _log(self, scope: Scope, reason: str, trace_id: str | None = None) -> None:
        """Log a refusal made at the HTTP layer and record it in the audit log (best effort).

        Unauthenticated requests cost an attacker nothing, so their audit records are throttled
        (:class:`~securemcp.auth._throttle.FailureThrottle`): at most one per source and reason
        per second, a few reasons per source and a bounded number per second overall, each
        record carrying how many refusals it stands for. The audit log still shows every burst,
        with its size, without growing by one record per forged request. (The server log line
        is written for every refusal.)
        """
        address = self._client_address(scope)
        logger.info(
            "refused %s %s from %s: %s",
            scope.get("method"),
            scope.get("path"),
            address or "?",
            reason,
        )
        admitted = self._failure_throttle.admit(address, reason)
        if admitted is None:
            return
        auditor = self._pipeline.auditor
        if auditor is not None:
            if admitted.overall:  # the per-source budget is spent: one record for everyone
                more = (
                    f" (+{admitted.left_out} more from any address since the last record; "
                    "too many refusals to record each address)"
                )
            elif admitted.left_out:
                more = f" (+{admitted.left_out} more from this address since the last record)"
            else:
                more = ""
            auditor.auth_failure(
                reason=f"http: {reason}{more}",
                method=str(scope.get("method") or "?"),
                target=str(scope.get("path") or "?"),
                transport="http",
                trace_id=trace_id,
            )

    def _refused(
        self, scope: Scope, status: int, reason: str, log_reason: str | None = None
    ) -> None:
        """A refusal made before any token was trusted: logged, audited (throttled) and traced.

        Only refusals pay for this: a request that passes does no telemetry work here (FastMCP's
        own span covers it). ``reason`` is a stable code for telemetry; ``log_reason``, if given,
        replaces it in the log and the audit record.
        """
        path = get_route_path(scope)
        trace_id = self._pipeline._telemetry.refused_at_http(
            http_method=scope.get("method") or "",
            status_code=status,
            error_type=REFUSAL_ERROR_TYPES[status],
            reason=reason,
            route=path if path in self._paths else None,  # configured paths only, never free text
            scheme=scope.get("scheme"),
            traceparent=_traceparent(scope),
        )
        self._log(scope, log_reason or reason, trace_id)

    def _record_scope_refusal(
        self,
        scope: Scope,
        body: bytes,
        principal: Principal,
        exc: InsufficientScope,
        facts: ComponentFacts,
    ) -> None:
        """A 403 step-up refusal: traced and audited like the in-process refusal it replaces.

        The caller is known (its token verified), so the record is a ``deny`` decision naming
        the caller, the target and the caller's trace (from the request ``_meta``), not an
        anonymous authentication failure.
        """
        parsed = _call_target(body)
        assert parsed is not None  # _scope_refusal parsed this very body
        method, target, _, _ = parsed
        params: dict[str, Any] = json.loads(body).get("params") or {}
        meta = params.get("_meta")
        arguments = params.get("arguments")
        traceparent = meta.get("traceparent") if isinstance(meta, dict) else None
        call_id = secrets.token_hex(16)
        logger.info(
            "refused %s %r from %s: insufficient_scope (missing %s)",
            method,
            target,
            self._client_address(scope) or "?",
            " ".join(sorted(exc.missing)),
        )
        trace_id = self._pipeline._telemetry.refused_before_server(
            method=method,
            target=target,
            principal=principal,
            error_type=exc.code,
            call_id=call_id,
            traceparent=traceparent,
        )
        auditor = self._pipeline.auditor
        if auditor is not None:
            audited, arguments = target, arguments if isinstance(arguments, dict) else {}
            if method == "resources/read":  # a template read is named like a tool call
                from securemcp._resource_reads import audited_read

                audited, arguments = audited_read(target, facts.uri_template)
            auditor.refusal(
                call_id=call_id,
                method=method,
                target=audited,
                principal=principal,
                arguments=arguments,
                code=exc.code,
                trace_id=trace_id,
            )

    def _client_address(self, scope: Scope) -> str | None:
        """The client's address, as the configured trusted proxies report it."""
        config = self._config
        return client_address(scope, config.trusted_proxies, config.forwarded_headers)

    def _forwarded_origin(self, scope: Scope, headers: _Headers) -> str | None:
        """The origin a *trusted* proxy says the client used (only ever selects a resource).

        From ``X-Forwarded-Host``/``X-Forwarded-Proto`` (their last values), or with
        ``forwarded_headers="forwarded"`` from the ``host``/``proto`` of the RFC 7239 element
        the client-facing trusted proxy wrote (:mod:`securemcp.auth._forwarded`); never both.
        """
        if self._config.forwarded_headers == "forwarded":
            if not headers.forwarded:
                return None
            peer = trusted_peer(scope, self._config.trusted_proxies)
            if peer is None:
                return None
            facing = forwarded_walk(scope, peer, self._config.trusted_proxies)[1]
            if facing is None or "host" not in facing:
                return None
            scheme = facing.get("proto", "https").lower()
            return normalize_origin(f"{scheme}://{facing['host']}")
        if headers.forwarded_host is None:
            return None
        if trusted_peer(scope, self._config.trusted_proxies) is None:
            return None
        host = headers.forwarded_host.decode("latin-1").split(",")[-1].strip()
        proto = b"https"
        if headers.forwarded_proto is not None:
            proto = headers.forwarded_proto.split(b",")[-1].strip().lower()
        return normalize_origin(f"{proto.decode('latin-1')}://{host}")

    def _origin_allowed(self, scope: Scope, headers: _Headers, state: _State) -> bool:
        if headers.origins > 1 or headers.origin is None:
            return headers.origins == 0
        origin = normalize_origin(headers.origin.decode("latin-1"))
        if origin is None:
            return False  # "null", opaque or malformed origins
        if origin in state.allowed_origins:
            return True
        # Same origin on loopback (a page served by this very server on localhost). A DNS
        # rebinding page cannot produce it: its Host header carries the attacker's name.
        if headers.host is None:
            return False
        host = headers.host.decode("latin-1")
        same = normalize_origin(f"{scope.get('scheme', 'http')}://{host}")
        hostname = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        return same == origin and _is_loopback(hostname.strip("[]"))

    def _metadata_url(self, state: _State, forwarded: str | None) -> str | None:
        if state.resolved is None:
            return None
        return state.resolved.select(forwarded).metadata_url

    async def _address_limited(self, scope: Scope, send: Send) -> bool:
        """Pre-authentication limit per client address (costs no cryptography); 429 if over."""
        enforcement = self._pipeline.enforcement
        limiter = enforcement.rate_limiter if enforcement is not None else None
        if limiter is None:
            return False
        decision = await limiter.hit_address(self._client_address(scope))
        if decision.allowed:
            return False
        seconds = max(1, math.ceil(decision.retry_after))
        self._refused(
            scope, 429, "address_rate_limited", f"rate_limited (address limit {decision.limit})"
        )
        await _respond(
            send,
            429,
            json.dumps(
                {
                    "error": "rate_limited",
                    "error_description": f"Too many requests; retry after {seconds} s.",
                }
            ).encode(),
            [(b"retry-after", str(seconds).encode())],
        )
        return True

    async def _guard(self, scope: Scope, receive: Receive, send: Send) -> None:
        if await self._address_limited(scope, send):
            return
        state = self.state()
        headers = _read_headers(scope)
        if headers.origins and not self._origin_allowed(scope, headers, state):
            self._refused(scope, 403, "origin_not_allowed")
            await _respond(send, 403, _oauth_body("forbidden", "Forbidden."))
            return
        forwarded = self._forwarded_origin(scope, headers)
        metadata_url = self._metadata_url(state, forwarded)
        query: bytes = scope.get("query_string", b"")
        if len(headers.authorization) > 1 or (query and _has_query_token(query)):
            self._refused(
                scope,
                400,
                "token_in_query" if len(headers.authorization) <= 1 else "multiple_authorization",
            )
            await self._refuse(send, 400, "invalid_request", _INVALID_REQUEST_TEXT, metadata_url)
            return
        if state.verifier is None:  # development mode: no credential required
            await self.app(scope, receive, send)
            return
        try:
            principal = await self._authenticate(state.verifier, headers.authorization, scope)
        except _Refusal as refusal:
            if refusal.reason in ("no_credential", "unsupported_scheme"):
                self._refused(scope, 401, refusal.reason)
                await _respond(
                    send,
                    401,
                    b"",
                    [
                        (
                            b"www-authenticate",
                            challenge(scope=state.challenge_scope, resource_metadata=metadata_url),
                        )
                    ],
                )
            elif refusal.reason in UNAVAILABLE_REASONS:
                self._refused(scope, 503, refusal.reason)
                await _respond(
                    send,
                    503,
                    _oauth_body(
                        "temporarily_unavailable",
                        "Credentials cannot be verified right now; retry later.",
                    ),
                    [(b"retry-after", b"5")],
                )
            else:
                self._refused(scope, 401, refusal.reason)
                await self._refuse(send, 401, "invalid_token", _INVALID_TOKEN_TEXT, metadata_url)
            return
        if scope.get("method") == "POST" and self._pipeline.disclose_required_scopes:
            limit = self._config.max_body_bytes
            if headers.content_length is None or headers.content_length <= limit:
                receive, body = await _buffer(receive, limit)
                if body is not None:
                    denied = await self._scope_refusal(body, principal)
                    if denied is not None:
                        request_id, exc, facts = denied
                        self._record_scope_refusal(scope, body, principal, exc, facts)
                        await self._insufficient_scope(send, request_id, exc, metadata_url)
                        return
        if metadata_url is not None:
            send = _with_resource_metadata(send, metadata_url)
        await self.app(scope, receive, send)

    async def _authenticate(
        self, verifier: IdentityVerifier, values: list[bytes], scope: Scope
    ) -> Principal:
        if not values:
            raise _Refusal("no_credential")
        scheme, _, token = values[0].partition(b" ")
        if scheme.lower() != b"bearer":
            raise _Refusal("unsupported_scheme")
        if not token:
            raise _Refusal("empty_token")
        if _B64TOKEN.fullmatch(token) is None:
            raise _Refusal("malformed_authorization")
        text = token.decode("ascii")
        try:
            principal = await verifier.authenticate(text)
        except InvalidCredential as exc:
            refusal = failed_verification(exc, text)
            raise _Refusal(refusal.reason or "invalid_token") from None
        except Exception as exc:  # fail closed: a verifier bug must never let a request through
            failed_verification(exc, text)  # logged, with the credential cut out
            raise _Refusal("verifier_error") from None
        remember_verified(scope, verifier, text, principal)
        return principal

    async def _scope_refusal(
        self, body: bytes, principal: Principal
    ) -> tuple[Any, InsufficientScope, ComponentFacts] | None:
        parsed = _call_target(body)
        if parsed is None:
            return None
        method, target, request_id, version = parsed
        try:
            facts = await self._pipeline.requested_facts(method, target, version)
        except Exception:  # unknown or broken target: the pipeline refuses it in-process
            return None
        if facts is None:
            return None
        required = facts.scopes
        missing = principal.missing_scopes(required)
        if not missing:
            return None
        return request_id, InsufficientScope(required, missing), facts

    async def _refuse(
        self, send: Send, status: int, error: str, description: str, metadata_url: str | None
    ) -> None:
        header = challenge(error=error, description=description, resource_metadata=metadata_url)
        body = _oauth_body(error, description)
        await _respond(send, status, body, [(b"www-authenticate", header)])

    async def _insufficient_scope(
        self, send: Send, request_id: Any, exc: InsufficientScope, metadata_url: str | None
    ) -> None:
        scope_text = " ".join(exc.required)
        header = challenge(
            error="insufficient_scope",
            description=_INSUFFICIENT_SCOPE_TEXT,
            scope=scope_text,
            resource_metadata=metadata_url,
        )
        body = {
            "jsonrpc": "2.0",
            "id": request_id,
            "error": {
                "code": INTERNAL_ERROR,
                "message": str(exc),
                "data": {
                    "securemcp_error": exc.code,
                    "required_scopes": list(exc.required),
                    "missing_scopes": list(exc.missing),
                },
            },
        }
        await _respond(send, 403, json.dumps(body).encode(), [(b"www-authenticate", header)])

    async def _metadata(self, scope: Scope, send: Send, path: str) -> None:
        state = self.state()
        method = scope.get("method")
        cors = [(b"access-control-allow-origin", b"*")]
        if method == "OPTIONS":
            await send(
                {
                    "type": "http.response.start",
                    "status": 204,
                    "headers": [*cors, (b"access-control-allow-methods", b"GET, HEAD, OPTIONS")],
                }
            )
            await send({"type": "http.response.body", "body": b""})
            return
        if method not in ("GET", "HEAD") or state.resolved is None:
            await _respond(send, 405, _oauth_body("invalid_request", "Method not allowed."))
            return
        forwarded = self._forwarded_origin(scope, _read_headers(scope))
        resource = state.resolved.select(forwarded, path)
        document = state.resolved.document(resource, await self._declared_scopes())
        await _respond(
            send,
            200,
            b"" if method == "HEAD" else document,
            [*cors, (b"cache-control", b"public, max-age=60")],
        )

    async def _declared_scopes(self) -> set[str]:
        """Every scope declared on the server's tools, resources, templates and prompts."""
        from securemcp.scopes import declared_scopes

        server = self._server
        scopes: set[str] = set()
        for lister in (
            server.list_tools,
            server.list_resources,
            server.list_resource_templates,
            server.list_prompts,
        ):
            try:
                components = await lister(run_middleware=False)
            except Exception:
                logger.exception("could not list components for scopes_supported")
                continue
            for component in components:
                try:
                    scopes |= declared_scopes(component)
                except Exception as exc:  # an invalid declaration refuses its calls; skip it
                    logger.debug("scopes_supported skips %r: %s", component, exc)
        return scopes


def get_route_path(scope: Scope) -> str:
    """The request path within this app: ``path`` without the ``root_path`` prefix (ASGI).

    The same rule as Starlette's router (``starlette._utils.get_route_path``, pinned by a test),
    so the guard sees exactly the path the router dispatches on, mounted or not.
    """
    path: str = scope["path"]
    root_path: str = scope.get("root_path", "")
    if not root_path or not path.startswith(root_path):
        return path
    if path == root_path:
        return ""
    if path[len(root_path)] == "/":
        return path[len(root_path) :]
    return path


def _traceparent(scope: Scope) -> str | None:
    """The request's ``traceparent`` header if it has exactly one (W3C Trace Context)."""
    found: bytes | None = None
    for name, value in scope["headers"]:
        if name == b"traceparent":
            if found is not None:
                return None  # two: ambiguous, so neither is trusted
            found = value
    return found.decode("latin-1") if found is not None else None


def _has_query_token(query: bytes) -> bool:
    """Whether the query string has an ``access_token`` parameter (RFC 6750 §2.3), however its
    name is percent-encoded (``access%5Ftoken`` and ``%61ccess_token`` are the same name, RFC 3986
    §2.3). Parameters are split on ``&`` and ``;`` (either may be a separator to some server).

    Cheap for the common case: a query without ``%`` is only searched for the plain name.
    """
    if b"%" not in query and b"access_token" not in query:
        return False
    from urllib.parse import unquote_to_bytes

    for pair in _QUERY_SEPARATORS.split(query):
        name = pair.partition(b"=")[0].replace(b"+", b" ")
        if unquote_to_bytes(name) == b"access_token":
            return True
    return False


def _call_target(body: bytes) -> tuple[str, str, Any, str | None] | None:
    """``(method, target, id, version)`` of a single JSON-RPC call that names a component, else
    None. ``version`` is the component version the call asks for in ``_meta.fastmcp.version``
    (FastMCP serves a client the version named there when it is a string, else the highest)."""
    try:
        message = json.loads(body)
    except (ValueError, RecursionError):
        return None
    if not isinstance(message, dict):
        return None  # batches and other shapes pass through: the pipeline still decides
    method = message.get("method")
    params = message.get("params")
    if not isinstance(method, str) or method not in _TARGET_PARAM or not isinstance(params, dict):
        return None
    target = params.get(_TARGET_PARAM[method])
    if not isinstance(target, str):
        return None
    meta = params.get("_meta")
    fastmcp_meta = meta.get("fastmcp") if isinstance(meta, dict) else None
    version = fastmcp_meta.get("version") if isinstance(fastmcp_meta, dict) else None
    return method, target, message.get("id"), version if isinstance(version, str) else None


async def _buffer(receive: Receive, limit: int) -> tuple[Receive, bytes | None]:
    """Read the request body up to ``limit`` bytes; return a receive that replays it.

    The body is ``None`` if it was larger than ``limit`` or the client disconnected; the replaying
    receive then hands on what was read and continues with the original stream.
    """
    messages: list[Message] = []
    chunks: list[bytes] = []
    size = 0
    body: bytes | None = None
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            break
        chunks.append(chunk)
        if not message.get("more_body", False):
            body = b"".join(chunks)
            break
    if body is not None:
        messages = [{"type": "http.request", "body": body, "more_body": False}]
    pending = messages[::-1]

    async def replay() -> Message:
        if pending:
            return pending.pop()
        return await receive()

    return replay, body


def _with_resource_metadata(send: Send, metadata_url: str) -> Send:
    """A ``send`` that adds ``resource_metadata`` to challenges emitted further in (FastMCP's)."""
    parameter = f", resource_metadata={_quoted(metadata_url)}".encode()

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start" and message["status"] in (401, 403):
            fixed = []
            for name, value in message.get("headers", ()):
                if (
                    name.lower() == b"www-authenticate"
                    and value[:6].lower() == b"bearer"
                    and b"resource_metadata=" not in value
                ):
                    bare = value.strip().lower() == b"bearer"
                    value = b"Bearer " + parameter[2:] if bare else value + parameter
                fixed.append((name, value))
            message = {**message, "headers": fixed}
        await send(message)

    return sending


def protect_http_app(server: Any, app: Any) -> Any:
    """Install securemcp's HTTP-layer protections on FastMCP's Starlette ``app``; return it.

    The protected resource is configured by ``server._securemcp_protected_resource`` (the
    ``protected_resource=`` server keyword), defaulting to ``ProtectedResource()``.

    Raises:
        ConfigurationError: the metadata cannot be built (e.g. no authorization server known).
    """
    if getattr(server, "_securemcp_pipeline", None) is None:
        return app
    config = getattr(server, "_securemcp_protected_resource", None) or ProtectedResource()
    state = getattr(app, "state", None)
    mcp_path = getattr(state, "path", None)
    paths: set[str] = set()
    if isinstance(mcp_path, str) and mcp_path:
        paths |= {mcp_path.rstrip("/") or "/", mcp_path.rstrip("/") + "/"}
    prefixes: list[str] = []
    if getattr(state, "transport_type", None) == "sse":
        from starlette.routing import Mount

        for route in getattr(app, "routes", ()):
            if isinstance(route, Mount) and route.path:
                paths.add(route.path)
                prefixes.append(route.path.rstrip("/") + "/")
    # Validate now, at start-up, rather than on the first request.
    config.resolve(server.auth, server_name=server.name, mcp_path=mcp_path)
    app.add_middleware(
        HTTPGuard,
        server=server,
        config=config,
        paths=frozenset(paths),
        prefixes=tuple(prefixes),
        mcp_path=mcp_path,
    )
    return app
