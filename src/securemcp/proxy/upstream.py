"""One upstream MCP server as the proxy reaches it: per-identity sessions, pins, failures.

Every request the proxy sends upstream goes through :meth:`Upstream.request`, which:

1. refuses a component that is blocked because its definition changed (rug pull), before any
   upstream traffic;
2. takes the caller's own upstream session (:mod:`securemcp.proxy.sessions`), opening it on
   first use with the upstream's configured credentials (:mod:`securemcp.proxy.credentials`),
   or with a token exchanged for this call's caller, which the session then presents (up to its
   termination) in place of the previous one. With token exchange a session belongs to one
   identity *and one grant* (:mod:`securemcp.proxy.grants`): a call never rides on a credential
   exchanged for a token with other scopes, audience, actor chain or confirmation key;
   **the caller's token is never sent upstream**. A plain FastMCP ``Client`` forwards no inbound
   header, redirects are not followed (a redirect must not carry an injected credential to
   another origin), and of the caller's ``_meta`` only an exact component version is forwarded
   (``_meta.fastmcp.version``, see :mod:`securemcp.proxy.components`), and only when the
   session's live listing names that version; the upstream request carries the proxy's own W3C
   trace context (``traceparent``/``tracestate``), never the caller's, so traces still join up;
3. re-checks the session's live definitions against the lockfile when they are due (every
   ``pin_check_seconds``, after a ``list_changed`` notification, after the lockfile changed);
4. runs the request under the upstream's timeout and turns every failure into a clear, stable
   error: ``upstream_unavailable`` (down, refused, killed mid-call: the broken session is
   discarded so the next call starts afresh), ``upstream_timeout``, ``upstream_error``
   (malformed or refused); ``upstream_auth_failed`` when credentials cannot be obtained. The
   spans FastMCP's client and the MCP SDK open for each upstream request record none of the
   upstream's text (:mod:`securemcp.proxy.spans`);
5. withholds an answer that contains a credential the proxy injected
   (``upstream_output_rejected``): injected secrets never reach the client.

Server-initiated requests from the upstream (sampling, elicitation, roots) are not relayed: a
third-party server does not get to drive the caller's model or read the caller's roots.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator
from itertools import chain
from typing import Any, Final, NamedTuple, TypeVar
from urllib.parse import unquote, unquote_plus

import anyio
import httpx2
import mcp_types
from fastmcp import Client
from fastmcp.client.messages import MessageHandler
from fastmcp.client.transports import SSETransport, StdioTransport, StreamableHttpTransport
from fastmcp.utilities.versions import VersionSpec
from mcp import MCPError
from pydantic import ValidationError

from securemcp.context import current
from securemcp.errors import (
    CallRefused,
    DefinitionChanged,
    UpstreamError,
    UpstreamOutputRejected,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from securemcp.proxy.config import UpstreamConfig
from securemcp.proxy.credentials import (
    JWT_SHAPE,
    OnBehalfOf,
    TokenExchange,
    UpstreamAuth,
    UpstreamAuthError,
)
from securemcp.proxy.encodings import decodings
from securemcp.proxy.grants import grant_key
from securemcp.proxy.pinning import PinnedDefinition, definition_of
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.sessions import (
    PoolExhausted,
    Session,
    SessionCredential,
    SessionPool,
    identity_key,
)
from securemcp.proxy.spans import install as _install_upstream_spans
from securemcp.proxy.spans import upstream_spans

__all__ = ["Upstream"]

logger = logging.getLogger("securemcp.proxy")

T = TypeVar("T")

_KIND_LISTS: Final = {
    "tool": "list_tools_mcp",
    "resource": "list_resources_mcp",
    "template": "list_resource_templates_mcp",
    "prompt": "list_prompts_mcp",
}
_KIND_RESULT_FIELD: Final = {
    "tool": "tools",
    "resource": "resources",
    "template": "resource_templates",
    "prompt": "prompts",
}
_JWT: Final = JWT_SHAPE
_METHOD_NOT_FOUND: Final = -32601
_CONNECTION_CLOSED: Final = -32000
_REQUEST_TIMEOUT: Final = -32001

_TRANSPORT_FAILURES: Final = (
    httpx2.TransportError,
    OSError,
    anyio.ClosedResourceError,
    anyio.BrokenResourceError,
    anyio.EndOfStream,
    ConnectionError,
)


class _InjectedCredentials(httpx2.Auth):
    """Adds the upstream's credentials to each upstream HTTP request of one session (nothing
    else): the session's own exchanged credential, or the configured static one."""

    def __init__(self, auth: UpstreamAuth, session: Session[Any]) -> None:
        self._auth = auth
        self._session = session

    async def async_auth_flow(self, request: httpx2.Request) -> Any:
        credential = self._session.credential
        # No session credential under token exchange: http_headers(None) refuses (fail closed).
        headers = credential.headers if credential else await self._auth.http_headers(None)
        for name, value in headers.items():
            request.headers[name] = value
        yield request


