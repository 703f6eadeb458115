"""Upstream components as FastMCP components, served from the lockfile (FastMCP internals here).

:class:`UpstreamProvider` is a FastMCP ``Provider`` that exposes one upstream's tools, resources,
resource templates and prompts **as they were pinned** in the lockfile, not as the upstream
currently describes them: a client (and its model) only ever reads definitions an operator
reviewed. Which pinned components are exposed, and with which scopes and risk class, comes from
the configuration file (:mod:`securemcp.proxy.config`); the rest are neither listed nor callable.

Upstream ``_meta`` is never copied (it could claim securemcp scopes or risk); scopes and risk are
set here from the configuration, so the securemcp pipeline authorizes proxied components exactly
like local ones. Running a component sends the request through :class:`~securemcp.proxy.upstream.
Upstream`, which owns sessions, pins, timeouts and failures.

This module and :mod:`securemcp.proxy.upstream` are the proxy's only contact with FastMCP
internals.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import mcp_types
from fastmcp.prompts import Message, Prompt, PromptResult
from fastmcp.prompts.base import PromptArgument
from fastmcp.resources import Resource, ResourceTemplate
from fastmcp.resources.base import ResourceContent, ResourceResult
from fastmcp.resources.template import forward_uri
from fastmcp.server.providers.base import Provider
from fastmcp.tools import Tool, ToolResult
from fastmcp.utilities.tasks import TaskConfig
from fastmcp.utilities.versions import VersionSpec
from pydantic import AnyUrl, PrivateAttr

from securemcp.errors import UpstreamError
from securemcp.policy.request import RiskClass
from securemcp.proxy.config import UpstreamConfig
from securemcp.proxy.pinning import PinnedDefinition
from securemcp.proxy.upstream import Upstream, tool_result
from securemcp.scopes import RISK_META_KEY, SCOPES_META_KEY

__all__ = ["Exposure", "UpstreamProvider", "exposure_of", "namespaced_uri"]

_FORBIDDEN_TASKS = TaskConfig(mode="forbidden")


@dataclass(frozen=True, slots=True)
class Exposure:
    """How one pinned upstream component is exposed: the scopes it needs and its risk class."""

    scopes: tuple[str, ...]
    risk: RiskClass | None


def exposure_of(config: UpstreamConfig, pin: PinnedDefinition) -> Exposure | None:
    """The exposure the configuration grants a pinned component, or ``None`` (hidden, denied).

    Listed components use their rule. Unlisted ones are hidden unless the upstream opts in with
    ``expose_unlisted = "read-only"``, which exposes unlisted resources, templates and prompts,
    and tools whose pinned annotations say ``readOnlyHint`` and not ``destructiveHint``, all as
    risk class ``read`` behind ``unlisted_scopes``.
    """
    rule = config.rule(pin.kind, pin.key)
    if rule is not None:
        return None if rule.deny else Exposure(rule.scopes, rule.risk)
    if config.expose_unlisted != "read-only":
        return None
    if pin.kind == "tool":
        hints = pin.definition.get("annotations") or {}
        if hints.get("readOnlyHint") is not True or hints.get("destructiveHint") is True:
            return None
    return Exposure(config.unlisted_scopes, RiskClass.READ)


def _meta(exposure: Exposure) -> dict[str, Any]:
    meta: dict[str, Any] = {SCOPES_META_KEY: list(exposure.scopes)}
    if exposure.risk is not None:
        meta[RISK_META_KEY] = exposure.risk.value
    return meta


def _namespaced_name(namespace: str, name: str) -> str:
    return f"{namespace}_{name}" if namespace else name


def namespaced_uri(namespace: str, uri: str) -> str:
    """FastMCP's convention for mounted resources: ``scheme://namespace/rest``."""
    if not namespace:
        return uri
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f"{namespace}/{uri}"
    return f"{scheme}://{namespace}/{rest}"


def _resource_result(result: mcp_types.ReadResourceResult, uri: str) -> ResourceResult:
    if not result.contents:
        raise UpstreamError(reason=f"empty content for {uri}")
    contents: list[ResourceContent] = []
    for item in result.contents:
        if isinstance(item, mcp_types.TextResourceContents):
            contents.append(ResourceContent(content=item.text, mime_type=item.mime_type))
        elif isinstance(item, mcp_types.BlobResourceContents):
            try:
                blob = base64.b64decode(item.blob, validate=True)
            except ValueError:
                raise UpstreamError(reason=f"invalid base64 blob for {uri}") from None
            contents.append(ResourceContent(content=blob, mime_type=item.mime_type))
        else:
            raise UpstreamError(reason=f"unsupported content for {uri}")
    return ResourceResult(contents=contents)


class UpstreamTool(Tool):
    """A pinned upstream tool; running it calls the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()
    _timeout: float | None = PrivateAttr(default=None)

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        upstream, key = self._upstream, self._upstream_key

        async def send(client: Any) -> mcp_types.CallToolResult:
            result: mcp_types.CallToolResult = await client.call_tool_mcp(key, arguments)
            return result

        result = await upstream.request("tool", key, send, timeout_seconds=self._timeout)
        return tool_result(result)  # type: ignore[no-any-return]


class UpstreamResource(Resource):
    """A pinned upstream resource; reading it reads the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()

    async def _read(self) -> ResourceResult:
        upstream, key = self._upstream, self._upstream_key

        async def send(client: Any) -> mcp_types.ReadResourceResult:
            result: mcp_types.ReadResourceResult = await client.read_resource_mcp(key)
            return result

        return _resource_result(await upstream.request("resource", key, send), key)

    async def read(self) -> ResourceResult:
        return await self._read()


