"""Asymmetric JWS algorithms and public JWKs (RFC 7518 §3, RFC 7517, RFC 8037, RFC 7638).

Only asymmetric signature algorithms exist here: HMAC and ``none`` cannot be configured, so an
RS→HS confusion (RFC 8725 §2.1, CVE-2015-9235, CVE-2026-48526) has no code path to reach. Each
algorithm names the one key type (and curve) it may be used with (RFC 8725 §3.1), and a key that
declares its own ``alg`` is only used with that algorithm (CVE-2026-48523).

Signatures are verified with ``cryptography`` directly. ECDSA signatures are the fixed-size
``R || S`` of RFC 7518 §3.4, with ``0 < r, s < n`` checked explicitly (CVE-2022-21449).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final, TypeAlias

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from securemcp.auth._compact import b64url_decode

__all__ = [
    "SUPPORTED_ALGORITHMS",
    "PublicJWK",
    "PublicKey",
    "key_fits_algorithm",
    "parse_jwk",
    "verify_signature",
]

PublicKey: TypeAlias = (
    rsa.RSAPublicKey | ec.EllipticCurvePublicKey | ed25519.Ed25519PublicKey | ed448.Ed448PublicKey
)

#: Smallest RSA modulus accepted from a JWKS (RFC 7518 §3.3 requires 2048 bits).
MIN_RSA_BITS: Final = 2048
#: ``kid`` values longer than this are refused (RFC 8725 §2.9: treat ``kid`` as opaque and bounded).
MAX_KID_LENGTH: Final = 256


@dataclass(frozen=True, slots=True)
class _AlgSpec:
    kty: str
    curves: frozenset[str] = frozenset()
    hash: type[hashes.HashAlgorithm] | None = None
    pss: bool = False


_SPECS: Final[Mapping[str, _AlgSpec]] = {
    "RS256": _AlgSpec("RSA", hash=hashes.SHA256),
    "RS384": _AlgSpec("RSA", hash=hashes.SHA384),
    "RS512": _AlgSpec("RSA", hash=hashes.SHA512),
    "PS256": _AlgSpec("RSA", hash=hashes.SHA256, pss=True),
    "PS384": _AlgSpec("RSA", hash=hashes.SHA384, pss=True),
    "PS512": _AlgSpec("RSA", hash=hashes.SHA512, pss=True),
    "ES256": _AlgSpec("EC", frozenset({"P-256"}), hashes.SHA256),
    "ES384": _AlgSpec("EC", frozenset({"P-384"}), hashes.SHA384),
    "ES512": _AlgSpec("EC", frozenset({"P-521"}), hashes.SHA512),
    "EdDSA": _AlgSpec("OKP", frozenset({"Ed25519", "Ed448"})),
    "Ed25519": _AlgSpec("OKP", frozenset({"Ed25519"})),  # RFC 9864 fully-specified name
}

#: Algorithms a verifier may be configured with.
SUPPORTED_ALGORITHMS: Final = frozenset(_SPECS)

_EC_CURVES: Final[Mapping[str, tuple[ec.EllipticCurve, int]]] = {
    "P-256": (ec.SECP256R1(), 32),
    "P-384": (ec.SECP384R1(), 48),
    "P-521": (ec.SECP521R1(), 66),
}

_EC_ORDERS: Final[Mapping[str, int]] = {
    "P-256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "P-384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973",
        16,
    ),
    "P-521": int(
        "01FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFA"
        "51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}

#: Members that only a *private* JWK carries; a JWKS entry with any of them is not used.
_PRIVATE_MEMBERS: Final = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True, eq=False)
class PublicJWK:
    """A public verification key from an issuer's JWKS."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None
    key: PublicKey
    thumbprint: str


def _b64_member(jwk: Mapping[str, Any], name: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str) or not value:
        raise ValueError(f"JWK member {name!r} missing or not a string")
    return b64url_decode(value)