def _http_client_factory(connect_timeout: float, read_timeout: float) -> Any:
    def factory(
        headers: dict[str, str] | None = None,
        timeout: httpx2.Timeout | None = None,
        auth: httpx2.Auth | None = None,
        **_: Any,
    ) -> httpx2.AsyncClient:
        return httpx2.AsyncClient(
            headers=headers,
            auth=auth,
            follow_redirects=False,
            timeout=httpx2.Timeout(connect_timeout, read=max(read_timeout, 5.0) + 5.0),
        )

    return factory


class _ListChanged(MessageHandler):
    """Marks the session's pins for re-checking when the upstream announces a list change."""

    def __init__(self, session: Session[Any]) -> None:
        super().__init__()
        self._session = session

    async def on_tool_list_changed(self, message: Any) -> None:
        self._session.stale = True

    async def on_resource_list_changed(self, message: Any) -> None:
        self._session.stale = True

    async def on_prompt_list_changed(self, message: Any) -> None:
        self._session.stale = True


class Upstream:
    """The proxy's connection to one upstream MCP server.

    Args:
        config: the upstream's configuration.
        auth: how the proxy authenticates to it.
        pins: the lockfile state shared by every upstream of the proxy.
        credential_of_call: returns the current caller's verified raw credential; only used (and
            only called) for RFC 8693 token exchange, never sent upstream.
        record_arguments: the audit log's opt-in to record the caller's arguments
            (:class:`securemcp.audit.AuditLog`). An upstream's error text can quote them, so it
            reaches a failure's ``reason`` (and the server log) only then, credentials cut out;
            otherwise the reason names the failure's kind and the text's length and SHA-256
            prefix (:meth:`upstream_text`).
    """

    def __init__(
        self,
        config: UpstreamConfig,
        auth: UpstreamAuth,
        pins: PinState,
        *,
        credential_of_call: Callable[[], str | None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        record_arguments: bool = False,
    ) -> None:
        self.config = config
        self.record_arguments = record_arguments
        self.name = config.name
        self.auth = auth
        self.pins = pins
        self._credential_of_call = credential_of_call
        self._clock = clock
        self._exchange = auth if isinstance(auth, TokenExchange) else None
        _install_upstream_spans()  # before any client: its spans never carry upstream text
        self.sessions: SessionPool[Client[Any]] = SessionPool(
            self._open,
            self._close,
            max_sessions=config.max_sessions,
            idle_seconds=config.idle_seconds,
            clock=clock,
            reap_in_background=True,
            index=self._exchange.issued if self._exchange is not None else None,
        )

    def __repr__(self) -> str:
        return f"Upstream({self.name!r}, {self.config.transport_kind})"

    # --- connections -----------------------------------------------------------------------

    def transport(self, session: Session[Any]) -> Any:
        """A fresh client transport for one identity's session."""
        config = self.config
        if config.url is not None:
            cls = (
                SSETransport if config.url.rstrip("/").endswith("/sse") else StreamableHttpTransport
            )
            return cls(
                config.url,
                auth=_InjectedCredentials(self.auth, session),
                httpx_client_factory=_http_client_factory(
                    config.connect_timeout_seconds, config.timeout_seconds
                ),
            )
        assert config.command is not None
        env = dict(config.env)
        env.update(self.auth.process_env())
        return StdioTransport(
            config.command, list(config.args), env=env, cwd=config.cwd, keep_alive=False
        )

    def client(self, session: Session[Any]) -> Client[Any]:
        return Client(
            self.transport(session),
            name=f"securemcp-proxy/{self.name}",
            timeout=self.config.timeout_seconds,
            init_timeout=self.config.connect_timeout_seconds,
            message_handler=_ListChanged(session),
            cache=False,
            # The handshake era keeps a real MCP session per connection (mcp-session-id), which
            # is what upstream per-user state lives in; the 2026-07-28 era is sessionless.
            mode="legacy",
        )

    async def _open(self, session: Session[Any]) -> Client[Any]:
        client = self.client(session)
        try:
            with upstream_spans(), anyio.fail_after(self.config.connect_timeout_seconds + 1.0):
                await client.__aenter__()  # type: ignore[no-untyped-call]
        except CallRefused:
            raise
        except TimeoutError:
            await self._close(client)
            raise UpstreamUnavailable(reason=f"{self.name}: connect timed out") from None
        except Exception as exc:
            await self._close(client)
            # No caller argument has been sent yet: the text is logged (credentials cut out).
            raise UpstreamUnavailable(
                reason=f"{self.name}: connect failed: {type(exc).__name__}: "
                f"{self.redacted(str(exc))[:300]}"
            ) from None
        return client

    @staticmethod
    async def _close(client: Client[Any]) -> None:
        """Close a client; a broken connection's own error is not the caller's problem."""
        try:
            with upstream_spans(), anyio.move_on_after(5.0):
                await client.close()  # type: ignore[no-untyped-call]
        except Exception:
            logger.debug("securemcp proxy: error closing an upstream client", exc_info=True)

    async def aclose(self) -> None:
        await self.sessions.aclose()

    async def session_credential(
        self, subject_token: str | None, identity: str
    ) -> SessionCredential | None:
        """The credential a session of ``identity`` (the caller's identity and grant,
        :func:`~securemcp.proxy.grants.grant_key`) presents upstream, exchanged (RFC 8693) for
        the caller's verified ``subject_token``; ``None`` when the upstream's credentials are
        static (they are read afresh for every request instead).

        Raises:
            UpstreamAuthError: token exchange without a subject token, or the exchange failed.
        """
        if self._exchange is None:
            return None
        if not subject_token:
            raise UpstreamAuthError(reason="token exchange needs the caller's verified token")
        token, seconds_left = await self._exchange.exchange_with_lifetime(
            OnBehalfOf(subject_token, identity)
        )
        return SessionCredential(
            headers={"Authorization": f"Bearer {token}"},
            expires_at=self._clock() + seconds_left,
            token=token,
        )

    # --- pins ----------------------------------------------------------------------------

    def _check_blocked(self, kind: str, key: str) -> None:
        lock = self.pins.upstream(self.name)
        if lock is None or lock.get(kind, key) is None:  # type: ignore[arg-type]
            raise DefinitionChanged(reason=f"{self.name} {kind} {key!r} is not pinned")
        if self.pins.blocked(self.name, kind, key) is not None:
            raise DefinitionChanged(reason=f"{self.name} {kind} {key!r} is blocked")

    async def live_definitions(
        self,
        client: Client[Any],
        kinds: Iterable[str],
        versions: dict[tuple[str, str], frozenset[str]] | None = None,
    ) -> list[PinnedDefinition]:
        """The upstream's current definitions of the given kinds (for pinning and checking);
        with ``versions``, also the versions each one's listing names (``_meta.fastmcp``)."""
        found: list[PinnedDefinition] = []
        for kind in sorted(kinds):
            try:
                with upstream_spans():
                    result = await getattr(client, _KIND_LISTS[kind])()
            except MCPError as exc:
                if exc.error.code == _METHOD_NOT_FOUND:
                    continue
                raise
            for item in getattr(result, _KIND_RESULT_FIELD[kind]):
                pinned = PinnedDefinition.of(kind, definition_of(kind, item))  # type: ignore[arg-type]
                found.append(pinned)
                if versions is not None:
                    ident = (kind, pinned.key)
                    versions[ident] = versions.get(ident, frozenset()) | _listed_versions(item)
        return found

    async def _verify_pins(self, session: Session[Client[Any]]) -> None:
        """Re-list the session's upstream definitions if due, and block any that drifted."""
        now = self._clock()
        due = (
            session.stale
            or session.checked_generation != self.pins.generation
            or now - session.checked_at >= self.config.pin_check_seconds
        )
        if not due:
            return
        async with session.check_lock:
            if not (
                session.stale
                or session.checked_generation != self.pins.generation
                or self._clock() - session.checked_at >= self.config.pin_check_seconds
            ):
                return
            lock = self.pins.upstream(self.name)
            generation = self.pins.generation
            session.stale = False
            pinned = dict(lock.entries) if lock is not None else {}
            kinds = {kind for kind, _ in pinned}
            live_versions: dict[tuple[str, str], frozenset[str]] = {}
            live = await self.live_definitions(session.client, kinds, live_versions)
            session.live_versions = live_versions
            digests: dict[tuple[str, str], str] = {}
            for definition in live:
                ident = (definition.kind, definition.key)
                # Listed twice with different definitions: which one runs is the upstream's
                # choice, so neither can be trusted to be the pinned one.
                seen = digests.setdefault(ident, definition.digest)
                if seen != definition.digest:
                    digests[ident] = "ambiguous"
            session.live_digests = digests
            for (kind, key), pin in pinned.items():
                digest = session.live_digests.get((kind, key))
                if digest is None:
                    self.pins.block(self.name, kind, key, "removed")
                elif digest != pin.digest:
                    self.pins.block(self.name, kind, key, "changed")
            session.checked_generation = generation
            session.checked_at = self._clock()

    def _check_live(
        self, session: Session[Any], kind: str, key: str, version: str | None = None
    ) -> None:
        lock = self.pins.upstream(self.name)
        pin = lock.get(kind, key) if lock is not None else None  # type: ignore[arg-type]
        if pin is None or self.pins.blocked(self.name, kind, key) is not None:
            raise DefinitionChanged(reason=f"{self.name} {kind} {key!r} is blocked")
        if version is not None:
            # The version the policy judged must be the one that runs: asked only of an
            # upstream whose listing names it (one that ignores versions would run another).
            wanted = VersionSpec(eq=version)
            listed = session.live_versions.get((kind, key), frozenset())
            if not any(wanted.matches(v, match_none=False) for v in listed):
                raise UpstreamError(
                    "The upstream server does not offer the requested version.",
                    reason=f"{self.name} {kind} {key!r} lists no version {version[:100]!r}",
                )
        if kind == "template":
            return  # a template is checked by its listing; reads go to concrete URIs
        if session.live_digests.get((kind, key)) != pin.digest:
            raise DefinitionChanged(reason=f"{self.name} {kind} {key!r} differs in this session")

    # --- requests ------------------------------------------------------------------------

    async def request(
        self,
        kind: str,
        key: str,
        send: Callable[[Client[Any]], Awaitable[T]],
        *,
        timeout_seconds: float | None = None,
        version: str | None = None,
    ) -> T:
        """Send one request for component ``(kind, key)`` as the current caller; ``version``
        is the exact component version ``send`` asks for, which the upstream must list."""
        self._check_blocked(kind, key)
        principal = current().principal
        exchange = self._exchange
        if exchange is None:
            key_of_identity = identity_key(principal)
            return await self._request(
                kind, key, send, timeout_seconds, key_of_identity, None, version
            )
        # The exchanged credential depends on the caller's grant, not only on who the caller is:
        # a down-scoped token of the same identity gets its own exchange and its own session.
        key_of_caller = grant_key(principal)
        # Exchanged here, in the caller's task, with the caller's own token, before any upstream
        # traffic: a failure is a clean upstream_auth_failed. The session keeps the exchanged
        # credential (for its later requests and its termination), never the caller's token.
        subject_token = self._credential_of_call() if self._credential_of_call else None
        credential = await self.session_credential(subject_token, key_of_caller)
        token = credential.token if credential is not None else None
        if token is None:  # pragma: no cover - session_credential always sets it
            raise UpstreamAuthError(reason="token exchange gave no token")
        # Held for the whole call, whatever the cache and the session do with it meanwhile (too
        # short-lived to cache, re-exchanged, evicted): the call's answer is searched for it.
        exchange.issued.add(token)
        try:
            return await self._request(
                kind, key, send, timeout_seconds, key_of_caller, credential, version
            )
        finally:
            exchange.issued.discard(token)

    async def _request(
        self,
        kind: str,
        key: str,
        send: Callable[[Client[Any]], Awaitable[T]],
        timeout_seconds: float | None,
        session_key: str,
        credential: SessionCredential | None,
        version: str | None = None,
    ) -> T:
        try:
            try:
                async with self.sessions.lease(session_key, credential=credential) as session:
                    return await self._send(session, kind, key, send, timeout_seconds, version)
            except PoolExhausted:
                raise UpstreamUnavailable(
                    "The upstream server is busy; try again later.",
                    reason=f"{self.name}: session pool exhausted",
                ) from None
        except UpstreamError as exc:
            # The client gets the stable code only; the operator gets why, with anything that
            # could be a credential the proxy injected (or a token) cut out of the upstream's text.
            logger.log(
                exc.log_level,
                "securemcp proxy: %s %r on upstream %r failed (%s): %s",
                kind,
                key,
                self.name,
                exc.code,
                self.redacted(exc.reason or ""),
            )
            raise

    async def _send(
        self,
        session: Session[Client[Any]],
        kind: str,
        key: str,
        send: Callable[[Client[Any]], Awaitable[T]],
        timeout_seconds: float | None,
        version: str | None = None,
    ) -> T:
        limit = timeout_seconds if timeout_seconds is not None else self.config.timeout_seconds
        try:
            with upstream_spans(), anyio.fail_after(limit):
                await self._verify_pins(session)
                self._check_live(session, kind, key, version)
                result = await send(session.client)
        except CallRefused:
            raise
        except TimeoutError:
            raise UpstreamTimeout(reason=f"{self.name}: no answer within {limit:g}s") from None
        except MCPError as exc:
            code = exc.error.code
            if code == _CONNECTION_CLOSED:
                await self.sessions.discard(session)
                raise UpstreamUnavailable(reason=f"{self.name}: connection closed") from None
            if code == _REQUEST_TIMEOUT:
                raise UpstreamTimeout(reason=f"{self.name}: upstream request timeout") from None
            raise UpstreamError(
                f"The upstream server refused the request (JSON-RPC error {code}).",
                reason=f"{self.name}: JSON-RPC error {code}"
                f"{self.upstream_text(exc.error.message, 500)}",
            ) from None
        except (ValidationError, ValueError, TypeError, KeyError, json.JSONDecodeError) as exc:
            await self.sessions.discard(session)
            raise UpstreamError(
                reason=f"{self.name}: malformed answer: {type(exc).__name__}"
            ) from None
        except (*_TRANSPORT_FAILURES, RuntimeError) as exc:
            await self.sessions.discard(session)
            raise UpstreamUnavailable(
                reason=f"{self.name}: {type(exc).__name__}{self.upstream_text(str(exc), 300)}"
            ) from None
        self.check_output(result)
        return result

    def upstream_text(self, text: str, limit: int) -> str:
        """How a failure's ``reason`` shows ``text`` (an upstream's error message, or an
        exception's text that may quote one), as a suffix.

        The text can quote the caller's arguments, which securemcp keeps out of logs unless the
        audit log records them (``record_arguments``): by default only its length and the first
        12 hex digits of its SHA-256 are shown (enough to tell two failures apart, or to match
        a text the upstream logged), ``": <text>"`` (at most ``limit`` characters, credentials
        cut out first, :meth:`redacted`) with the opt-in. Text that holds a credential this
        upstream is given is never shown, either way.
        """
        if not text:
            return ""
        note = self._credential_note(text)
        if note is not None:
            return f" {note}"
        if self.record_arguments:
            return f": {_JWT.sub('[redacted]', text)[:limit]}"
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:12]
        return f" (upstream text withheld: {len(text)} characters, sha256 {digest})"

    def redacted(self, text: str) -> str:
        """``text`` (upstream error text, for a reason and the log) without any JWT-shaped string,
        or a stable note in its place when it holds a credential this upstream is given, found
        as :meth:`check_output` finds it in an answer (verbatim or encoded)."""
        note = self._credential_note(text)
        return note if note is not None else _JWT.sub("[redacted]", text)

    def _credential_note(self, text: str) -> str | None:
        """What replaces ``text`` when it holds (or may hold) a credential this upstream is
        given, else ``None``."""
        try:
            views = _views(text)
            found = views is None or self._credential_in(views, self._searched_secrets())
        except Exception:  # cannot tell what to cut: say nothing of the upstream's text
            return "(reason withheld: the upstream's credentials could not be read)"
        return _REASON_WITHHELD if found else None

    def check_output(self, result: Any) -> None:
        """Withhold an answer that echoes a credential the proxy injected upstream.

        The answer is searched as JSON, as the concatenation of all its strings (a secret split
        over two text blocks), URL-decoded, with every base64 ``data`` / ``blob`` field
        (images, audio, blob resources, embedded resources) decoded, and in the decodings of
        every base64 and hex run in those views, whitespace removed, two levels deep
        (:mod:`securemcp.proxy.encodings`). Static secrets are looked for verbatim,
        JSON-escaped and in base64 / base64url at each of the three byte alignments (so inside
        any larger base64 text), whatever they look like: a configured key that is itself a
        JWT, or starts like one, included. Exchanged JWTs (one per caller, possibly thousands)
        are found by their index (:mod:`securemcp.proxy.issued`) in one pass over every view
        and decoding, verbatim (also glued to other characters), so the check costs the same
        for one caller or ten thousand. An answer too large to search, or to decode, is
        withheld (fail closed).
        """
        secrets = self._searched_secrets()  # read once: a secret file is read per call
        exchange = self._exchange
        if not secrets and (exchange is None or not exchange.issued):
            return
        views = _views(result)
        if views is None:
            self._withhold("answer too large to check for credentials")
        assert views is not None
        if self._credential_in(views, secrets):
            self._withhold("answer contained an injected credential")

    def _searched_secrets(self) -> tuple[str, ...]:
        """The secrets this upstream is given that are searched for one by one."""
        exchange = self._exchange
        if exchange is not None:
            return exchange.searched_secrets()
        return self.auth.secret_values()

    def _credential_in(self, views: _Views, secrets: tuple[str, ...]) -> bool:
        """Whether a credential this upstream is given (exchanged tokens by their index,
        ``secrets`` one by one) is in any of ``views``."""
        exchange = self._exchange
        if exchange is not None and exchange.issued.found_in(views.for_jwts, views.decoded):
            return True
        for secret in secrets:
            if len(secret) >= 8:  # shorter: too short to search for
                needles = _needles(secret)
                if any(needle in view for view in views.searched for needle in needles):
                    return True
        return False

    def _withhold(self, why: str) -> None:
        logger.error("securemcp proxy: upstream %r: %s; answer withheld", self.name, why)
        raise UpstreamOutputRejected(reason=f"{self.name}: {why}")