class UpstreamTemplate(ResourceTemplate):
    """A pinned upstream resource template; reads go to the upstream's expanded URI."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()

    async def _read(self, uri: str, params: dict[str, Any]) -> ResourceResult:
        upstream, key = self._upstream, self._upstream_key
        backend_uri = forward_uri(key, params, uri)

        async def send(client: Any) -> mcp_types.ReadResourceResult:
            result: mcp_types.ReadResourceResult = await client.read_resource_mcp(backend_uri)
            return result

        return _resource_result(await upstream.request("template", key, send), backend_uri)


class UpstreamPrompt(Prompt):
    """A pinned upstream prompt; rendering it asks the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()

    async def render(self, arguments: dict[str, Any] | None = None) -> PromptResult:
        upstream, key = self._upstream, self._upstream_key

        async def send(client: Any) -> mcp_types.GetPromptResult:
            result: mcp_types.GetPromptResult = await client.get_prompt_mcp(key, arguments or {})
            return result

        result = await upstream.request("prompt", key, send)
        return PromptResult(
            messages=[Message(content=m.content, role=m.role) for m in result.messages],
            description=result.description,
        )


@dataclass
class _Catalog:
    generation: int
    tools: dict[str, Tool] = field(default_factory=dict)
    resources: dict[str, Resource] = field(default_factory=dict)
    templates: dict[str, ResourceTemplate] = field(default_factory=dict)
    prompts: dict[str, Prompt] = field(default_factory=dict)


def _bind(component: Any, upstream: Upstream, key: str) -> Any:
    component._upstream = upstream
    component._upstream_key = key
    return component


class UpstreamProvider(Provider):
    """Serves one upstream's pinned, configured components to a securemcp server."""

    def __init__(self, upstream: Upstream, namespace: str = "") -> None:
        super().__init__()
        self.upstream = upstream
        self.namespace = namespace
        self._catalog: _Catalog | None = None

    def __repr__(self) -> str:
        return f"UpstreamProvider({self.upstream.name!r}, namespace={self.namespace!r})"

    def catalog(self) -> _Catalog:
        """The exposed components, rebuilt whenever the lockfile changes."""
        pins = self.upstream.pins
        pins.refresh()
        catalog = self._catalog
        if catalog is not None and catalog.generation == pins.generation:
            return catalog
        catalog = _Catalog(pins.generation)
        lock = pins.upstream(self.upstream.name)
        config = self.upstream.config
        for pin in lock.entries.values() if lock is not None else ():
            exposure = exposure_of(config, pin)
            if exposure is None:
                continue
            self._add(catalog, pin, exposure)
        self._catalog = catalog
        return catalog

    def _add(self, catalog: _Catalog, pin: PinnedDefinition, exposure: Exposure) -> None:
        d: Mapping[str, Any] = pin.definition
        ns, upstream, meta = self.namespace, self.upstream, _meta(exposure)
        common: dict[str, Any] = {
            "title": d.get("title"),
            "description": d.get("description"),
            "meta": meta,
            "task_config": _FORBIDDEN_TASKS,
        }
        if pin.kind == "tool":
            annotations = d.get("annotations")
            tool = UpstreamTool(
                name=_namespaced_name(ns, pin.key),
                parameters=dict(d.get("inputSchema") or {"type": "object"}),
                output_schema=d.get("outputSchema"),
                annotations=(
                    mcp_types.ToolAnnotations.model_validate(annotations) if annotations else None
                ),
                **common,
            )
            rule = upstream.config.rule("tool", pin.key)
            tool._timeout = rule.timeout_seconds if rule is not None else None
            catalog.tools[tool.name] = _bind(tool, upstream, pin.key)
        elif pin.kind == "resource":
            resource = UpstreamResource(
                uri=AnyUrl(namespaced_uri(ns, pin.key)),
                name=d.get("name") or pin.key,
                mime_type=d.get("mimeType") or "text/plain",
                **common,
            )
            catalog.resources[str(resource.uri)] = _bind(resource, upstream, pin.key)
        elif pin.kind == "template":
            template = UpstreamTemplate(
                uri_template=namespaced_uri(ns, pin.key),
                name=d.get("name") or pin.key,
                mime_type=d.get("mimeType") or "text/plain",
                parameters={},
                **common,
            )
            catalog.templates[template.uri_template] = _bind(template, upstream, pin.key)
        elif pin.kind == "prompt":
            prompt = UpstreamPrompt(
                name=_namespaced_name(ns, pin.key),
                arguments=[
                    PromptArgument(
                        name=a["name"],
                        description=a.get("description"),
                        required=bool(a.get("required", False)),
                    )
                    for a in d.get("arguments") or ()
                ],
                **common,
            )
            catalog.prompts[prompt.name] = _bind(prompt, upstream, pin.key)

    # --- FastMCP Provider hooks -------------------------------------------------------------

    async def _list_tools(self) -> Sequence[Tool]:
        return list(self.catalog().tools.values())

    async def _get_tool(self, name: str, version: VersionSpec | None = None) -> Tool | None:
        return self.catalog().tools.get(name)

    async def _list_resources(self) -> Sequence[Resource]:
        return list(self.catalog().resources.values())

    async def _get_resource(self, uri: str, version: VersionSpec | None = None) -> Resource | None:
        return self.catalog().resources.get(uri)

    async def _list_resource_templates(self) -> Sequence[ResourceTemplate]:
        return list(self.catalog().templates.values())

    async def _list_prompts(self) -> Sequence[Prompt]:
        return list(self.catalog().prompts.values())

    async def _get_prompt(self, name: str, version: VersionSpec | None = None) -> Prompt | None:
        return self.catalog().prompts.get(name)
