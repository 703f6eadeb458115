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

Component versions (FastMCP versioning, ``_meta.fastmcp.version``): the one piece of a caller's
request ``_meta`` passed upstream is an *exact* version the caller asks for. A call asking for
version ``1`` is served by a copy of the component whose ``version`` is ``"1"``: the pipeline
judges (rules, approvals, audit) that version, and exactly that version is asked of the
upstream, which must list it (:meth:`Upstream.request`). A call asking for no version runs what
the upstream chooses (its highest); the lockfile does not pin which versions an upstream has,
so such a call is judged as one whose version securemcp cannot resolve (any rule naming a
version it could run applies). A range cannot be asked of an upstream over MCP (FastMCP honours
only an exact version from the wire) and finds no component.

This module, :mod:`securemcp.proxy.upstream` and :mod:`securemcp.proxy.spans` (FastMCP's
client tracer) are the proxy's only contact with FastMCP internals.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import logging
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar
from urllib.parse import unquote

import mcp_types
from fastmcp.prompts import Message, Prompt, PromptResult
from fastmcp.prompts.base import PromptArgument
from fastmcp.resources import Resource, ResourceTemplate
from fastmcp.resources.base import ResourceContent, ResourceResult
from fastmcp.resources.template import forward_uri, match_uri_template
from fastmcp.server.providers.base import Provider
from fastmcp.tools import Tool, ToolResult
from fastmcp.utilities.tasks import TaskConfig
from fastmcp.utilities.versions import VersionSpec
from pydantic import AnyUrl, PrivateAttr

from securemcp.errors import InvalidArguments, PolicyDenied, UpstreamError
from securemcp.policy.decision import ArgumentBound
from securemcp.policy.request import RiskClass
from securemcp.proxy.config import ComponentRule, UpstreamConfig, namespaced_uri
from securemcp.proxy.pinning import PinnedDefinition
from securemcp.proxy.upstream import Upstream, tool_result
from securemcp.scopes import RISK_META_KEY, SCOPES_META_KEY

__all__ = [
    "Exposure",
    "ProxyCatalog",
    "RuleSet",
    "UpstreamProvider",
    "exposure_of",
    "namespaced_uri",
]

logger = logging.getLogger("securemcp.proxy")

_FORBIDDEN_TASKS = TaskConfig(mode="forbidden")
#: How many reads' rules each upstream provider remembers (see UpstreamProvider.read_rules).
_READ_MEMO_SIZE = 256
#: How many versioned copies of its components each catalog keeps (the version is caller text).
_VERSIONED_MEMO_SIZE = 256


def version_meta(component: Any) -> dict[str, Any] | None:
    """The request ``_meta`` that asks the upstream for ``component``'s version (FastMCP's
    ``_meta.fastmcp.version``), or ``None`` for a component that names none."""
    version = component.version
    return {"fastmcp": {"version": version}} if version is not None else None


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


@functools.lru_cache(maxsize=4096)
def uri_keys(uri: str) -> frozenset[str]:
    """Every spelling under which ``uri`` may name the same upstream resource, case-folded.

    Used to decide which configured rule and which pinned resource a read reaches, so it errs
    on the side of "the same": the URI with and without its fragment and query, percent-decoded
    (repeatedly), ``AnyUrl``-normalised, without a trailing ``/``. A rule may then apply to a
    read it need not apply to; it never misses one it must apply to.
    """
    keys: set[str] = set()
    for start in (uri, uri.partition("#")[0], uri.partition("#")[0].partition("?")[0]):
        text = start
        for _ in range(4):
            keys.add(text)
            with contextlib.suppress(ValueError):
                keys.add(str(AnyUrl(text)))
            decoded = unquote(text)
            if decoded == text:
                break
            text = decoded
    return frozenset(k.rstrip("/").casefold() for k in keys)