def _thumbprint(required: Mapping[str, str]) -> str:
    """RFC 7638 JWK thumbprint (SHA-256) over the required members."""
    canonical = json.dumps(dict(sorted(required.items())), separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def parse_jwk(jwk: Mapping[str, Any]) -> PublicJWK:
    """Turn one JWKS entry into a :class:`PublicJWK`, or raise ``ValueError`` if it is unusable.

    Unusable: private or symmetric keys, ``use`` other than ``sig``, ``key_ops`` without
    ``verify``, unknown ``kty``/``crv``, RSA under 2048 bits, off-curve EC points, an ``alg``
    that is not a supported asymmetric algorithm, an over-long ``kid``, or a ``kty``, ``alg``,
    ``crv``, ``use`` or ``kid`` that is not a JSON string.
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str):
        raise ValueError("JWK without kty")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError("private or symmetric JWK in a JWKS")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("JWK not for signatures")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("JWK key_ops does not allow verify")
    kid = jwk.get("kid")
    if kid is not None and (not isinstance(kid, str) or len(kid) > MAX_KID_LENGTH):
        raise ValueError("JWK kid not a bounded string")
    for member in ("alg", "crv", "use"):
        if jwk.get(member) is not None and not isinstance(jwk[member], str):
            raise ValueError(f"JWK member {member!r} is not a string")
    alg = jwk.get("alg")
    if alg is not None and (alg not in _SPECS or _SPECS[alg].kty != kty):
        raise ValueError("JWK alg unsupported or does not fit its kty")

    key: PublicKey
    crv: str | None = None
    if kty == "RSA":
        n, e = _b64_member(jwk, "n"), _b64_member(jwk, "e")
        numbers = rsa.RSAPublicNumbers(int.from_bytes(e, "big"), int.from_bytes(n, "big"))
        key = numbers.public_key()
        if key.key_size < MIN_RSA_BITS:
            raise ValueError("RSA key too small")
        required = {"e": jwk["e"], "kty": kty, "n": jwk["n"]}
    elif kty == "EC":
        crv = jwk.get("crv")
        if not isinstance(crv, str) or crv not in _EC_CURVES:
            raise ValueError("unsupported EC curve")
        curve, size = _EC_CURVES[crv]
        x, y = _b64_member(jwk, "x"), _b64_member(jwk, "y")
        if len(x) != size or len(y) != size:
            raise ValueError("EC coordinate has the wrong length")
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), curve
        ).public_key()  # raises ValueError for a point not on the curve
        required = {"crv": crv, "kty": kty, "x": jwk["x"], "y": jwk["y"]}
    elif kty == "OKP":
        crv = jwk.get("crv")
        x = _b64_member(jwk, "x")
        if crv == "Ed25519":
            key = ed25519.Ed25519PublicKey.from_public_bytes(x)
        elif crv == "Ed448":
            key = ed448.Ed448PublicKey.from_public_bytes(x)
        else:
            raise ValueError("unsupported OKP curve")
        required = {"crv": crv, "kty": kty, "x": jwk["x"]}
    else:
        raise ValueError("unsupported kty")
    if alg is not None and crv is not None and crv not in _SPECS[alg].curves:
        raise ValueError("JWK alg does not fit its curve")
    return PublicJWK(kid=kid, kty=kty, crv=crv, alg=alg, key=key, thumbprint=_thumbprint(required))


def key_fits_algorithm(jwk: PublicJWK, alg: str) -> bool:
    """Whether ``jwk`` may verify a signature made with ``alg`` (kty, crv and declared alg)."""
    spec = _SPECS.get(alg)
    if spec is None or jwk.kty != spec.kty:
        return False
    if jwk.alg is not None and jwk.alg != alg:
        return False
    return not spec.curves or jwk.crv in spec.curves


def verify_signature(alg: str, jwk: PublicJWK, signing_input: bytes, signature: bytes) -> bool:
    """Verify a JWS signature. The caller has checked :func:`key_fits_algorithm` already."""
    spec = _SPECS[alg]
    key = jwk.key
    hash_cls = spec.hash
    try:
        if isinstance(key, rsa.RSAPublicKey):
            if hash_cls is None:
                return False
            digest = hash_cls()
            pad: padding.AsymmetricPadding = (
                padding.PSS(mgf=padding.MGF1(hash_cls()), salt_length=digest.digest_size)
                if spec.pss
                else padding.PKCS1v15()
            )
            if len(signature) != (key.key_size + 7) // 8:
                return False
            key.verify(signature, signing_input, pad, digest)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            crv = jwk.crv
            if hash_cls is None or crv is None or crv not in _EC_CURVES:
                return False
            size = _EC_CURVES[crv][1]
            if len(signature) != 2 * size:
                return False
            r = int.from_bytes(signature[:size], "big")
            s = int.from_bytes(signature[size:], "big")
            order = _EC_ORDERS[crv]
            if not (0 < r < order and 0 < s < order):
                return False
            key.verify(encode_dss_signature(r, s), signing_input, ec.ECDSA(hash_cls()))
        else:
            key.verify(signature, signing_input)
    except InvalidSignature:
        return False
    return True
