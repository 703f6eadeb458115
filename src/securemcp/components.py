"""What securemcp needs to know about a FastMCP component to decide a call to it.

A component's *facts* are its declared scopes and risk class (from ``scopes=``/``risk=``, stored
in its MCP ``_meta``), its tags, its MCP annotations and its version. They are read once per
component and cached by the pipeline; :mod:`securemcp.admission` re-reads them from the
component FastMCP actually runs, so the cache can never widen access (nor authorize one version
of a component for another).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from securemcp.scopes import declared_risk, declared_scopes

if TYPE_CHECKING:
    from securemcp._prompt_values import MountedPrompt, PromptValues
    from securemcp._template_values import MountedTemplate, TemplateValues
    from securemcp._tool_values import MountedTool, ToolValues

__all__ = ["ComponentFacts", "facts_of", "facts_of_cached"]

_NO_ANNOTATIONS: Mapping[str, Any] = MappingProxyType({})


@dataclass(frozen=True, slots=True)
class ComponentFacts:
    """The security-relevant facts of one tool, resource, resource template or prompt."""

    scopes: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()
    annotations: Mapping[str, Any] = field(default_factory=lambda: _NO_ANNOTATIONS)
    risk: str = "write"
    #: A tool's published input schema (``Tool.parameters``), against which the pipeline checks
    #: argument types when a policy is configured (:mod:`securemcp.policy.arguments`).
    input_schema: Mapping[str, Any] | None = None
    #: For a resource template, the query parameters its URI template names (``{?a,b}``): the
    #: only ones FastMCP reads, so the only ones a policy's view of the URI keeps.
    query_names: frozenset[str] | None = None
    #: The component's version (``@mcp.tool(version="2")``), ``None`` when unversioned.
    version: str | None = None
    #: Unversioned here, but it forwards calls to versioned components elsewhere (a FastMCP
    #: proxy of a versioned server advertises their versions in ``_meta.fastmcp``), which pick
    #: the version that runs: securemcp cannot resolve it (:attr:`CallRequest.version_resolved`).
    forwards_versions: bool = False
    #: For a resource template, its URI template (``users://{email}/ssn``): the component that
    #: serves every read it matches, which rate limits count and audit records name.
    uri_template: str | None = None
    #: For a FastMCP function template whose parameter values FastMCP converts (``id: int``),
    #: how it converts them, or a mount's forwarder to a template of the mounted server: a read
    #: is also judged under its canonical spelling (:mod:`securemcp._template_values`).
    #: ``None`` for everything else.
    template_values: TemplateValues | MountedTemplate | None = None
    #: For a FastMCP function prompt with a parameter whose string argument FastMCP converts
    #: (``amount: int``), or a FastMCP function tool with a parameter its validation converts
    #: (``amount: Decimal``, ``id: UUID``), how it converts them, or a mount's forwarder
    #: to such a prompt or tool of the mounted server: a call is also judged with its arguments
    #: as the function receives them (:mod:`securemcp._prompt_values`,
    #: :mod:`securemcp._tool_values`). ``None`` for everything else (every plain typed tool).
    argument_values: PromptValues | MountedPrompt | ToolValues | MountedTool | None = None


def _annotations(component: Any) -> Mapping[str, Any]:
    annotations = getattr(component, "annotations", None)
    if annotations is None:
        return _NO_ANNOTATIONS
    from securemcp.policy.request import annotations_mapping

    return annotations_mapping(annotations)


def facts_of(component: Any) -> ComponentFacts:
    """Read a component's facts.

    Raises:
        InvalidScopeDeclaration: the component carries a malformed scope declaration.
    """
    from securemcp.policy.request import RiskClass

    annotations = _annotations(component)
    version = getattr(component, "version", None)
    if not isinstance(version, str):
        version = None
    uri_template = _uri_template(component)
    return ComponentFacts(
        scopes=declared_scopes(component),
        tags=frozenset(getattr(component, "tags", None) or ()),
        annotations=annotations,
        # The effective class, computed once: declared with risk=, else from the annotations.
        risk=RiskClass.classify(annotations, declared_risk(component)).value,
        input_schema=_input_schema(component),
        query_names=_query_names(component),
        version=version,
        forwards_versions=version is None and _advertises_versions(component),
        uri_template=uri_template,
        template_values=_template_values(component) if uri_template is not None else None,
        argument_values=_argument_values(component) if uri_template is None else None,
    )


def _advertises_versions(component: Any) -> bool:
    """Whether ``component`` names component versions in its ``_meta.fastmcp`` (a forwarder's
    copy of the listing of a versioned server: ``{"version": "2", "versions": ["2", "1"]}``), or
    says it forwards to components elsewhere that may be versioned (``securemcp_forwards_versions``
    on its class: a securemcp proxy's upstream component, whose upstream versions are not pinned).
    """
    if getattr(type(component), "securemcp_forwards_versions", False) is True:
        return True
    meta = getattr(component, "meta", None)
    fastmcp_meta = meta.get("fastmcp") if isinstance(meta, Mapping) else None
    if not isinstance(fastmcp_meta, Mapping):
        return False
    return fastmcp_meta.get("version") is not None or bool(fastmcp_meta.get("versions"))


_QUERY_PART = re.compile(r"\{\?([^}]+)\}")


def _template_values(component: Any) -> TemplateValues | MountedTemplate | None:
    from securemcp._template_values import template_values

    return template_values(component)


def _argument_values(
    component: Any,
) -> PromptValues | MountedPrompt | ToolValues | MountedTool | None:
    from securemcp._prompt_values import prompt_values
    from securemcp._tool_values import tool_values

    return prompt_values(component) or tool_values(component)


def _uri_template(component: Any) -> str | None:
    template = getattr(component, "uri_template", None)
    return template if isinstance(template, str) else None


def _query_names(component: Any) -> frozenset[str] | None:
    template = _uri_template(component)
    return template_query_names(template) if template is not None else None


def template_query_names(template: str) -> frozenset[str]:
    """The query parameters a URI template names (``{?a,b*}``), as
    :func:`~securemcp.policy.request.resource_target` takes them."""
    names = [name.strip() for found in _QUERY_PART.findall(template) for name in found.split(",")]
    # every name without its "*", plus "name*" for an exploded one (FastMCP reads all its values)
    return frozenset(name.rstrip("*") for name in names) | {n for n in names if n.endswith("*")}


def _input_schema(component: Any) -> Mapping[str, Any] | None:
    """A tool's ``parameters`` (a resource template's too; the pipeline uses it for tools only)."""
    schema = getattr(component, "parameters", None)
    return schema if isinstance(schema, Mapping) else None


_BY_COMPONENT: dict[int, tuple[Any, ComponentFacts]] = {}
_BY_COMPONENT_LIMIT = 4096


def facts_of_cached(component: Any) -> ComponentFacts:
    """:func:`facts_of`, remembered per component *object*.

    FastMCP hands out the same component object for every call to an unchanged tool, so the
    re-check of the component each admitted call runs costs a dict lookup. The memo holds the
    component itself and checks identity, so a recycled ``id()`` never returns stale facts; a
    changed or transformed component is a different object and is read afresh.
    """
    key = id(component)
    cached = _BY_COMPONENT.get(key)
    if cached is not None and cached[0] is component:
        return cached[1]
    facts = facts_of(component)
    if len(_BY_COMPONENT) >= _BY_COMPONENT_LIMIT:
        _BY_COMPONENT.clear()
    _BY_COMPONENT[key] = (component, facts)
    return facts