@dataclass(slots=True)
class RuleSet:
    """Every configured rule that applies to one call, combined strictest-wins.

    ``deny`` wins; otherwise ``approval`` if any rule asks for it; the constraints are merged,
    the tighter of each (smallest ``max_result_bytes`` and ``timeout_seconds``, argument bounds
    that all hold); ``scopes`` are every scope any applicable component requires.
    """

    denied: list[str] = field(default_factory=list)
    approval: bool = False
    max_result_bytes: int | None = None
    timeout_seconds: float | None = None
    arguments: dict[str, ArgumentBound] = field(default_factory=dict)
    scopes: set[str] = field(default_factory=set)

    def deny(self, reason: str) -> None:
        self.denied.append(reason)

    def add(self, rule: ComponentRule | None) -> None:
        if rule is None:
            return
        if rule.deny:
            self.deny("denied by the proxy configuration")
        self.approval = self.approval or rule.approval
        self.max_result_bytes = _smaller(self.max_result_bytes, rule.max_result_bytes)
        self.timeout_seconds = _smaller(self.timeout_seconds, rule.timeout_seconds)
        for name, bound in rule.arguments.items():
            known = self.arguments.get(name)
            self.arguments[name] = known.merge(bound) if known is not None else bound

    def merge(self, other: RuleSet) -> None:
        """Combine ``other`` into this set, strictest-wins."""
        self.denied.extend(other.denied)
        self.scopes |= other.scopes
        self.approval = self.approval or other.approval
        self.max_result_bytes = _smaller(self.max_result_bytes, other.max_result_bytes)
        self.timeout_seconds = _smaller(self.timeout_seconds, other.timeout_seconds)
        for name, bound in other.arguments.items():
            known = self.arguments.get(name)
            self.arguments[name] = known.merge(bound) if known is not None else bound


def _smaller(a: Any, b: Any) -> Any:
    if a is None:
        return b
    if b is None:
        return a
    return min(a, b)


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


_VALIDATORS: dict[str, Any] = {}
_VALIDATOR_CACHE_LIMIT = 1024


def _validator(digest: str, schema: Mapping[str, Any]) -> Any:
    """A JSON Schema validator for a pinned ``inputSchema``, built once per pin digest.

    Raises:
        ValueError: the pinned schema is not a valid JSON Schema.
    """
    validator = _VALIDATORS.get(digest)
    if validator is None:
        import jsonschema

        cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
        try:
            cls.check_schema(schema)
        except jsonschema.SchemaError as exc:
            raise ValueError(f"invalid pinned inputSchema: {exc.message[:200]}") from None
        validator = cls(schema)
        if len(_VALIDATORS) >= _VALIDATOR_CACHE_LIMIT:
            _VALIDATORS.clear()
        _VALIDATORS[digest] = validator
    return validator


def _check_arguments(digest: str, schema: Mapping[str, Any], arguments: Mapping[str, Any]) -> None:
    """Refuse arguments the pinned (reviewed) ``inputSchema`` does not allow.

    The reason names the failing place in the pinned schema (a JSON pointer into it, which
    names its keyword), never the caller's values or keys: a key the caller chose (under
    ``additionalProperties``, say) could carry a secret or a forged log line.
    """
    try:
        validator = _validator(digest, schema)
        error = next(iter(validator.iter_errors(dict(arguments))), None)
    except InvalidArguments:
        raise
    except Exception as exc:  # an unusable schema refuses the call (fail closed)
        raise InvalidArguments(
            reason=f"pinned inputSchema unusable: {type(exc).__name__}"
        ) from None
    if error is not None:
        pointer = "".join(
            "/" + str(part).replace("~", "~0").replace("/", "~1")
            for part in error.absolute_schema_path
        )
        raise InvalidArguments(reason=f"fails the pinned inputSchema at {'#' + pointer!r}"[:300])


