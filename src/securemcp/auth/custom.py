"""The base class for your own verifier, served on every transport like securemcp's own.

securemcp accepts any object with ``async authenticate(token) -> Principal`` as ``auth=`` on
stdio and in memory. Over HTTP, FastMCP also needs its ``TokenVerifier`` interface and securemcp
needs to know which resource the server is (RFC 8707 audience, advertised in RFC 9728 metadata)
and which authorization servers issue its tokens. Subclass :class:`CustomVerifier`, implement
``authenticate`` and the rest is provided: FastMCP's ``verify_token``, the metadata and the
challenges, the verified-principal hand-off between the HTTP guard and the pipeline, and
fail-closed handling of anything ``authenticate`` raises.

``authenticate`` must fully verify the credential, including that it was issued for this
resource (one of :attr:`audiences`, RFC 8707; guarantee 2), and raise
:class:`~securemcp.errors.InvalidCredential` with a fixed reason code otherwise.
"""

from __future__ import annotations

from collections.abc import Sequence

from securemcp.auth._fastmcp import VerifierBase
from securemcp.errors import ConfigurationError

__all__ = ["CustomVerifier"]


def _urls(value: str | Sequence[str], name: str) -> tuple[str, ...]:
    values = (value,) if isinstance(value, str) else tuple(value)
    if not values or not all(
        isinstance(v, str) and v.startswith(("https://", "http://localhost", "http://127.0.0.1"))
        for v in values
    ):
        raise ConfigurationError(
            f"{name}= must name at least one https:// URL (http:// only for localhost), "
            f"e.g. 'https://mcp.example.com/mcp'; got {value!r}."
        )
    return values


class CustomVerifier(VerifierBase):
    """Subclass it and implement ``authenticate``; pass an instance as ``auth=``.

    Args:
        audience: this server's canonical resource URI(s) (RFC 8707); the first is advertised
            as the resource in RFC 9728 metadata. ``authenticate`` must refuse tokens issued
            for any other resource.
        issuer: the authorization server(s) whose tokens this verifier accepts, advertised to
            clients in the metadata.
        required_scopes: scopes every request must carry (advertised in challenges).

    Example::

        class ApiKeyVerifier(CustomVerifier):
            async def authenticate(self, token: str) -> Principal:
                record = await lookup(token)
                if record is None or record.resource not in self.audiences:
                    raise InvalidCredential(reason="unknown_key")
                return Principal(subject=record.owner, issuer=self.issuers[0], ...)
    """

    def __init__(
        self,
        *,
        audience: str | Sequence[str],
        issuer: str | Sequence[str],
        required_scopes: Sequence[str] = (),
    ) -> None:
        super().__init__(required_scopes=list(required_scopes))
        self.audiences = _urls(audience, "audience")
        self.issuers = _urls(issuer, "issuer")