#: Largest answer (characters of its JSON form) searched for an injected credential; checked
#: before any view is built, so a larger answer costs nothing before it is withheld.
_MAX_ANSWER: Final = 8 * 1024 * 1024
#: Most characters of answer text (all views together) searched for an injected credential.
_MAX_SCANNED: Final = 64 * 1024 * 1024
_BINARY_FIELDS: Final = frozenset({"data", "blob"})
#: What an upstream error text that holds a credential (in any encoding) is replaced with.
_REASON_WITHHELD: Final = "(reason withheld: contained a credential)"


def _strings(
    value: Any,
    out: list[str],
    texts: list[str],
    others: list[str],
    binary: list[str],
    key: str = "",
) -> None:
    """Collect ``value``'s strings: every one (dict keys too) in ``out``, in order; the text
    blocks' ``text`` in ``texts`` and the rest in ``others``; base64 ``data``/``blob`` apart."""
    if isinstance(value, str):
        if key in _BINARY_FIELDS:
            binary.append(value)
        else:
            out.append(value)
            (texts if key == "text" else others).append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))  # a key is text too (structured content's keys are the upstream's)
            others.append(str(k))
            _strings(v, out, texts, others, binary, str(k))
    elif isinstance(value, list | tuple):
        for v in value:
            _strings(v, out, texts, others, binary)


