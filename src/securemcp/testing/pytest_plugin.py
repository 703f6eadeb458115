"""pytest plugin for testing securemcp servers (registered automatically through ``pytest11``).

Fixtures:

* ``fake_idp``: a fresh :class:`~securemcp.testing.FakeIdentityProvider` (no network);
* ``call_as``: ``async with call_as(server, "alice", scopes=["calc:write"]) as client:`` calls
  ``server`` in memory as a user holding a real token signed by ``fake_idp``;
* ``production_mode``: sets ``SECUREMCP_ENV=production`` for the test.

Kept import-light: nothing heavy is imported until a fixture is used.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from securemcp.testing.idp import FakeIdentityProvider

CallAs = Callable[..., AbstractAsyncContextManager[Any]]


@pytest.fixture
def fake_idp() -> FakeIdentityProvider:
    """A fake OAuth/OIDC identity provider that mints real signed tokens, in-process."""
    from securemcp.testing.idp import FakeIdentityProvider

    return FakeIdentityProvider()


@pytest.fixture
def call_as(fake_idp: FakeIdentityProvider) -> CallAs:
    """Factory: an in-memory client calling a server as ``subject`` with the given scopes."""
    from securemcp.testing.client import connect

    @asynccontextmanager
    async def _call_as(
        server: Any, subject: str, *, scopes: Iterable[str] = (), **claims: Any
    ) -> AsyncIterator[Any]:
        token = fake_idp.token(subject, scopes=scopes, **claims)
        async with connect(server, token=token) as client:
            yield client

    return _call_as


@pytest.fixture
def production_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    """Run the test with ``SECUREMCP_ENV=production``."""
    monkeypatch.setenv("SECUREMCP_ENV", "production")
