"""Credentials the securemcp proxy presents to the upstream MCP servers it fronts.

MCP security best practices, "Token Passthrough": a server must not accept tokens that were not
issued for it, and a proxy must never forward the token its own client presented. The client's
token is for *this* server (RFC 8707 audience); an upstream gets a credential of its own:

* a secret from configuration — read from an environment variable or a file
  (:class:`SecretSource`, never written in configuration itself) — sent as a static header to an
  HTTP upstream (:class:`StaticBearer`, RFC 6750 §2.1 or an API-key header) or injected into a
  stdio upstream's environment (:class:`StaticEnv`);
* or, on behalf of the caller, a token obtained with **RFC 8693 OAuth 2.0 Token Exchange**
  (:class:`TokenExchange`): the caller's verified token is the ``subject_token`` of a request to
  the authorization server, which issues a new access token for the upstream (its
  ``audience``/RFC 8707 ``resource``) naming this proxy as actor (RFC 8693 §4.1 ``act``). The proxy
  authenticates with ``client_secret_basic`` (RFC 6749 §2.3.1). The caller's token is only ever
  sent to the token endpoint, never to the upstream.

Exchanged tokens are cached per (identity and grant, SHA-256 of the subject token) until shortly
before they expire, and indexed for the proxy's output check (:mod:`securemcp.proxy.issued`);
the subject token itself is never kept. Concurrent requests for one key share one exchange;
failures are never cached. The token endpoint is reached through the auth layer's SSRF-guarded,
size- and time-capped HTTP (:mod:`securemcp.auth._http`). Every failure is an
:class:`UpstreamAuthError` whose client message is generic and whose ``reason`` (internal) never
contains a token or secret.
"""

from __future__ import annotations

import base64
import errno
import hashlib
import logging
import math
import os
import re
import stat
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Protocol, runtime_checkable
from urllib.parse import quote, urlsplit

import httpx

from securemcp._singleflight import SingleFlight
from securemcp.auth._config import check_policy
from securemcp.auth._http import FetchError, check_fetch_url, post_form_json
from securemcp.errors import CallRefused, ConfigurationError
from securemcp.proxy.issued import IssuedTokens

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "TOKEN_EXCHANGE_GRANT",
    "NoAuth",
    "OnBehalfOf",
    "SecretSource",
    "StaticBearer",
    "StaticEnv",
    "TokenExchange",
    "UpstreamAuth",
    "UpstreamAuthError",
    "auth_from_config",
]

logger = logging.getLogger("securemcp.proxy.credentials")

#: RFC 8693 §2.1 grant type.
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
#: RFC 8693 §3 token type identifier of an OAuth 2.0 access token.
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
#: Largest token endpoint response accepted.
MAX_RESPONSE_BYTES: Final = 64 * 1024
#: Lifetime assumed when the token endpoint omits ``expires_in`` (RFC 8693 §2.2.1: RECOMMENDED).
DEFAULT_EXPIRES_IN: Final = 300.0
#: Longest an exchanged token is used, whatever ``expires_in`` says.
MAX_EXPIRES_IN: Final = 24 * 3600.0
#: Largest secret file read.
MAX_SECRET_BYTES: Final = 64 * 1024

