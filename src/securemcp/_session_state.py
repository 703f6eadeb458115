"""Session visibility-rule reads that skip FastMCP's state store while no rule can exist.

FastMCP keeps each session's visibility rules (``ctx.enable_components`` /
``ctx.disable_components``) in its session state store, and reads them back on every component
lookup made inside a session: every ``tools/call`` from an in-memory, stdio or HTTP client, and
every listing, pays one key-value store read (a pydantic adapter over a TTL-keeping memory store,
with runtime type checks), even when no session has ever set a rule. On our benchmark host that
read costs an in-memory ``tools/call`` about 40-70 µs, more than the whole 5% budget for
securemcp's security layer.

When FastMCP creates the store itself (the server was given no ``session_state_store``), the
store lives in this process and is reached only through the server's ``_state_store``, so every
write to it passes through :class:`SessionStateFront`. Until a write names a visibility-rules
key, no such key can hold a value, and a read of one answers "absent" without the store. The
first write that names one, or any store operation the front does not know to be a plain read
or write, turns the shortcut off for the rest of the server's life: from then on every read goes
to the store, exactly as in FastMCP. A store the user passes in may be shared (Redis between
replicas, where another process can write a rule) and is used as is.

Before the read, FastMCP computes the rules' key: on an authenticated request that serializes
the caller's identity (``Context._session_scope_key``), another 10-20 µs per lookup. While the
front knows no rule can exist, :func:`install`'s ``apply_session_transforms`` answers the whole
step (key, read, transforms) with the components unchanged, which is what FastMCP's own step
returns when there are no rules. For any other server (bare FastMCP in the same process, a
securemcp server with a user-given store, or once a rule may exist) it is FastMCP's function.

This module relies on FastMCP internals (the ``_state_store`` property, the visibility-rules
key suffix and ``fastmcp.server.server.apply_session_transforms``);
``tests/test_session_state.py`` pins them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastmcp.server import server as _fastmcp_server
from fastmcp.server.context import _current_context
from fastmcp.server.transforms import visibility as _fastmcp_visibility

__all__ = ["SessionStateFront", "SkipsAbsentVisibilityRules", "install"]


#: FastMCP stores a session's rules under ``f"{scope}:_visibility_rules"``.
VISIBILITY_RULES_SUFFIX = ":_visibility_rules"


class SessionStateFront:
    """Stands in front of the server-owned state store; answers rule reads while none exist.

    Reads and writes of every other key, and every read once a rule may exist, are the store's
    own. Unknown operations are passed through and, conservatively, end the shortcut.
    """

    __slots__ = ("_store", "rules_may_exist")

    def __init__(self, store: Any) -> None:
        self._store = store
        self.rules_may_exist = False

    async def get(self, key: str, **options: Any) -> Any:
        if not self.rules_may_exist and type(key) is str and key.endswith(VISIBILITY_RULES_SUFFIX):
            return options.get("default")  # never written: the store could only say "absent"
        return await self._store.get(key=key, **options)

    async def put(self, key: str, value: Any, **options: Any) -> None:
        if type(key) is not str or key.endswith(VISIBILITY_RULES_SUFFIX):
            self.rules_may_exist = True  # before the write, so no read can miss it
        await self._store.put(key=key, value=value, **options)

    async def delete(self, key: str, **options: Any) -> Any:
        return await self._store.delete(key=key, **options)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in SessionStateFront.__slots__:
            raise AttributeError(name)  # probes (copy, pickle) and a half-built front
        # put_many, ttl, ... : not used by FastMCP's per-call paths. Whatever they do, a rule may
        # exist afterwards, so stop answering rule reads without the store.
        self.rules_may_exist = True
        return getattr(self._store, name)


class SkipsAbsentVisibilityRules:
    """Server mixin: FastMCP's ``_state_store``, fronted when FastMCP created the store.

    Placed before ``fastmcp.FastMCP`` in securemcp's server class, so this property is the one
    FastMCP's own code (visibility rules, ``ctx.set_state``, sessions) reaches.
    """

    _securemcp_state_store: Any = None

    @property
    def _state_store(self) -> Any:
        store = self._securemcp_state_store
        if store is None:
            server_owned = getattr(self, "_state_storage", None) is None
            store = super()._state_store  # type: ignore[misc]  # FastMCP creates it here
            if server_owned:
                store = SessionStateFront(store)
            self._securemcp_state_store = store
        return store


#: FastMCP's own session-transform step, which servers that may hold rules still use.
_fastmcp_apply_session_transforms = _fastmcp_visibility.apply_session_transforms


async def apply_session_transforms(components: Sequence[Any]) -> Sequence[Any]:
    """FastMCP's ``apply_session_transforms``, answered at once while no rule can exist.

    The rules FastMCP would apply are read from the state store of the server handling the
    request (``context.fastmcp``); when that store is a :class:`SessionStateFront` that has
    never seen a rule written, there are none, so the components come back unchanged, as
    FastMCP's own step returns them when it finds no rules.
    """
    context = _current_context.get()
    if context is not None:
        server: Any = context._fastmcp()  # the weak reference behind Context.fastmcp
        if isinstance(server, SkipsAbsentVisibilityRules):
            front = server._state_store
            if type(front) is SessionStateFront and not front.rules_may_exist:
                return components
    return await _fastmcp_apply_session_transforms(components)


def install() -> None:
    """Route FastMCP's server lookups through :func:`apply_session_transforms` (idempotent)."""
    if getattr(_fastmcp_server, "apply_session_transforms", None) is not apply_session_transforms:
        _fastmcp_server.apply_session_transforms = apply_session_transforms  # type: ignore[attr-defined]
