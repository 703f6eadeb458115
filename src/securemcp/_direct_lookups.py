"""Component lookups that do not spawn a task when a server has only its own components.

FastMCP's ``AggregateProvider`` answers every lookup (``get_tool``, ``list_tools`` and their
resource, template and prompt siblings) by running each provider in a task of an anyio task
group (``fastmcp.utilities.async_utils.gather``), even when there is exactly one provider.
Every ``tools/call`` resolves its tool that way, and over streamable HTTP the MCP SDK also lists
the tools inside every ``tools/call``: the task group, the task and the extra trips through the
event loop cost a bare FastMCP server-side call about a third of its time on our benchmark host.

When the server's only provider is FastMCP's own ``LocalProvider`` (the server's decorated
tools, resources and prompts, the overwhelmingly common case), :class:`DirectLookups` awaits it
directly and hands the outcome, a result or the exception it raised, to the same
``AggregateProvider`` method that post-processes ``gather``'s results. So the answer, the
``provider_error_strategy`` handling and the warnings are FastMCP's own; only the task is gone.
``LocalProvider`` lookups set no context variable that outlives them, so running it in the
caller's context rather than a copy changes nothing. Mounted servers, proxies and any other
provider keep FastMCP's concurrent path.

This module relies on FastMCP internals (the ``AggregateProvider`` lookup methods and their
result helpers); ``tests/test_direct_lookups.py`` pins its answers to FastMCP's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastmcp.server.providers import AggregateProvider
from fastmcp.server.providers.local_provider import LocalProvider

__all__ = ["DirectLookups"]

T = TypeVar("T")


async def _outcome(lookup: Awaitable[T]) -> list[T | BaseException]:
    """The one-element result list ``gather(..., return_exceptions=True)`` would give."""
    try:
        return [await lookup]
    except Exception as exc:  # gather() returns it; the caller's helper decides
        return [exc]


class DirectLookups(AggregateProvider):
    """``AggregateProvider`` lookups without a task group when the only provider is local.

    Placed between ``fastmcp.FastMCP`` and ``AggregateProvider`` in securemcp's server class,
    so FastMCP's own overrides (component auth, enabled filtering, session transforms) still
    wrap these methods exactly as they wrap ``AggregateProvider``'s.
    """

    def _sole_local_provider(self) -> LocalProvider | None:
        providers = self.providers
        if len(providers) == 1:
            provider = providers[0]
            if type(provider) is LocalProvider:
                return provider
        return None

    async def _one(
        self,
        direct: Callable[[LocalProvider], Awaitable[Any]],
        fallback: Callable[[], Awaitable[Any]],
        finish: Callable[[list[Any]], Any],
    ) -> Any:
        provider = self._sole_local_provider()
        if provider is None:
            return await fallback()
        return finish(await _outcome(direct(provider)))

    async def _list_tools(self) -> Sequence[Any]:
        # Written out (no closures): over HTTP the MCP SDK lists tools inside every tools/call.
        provider = self._sole_local_provider()
        if provider is None:
            return await super()._list_tools()
        outcome = await _outcome(provider.list_tools())
        return self._collect_list_results(outcome, "list_tools")

    async def _get_tool(self, name: str, version: Any = None) -> Any:
        # Written out (no closures): every tools/call resolves its tool here.
        provider = self._sole_local_provider()
        if provider is None:
            return await super()._get_tool(name, version)
        outcome: list[Any] = await _outcome(provider.get_tool(name, version))
        return self._get_highest_version_result(outcome, f"get_tool({name!r})")

    async def _list_resources(self) -> Sequence[Any]:
        return await self._one(  # type: ignore[no-any-return]
            lambda p: p.list_resources(),
            super()._list_resources,
            lambda results: self._collect_list_results(results, "list_resources"),
        )

    async def _get_resource(self, uri: str, version: Any = None) -> Any:
        return await self._one(
            lambda p: p.get_resource(uri, version),
            lambda: super(DirectLookups, self)._get_resource(uri, version),
            lambda results: self._get_highest_version_result(results, f"get_resource({uri!r})"),
        )

    async def _list_resource_templates(self) -> Sequence[Any]:
        return await self._one(  # type: ignore[no-any-return]
            lambda p: p.list_resource_templates(),
            super()._list_resource_templates,
            lambda results: self._collect_list_results(results, "list_resource_templates"),
        )

    async def _get_resource_template(self, uri: str, version: Any = None) -> Any:
        return await self._one(
            lambda p: p.get_resource_template(uri, version),
            lambda: super(DirectLookups, self)._get_resource_template(uri, version),
            lambda results: self._get_highest_version_result(
                results, f"get_resource_template({uri!r})"
            ),
        )

    async def _list_prompts(self) -> Sequence[Any]:
        return await self._one(  # type: ignore[no-any-return]
            lambda p: p.list_prompts(),
            super()._list_prompts,
            lambda results: self._collect_list_results(results, "list_prompts"),
        )

    async def _get_prompt(self, name: str, version: Any = None) -> Any:
        return await self._one(
            lambda p: p.get_prompt(name, version),
            lambda: super(DirectLookups, self)._get_prompt(name, version),
            lambda results: self._get_highest_version_result(results, f"get_prompt({name!r})"),
        )