_B64TOKEN: Final = re.compile(r"[A-Za-z0-9\-._~+/]+=*")  # RFC 6750 §2.1 b64token
#: A JWT in compact serialization (RFC 7519 §3, RFC 7515 §7.1), its header a JSON object.
JWT_SHAPE: Final = re.compile(r"eyJ[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
_HTTP_TOKEN: Final = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 §5.6.2 token
_SCOPE_TOKEN: Final = re.compile(r"[\x21\x23-\x5B\x5D-\x7E]+")  # RFC 6749 §3.3 scope-token
_ENV_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTROL: Final = re.compile(r"[\x00-\x1f\x7f]")

#: Headers an upstream credential may not set: hop-by-hop and framing headers (RFC 9110 §7.6.1),
#: cookies, and the headers the MCP streamable HTTP transport itself manages.
FORBIDDEN_HEADERS: Final = frozenset(
    {
        "accept",
        "connection",
        "content-encoding",
        "content-length",
        "content-type",
        "cookie",
        "expect",
        "host",
        "keep-alive",
        "last-event-id",
        "mcp-protocol-version",
        "mcp-session-id",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)

#: Environment variables a stdio upstream's credentials may not set (they change what runs).
_FORBIDDEN_ENV: Final = frozenset(
    {"PATH", "PYTHONPATH", "PYTHONSTARTUP", "PYTHONHOME", "NODE_OPTIONS", "BASH_ENV", "ENV", "IFS"}
)
_FORBIDDEN_ENV_PREFIXES: Final = ("LD_", "DYLD_")

#: Configuration keys that look like an inline secret (refused with a hint).
_INLINE_SECRET_KEYS: Final = frozenset(
    {"secret", "token", "value", "password", "api_key", "client_secret", "access_token"}
)

_warned_modes: set[tuple[str, int]] = set()


class UpstreamAuthError(CallRefused):
    """The credentials for an upstream server could not be obtained (``reason`` says why)."""

    code = "upstream_auth_failed"
    default_message = "The upstream server's credentials could not be obtained."


def _fail(reason: str) -> UpstreamAuthError:
    return UpstreamAuthError(reason=reason)


# --- secrets ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SecretSource:
    """Where a secret is read from: an environment variable (``env=``) or a file (``file=``).

    Exactly one of the two. The secret is read on every :meth:`read` (so a rotated file or
    variable takes effect without a restart); its value never appears in an error or log.
    """

    env: str | None = None
    file: str | None = None

    def __post_init__(self) -> None:
        if (self.env is None) == (self.file is None):
            raise ConfigurationError(
                "A secret source needs exactly one of env= (an environment variable name) or "
                "file= (a path), e.g. SecretSource(env='VENDOR_TOKEN')."
            )
        if self.env is not None and (
            not isinstance(self.env, str) or not self.env or "=" in self.env or "\0" in self.env
        ):
            raise ConfigurationError(f"env={self.env!r} is not an environment variable name.")
        if self.file is not None and (
            not isinstance(self.file, str) or not self.file or "\0" in self.file
        ):
            raise ConfigurationError(f"file={self.file!r} is not a file path.")

    def describe(self) -> str:
        """``"env:NAME"`` or ``"file:/path"``: where the secret comes from (safe to log)."""
        return f"env:{self.env}" if self.env is not None else f"file:{self.file}"

    def read(self) -> str:
        """The secret's current value.

        A file's content loses **one** trailing newline (``\\n`` or ``\\r\\n``). A file that group
        or others may access is accepted with a warning (once per path and mode), as ssh does.

        Raises:
            ConfigurationError: the variable is unset or empty, or the file is missing,
                unreadable, not a regular file, not UTF-8, too large or empty. The message names
                the variable or path, never a value.
        """
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise ConfigurationError(
                    f"The secret environment variable {self.env} is not set or is empty."
                )
            return value
        assert self.file is not None
        return _read_secret_file(self.file)


def _read_secret_file(path: str) -> str:
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO must not hang the caller
    except OSError as exc:
        why = (
            "does not exist" if exc.errno == errno.ENOENT else f"cannot be opened ({exc.strerror})"
        )
        raise ConfigurationError(f"The secret file {path} {why}.") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigurationError(f"The secret file {path} is not a regular file.")
        mode = stat.S_IMODE(info.st_mode)
        if mode & 0o077 and (path, mode) not in _warned_modes:
            _warned_modes.add((path, mode))
            logger.warning(
                "secret file %s is accessible by group or others (mode %04o); "
                "restrict it with chmod 600",
                path,
                mode,
            )
        data = os.read(fd, MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise ConfigurationError(
            f"The secret file {path} cannot be read ({exc.strerror})."
        ) from None
    finally:
        os.close(fd)
    if len(data) > MAX_SECRET_BYTES:
        raise ConfigurationError(f"The secret file {path} is larger than {MAX_SECRET_BYTES} bytes.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigurationError(f"The secret file {path} is not UTF-8 text.") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    if not text:
        raise ConfigurationError(f"The secret file {path} is empty.")
    return text


def _read_for_request(source: SecretSource) -> str:
    """Read a secret while serving a call: a missing secret refuses the call (no detail leaks)."""
    try:
        value = source.read()
    except ConfigurationError as exc:
        raise _fail(f"secret unavailable: {exc.client_message}") from None
    if _CONTROL.search(value):
        raise _fail(f"the secret from {source.describe()} contains control characters")
    return value


def _try_read(source: SecretSource) -> str | None:
    try:
        return source.read()
    except ConfigurationError:
        return None


# --- the interface ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OnBehalfOf:
    """The caller an upstream request is made for (input to :class:`TokenExchange`).

    Attributes:
        subject_token: the caller's *verified* access token. Used only as the RFC 8693
            ``subject_token`` at the token endpoint, never sent upstream (and never in ``repr``).
        identity_key: a stable key for the caller's identity and grant (the proxy uses
            :func:`securemcp.proxy.grants.grant_key`), the partition of the exchanged-token
            cache.
    """

    subject_token: str = field(repr=False)
    identity_key: str


@runtime_checkable
class UpstreamAuth(Protocol):
    """How the proxy authenticates to one upstream server."""

    async def http_headers(self, on_behalf_of: OnBehalfOf | None) -> dict[str, str]:
        """Headers to add to a request to an HTTP upstream.

        Raises:
            UpstreamAuthError: the credential could not be obtained.
        """
        ...

    def process_env(self) -> dict[str, str]:
        """Environment variables to set for a stdio upstream process (static credentials only).

        Raises:
            ConfigurationError: a configured secret cannot be read.
        """
        ...

    def secret_values(self) -> tuple[str, ...]:
        """Every secret value this credential currently injects (for redaction and leak checks)."""
        ...


class NoAuth:
    """The upstream needs no credentials."""

    def __repr__(self) -> str:
        return "NoAuth()"

    async def http_headers(self, on_behalf_of: OnBehalfOf | None) -> dict[str, str]:
        return {}

    def process_env(self) -> dict[str, str]:
        return {}

    def secret_values(self) -> tuple[str, ...]:
        return ()


class StaticBearer:
    """A configured secret sent in a header to an HTTP upstream.

    ``Authorization: Bearer <secret>`` by default (RFC 6750 §2.1); ``scheme=None`` (or ``""``)
    sends the bare secret, e.g. ``StaticBearer(source, header="X-API-Key", scheme=None)``.
    Hop-by-hop, framing, cookie and MCP transport headers cannot be used.
    """

    def __init__(
        self, secret: SecretSource, header: str = "Authorization", scheme: str | None = "Bearer"
    ) -> None:
        if not isinstance(secret, SecretSource):
            raise ConfigurationError(
                "StaticBearer needs a SecretSource, e.g. SecretSource(env=...)."
            )
        if not isinstance(header, str) or _HTTP_TOKEN.fullmatch(header) is None:
            raise ConfigurationError(f"header={header!r} is not a valid HTTP header name.")
        if header.lower() in FORBIDDEN_HEADERS:
            raise ConfigurationError(
                f"header={header!r} cannot carry a credential: it is a hop-by-hop, framing, "
                "cookie or MCP transport header. Use Authorization or an API-key header."
            )
        if scheme == "":
            scheme = None
        if scheme is not None and (
            not isinstance(scheme, str) or _HTTP_TOKEN.fullmatch(scheme) is None
        ):
            raise ConfigurationError(
                f"scheme={scheme!r} is not an authentication scheme name (e.g. 'Bearer'); use "
                "None to send the bare secret."
            )
        self.secret: Final = secret
        self.header: Final = header
        self.scheme: Final = scheme

    def __repr__(self) -> str:
        return (
            f"StaticBearer({self.secret.describe()!r}, header={self.header!r}, "
            f"scheme={self.scheme!r})"
        )

    async def http_headers(self, on_behalf_of: OnBehalfOf | None) -> dict[str, str]:
        value = _read_for_request(self.secret)
        return {self.header: f"{self.scheme} {value}" if self.scheme else value}

    def process_env(self) -> dict[str, str]:
        return {}

    def secret_values(self) -> tuple[str, ...]:
        value = _try_read(self.secret)
        return (value,) if value is not None else ()


class StaticEnv:
    """Configured secrets set as environment variables of a stdio upstream process."""

    def __init__(self, variables: Mapping[str, SecretSource]) -> None:
        if not isinstance(variables, Mapping) or not variables:
            raise ConfigurationError(
                "StaticEnv needs variables=: a mapping of environment variable names to "
                "SecretSource, e.g. {'GITHUB_TOKEN': SecretSource(env='GH_PAT')}."
            )
        for name, source in variables.items():
            if not isinstance(name, str) or _ENV_NAME.fullmatch(name) is None:
                raise ConfigurationError(f"{name!r} is not a valid environment variable name.")
            if name.upper() in _FORBIDDEN_ENV or name.upper().startswith(_FORBIDDEN_ENV_PREFIXES):
                raise ConfigurationError(
                    f"{name} cannot be set from a secret: it changes what the upstream process "
                    "runs, not how it authenticates."
                )
            if not isinstance(source, SecretSource):
                raise ConfigurationError(f"The value for {name} must be a SecretSource.")
        self.variables: Final[Mapping[str, SecretSource]] = dict(variables)

    def __repr__(self) -> str:
        described = {name: source.describe() for name, source in self.variables.items()}
        return f"StaticEnv({described!r})"

    async def http_headers(self, on_behalf_of: OnBehalfOf | None) -> dict[str, str]:
        return {}

    def process_env(self) -> dict[str, str]:
        env: dict[str, str] = {}
        for name, source in self.variables.items():
            value = source.read()
            if "\0" in value:
                raise ConfigurationError(
                    f"The secret from {source.describe()} for {name} contains a NUL character."
                )
            env[name] = value
        return env

    def secret_values(self) -> tuple[str, ...]:
        values = (_try_read(source) for source in self.variables.values())
        return tuple(dict.fromkeys(v for v in values if v is not None))


# --- RFC 8693 token exchange --------------------------------------------------------------------


def _basic(client_id: str, client_secret: str) -> str:
    """RFC 6749 §2.3.1 ``client_secret_basic``: urlencode each part, then HTTP Basic."""
    pair = f"{quote(client_id, safe='')}:{quote(client_secret, safe='')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


def _check_target(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name}= must be a non-empty string.")
    if name == "resource":
        parts = urlsplit(value)
        if not parts.scheme or not parts.netloc or "#" in value:
            raise ConfigurationError(
                f"resource={value!r} must be an absolute URI without a fragment (RFC 8707 §2), "
                "e.g. 'https://api.vendor.example/mcp'."
            )
    return value


class TokenExchange:
    """Upstream tokens obtained on behalf of the caller with RFC 8693 Token Exchange.

    Args:
        token_endpoint: the authorization server's token endpoint (``https://``).
        client_id: this proxy's client id at the authorization server.
        client_secret: where its client secret is read from (``client_secret_basic``).
        audience: RFC 8693 ``audience`` of the requested token (the upstream's name at the AS).
        resource: RFC 8707 ``resource``: the upstream's canonical URI.
        scope: scopes to request (default: whatever the AS grants).
        http_client: client for token requests (default: an SSRF-guarded client per request).
        allow_insecure_loopback: allow an ``http://`` endpoint on a loopback host (development).
        timeout: total time allowed for one exchange, in seconds.
        refresh_skew: an exchanged token is exchanged again this many seconds before it expires.
        max_cache_entries: most exchanged tokens remembered (the oldest is evicted first).
        clock: current POSIX time in seconds.
    """

    def __init__(
        self,
        *,
        token_endpoint: str,
        client_id: str,
        client_secret: SecretSource,
        audience: str | None = None,
        resource: str | None = None,
        scope: Sequence[str] = (),
        http_client: httpx.AsyncClient | None = None,
        allow_insecure_loopback: bool = False,
        timeout: float = 10.0,
        refresh_skew: float = 30.0,
        max_cache_entries: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        policy = check_policy(allow_insecure_loopback, ())
        try:
            self.token_endpoint: Final = check_fetch_url(token_endpoint, policy)
        except (TypeError, ValueError) as exc:
            raise ConfigurationError(
                f"token_endpoint {exc}. Give the authorization server's token endpoint, e.g. "
                "'https://login.example.com/oauth2/token'."
            ) from None
        if urlsplit(token_endpoint).query:
            raise ConfigurationError("token_endpoint must not have a query string.")
        if not isinstance(client_id, str) or not client_id:
            raise ConfigurationError(
                "TokenExchange needs client_id=: this proxy's client id at the authorization "
                "server (RFC 8693 §2.1 requests are client-authenticated)."
            )
        if not isinstance(client_secret, SecretSource):
            raise ConfigurationError(
                "TokenExchange needs client_secret=SecretSource(env=...) or (file=...)."
            )
        if isinstance(scope, str) or not all(
            isinstance(s, str) and _SCOPE_TOKEN.fullmatch(s) for s in scope
        ):
            raise ConfigurationError("scope= must be a list of scope strings, e.g. ['repo:read'].")
        if not (isinstance(timeout, int | float) and 0 < timeout <= 60):
            raise ConfigurationError(f"timeout={timeout!r} is out of range: use (0, 60] seconds.")
        if not (isinstance(refresh_skew, int | float) and 0 <= refresh_skew <= 3600):
            raise ConfigurationError(
                f"refresh_skew={refresh_skew!r} is out of range: use 0 to 3600 seconds."
            )
        if not isinstance(max_cache_entries, int) or max_cache_entries < 1:
            raise ConfigurationError("max_cache_entries must be at least 1.")
        self.client_id: Final = client_id
        self.client_secret: Final = client_secret
        self.audience: Final = _check_target("audience", audience)
        self.resource: Final = _check_target("resource", resource)
        self.scope: Final = tuple(dict.fromkeys(scope))
        self._policy = policy
        self._http_client = http_client
        self._timeout = float(timeout)
        self._refresh_skew = float(refresh_skew)
        self._max_entries = max_cache_entries
        self._clock = clock
        self._cache: dict[tuple[str, bytes], tuple[str, float]] = {}
        #: The cached tokens, and those calls and sessions may still send (they hold them too),
        #: indexed for the proxy's output check (see :meth:`searched_secrets`).
        self.issued: Final = IssuedTokens()
        self._inflight: SingleFlight[tuple[str, bytes], tuple[str, float]] = SingleFlight()

    def __repr__(self) -> str:
        return (
            f"TokenExchange(token_endpoint={self.token_endpoint!r}, client_id={self.client_id!r}, "
            f"client_secret={self.client_secret.describe()!r}, audience={self.audience!r}, "
            f"resource={self.resource!r})"
        )

    # --- UpstreamAuth ---------------------------------------------------------------------

    async def http_headers(self, on_behalf_of: OnBehalfOf | None) -> dict[str, str]:
        if on_behalf_of is None:
            raise _fail("token exchange needs the caller's verified token (no on_behalf_of)")
        return {"Authorization": f"Bearer {await self.exchange(on_behalf_of)}"}

    def process_env(self) -> dict[str, str]:
        return {}  # a per-caller token cannot be baked into a long-lived process

    def secret_values(self) -> tuple[str, ...]:
        tokens = [token for token, _ in self._cache.values()]
        secret = _try_read(self.client_secret)
        return tuple(dict.fromkeys([*tokens, *([secret] if secret is not None else [])]))

    def searched_secrets(self) -> tuple[str, ...]:
        """The secrets to search an answer for one by one, in every encoding: the client secret
        and any held token :attr:`issued` cannot index (not a JWT).

        The cached JWTs (one per caller, possibly thousands) are found by :attr:`issued` in one
        pass over the answer instead (:mod:`securemcp.proxy.issued`).
        """
        secret = _try_read(self.client_secret)
        return (*([secret] if secret is not None else []), *self.issued.unindexed())

    def issued_jwt(self, value: str) -> bool:
        """Whether ``value`` is a JWT this exchange issued and still indexes (cached, or held by a
        call or session that may still send it)."""
        return self.issued.indexed(value)

    def _forget(self, key: tuple[str, bytes]) -> None:
        entry = self._cache.pop(key, None)
        if entry is not None:
            self.issued.discard(entry[0])

    # --- exchange ---------------------------------------------------------------------------

    async def exchange(self, on_behalf_of: OnBehalfOf) -> str:
        """An access token for the upstream, issued for ``on_behalf_of``'s caller.

        Reuses a cached token until ``refresh_skew`` seconds before it expires; concurrent calls
        for the same caller and subject token share one request to the token endpoint.

        Raises:
            UpstreamAuthError: the exchange failed (``reason`` says why; never a token).
        """
        token, _ = await self.exchange_with_lifetime(on_behalf_of)
        return token

    async def exchange_with_lifetime(self, on_behalf_of: OnBehalfOf) -> tuple[str, float]:
        """:meth:`exchange`'s token and how many more seconds it may be used (at most until
        ``refresh_skew`` seconds before it expires; zero or less for a token too short-lived to
        cache).

        Raises:
            UpstreamAuthError: the exchange failed (``reason`` says why; never a token).
        """
        subject_token = on_behalf_of.subject_token
        identity_key = on_behalf_of.identity_key
        if not isinstance(subject_token, str) or not subject_token:
            raise _fail("no subject token to exchange")
        if not isinstance(identity_key, str):
            raise _fail("identity_key must be a string")
        digest = hashlib.sha256(subject_token.encode("utf-8", "surrogatepass")).digest()
        key = (identity_key, digest)
        hit = self._cache.get(key)
        if hit is not None:
            token, valid_until = hit
            now = self._clock()
            if now < valid_until:
                return token, valid_until - now
            self._forget(key)
        token, valid_until = await self._inflight.run(
            key, lambda: self._exchange(subject_token, key)
        )
        return token, valid_until - self._clock()

    async def _exchange(self, subject_token: str, key: tuple[str, bytes]) -> tuple[str, float]:
        secret = _read_for_request(self.client_secret)
        form = {
            "grant_type": TOKEN_EXCHANGE_GRANT,
            "subject_token": subject_token,
            "subject_token_type": ACCESS_TOKEN_TYPE,
            "requested_token_type": ACCESS_TOKEN_TYPE,
        }
        if self.audience is not None:
            form["audience"] = self.audience
        if self.resource is not None:
            form["resource"] = self.resource
        if self.scope:
            form["scope"] = " ".join(self.scope)
        started = self._clock()
        try:
            response = await post_form_json(
                self._http_client,
                self.token_endpoint,
                form,
                headers={"Authorization": _basic(self.client_id, secret)},
                policy=self._policy,
                max_bytes=MAX_RESPONSE_BYTES,
                time_limit=self._timeout,
            )
        except FetchError as exc:
            reason = f"token exchange failed: {exc}"
            logger.warning("%s", reason)
            raise _fail(reason) from None
        try:
            token, expires_in = _check_response(response, subject_token)
        except UpstreamAuthError as exc:
            logger.warning("%s", exc.reason)
            raise
        valid_until = started + expires_in - self._refresh_skew
        if valid_until > self._clock():
            self._remember(key, token, valid_until)
        return token, valid_until

    def _remember(self, key: tuple[str, bytes], token: str, valid_until: float) -> None:
        cache = self._cache
        if len(cache) >= self._max_entries:
            now = self._clock()
            for stale in [k for k, (_, until) in cache.items() if until <= now]:
                self._forget(stale)
            while len(cache) >= self._max_entries:
                self._forget(next(iter(cache)))  # oldest first (insertion order)
        self._forget(key)
        cache[key] = (token, valid_until)
        self.issued.add(token)


def _check_response(response: Mapping[str, Any], subject_token: str) -> tuple[str, float]:
    """Validate an RFC 8693 §2.2.1 success response; return the token and its lifetime."""
    bad = "token exchange response"
    token = response.get("access_token")
    if not isinstance(token, str) or not token:
        raise _fail(f"{bad} has no access_token")
    if _B64TOKEN.fullmatch(token) is None:
        raise _fail(f"{bad}: access_token is not a valid bearer token string")
    if token == subject_token:
        raise _fail(f"{bad}: the issued token is the subject token (no passthrough)")
    issued_type = response.get("issued_token_type")
    if issued_type != ACCESS_TOKEN_TYPE:
        raise _fail(f"{bad}: issued_token_type is {_shown(issued_type)}, not {ACCESS_TOKEN_TYPE}")
    token_type = response.get("token_type")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise _fail(f"{bad}: token_type is {_shown(token_type)}, not Bearer")
    expires_in = response.get("expires_in", DEFAULT_EXPIRES_IN)
    if (
        isinstance(expires_in, bool)
        or not isinstance(expires_in, int | float)
        or not math.isfinite(expires_in)
        or expires_in <= 0
    ):
        raise _fail(f"{bad}: expires_in must be a positive number")
    return token, min(float(expires_in), MAX_EXPIRES_IN)


def _shown(value: object) -> str:
    """A response member for a log line: short identifiers only, never long strings."""
    if value is None:
        return "missing"
    if isinstance(value, str) and len(value) <= 64 and _CONTROL.search(value) is None:
        return repr(value)
    return f"a {type(value).__name__}"


# --- configuration ------------------------------------------------------------------------------

_KEYS: Final[Mapping[str, frozenset[str]]] = {
    "none": frozenset({"type"}),
    "bearer": frozenset({"type", "secret_env", "secret_file", "header", "scheme"}),
    "env": frozenset({"type", "variables"}),
    "token_exchange": frozenset(
        {
            "type",
            "token_endpoint",
            "client_id",
            "client_secret_env",
            "client_secret_file",
            "audience",
            "resource",
            "scope",
            "timeout",
        }
    ),
}


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    for key in table:
        if key in allowed:
            continue
        if not isinstance(key, str):
            raise ConfigurationError(f"{where}: keys must be strings, not {key!r}.")
        hint = f" Allowed: {', '.join(sorted(allowed))}."
        if key in _INLINE_SECRET_KEYS:
            hint = (
                " Secrets are never written in configuration: reference them with an "
                "environment variable or a file (e.g. secret_env = 'VENDOR_TOKEN')." + hint
            )
        raise ConfigurationError(f"{where}: unknown key {key!r}.{hint}")


def _string(
    table: Mapping[str, Any], key: str, where: str, *, required: bool = False
) -> str | None:
    value = table.get(key)
    if value is None:
        if required:
            raise ConfigurationError(f"{where}.{key} is required.")
        return None
    if not isinstance(value, str) or not value:
        raise ConfigurationError(f"{where}.{key} must be a non-empty string.")
    return value


def _source(table: Mapping[str, Any], env_key: str, file_key: str, where: str) -> SecretSource:
    env = _string(table, env_key, where)
    file = _string(table, file_key, where)
    if (env is None) == (file is None):
        raise ConfigurationError(
            f"{where} needs exactly one of {env_key} (an environment variable name) or "
            f"{file_key} (a file path)."
        )
    try:
        return SecretSource(env=env, file=file)
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc.client_message}") from None


def auth_from_config(
    table: Mapping[str, Any], *, allow_insecure_loopback: bool = False, where: str = "auth"
) -> UpstreamAuth:
    """Build an :class:`UpstreamAuth` from a TOML-like table.

    ``type`` is one of:

    * ``"none"``;
    * ``"bearer"``: ``secret_env`` or ``secret_file``; optional ``header`` (default
      ``Authorization``) and ``scheme`` (default ``Bearer``; ``""`` for the bare secret);
    * ``"env"``: ``variables = {NAME = {env = "..."} | {file = "..."}, ...}`` (stdio upstreams);
    * ``"token_exchange"``: ``token_endpoint``, ``client_id``, ``client_secret_env`` or
      ``client_secret_file``; optional ``audience``, ``resource``, ``scope`` (a list),
      ``timeout`` (seconds).

    Secrets are only ever referenced, never written in the table. ``where`` prefixes error
    messages (e.g. ``"upstreams.github.auth"``).

    Raises:
        ConfigurationError: an unknown type or key, a wrong value type, or a missing key; the
            message names the key.
    """
    if not isinstance(table, Mapping):
        raise ConfigurationError(
            f'{where} must be a table, e.g. {{ type = "bearer", secret_env = "VENDOR_TOKEN" }}.'
        )
    kind = table.get("type")
    if not isinstance(kind, str) or kind not in _KEYS:
        raise ConfigurationError(
            f"{where}.type must be one of {', '.join(repr(k) for k in _KEYS)}, not {kind!r}."
        )
    _check_keys(table, _KEYS[kind], where)
    if kind == "none":
        return NoAuth()
    if kind == "bearer":
        source = _source(table, "secret_env", "secret_file", where)
        header = table.get("header", "Authorization")
        scheme = table.get("scheme", "Bearer")
        if not isinstance(header, str):
            raise ConfigurationError(f"{where}.header must be a string.")
        if not isinstance(scheme, str):
            raise ConfigurationError(f"{where}.scheme must be a string ('' for none).")
        try:
            return StaticBearer(source, header=header, scheme=scheme or None)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.client_message}") from None
    if kind == "env":
        variables = table.get("variables")
        if not isinstance(variables, Mapping) or not variables:
            raise ConfigurationError(
                f"{where}.variables must be a non-empty table, e.g. "
                '{ GITHUB_TOKEN = { env = "GH_PAT" } }.'
            )
        sources: dict[str, SecretSource] = {}
        for name, ref in variables.items():
            inner = f"{where}.variables.{name}"
            if not isinstance(ref, Mapping):
                raise ConfigurationError(
                    f'{inner} must be a table {{ env = "NAME" }} or {{ file = "/path" }}.'
                )
            _check_keys(ref, frozenset({"env", "file"}), inner)
            sources[name] = _source(ref, "env", "file", inner)
        try:
            return StaticEnv(sources)
        except ConfigurationError as exc:
            raise ConfigurationError(f"{where}: {exc.client_message}") from None
    # token_exchange
    endpoint = _string(table, "token_endpoint", where, required=True)
    client_id = _string(table, "client_id", where, required=True)
    assert endpoint is not None
    assert client_id is not None
    secret = _source(table, "client_secret_env", "client_secret_file", where)
    scope = table.get("scope", [])
    if not isinstance(scope, list | tuple) or not all(isinstance(s, str) for s in scope):
        raise ConfigurationError(f'{where}.scope must be a list of strings, e.g. ["repo:read"].')
    timeout = table.get("timeout", 10.0)
    if isinstance(timeout, bool) or not isinstance(timeout, int | float):
        raise ConfigurationError(f"{where}.timeout must be a number of seconds.")
    try:
        return TokenExchange(
            token_endpoint=endpoint,
            client_id=client_id,
            client_secret=secret,
            audience=_string(table, "audience", where),
            resource=_string(table, "resource", where),
            scope=list(scope),
            allow_insecure_loopback=allow_insecure_loopback,
            timeout=float(timeout),
        )
    except ConfigurationError as exc:
        raise ConfigurationError(f"{where}: {exc.client_message}") from None