def _b64decode(text: str) -> bytes:
    """``text`` as base64 or base64url, leniently (what a client might decode it as)."""
    cleaned = "".join(text.split()).rstrip("=")
    if "-" in cleaned or "_" in cleaned:
        cleaned = cleaned.replace("-", "+").replace("_", "/")
    if len(cleaned) % 4 == 1:  # not a whole number of bytes: the last character is noise
        cleaned = cleaned[:-1]
    try:
        return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))
    except (ValueError, binascii.Error):
        return b""


class _Views(NamedTuple):
    """The views of an answer a credential could hide in."""

    every: list[str]
    #: The views searched for exchanged JWTs: all but the form-decoded (``unquote_plus``) ones,
    #: which differ from the URL-decoded ones only in turning ``+`` into a space. ``+`` is never
    #: in a JWT, and is a base64 character: a base64 run of the URL-decoded view holds whatever
    #: the form-decoded one splits.
    for_jwts: list[str]
    #: The base64, hex and double-base64 decodings of ``for_jwts`` (:mod:`.encodings`).
    decoded: list[str]

    @property
    def searched(self) -> Iterator[str]:
        """Every view and decoding, searched for a configured secret."""
        return chain(self.every, self.decoded)


def _views(result: Any) -> _Views | None:
    """Every view of an answer a credential could hide in, or ``None`` when too large."""
    if hasattr(result, "model_dump"):
        data = result.model_dump(mode="json", by_alias=True)
        dumped = json.dumps(data, ensure_ascii=False)
    elif isinstance(result, str):  # upstream error text
        data, dumped = result, json.dumps(result, ensure_ascii=False)
    else:
        data, dumped = None, repr(result)
    if len(dumped) > _MAX_ANSWER:
        return None
    strings: list[str] = []
    texts: list[str] = []
    others: list[str] = []
    binary: list[str] = []
    _strings(data, strings, texts, others, binary)
    views = [dumped]
    form_decoded = []
    joined_texts = "".join(texts)  # a secret split over several text blocks
    for joined in ("".join(strings), joined_texts):
        views += [joined, unquote(joined)]
        form_decoded.append(unquote_plus(joined))
    total = sum(len(v) for v in views) + sum(len(v) for v in form_decoded)
    # Decoded: the text blocks joined and every other string joined, each also URL-decoded,
    # and the binary fields' content: all the answer's text, once. (The JSON form's escapes,
    # ``\n``, would cut a wrapped base64 text; all strings joined repeats the text blocks.)
    joined_others = "".join(others)
    to_decode = [joined_texts, views[-1], joined_others, unquote(joined_others)]
    for blob in binary:
        total += len(blob)
        if total > _MAX_SCANNED:
            return None
        decoded = _b64decode(blob).decode("latin-1")
        views += [decoded, unquote(decoded)]
        to_decode += views[-2:]
    if total > _MAX_SCANNED:
        return None
    encoded = decodings(to_decode)
    return _Views(views + form_decoded, views, encoded) if encoded is not None else None


