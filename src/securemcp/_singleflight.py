"""Single flight: concurrent callers asking for the same key share one request.

Used where a burst of calls would otherwise send the same request to an authorization server
many times over (token introspection, RFC 7662; token exchange, RFC 8693). Failures are never
shared beyond the callers already waiting, and never cached.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

__all__ = ["SingleFlight"]

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class SingleFlight(Generic[K, V]):
    """One in-flight request per key; later callers for that key await the same result."""

    def __init__(self) -> None:
        self._inflight: dict[K, asyncio.Future[V]] = {}

    def __len__(self) -> int:
        return len(self._inflight)

    async def run(self, key: K, request: Callable[[], Awaitable[V]]) -> V:
        """``request()``'s result, shared with every concurrent caller for ``key``.

        A caller that is cancelled does not cancel the others; if the caller running the request
        is cancelled mid-request, a waiting caller runs it again on its own.
        """
        loop = asyncio.get_running_loop()
        pending = self._inflight.get(key)
        if pending is not None and pending.get_loop() is loop:
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled
                # the first caller was cancelled mid-request: run it on our own
        future: asyncio.Future[V] = loop.create_future()
        self._inflight[key] = future
        try:
            result = await request()
        except asyncio.CancelledError:
            future.cancel()
            raise
        except Exception as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: waiters (if any) re-raise it
            raise
        else:
            future.set_result(result)
            return result
        finally:
            if self._inflight.get(key) is future:
                del self._inflight[key]
