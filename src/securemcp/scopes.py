"""Scope declarations: validating ``scopes=`` and attaching them to FastMCP components.

Scope tokens follow RFC 6749 §3.3 (``scope-token = 1*( %x21 / %x23-5B / %x5D-7E )``): printable
ASCII without space, double quote or backslash. A component's required scopes are stored in its
MCP ``_meta`` under :data:`SCOPES_META_KEY`, so they survive mounting, namespacing and transforms,
and clients can see which scopes a tool needs before they call it (useful for step-up).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, Final, TypeVar

from securemcp.errors import ScopeDeclarationError

__all__ = [
    "RISK_META_KEY",
    "SCOPES_META_KEY",
    "declared_risk",
    "declared_scopes",
    "validate_risk",
    "validate_scopes",
    "with_scopes",
]

#: ``_meta`` key (MCP reverse-DNS prefix form) under which a component's required scopes live.
SCOPES_META_KEY: Final = "securemcp.dev/scopes"

#: ``_meta`` key holding a component's declared risk class (``read`` ... ``admin``).
RISK_META_KEY: Final = "securemcp.dev/risk"

_RISK_CLASSES: Final = ("read", "write", "external", "destructive", "admin")

#: Attribute set by :func:`with_scopes` on plain functions passed to ``tools=`` / ``add_*``.
FUNCTION_SCOPES_ATTR: Final = "__securemcp_scopes__"

_SCOPE_TOKEN = re.compile(r"[\x21\x23-\x5b\x5d-\x7e]+")

T = TypeVar("T")


def validate_scopes(scopes: object, *, where: str = "scopes") -> tuple[str, ...]:
    """Return ``scopes`` as a sorted tuple of unique scope tokens, or raise a clear error.

    Raises:
        ScopeDeclarationError: ``scopes`` is a bare string, not iterable, or holds anything but
            valid RFC 6749 scope tokens.
    """
    if isinstance(scopes, str | bytes):
        raise ScopeDeclarationError(
            f"{where} must be a list of scope strings, not the single string {scopes!r}; "
            f"write {where}=[{scopes!r}]"
        )
    if isinstance(scopes, Mapping) or not isinstance(scopes, Iterable):
        raise ScopeDeclarationError(
            f"{where} must be a list of scope strings, got {type(scopes).__name__}"
        )
    result: set[str] = set()
    for scope in scopes:
        if not isinstance(scope, str):
            raise ScopeDeclarationError(
                f"{where} must contain only strings, got {type(scope).__name__} {scope!r}"
            )
        if not _SCOPE_TOKEN.fullmatch(scope):
            raise ScopeDeclarationError(
                f"{where} contains {scope!r}, which is not a valid OAuth scope token "
                "(RFC 6749 §3.3: non-empty, printable ASCII, no spaces, quotes or backslashes)"
            )
        result.add(scope)
    return tuple(sorted(result))


def validate_risk(risk: object) -> str:
    """Return ``risk`` as a risk-class name, or raise a clear error naming the valid ones."""
    value = getattr(risk, "value", risk)
    if not isinstance(value, str) or value not in _RISK_CLASSES:
        raise ScopeDeclarationError(f"risk must be one of {', '.join(_RISK_CLASSES)}, got {risk!r}")
    return value


def meta_with_risk(meta: Mapping[str, Any] | None, risk: str) -> dict[str, Any]:
    """A copy of ``meta`` that records the component's declared risk class."""
    merged = dict(meta) if meta else {}
    merged[RISK_META_KEY] = risk
    return merged


def declared_risk(component: Any) -> str | None:
    """The risk class declared on a component with ``risk=``, if any (malformed: ``admin``)."""
    meta = getattr(component, "meta", None)
    if not meta or RISK_META_KEY not in meta:
        return None
    value = meta[RISK_META_KEY]
    return value if value in _RISK_CLASSES else "admin"  # fail towards the strictest class


def meta_with_scopes(meta: Mapping[str, Any] | None, scopes: tuple[str, ...]) -> dict[str, Any]:
    """A copy of ``meta`` that records ``scopes`` as the component's required scopes."""
    merged = dict(meta) if meta else {}
    merged[SCOPES_META_KEY] = list(scopes)
    return merged


class InvalidScopeDeclaration(Exception):
    """A component carries a malformed scope declaration (e.g. from an upstream server)."""


def declared_scopes(component: Any) -> frozenset[str]:
    """The scopes a FastMCP component requires (empty when it declares none).

    Raises:
        InvalidScopeDeclaration: the declaration is malformed; callers must fail closed.
    """
    meta = getattr(component, "meta", None)
    if not meta:
        return frozenset()
    raw = meta.get(SCOPES_META_KEY)
    if raw is None:
        return frozenset()
    if isinstance(raw, str) or not isinstance(raw, list | tuple):
        raise InvalidScopeDeclaration(f"malformed {SCOPES_META_KEY} on {component!r}")
    if not all(isinstance(s, str) and _SCOPE_TOKEN.fullmatch(s) for s in raw):
        raise InvalidScopeDeclaration(f"malformed {SCOPES_META_KEY} on {component!r}")
    return frozenset(raw)


def with_scopes(obj: T, scopes: Iterable[str]) -> T:
    """Declare required scopes on a function or FastMCP component before registering it.

    For use where no decorator keyword is available, e.g. ``FastMCP(tools=[with_scopes(fn,
    ["calc:write"])])``. A FastMCP component (``Tool``, ``Resource``, ``Prompt``, ...) is copied
    with the scopes in its ``_meta``; a plain function is marked and returned unchanged otherwise.
    """
    checked = validate_scopes(scopes)
    model_copy = getattr(obj, "model_copy", None)
    if callable(model_copy) and hasattr(obj, "meta"):
        copied: T = model_copy(update={"meta": meta_with_scopes(obj.meta, checked)})
        return copied
    if callable(obj):
        target = getattr(obj, "__func__", obj)
        setattr(target, FUNCTION_SCOPES_ATTR, checked)
        return obj
    raise ScopeDeclarationError(
        f"with_scopes() needs a function or a FastMCP component, got {type(obj).__name__}"
    )


def function_scopes(fn: Any) -> tuple[str, ...] | None:
    """Scopes recorded on a function by :func:`with_scopes`, if any."""
    target = getattr(fn, "__func__", fn)
    scopes = getattr(target, FUNCTION_SCOPES_ATTR, None)
    return tuple(scopes) if scopes is not None else None