@functools.lru_cache(maxsize=256)
def _needles(secret: str) -> tuple[str, ...]:
    """The forms of ``secret`` searched for: verbatim, JSON-escaped, and the part of its base64
    and base64url encodings that is the same wherever it starts in a larger encoded text."""
    raw = secret.encode()
    needles = {secret, json.dumps(secret)[1:-1]}
    for offset in range(3):
        encoded = base64.b64encode(b"\0" * offset + raw).decode("ascii")
        start = (offset * 4 + 2) // 3
        stable = encoded[start : (8 * (offset + len(raw))) // 6]
        if len(stable) >= 8:
            needles.add(stable)
            needles.add(stable.replace("+", "-").replace("/", "_"))
    return tuple(needles)


def _listed_versions(item: Any) -> frozenset[str]:
    """The component versions an upstream listing entry names in ``_meta.fastmcp`` (FastMCP:
    ``version``, the listed one, and ``versions``, every one it serves)."""
    meta = getattr(item, "meta", None)
    fastmcp_meta = meta.get("fastmcp") if isinstance(meta, dict) else None
    if not isinstance(fastmcp_meta, dict):
        return frozenset()
    named = [fastmcp_meta.get("version")]
    versions = fastmcp_meta.get("versions")
    if isinstance(versions, list):
        named += versions
    return frozenset(v for v in named if isinstance(v, str))


def tool_result(result: mcp_types.CallToolResult) -> Any:
    """The upstream's tool result as a FastMCP ``ToolResult`` (upstream ``_meta`` dropped)."""
    from fastmcp.tools import ToolResult

    return ToolResult(
        content=list(result.content),
        structured_content=result.structured_content,
        is_error=bool(result.is_error),
    )
