"""Admission: the FastMCP core runs a component only if the pipeline admitted that exact call.

Two tripwires make the security pipeline impossible to skip silently:

* :func:`require_admission` guards the core of ``call_tool``/``read_resource``/``render_prompt``
  (the ``run_middleware=False`` path): it refuses unless this server's pipeline admitted exactly
  that method and target, once;
* :func:`recheck_resolved` compares the component FastMCP actually resolves for an admitted call
  with the facts the pipeline authorized (which may come from a cache), so a stale cache or a
  component swapped mid-flight can never widen access.
"""

from __future__ import annotations

import contextvars
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from securemcp.components import ComponentFacts, facts_of_cached
from securemcp.context import Principal, SecurityContext
from securemcp.errors import ComponentChanged, InsufficientScope, PipelineBypassed, PolicyDenied
from securemcp.scopes import InvalidScopeDeclaration

if TYPE_CHECKING:
    from securemcp.server import FastMCP

__all__ = [
    "ADMISSION",
    "LISTING",
    "Admission",
    "forwards_to",
    "recheck_resolved",
    "require_admission",
]

logger = logging.getLogger("securemcp.pipeline")


@dataclass(slots=True, eq=False)
class Admission:
    """The pipeline's permission for the FastMCP core to run one component, once."""

    server: FastMCP
    method: str
    target: str
    context: SecurityContext
    facts: ComponentFacts
    policy_active: bool = False
    open: bool = True
    consumed: bool = False
    rechecked: bool = False
    #: The component the core resolved and runs for this call (set by :func:`recheck_resolved`).
    component: Any = None


ADMISSION: contextvars.ContextVar[Admission | None] = contextvars.ContextVar(
    "securemcp.admission", default=None
)

#: (server, principal) while a securemcp server lists components, so that mounted securemcp
#: servers filter their own listings for the caller the parent verified.
LISTING: contextvars.ContextVar[tuple[FastMCP, Principal] | None] = contextvars.ContextVar(
    "securemcp.listing", default=None
)


def require_admission(server: FastMCP, method: str, target: str) -> None:
    """Called by the core (``run_middleware=False``) paths: refuse unless admitted.

    Raises:
        PipelineBypassed: no open, unconsumed admission for this server, method and target.
    """
    admission = ADMISSION.get()
    if (
        admission is None
        or admission.server is not server
        or admission.method != method
        or admission.target != target
        or not admission.open
        or admission.consumed
    ):
        logger.warning(
            "securemcp refused %s %r on server %r: it did not pass through the security "
            "pipeline (run_middleware=False or a reordered middleware chain)",
            method,
            target,
            server.name,
        )
        raise PipelineBypassed(reason=f"{method} {target!r} reached the core without admission")
    admission.consumed = True


def recheck_resolved(server: FastMCP, method: str, target: str, component: Any) -> None:
    """Re-check the component FastMCP resolved for an admitted call against what was authorized.

    The pipeline authorizes with cached requirements; this runs on the component the core
    actually executes. If its declared scopes differ (the component changed since it was
    cached), the cache is dropped and the caller must hold the component's real scopes.
    """
    admission = ADMISSION.get()
    if (
        component is None
        or admission is None
        or admission.server is not server
        or admission.method != method
        or admission.target != target
        or not admission.consumed
        or admission.rechecked
    ):
        return
    admission.rechecked = True
    admission.component = component
    try:
        actual = facts_of_cached(component)
    except InvalidScopeDeclaration as exc:
        raise PolicyDenied(reason=str(exc)) from None
    if actual is admission.facts or actual == admission.facts:
        return
    server._securemcp_pipeline.forget_requirements()
    missing = admission.context.principal.missing_scopes(actual.scopes)
    if missing:
        raise InsufficientScope(actual.scopes, missing)
    if admission.policy_active:
        # Tags, annotations or risk changed after policy decided: decide again on the next call.
        raise ComponentChanged(reason=f"{method} {target!r} changed during authorization")


def forwards_to(component: Any, server: FastMCP, target: str) -> bool:
    """Whether ``component`` is a mount's forwarder to ``target`` on ``server``.

    FastMCP's ``mount()`` serves a child's tools, resources, templates and prompts through
    forwarding components (``fastmcp.server.providers.fastmcp_provider``) that keep the child in
    ``_server`` and the child's own name in ``_original_name`` (``_original_uri`` for a
    resource; a template forwards whatever URI matched it), and call the child's public
    ``call_tool``/``read_resource``/``render_prompt`` with exactly that name.
    """
    if component is None or getattr(component, "_server", None) is not server:
        return False
    original = getattr(component, "_original_name", None)
    if original is None:
        original = getattr(component, "_original_uri", None)
    return original is None or original == target
