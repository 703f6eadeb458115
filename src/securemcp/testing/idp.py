"""A fake OAuth 2.1 / OpenID Connect identity provider for tests and CI with no network.

:class:`FakeIdentityProvider` holds real signing keys and mints real signed RFC 9068 access tokens
(``typ: at+jwt``), so the code under test runs the exact verification path production runs. It
serves its metadata (OpenID Connect Discovery and RFC 8414) and JWKS (RFC 7517) in-process as an
ASGI app — :meth:`FakeIdentityProvider.verifier` wires a :class:`~securemcp.auth.jwt.JWTVerifier`
to it through ``httpx.ASGITransport``, so no socket is opened — or over loopback HTTP with
:meth:`FakeIdentityProvider.serve_http`. :meth:`FakeIdentityProvider.bad_token` crafts the
malformed and malicious tokens of RFC 8725 (``alg: none``, key confusion, ``crit``, ``jku``,
duplicate claims, JWE-shaped, ...) for negative tests.

Its token endpoint (``POST {issuer}/token``) implements RFC 8693 OAuth 2.0 Token Exchange for
clients registered with :meth:`FakeIdentityProvider.register_client`, authenticated with
``client_secret_basic`` (RFC 6749 §2.3.1): it verifies that the ``subject_token`` is an unexpired
access token it signed with a published key, and issues a new access token for the requested
``resource``/``audience`` (RFC 8707) with the exchanging client as actor (RFC 8693 §4.1 ``act``).

**Never use this in production.** Its keys live in process memory, it signs whatever it is asked
to sign, and anyone holding the object can mint a token for any subject with any scope.

.. code-block:: python

    idp = FakeIdentityProvider()
    verifier = idp.verifier(audience="https://mcp.example.test/mcp")
    token = idp.token("alice", scopes=["calc:write"], audience="https://mcp.example.test/mcp")
    principal = await verifier.authenticate(token)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import hmac
import json
import math
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal
from urllib.parse import parse_qsl, unquote_plus, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from securemcp.auth._algorithms import parse_jwk, verify_signature
from securemcp.auth._compact import b64url_decode, b64url_encode, parse_compact
from securemcp.errors import InvalidCredential

if TYPE_CHECKING:
    from securemcp.auth.jwt import JWTVerifier

__all__ = [
    "ACCESS_TOKEN_TYPE",
    "BAD_TOKEN_KINDS",
    "DEFAULT_AUDIENCE",
    "DEFAULT_CLIENT_ID",
    "DEFAULT_ISSUER",
    "TOKEN_EXCHANGE_GRANT",
    "Algorithm",
    "FakeIdentityProvider",
]

DEFAULT_ISSUER: Final = "https://idp.securemcp.test"
DEFAULT_AUDIENCE: Final = "https://mcp.securemcp.test/mcp"
DEFAULT_CLIENT_ID: Final = "securemcp-test-client"

Algorithm = Literal["RS256", "ES256", "EdDSA"]

#: Every kind :meth:`FakeIdentityProvider.bad_token` can craft.
BAD_TOKEN_KINDS: Final = (
    "expired",
    "not_yet_valid",
    "future_iat",
    "wrong_audience",
    "no_aud",
    "wrong_issuer",
    "substring_issuer",
    "no_exp",
    "no_iat",
    "no_sub",
    "string_exp",
    "alg_none",
    "alg_none_case",
    "bad_signature",
    "psychic_signature",
    "signed_by_stranger",
    "unknown_kid",
    "alg_key_mismatch",
    "hs256_with_public_key",
    "wrong_typ",
    "jku_header",
    "embedded_jwk",
    "crit_header",
    "b64_header",
    "nested_jwt",
    "duplicate_claim",
    "nan_exp",
    "jwe_shaped",
    "padded_base64",
    "oversized",
    "garbage",
)

#: RFC 8693 §2.1 grant type and §3 token type identifiers.
TOKEN_EXCHANGE_GRANT: Final = "urn:ietf:params:oauth:grant-type:token-exchange"  # noqa: S105
ACCESS_TOKEN_TYPE: Final = "urn:ietf:params:oauth:token-type:access_token"  # noqa: S105
#: Largest token endpoint request body read.
_MAX_FORM_BYTES: Final = 64 * 1024
#: Form fields shown masked in ``last_exchange``.
_SECRET_FIELDS: Final = frozenset({"subject_token", "actor_token", "client_secret"})
#: Parameters that may repeat (RFC 8693 §2.1); every other one must appear at most once.
_MULTI_VALUED: Final = frozenset({"resource", "audience"})
#: Subject-token claims an exchanged token does not inherit (they are set afresh).
_NOT_INHERITED: Final = frozenset(
    {
        "iss",
        "sub",
        "aud",
        "client_id",
        "azp",
        "iat",
        "exp",
        "nbf",
        "jti",
        "scope",
        "scp",
        "act",
        "may_act",
        "cnf",
        "nonce",
    }
)

_Private = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True, slots=True)
class _SigningKey:
    kid: str
    algorithm: Algorithm
    private: _Private

    def public_jwk(self) -> dict[str, str]:
        jwk = _public_jwk(self.private)
        return {**jwk, "kid": self.kid, "alg": self.algorithm, "use": "sig"}

    def sign(self, signing_input: bytes) -> bytes:
        return _sign(self.private, signing_input)


def _generate(algorithm: Algorithm) -> _Private:
    if algorithm == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if algorithm == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    if algorithm == "EdDSA":
        return ed25519.Ed25519PrivateKey.generate()
    raise ValueError(f"unsupported algorithm {algorithm!r}; use RS256, ES256 or EdDSA")


def _int_b64(value: int, length: int | None = None) -> str:
    size = length if length is not None else max(1, (value.bit_length() + 7) // 8)
    return b64url_encode(value.to_bytes(size, "big"))


def _public_jwk(private: _Private) -> dict[str, str]:
    if isinstance(private, rsa.RSAPrivateKey):
        numbers = private.public_key().public_numbers()
        return {"kty": "RSA", "n": _int_b64(numbers.n), "e": _int_b64(numbers.e)}
    if isinstance(private, ec.EllipticCurvePrivateKey):
        point = private.public_key().public_numbers()
        return {"kty": "EC", "crv": "P-256", "x": _int_b64(point.x, 32), "y": _int_b64(point.y, 32)}
    raw = private.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}


def _sign(private: _Private, signing_input: bytes) -> bytes:
    if isinstance(private, rsa.RSAPrivateKey):
        return private.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(signing_input, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")  # JWS R || S (RFC 7518 §3.4)
    return private.sign(signing_input)


def _json(value: Mapping[str, Any] | str) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _compact(header: Mapping[str, Any] | str, claims: Mapping[str, Any] | str) -> str:
    return f"{b64url_encode(_json(header).encode())}.{b64url_encode(_json(claims).encode())}"


class FakeIdentityProvider:
    """An in-memory OAuth/OIDC identity provider that mints real signed access tokens.

    Args:
        issuer: the issuer identifier (``iss``). ``None`` means "the loopback URL
            :meth:`serve_http` binds", for discovery over real HTTP.
        algorithm: signing algorithm of the IdP's keys.
        audience: default ``aud`` of minted tokens and default audience of :meth:`verifier`.
        client_id: default ``client_id`` of minted tokens.

    Attributes:
        jwks_fetch_count: how many times the JWKS endpoint was requested.
        metadata_fetch_count: how many times a metadata endpoint was requested.
        jwks_outage: when ``True`` the JWKS endpoint answers HTTP 503 (simulated IdP outage).
        latency: seconds each endpoint waits before answering (it always yields to the event
            loop once, like a real network round trip, so concurrent callers really overlap).
        openid_configuration_enabled: when ``False`` only RFC 8414 metadata is served.
        token_exchange_count: how many RFC 8693 token-exchange requests reached the token
            endpoint (every attempt, whatever its outcome).
        token_exchange_outage: when ``True`` the token endpoint answers HTTP 503.
        token_exchange_expires_in: lifetime, in seconds, of the tokens it issues by exchange.
        last_exchange: the form fields of the latest token-exchange request, with
            ``subject_token``/``actor_token``/``client_secret`` masked as ``"***"`` and the
            client id authenticated by HTTP Basic (if any) under ``"client_id"``; a repeated
            field (``resource``, ``audience``) is a list. ``None`` until the first request.
    """

    def __init__(
        self,
        issuer: str | None = DEFAULT_ISSUER,
        *,
        algorithm: Algorithm = "RS256",
        audience: str | Sequence[str] = DEFAULT_AUDIENCE,
        client_id: str = DEFAULT_CLIENT_ID,
    ) -> None:
        if issuer is not None and not issuer:
            raise ValueError("issuer must be a non-empty string, or None to use serve_http()'s URL")
        self._issuer = issuer
        self.algorithm: Final[Algorithm] = algorithm
        self.default_audience: str | Sequence[str] = audience
        self.default_client_id = client_id
        self.jwks_fetch_count = 0
        self.metadata_fetch_count = 0
        self.jwks_outage = False
        self.latency = 0.0
        self.openid_configuration_enabled = True
        self.token_exchange_count = 0
        self.token_exchange_outage = False
        self.token_exchange_expires_in = 300
        self.last_exchange: dict[str, Any] | None = None
        self._clients: dict[str, str] = {}
        self._keys: dict[str, _SigningKey] = {}  # published
        self._retired: dict[str, _SigningKey] = {}
        self._strangers: dict[Algorithm, _Private] = {}  # keys this IdP never publishes
        self._current: _SigningKey = self._new_key()
        self._served_url: str | None = None
        self.asgi_app: Final = Starlette(
            routes=[Route("/{path:path}", self._endpoint, methods=["GET", "POST"])]
        )

    def __repr__(self) -> str:
        return f"FakeIdentityProvider(issuer={self._issuer!r}, algorithm={self.algorithm!r})"

    # --- identity and keys ---------------------------------------------------------------

    @property
    def issuer(self) -> str:
        """The issuer identifier. Raises ``RuntimeError`` for ``issuer=None`` outside serve_http."""
        if self._issuer is None:
            raise RuntimeError(
                "this FakeIdentityProvider was created with issuer=None: its issuer is the URL "
                "of `async with idp.serve_http()`, so mint tokens inside that block"
            )
        return self._issuer

    @property
    def current_kid(self) -> str:
        """``kid`` of the key new tokens are signed with."""
        return self._current.kid

    @property
    def kids(self) -> tuple[str, ...]:
        """``kid`` of every published key."""
        return tuple(self._keys)

    @property
    def jwks(self) -> dict[str, Any]:
        """The public JWKS document (public keys only)."""
        return {"keys": [key.public_jwk() for key in self._keys.values()]}

    @property
    def metadata(self) -> dict[str, Any]:
        """Authorization server metadata (RFC 8414 §2; also the OIDC discovery document)."""
        issuer = self.issuer.rstrip("/")
        return {
            "issuer": self.issuer,
            "jwks_uri": f"{issuer}/jwks",
            "authorization_endpoint": f"{issuer}/authorize",
            "token_endpoint": f"{issuer}/token",
            "response_types_supported": ["code"],
            "grant_types_supported": [
                "authorization_code",
                "client_credentials",
                TOKEN_EXCHANGE_GRANT,
            ],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": [
                "private_key_jwt",
                "client_secret_basic",
                "none",
            ],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": [self.algorithm],
        }

    def _stranger(self, algorithm: Algorithm | None = None) -> _Private:
        algorithm = algorithm or self.algorithm
        if algorithm not in self._strangers:
            self._strangers[algorithm] = _generate(algorithm)
        return self._strangers[algorithm]

    def _new_key(self) -> _SigningKey:
        key = _SigningKey(
            kid=f"test-{self.algorithm.lower()}-{secrets.token_hex(6)}",
            algorithm=self.algorithm,
            private=_generate(self.algorithm),
        )
        self._keys[key.kid] = key
        return key

    def rotate_key(self) -> str:
        """Publish a new signing key and sign with it from now on. Returns its ``kid``.

        The previous key stays published until :meth:`retire_key`.
        """
        self._current = self._new_key()
        return self._current.kid

    def retire_key(self, kid: str) -> None:
        """Remove a key from the JWKS. The current signing key cannot be retired."""
        if kid == self._current.kid:
            raise ValueError("cannot retire the current signing key; rotate_key() first")
        self._retired[kid] = self._keys.pop(kid)

    # --- minting ---------------------------------------------------------------------------

    def sign(
        self,
        header: Mapping[str, Any] | str,
        claims: Mapping[str, Any] | str,
        *,
        key_id: str | None = None,
    ) -> str:
        """Sign arbitrary header and claims (raw JSON strings allowed).

        The low-level helper for crafting unusual tokens; prefer :meth:`token`. The header is
        used as given (``alg`` and ``kid`` are *not* filled in). ``key_id`` picks the signing key,
        including a retired one (default: the current key).
        """
        key = self._current
        if key_id is not None:
            key = self._keys.get(key_id) or self._retired[key_id]
        signing_input = _compact(header, claims)
        return f"{signing_input}.{b64url_encode(key.sign(signing_input.encode()))}"

    def claims(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        audience: str | Sequence[str] | None = None,
        expires_in: int = 300,
        **claims: Any,
    ) -> dict[str, Any]:
        """The claims :meth:`token` would sign (a claim given as ``None`` is left out)."""
        now = int(time.time())
        aud = audience if audience is not None else self.default_audience
        payload: dict[str, Any] = {
            "iss": self.issuer,
            "sub": subject,
            "aud": aud if isinstance(aud, str) else list(aud),
            "client_id": self.default_client_id,
            "iat": now,
            "exp": now + expires_in,
            "jti": uuid.uuid4().hex,
        }
        scope_list = list(scopes)
        if scope_list:
            payload["scope"] = " ".join(scope_list)
        payload.update(claims)
        return {k: v for k, v in payload.items() if v is not None}

    def _header(self, **extra: Any) -> dict[str, Any]:
        header: dict[str, Any] = {"alg": self.algorithm, "typ": "at+jwt", "kid": self.current_kid}
        header.update(extra)
        return {k: v for k, v in header.items() if v is not None}

    def token(
        self,
        subject: str,
        *,
        scopes: Iterable[str] = (),
        audience: str | Sequence[str] | None = None,
        expires_in: int = 300,
        **claims: Any,
    ) -> str:
        """Mint a signed RFC 9068 access token (``typ: at+jwt``) for ``subject``.

        Args:
            subject: the ``sub`` claim.
            scopes: granted scopes (the ``scope`` claim, space-separated; omitted when empty).
            audience: ``aud``; defaults to the IdP's ``audience=``.
            expires_in: seconds until ``exp``.
            **claims: extra claims, overriding the defaults (``iss``, ``client_id``, ``iat``,
                ``exp``, ``jti``, ...); pass ``None`` to leave a default claim out, e.g.
                ``tenant="acme"``, ``act={"sub": "agent-1"}``, ``client_id=None``.
        """
        payload = self.claims(
            subject, scopes=scopes, audience=audience, expires_in=expires_in, **claims
        )
        return self.sign(self._header(), payload)

    def bad_token(
        self,
        kind: str,
        subject: str = "mallory",
        *,
        scopes: Iterable[str] = (),
        audience: str | Sequence[str] | None = None,
    ) -> str:
        """A deliberately invalid token of the given kind (see :data:`BAD_TOKEN_KINDS`).

        Apart from its one defect each token is valid for this IdP's verifier, so a test that
        expects a refusal proves the check for that defect.
        """
        if kind not in BAD_TOKEN_KINDS:
            raise ValueError(f"unknown bad token kind {kind!r}; see BAD_TOKEN_KINDS")
        now = int(time.time())
        base = self.claims(subject, scopes=scopes, audience=audience)
        header = self._header()

        def mint(**overrides: Any) -> str:
            return self.sign(
                header, {k: v for k, v in {**base, **overrides}.items() if v is not None}
            )

        def stranger_sign(
            hdr: Mapping[str, Any], claims: Mapping[str, Any], algorithm: Algorithm | None = None
        ) -> str:
            signing_input = _compact(hdr, claims)
            signature = _sign(self._stranger(algorithm), signing_input.encode())
            return f"{signing_input}.{b64url_encode(signature)}"

        simple: dict[str, dict[str, Any]] = {
            "expired": {"iat": now - 7200, "exp": now - 3600},
            "not_yet_valid": {"nbf": now + 3600},
            "future_iat": {"iat": now + 3600, "exp": now + 7200},
            "wrong_audience": {"aud": "https://other-service.example/mcp"},
            "no_aud": {"aud": None},
            "wrong_issuer": {"iss": "https://attacker.example"},
            "substring_issuer": {"iss": self.issuer[: max(1, len(self.issuer) // 2)]},
            "no_exp": {"exp": None},
            "no_iat": {"iat": None},
            "no_sub": {"sub": None},
            "string_exp": {"exp": str(now + 300)},
        }
        if kind in simple:
            return mint(**simple[kind])
        if kind in ("alg_none", "alg_none_case"):
            alg = "none" if kind == "alg_none" else "nOnE"
            return _compact({**header, "alg": alg}, base) + "."
        if kind in ("bad_signature", "psychic_signature"):
            head, payload, signature = mint().split(".")
            sig = bytearray(b"\0" * len(b64url_decode(signature)))
            if kind == "bad_signature":
                sig = bytearray(b64url_decode(signature))
                sig[len(sig) // 2] ^= 0x01
            return f"{head}.{payload}.{b64url_encode(bytes(sig))}"
        if kind == "signed_by_stranger":
            return stranger_sign(header, base)
        if kind == "unknown_kid":
            return stranger_sign({**header, "kid": f"unknown-{secrets.token_hex(6)}"}, base)
        if kind == "alg_key_mismatch":
            other: Algorithm = "ES256" if self.algorithm != "ES256" else "RS256"
            return stranger_sign({**header, "alg": other}, base, other)
        if kind == "hs256_with_public_key":
            public_pem = self._current.private.public_key().public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            signing_input = _compact({**header, "alg": "HS256"}, base)
            mac = hmac.new(public_pem, signing_input.encode(), hashlib.sha256).digest()
            return f"{signing_input}.{b64url_encode(mac)}"
        if kind == "embedded_jwk":
            return stranger_sign({**header, "jwk": _public_jwk(self._stranger())}, base)
        header_defects: dict[str, dict[str, Any]] = {
            "wrong_typ": {"typ": "JWT"},
            "jku_header": {"jku": "https://attacker.example/jwks.json"},
            "crit_header": {"crit": ["b64"], "b64": False},
            "b64_header": {"b64": False},
            "nested_jwt": {"cty": "JWT"},
        }
        if kind in header_defects:
            return self.sign({**header, **header_defects[kind]}, base)
        if kind == "duplicate_claim":
            return self.sign(header, _json(base)[:-1] + ',"sub":"admin"}')
        if kind == "nan_exp":
            without_exp = {k: v for k, v in base.items() if k != "exp"}
            return self.sign(header, _json(without_exp)[:-1] + ',"exp":NaN}')
        if kind == "jwe_shaped":
            jwe_header = b64url_encode(b'{"alg":"RSA-OAEP-256","enc":"A256GCM"}')
            parts = [secrets.token_bytes(n) for n in (256, 12, 64, 16)]
            return ".".join([jwe_header, *(b64url_encode(p) for p in parts)])
        if kind == "padded_base64":
            head, payload, signature = mint().split(".")
            return f"{head}.{payload}{'=' * (-len(payload) % 4) or '=='}.{signature}"
        if kind == "oversized":
            return mint(padding="x" * 9000)
        return "this is not a JWT"  # garbage

    # --- token exchange (RFC 8693) -------------------------------------------------------------

    def register_client(self, client_id: str, secret: str | None = None) -> str:
        """Register a confidential client for the token endpoint; return its secret.

        The client authenticates with ``client_secret_basic`` (RFC 6749 §2.3.1). ``secret=None``
        generates one. Registering an existing ``client_id`` again replaces its secret.
        """
        if not isinstance(client_id, str) or not client_id:
            raise ValueError("client_id must be a non-empty string")
        if secret is None:
            secret = secrets.token_urlsafe(32)
        if not isinstance(secret, str) or not secret:
            raise ValueError("secret must be a non-empty string, or None to generate one")
        self._clients[client_id] = secret
        return secret

    def _authenticate_client(self, request: Request) -> str | None:
        """The client id proven by an HTTP Basic ``Authorization`` header, else ``None``."""
        scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            decoded = base64.b64decode(credentials.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        raw_id, colon, raw_secret = decoded.partition(":")
        if not colon:
            return None
        client_id, secret = unquote_plus(raw_id), unquote_plus(raw_secret)
        expected = self._clients.get(client_id)
        if expected is None or not hmac.compare_digest(secret.encode(), expected.encode()):
            return None
        return client_id

    def _own_access_token(self, token: str) -> dict[str, Any] | None:
        """The claims of ``token`` if it is an unexpired access token this IdP signed, else None.

        Strict like a resource server, except that any audience is accepted: the signature must
        verify with a *published* key (not a retired or stranger key), the header must be exactly
        ``alg``/``typ: at+jwt``/``kid``, and ``iss``, ``sub``, ``exp`` and ``iat`` are required.
        """
        if self._issuer is None:
            return None
        try:
            jws = parse_compact(token, max_bytes=16 * 1024)
        except InvalidCredential:
            return None
        header = jws.header
        kid = header.get("kid")
        if (
            header.get("alg") != self.algorithm
            or header.get("typ") != "at+jwt"
            or set(header) != {"alg", "typ", "kid"}
            or not isinstance(kid, str)
            or kid not in self._keys
        ):
            return None
        jwk = parse_jwk(self._keys[kid].public_jwk())
        if not verify_signature(self.algorithm, jwk, jws.signing_input, jws.signature):
            return None
        claims = jws.payload
        now = time.time()

        def number(name: str) -> float | None:
            value = claims.get(name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value) if math.isfinite(value) else None

        exp, iat, nbf = number("exp"), number("iat"), number("nbf")
        subject = claims.get("sub")
        if (
            claims.get("iss") != self._issuer
            or not isinstance(subject, str)
            or not subject
            or exp is None
            or exp <= now
            or iat is None
            or iat > now + 60
            or ("nbf" in claims and (nbf is None or nbf > now))
        ):
            return None
        return claims

    async def _token_endpoint(self, request: Request) -> Response:
        body = await request.body()
        if len(body) > _MAX_FORM_BYTES:
            return _oauth_error("invalid_request", "request body too large", 413)
        malformed = False
        try:
            text = body.decode("utf-8")
            pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=True) if text else []
        except (UnicodeDecodeError, ValueError):
            pairs, malformed = [], True
        form: dict[str, list[str]] = {}
        for name, value in pairs:
            form.setdefault(name, []).append(value)
        client_id = self._authenticate_client(request)
        grant_type = form["grant_type"][0] if "grant_type" in form else None
        if grant_type == TOKEN_EXCHANGE_GRANT:
            self.token_exchange_count += 1
            recorded: dict[str, Any] = {
                name: (["***"] * len(values) if name in _SECRET_FIELDS else list(values))
                for name, values in form.items()
            }
            self.last_exchange = {
                name: values[0] if len(values) == 1 else values for name, values in recorded.items()
            }
            if client_id is not None:
                self.last_exchange["client_id"] = client_id
        if self.token_exchange_outage:
            return _oauth_error("temporarily_unavailable", "the token endpoint is down", 503)
        if client_id is None:
            return _oauth_error(
                "invalid_client",
                "client authentication failed",
                401,
                {"WWW-Authenticate": 'Basic realm="fake-idp"'},
            )
        if malformed or any(
            len(values) > 1 for name, values in form.items() if name not in _MULTI_VALUED
        ):
            return _oauth_error("invalid_request", "malformed or repeated parameters")
        if grant_type is None:
            return _oauth_error("invalid_request", "grant_type is required")
        if grant_type != TOKEN_EXCHANGE_GRANT:
            return _oauth_error("unsupported_grant_type", f"{grant_type!r} is not supported")
        return self._exchange(client_id, form)

    def _exchange(self, client_id: str, form: Mapping[str, list[str]]) -> Response:
        def field(name: str) -> str | None:
            values = form.get(name)
            return values[0] if values else None

        if field("subject_token_type") != ACCESS_TOKEN_TYPE:
            return _oauth_error("invalid_request", "subject_token_type must be an access token")
        requested_type = field("requested_token_type")
        if requested_type is not None and requested_type != ACCESS_TOKEN_TYPE:
            return _oauth_error("invalid_request", "only access tokens can be requested")
        if "actor_token" in form or "actor_token_type" in form:
            return _oauth_error("invalid_request", "actor_token is not supported")
        subject_token = field("subject_token")
        if not subject_token:
            return _oauth_error("invalid_request", "subject_token is required")
        claims = self._own_access_token(subject_token)
        if claims is None:
            return _oauth_error("invalid_grant", "the subject token is invalid or expired")
        may_act = claims.get("may_act")
        if may_act is not None and not (
            isinstance(may_act, dict) and may_act.get("sub") == client_id
        ):
            return _oauth_error("invalid_grant", "this client may not act for the subject")
        targets = [*form.get("resource", []), *form.get("audience", [])]
        for resource in form.get("resource", []):
            parts = urlsplit(resource)
            if not parts.scheme or parts.fragment or "#" in resource:
                return _oauth_error("invalid_target", "resource must be an absolute URI")
        if not targets or not all(targets):
            return _oauth_error("invalid_target", "a resource or audience is required")
        targets = list(dict.fromkeys(targets))
        granted = _scopes_of(claims)
        requested_scope = field("scope")
        if requested_scope is not None:
            scopes = list(dict.fromkeys(requested_scope.split()))
            if not scopes or not set(scopes) <= set(granted):
                return _oauth_error("invalid_scope", "the requested scope exceeds the subject's")
        else:
            scopes = granted
        act: dict[str, Any] = {"sub": client_id}
        if isinstance(claims.get("act"), dict):
            act["act"] = claims["act"]  # RFC 8693 §4.1: the prior actor chain nests inside
        payload = self.claims(
            claims["sub"],
            scopes=scopes,
            audience=targets[0] if len(targets) == 1 else targets,
            expires_in=self.token_exchange_expires_in,
            client_id=client_id,
            act=act,
        )
        for name, value in claims.items():
            if name not in _NOT_INHERITED:
                payload.setdefault(name, value)  # tenant and other identity claims carry over
        return JSONResponse(
            {
                "access_token": self.sign(self._header(), payload),
                "issued_token_type": ACCESS_TOKEN_TYPE,
                "token_type": "Bearer",
                "expires_in": self.token_exchange_expires_in,
            },
            headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
        )

    # --- wiring a verifier -----------------------------------------------------------------

    def http_client(self) -> httpx.AsyncClient:
        """An httpx client that reaches this IdP's endpoints in-process (no socket)."""
        base = self._issuer or "http://idp.invalid"
        return httpx.AsyncClient(transport=httpx.ASGITransport(app=self.asgi_app), base_url=base)

    def verifier(
        self,
        audience: str | Sequence[str] | None = None,
        *,
        over_http: bool = False,
        **kwargs: Any,
    ) -> JWTVerifier:
        """A :class:`~securemcp.auth.jwt.JWTVerifier` that trusts this IdP.

        By default it discovers the JWKS through the in-process ASGI app (no socket). With
        ``over_http=True`` (inside :meth:`serve_http`) it uses real loopback HTTP. Extra keyword
        arguments go to ``JWTVerifier`` (``leeway=``, ``tenant_claim=``, ``clock=``, ...).
        """
        from securemcp.auth.jwt import JWTVerifier

        if over_http:
            if self._served_url is None:
                raise RuntimeError("verifier(over_http=True) needs `async with idp.serve_http()`")
            kwargs.setdefault("allow_insecure_loopback", True)  # it serves http on 127.0.0.1
            if self.issuer.rstrip("/") != self._served_url:
                kwargs.setdefault("jwks_uri", f"{self._served_url}/jwks")
        else:
            kwargs.setdefault("http_client", self.http_client())
        verifier = JWTVerifier(
            issuer=self.issuer,
            audience=audience if audience is not None else self.default_audience,
            **kwargs,
        )
        # A server trusting it refuses to start under SECUREMCP_ENV=production outside a test.
        verifier._securemcp_test_identity = True  # type: ignore[attr-defined]
        return verifier

    # --- serving -----------------------------------------------------------------------------

    async def _endpoint(self, request: Request) -> Response:
        await asyncio.sleep(self.latency)
        path = request.url.path
        issuer_path = urlsplit(self._issuer or "").path.rstrip("/")
        oidc = f"{issuer_path}/.well-known/openid-configuration"
        rfc8414 = f"/.well-known/oauth-authorization-server{issuer_path}"
        if request.method == "POST":
            if path == f"{issuer_path}/token":
                return await self._token_endpoint(request)
            return JSONResponse({"error": "method_not_allowed"}, status_code=405)
        if path == rfc8414 or (path == oidc and self.openid_configuration_enabled):
            self.metadata_fetch_count += 1
            return JSONResponse(self.metadata)
        if path == f"{issuer_path}/jwks":
            self.jwks_fetch_count += 1
            if self.jwks_outage:
                return JSONResponse({"error": "temporarily_unavailable"}, status_code=503)
            return JSONResponse(self.jwks)
        return JSONResponse({"error": "not_found"}, status_code=404)

    @asynccontextmanager
    async def serve_http(self) -> AsyncIterator[str]:
        """Serve metadata, JWKS and the token endpoint on ``127.0.0.1`` (OS-chosen port).

        Yields the base URL.

        With ``issuer=None`` the issuer is that URL while serving, so OIDC discovery over real
        HTTP works end to end.
        """
        from securemcp.testing.http import serve_asgi

        adopted = self._issuer is None
        async with serve_asgi(self.asgi_app) as url:
            if adopted:
                self._issuer = url
            self._served_url = url
            try:
                yield url
            finally:
                self._served_url = None
                if adopted:
                    self._issuer = None


def _oauth_error(
    error: str, description: str, status: int = 400, headers: Mapping[str, str] | None = None
) -> JSONResponse:
    """An RFC 6749 §5.2 error response."""
    return JSONResponse(
        {"error": error, "error_description": description},
        status_code=status,
        headers={"Cache-Control": "no-store", "Pragma": "no-cache", **(headers or {})},
    )


def _scopes_of(claims: Mapping[str, Any]) -> list[str]:
    scope = claims.get("scope")
    if isinstance(scope, str):
        return list(dict.fromkeys(scope.split()))
    scp = claims.get("scp")
    if isinstance(scp, list):
        return [s for s in dict.fromkeys(scp) if isinstance(s, str) and s]
    return []