class UpstreamTool(Tool):
    """A pinned upstream tool; running it calls the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    #: Its upstream may be versioned (not pinned): unless a copy names a version, the pipeline
    #: judges a call as one whose version it cannot resolve (securemcp.components).
    securemcp_forwards_versions: ClassVar[bool] = True
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()
    _provider: UpstreamProvider = PrivateAttr()
    _digest: str = PrivateAttr(default="")
    _timeout: float | None = PrivateAttr(default=None)

    async def run(self, arguments: dict[str, Any]) -> ToolResult:
        upstream, key = self._upstream, self._upstream_key
        # The pinned schema is what was reviewed and what clients see: nothing outside it
        # (extra members, wrong types, missing required ones) reaches the upstream.
        _check_arguments(self._digest, self.parameters, arguments)

        meta = version_meta(self)

        async def send(client: Any) -> mcp_types.CallToolResult:
            result: mcp_types.CallToolResult = await client.call_tool_mcp(key, arguments, meta=meta)
            return result

        result = await upstream.request(
            "tool", key, send, timeout_seconds=self._timeout, version=self.version
        )
        return tool_result(result)  # type: ignore[no-any-return]


class UpstreamResource(Resource):
    """A pinned upstream resource; reading it reads the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    #: Its upstream may be versioned (not pinned): unless a copy names a version, the pipeline
    #: judges a call as one whose version it cannot resolve (securemcp.components).
    securemcp_forwards_versions: ClassVar[bool] = True
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()
    _provider: UpstreamProvider = PrivateAttr()

    async def _read(self) -> ResourceResult:
        upstream, key = self._upstream, self._upstream_key
        rules = self._provider.read_rules(key)
        if rules.denied:  # the policy refused it already; never send it upstream regardless
            raise PolicyDenied(reason=f"proxy-config: {rules.denied[0]}")

        meta = version_meta(self)

        async def send(client: Any) -> mcp_types.ReadResourceResult:
            result: mcp_types.ReadResourceResult = await client.read_resource_mcp(key, meta=meta)
            return result

        result = await upstream.request(
            "resource", key, send, timeout_seconds=rules.timeout_seconds, version=self.version
        )
        return _resource_result(result, key)

    async def read(self) -> ResourceResult:
        return await self._read()


class UpstreamTemplate(ResourceTemplate):
    """A pinned upstream resource template; reads go to the upstream's expanded URI."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    #: Its upstream may be versioned (not pinned): unless a copy names a version, the pipeline
    #: judges a call as one whose version it cannot resolve (securemcp.components).
    securemcp_forwards_versions: ClassVar[bool] = True
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()
    _provider: UpstreamProvider = PrivateAttr()

    async def _read(self, uri: str, params: dict[str, Any]) -> ResourceResult:
        upstream, key = self._upstream, self._upstream_key
        backend_uri = forward_uri(key, params, uri)
        # Decided on the URI the upstream receives, not on the client's spelling of it: a
        # resource the configuration denies or hides is refused however the read reaches it.
        rules = self._provider.read_rules(backend_uri, template=key)
        if rules.denied:
            raise PolicyDenied(reason=f"proxy-config: {rules.denied[0]}")

        meta = version_meta(self)

        async def send(client: Any) -> mcp_types.ReadResourceResult:
            result: mcp_types.ReadResourceResult = await client.read_resource_mcp(
                backend_uri, meta=meta
            )
            return result

        result = await upstream.request(
            "template", key, send, timeout_seconds=rules.timeout_seconds, version=self.version
        )
        return _resource_result(result, backend_uri)


class UpstreamPrompt(Prompt):
    """A pinned upstream prompt; rendering it asks the upstream as the current caller."""

    task_config: TaskConfig = _FORBIDDEN_TASKS
    #: Its upstream may be versioned (not pinned): unless a copy names a version, the pipeline
    #: judges a call as one whose version it cannot resolve (securemcp.components).
    securemcp_forwards_versions: ClassVar[bool] = True
    _upstream: Upstream = PrivateAttr()
    _upstream_key: str = PrivateAttr()
    _provider: UpstreamProvider = PrivateAttr()
    _timeout: float | None = PrivateAttr(default=None)

    async def render(self, arguments: dict[str, Any] | None = None) -> PromptResult:
        upstream, key = self._upstream, self._upstream_key
        given = arguments or {}
        declared = {a.name: a for a in self.arguments or ()}
        missing = [name for name, a in declared.items() if a.required and name not in given]
        unknown = [name for name in given if name not in declared]
        if missing or unknown:
            raise InvalidArguments(
                reason=f"prompt {key!r}: {len(missing)} required argument(s) missing, "
                f"{len(unknown)} not in the pinned definition"
            )

        meta = version_meta(self)

        async def send(client: Any) -> mcp_types.GetPromptResult:
            result: mcp_types.GetPromptResult = await client.get_prompt_mcp(key, given, meta=meta)
            return result

        result = await upstream.request(
            "prompt", key, send, timeout_seconds=self._timeout, version=self.version
        )
        return PromptResult(
            messages=[Message(content=m.content, role=m.role) for m in result.messages],
            description=result.description,
        )


_KIND_ATTR = {
    "tool": "tools",
    "resource": "resources",
    "template": "templates",
    "prompt": "prompts",
}


@dataclass
class _Catalog:
    generation: int
    tools: dict[str, UpstreamTool] = field(default_factory=dict)
    resources: dict[str, UpstreamResource] = field(default_factory=dict)
    templates: dict[str, UpstreamTemplate] = field(default_factory=dict)
    prompts: dict[str, UpstreamPrompt] = field(default_factory=dict)
    #: exposed (kind, name) -> every pin key of this upstream exposed under it
    owners: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    #: uri_keys of every pinned resource (exposed or not) -> its pins
    pinned_resources: dict[str, list[PinnedDefinition]] = field(default_factory=dict)
    #: exposed (kind, name) that more than one component claims: unlisted and refused
    collisions: frozenset[tuple[str, str]] = frozenset()
    #: (kind, name, version) -> the component's copy naming that version (see versioned())
    versioned: OrderedDict[tuple[str, str, str], Any] = field(default_factory=OrderedDict)


def _bind(component: Any, provider: UpstreamProvider, pin: PinnedDefinition) -> Any:
    component._upstream = provider.upstream
    component._upstream_key = pin.key
    component._provider = provider
    return component


class UpstreamProvider(Provider):
    """Serves one upstream's pinned, configured components to a securemcp server.

    Several providers share one :class:`ProxyCatalog`, which builds their catalogs together
    and blocks any name two components would be exposed under.
    """

    def __init__(
        self, upstream: Upstream, namespace: str = "", *, registry: ProxyCatalog | None = None
    ) -> None:
        super().__init__()
        self.upstream = upstream
        self.namespace = namespace
        self._catalog: _Catalog | None = None
        config = upstream.config
        self._resource_rules: dict[str, list[ComponentRule]] = {}
        self._template_rules: list[tuple[str, ComponentRule]] = []
        for (kind, key), rule in config.rules.items():
            if kind == "resource":
                for uri_key in uri_keys(key):
                    self._resource_rules.setdefault(uri_key, []).append(rule)
            elif kind == "template":
                self._template_rules.append((key, rule))
        #: read_rules answers, valid while the pins' revision is unchanged (see read_rules).
        self._read_memo: OrderedDict[tuple[str, str | None], tuple[tuple[int, int], RuleSet]] = (
            OrderedDict()
        )
        self.registry = registry if registry is not None else ProxyCatalog()
        self.registry.add(self)

    def __repr__(self) -> str:
        return f"UpstreamProvider({self.upstream.name!r}, namespace={self.namespace!r})"

    def catalog(self) -> _Catalog:
        """The exposed components, rebuilt (with every other provider's) when the lockfile
        changes."""
        self.registry.refresh()
        assert self._catalog is not None
        return self._catalog

    def _build(self) -> _Catalog:
        pins = self.upstream.pins
        catalog = _Catalog(pins.generation)
        lock = pins.upstream(self.upstream.name)
        config = self.upstream.config
        for pin in lock.entries.values() if lock is not None else ():
            if pin.kind == "resource":
                for uri_key in uri_keys(pin.key):
                    catalog.pinned_resources.setdefault(uri_key, []).append(pin)
            exposure = exposure_of(config, pin)
            if exposure is None:
                continue
            self._add(catalog, pin, exposure)
        return catalog

    def read_rules(self, backend_uri: str, *, template: str | None = None) -> RuleSet:
        """Every rule for a read this upstream receives as ``backend_uri``, combined.

        The rules of every configured resource and template the URI may name (see
        :func:`uri_keys`) apply, plus ``template``'s when the read goes through one; a pinned
        resource the URI names that is hidden (denied, unlisted) or blocked refuses the read,
        and an exposed one adds its scopes.

        Every read needs this twice, for the policy's decision and in the component that serves
        it, and it matches the URI against every configured template: the answer is a function
        of the URI, the configuration and the pins in force, so it is remembered (for the
        last :data:`_READ_MEMO_SIZE` URIs) until the pins change (a reload, a new block). The
        returned set is shared: read it, never change it.
        """
        revision = self.upstream.pins.revision
        memo_key = (backend_uri, template)
        memo = self._read_memo
        hit = memo.get(memo_key)
        if hit is not None and hit[0] == revision:
            memo.move_to_end(memo_key)
            return hit[1]
        rules = self._compute_read_rules(backend_uri, template)
        # The revision read after computing: building the catalog may itself add blocks.
        memo[memo_key] = (self.upstream.pins.revision, rules)
        if len(memo) > _READ_MEMO_SIZE:
            memo.popitem(last=False)
        return rules

    def _compute_read_rules(self, backend_uri: str, template: str | None) -> RuleSet:
        rules = RuleSet()
        config = self.upstream.config
        if template is not None:
            rules.add(config.rule("template", template))
        keys = uri_keys(backend_uri)
        for uri_key in keys:
            for rule in self._resource_rules.get(uri_key, ()):
                rules.add(rule)
        for key, rule in self._template_rules:
            if key != template and match_uri_template(backend_uri, key) is not None:
                rules.add(rule)
        catalog = self._catalog if self._catalog is not None else self.catalog()
        seen: set[str] = set()
        for uri_key in keys:
            for pin in catalog.pinned_resources.get(uri_key, ()):
                if pin.key in seen:
                    continue
                seen.add(pin.key)
                exposure = exposure_of(config, pin)
                if exposure is None:
                    rules.deny(f"resource {pin.key!r} is not exposed")
                    continue
                if self.upstream.pins.blocked(self.upstream.name, "resource", pin.key):
                    rules.deny(f"resource {pin.key!r} is blocked")
                rules.scopes.update(exposure.scopes)
                rules.add(config.rule("resource", pin.key))
        return rules

    def _add(self, catalog: _Catalog, pin: PinnedDefinition, exposure: Exposure) -> None:
        d: Mapping[str, Any] = pin.definition
        ns, meta = self.namespace, _meta(exposure)
        config = self.upstream.config
        common: dict[str, Any] = {
            "title": d.get("title"),
            "description": d.get("description"),
            "meta": meta,
            "task_config": _FORBIDDEN_TASKS,
        }
        name = ""
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
            rule = config.rule("tool", pin.key)
            tool._timeout = rule.timeout_seconds if rule is not None else None
            tool._digest = pin.digest
            name = tool.name
            catalog.tools[name] = _bind(tool, self, pin)
        elif pin.kind == "resource":
            resource = UpstreamResource(
                uri=AnyUrl(namespaced_uri(ns, pin.key)),
                name=d.get("name") or pin.key,
                mime_type=d.get("mimeType") or "text/plain",
                **common,
            )
            name = str(resource.uri)
            catalog.resources[name] = _bind(resource, self, pin)
        elif pin.kind == "template":
            template = UpstreamTemplate(
                uri_template=namespaced_uri(ns, pin.key),
                name=d.get("name") or pin.key,
                mime_type=d.get("mimeType") or "text/plain",
                parameters={},
                **common,
            )
            name = template.uri_template
            catalog.templates[name] = _bind(template, self, pin)
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
            rule = config.rule("prompt", pin.key)
            prompt._timeout = rule.timeout_seconds if rule is not None else None
            name = prompt.name
            catalog.prompts[name] = _bind(prompt, self, pin)
        catalog.owners.setdefault((pin.kind, name), []).append(pin.key)

    def served(self, kind: str, name: str) -> Any:
        """The component exposed as ``name``, colliding or not (for the policy; the caller
        refreshed the catalogs)."""
        catalog = self._catalog if self._catalog is not None else self.catalog()
        return getattr(catalog, _KIND_ATTR[kind]).get(name)

    def _listed(self, kind: str) -> list[Any]:
        catalog = self.catalog()
        items: dict[str, Any] = getattr(catalog, _KIND_ATTR[kind])
        return [c for name, c in items.items() if (kind, name) not in catalog.collisions]

    # --- FastMCP Provider hooks -------------------------------------------------------------
    # A colliding name is not listed; a call to it still resolves so that the policy refuses
    # it, audited, and the upstream request refuses it again (the pins are blocked).

    def versioned(self, kind: str, name: str, version: VersionSpec | None) -> Any:
        """The component exposed as ``name`` for a request asking for ``version``.

        No version: the component itself (the upstream picks the version that runs). An exact
        version (FastMCP: ``eq`` wins over bounds): a copy of the component naming it, which
        the pipeline judges and which asks the upstream for exactly that version; one copy per
        version, remembered until the catalog is rebuilt. A range: ``None``, since MCP can
        only ask an upstream for an exact version.
        """
        catalog = self.catalog()
        component = getattr(catalog, _KIND_ATTR[kind]).get(name)
        if component is None or version is None:
            return component
        if version.eq is None:
            return None
        memo_key = (kind, name, version.eq)
        memo = catalog.versioned
        copy = memo.get(memo_key)
        if copy is None:
            copy = component.model_copy(update={"version": version.eq})
            memo[memo_key] = copy
            if len(memo) > _VERSIONED_MEMO_SIZE:
                memo.popitem(last=False)
        return copy

    async def _list_tools(self) -> Sequence[Tool]:
        return self._listed("tool")

    async def _get_tool(self, name: str, version: VersionSpec | None = None) -> Tool | None:
        tool: Tool | None = self.versioned("tool", name, version)
        return tool

    async def _list_resources(self) -> Sequence[Resource]:
        return self._listed("resource")

    async def _get_resource(self, uri: str, version: VersionSpec | None = None) -> Resource | None:
        resource: Resource | None = self.versioned("resource", uri, version)
        return resource

    async def _list_resource_templates(self) -> Sequence[ResourceTemplate]:
        return self._listed("template")

    async def _get_resource_template(
        self, uri: str, version: VersionSpec | None = None
    ) -> ResourceTemplate | None:
        found = await super()._get_resource_template(uri, None)
        if found is None:
            return None
        template: ResourceTemplate | None = self.versioned("template", found.uri_template, version)
        return template

    async def _list_prompts(self) -> Sequence[Prompt]:
        return self._listed("prompt")

    async def _get_prompt(self, name: str, version: VersionSpec | None = None) -> Prompt | None:
        prompt: Prompt | None = self.versioned("prompt", name, version)
        return prompt


class ProxyCatalog:
    """Every upstream's catalog, rebuilt together whenever the lockfile changes.

    Each rebuild checks that no two components (of one upstream or of two) are exposed under
    the same name; a name that collides is blocked: not listed, refused by the policy and by
    the upstream request (its pins are blocked, which is logged and audited), until a lockfile
    change resolves it. ``strict`` (start-up) raises instead.
    """

    def __init__(self) -> None:
        self.providers: list[UpstreamProvider] = []
        self._generation: tuple[int, ...] | None = None

    def add(self, provider: UpstreamProvider) -> None:
        self.providers.append(provider)
        self._generation = None

    def refresh(self) -> None:
        for provider in self.providers:
            provider.upstream.pins.refresh()
        generation = tuple(p.upstream.pins.generation for p in self.providers)
        if generation == self._generation:
            return
        catalogs = [(p, p._build()) for p in self.providers]
        owners: dict[tuple[str, str], list[tuple[UpstreamProvider, str]]] = {}
        for provider, catalog in catalogs:
            for ident, keys in catalog.owners.items():
                owners.setdefault(ident, []).extend((provider, key) for key in keys)
        collisions = {ident: claims for ident, claims in owners.items() if len(claims) > 1}
        blocked = frozenset(collisions)
        for provider, catalog in catalogs:
            catalog.collisions = blocked
            provider._catalog = catalog
        self._generation = generation
        for (kind, name), claims in collisions.items():
            logger.error(
                "securemcp proxy: %s %r is exposed by %s; blocked until the lockfile or the "
                "configuration gives each its own name",
                kind,
                name,
                ", ".join(f"{p.upstream.name} {key!r}" for p, key in claims),
            )
            for provider, key in claims:
                provider.upstream.pins.block(provider.upstream.name, kind, key, "collision")

    def _catalogs(self) -> list[_Catalog]:
        return [p._catalog or p.catalog() for p in self.providers]

    def collisions(self) -> list[str]:
        """Every blocked name, described (start-up refuses a proxy that has any)."""
        self.refresh()
        found: set[tuple[str, str]] = set()
        for provider in self.providers:
            assert provider._catalog is not None
            found |= provider._catalog.collisions
        out = []
        for kind, name in sorted(found):
            owners = [
                p.upstream.name
                for p in self.providers
                if p._catalog is not None and (kind, name) in p._catalog.owners
            ]
            out.append(f"upstreams {', '.join(map(repr, owners))} all expose {kind} {name!r}")
        return out

    def rules_for(self, method: str, target: str) -> RuleSet | None:
        """Every configured rule for a call, resolved through the component(s) serving it, or
        ``None`` when no upstream component serves it."""
        self.refresh()
        if method == "resources/read":
            return self._read_rules(target)
        kind = {"tools/call": "tool", "prompts/get": "prompt"}.get(method)
        if kind is None:
            return None
        hits = [(p, c) for p in self.providers if (c := p.served(kind, target)) is not None]
        if not hits:
            return None
        rules = RuleSet()
        if len(hits) > 1 or any((kind, target) in c.collisions for c in self._catalogs()):
            rules.deny(f"{kind} name {target!r} is exposed by more than one component")
        for provider, component in hits:
            rules.add(provider.upstream.config.rule(kind, component._upstream_key))
        return rules

    def _read_rules(self, uri: str) -> RuleSet | None:
        served: list[tuple[UpstreamProvider, str, str | None]] = []
        collided = False
        for provider in self.providers:
            resource = provider.served("resource", uri)
            if resource is not None:
                served.append((provider, resource._upstream_key, None))
                collided = collided or ("resource", uri) in self._catalogs()[0].collisions
        if not served:
            # FastMCP serves the read from one matching template; whichever it is, every
            # matching template's expansion is judged, so the decision covers the one used.
            for provider, catalog in zip(self.providers, self._catalogs(), strict=True):
                for name, template in catalog.templates.items():
                    params = template.matches(uri)
                    if params is None:
                        continue
                    key = template._upstream_key
                    served.append((provider, forward_uri(key, params, uri), key))
                    collided = collided or ("template", name) in catalog.collisions
        if not served:
            return None
        rules = RuleSet()
        if collided or len({id(p) for p, _, _ in served}) > 1:
            rules.deny(f"resource {uri!r} is exposed by more than one component")
        for provider, backend_uri, template_key in served:
            rules.merge(provider.read_rules(backend_uri, template=template_key))
        return rules
