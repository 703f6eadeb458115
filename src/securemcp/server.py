"""``securemcp.FastMCP``: a drop-in ``fastmcp.FastMCP`` that runs every call through securemcp.

Changing ``from fastmcp import FastMCP`` to ``from securemcp import FastMCP`` is the whole
migration. Every FastMCP constructor argument and decorator form keeps working; ``tool``,
``resource``, ``prompt``, the ``add_*`` methods and ``tools=`` additionally accept ``scopes=``.
The :class:`~securemcp.pipeline.SecurityPipeline` is installed as the outermost middleware and
kept there whatever the author does to ``middleware``; the core execution paths refuse calls the
pipeline did not admit.
"""

from __future__ import annotations

import difflib
import inspect
import logging
import os
import weakref
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from typing import Any, SupportsIndex, TypeVar, cast, overload

import fastmcp
from fastmcp.decorators import get_fastmcp_meta
from fastmcp.server.middleware import Middleware
from fastmcp.tools import Tool

from securemcp import _dereference_listings
from securemcp._component_auth import AdmitsUncheckedComponents
from securemcp._component_auth import install as _admit_unchecked_components
from securemcp._direct_lookups import DirectLookups
from securemcp._request_spans import install_core_spans, install_seam_spans, install_trace_meta
from securemcp._session_state import SkipsAbsentVisibilityRules
from securemcp._unrecorded_spans import quiet_core_path
from securemcp.admission import recheck_resolved, require_admission
from securemcp.auth.resource import ProtectedResource
from securemcp.auth.stdio import StdioIdentity
from securemcp.errors import ConfigurationError
from securemcp.identity import development_principal, is_production
from securemcp.pipeline import SecurityPipeline
from securemcp.scopes import (
    function_scopes,
    meta_with_risk,
    meta_with_scopes,
    validate_risk,
    validate_scopes,
    with_scopes,
)

__all__ = ["FastMCP", "Server"]

logger = logging.getLogger("securemcp")

F = TypeVar("F", bound=Callable[..., Any])

_SECUREMCP_KEYWORDS = (
    "hide_unauthorized",
    "disclose_required_scopes",
    "development_scopes",
    "stdio_identity",
    "policy",
    "rate_limits",
    "approvals",
    "audit",
    "protected_resource",
)


def _fastmcp_keywords() -> tuple[str, ...]:
    parameters = inspect.signature(fastmcp.FastMCP.__init__).parameters
    return tuple(
        name for name, p in parameters.items() if name != "self" and p.kind != p.VAR_KEYWORD
    )


def _fastmcp_removed_keywords() -> frozenset[str]:
    """Keywords FastMCP removed in 4.x; FastMCP itself explains how to migrate each one."""
    from fastmcp.server import server as fastmcp_server

    return frozenset(getattr(fastmcp_server, "_REMOVED_KWARGS", {}))


class _PipelineFirst(list[Middleware]):
    """A middleware list that always keeps securemcp's pipeline at index 0 (outermost)."""

    def __init__(self, pipeline: SecurityPipeline, items: Iterable[Middleware] = ()) -> None:
        self._pipeline = pipeline
        super().__init__(m for m in items if m is not pipeline)
        super().insert(0, pipeline)

    def _restore(self) -> None:
        while self._pipeline in self:
            super().remove(self._pipeline)
        super().insert(0, self._pipeline)

    def append(self, item: Middleware) -> None:
        super().append(item)
        self._restore()

    def extend(self, items: Iterable[Middleware]) -> None:
        super().extend(items)
        self._restore()

    def insert(self, index: SupportsIndex, item: Middleware) -> None:
        super().insert(index, item)
        self._restore()

    def __setitem__(self, index: Any, value: Any) -> None:
        super().__setitem__(index, value)
        self._restore()

    def __delitem__(self, index: Any) -> None:
        super().__delitem__(index)
        self._restore()

    def __iadd__(self, items: Iterable[Middleware]) -> _PipelineFirst:  # type: ignore[override,misc]
        super().extend(items)
        self._restore()
        return self

    def __imul__(self, count: SupportsIndex) -> _PipelineFirst:
        super().__imul__(count)
        self._restore()
        return self

    def remove(self, item: Middleware) -> None:
        super().remove(item)
        self._restore()

    def pop(self, index: SupportsIndex = -1) -> Middleware:
        item = super().pop(index)
        self._restore()
        return item

    def clear(self) -> None:
        super().clear()
        self._restore()

    def sort(self, *args: Any, **kwargs: Any) -> None:
        super().sort(*args, **kwargs)
        self._restore()

    def reverse(self) -> None:
        super().reverse()
        self._restore()


class FastMCP(
    SkipsAbsentVisibilityRules, AdmitsUncheckedComponents, fastmcp.FastMCP[Any], DirectLookups
):
    """A FastMCP server whose every tool call, resource read and prompt runs through securemcp.

    Takes every ``fastmcp.FastMCP`` argument, plus:

    Args:
        hide_unauthorized: filter ``*/list`` results down to what the caller may use (default on).
        disclose_required_scopes: on a missing scope, name the scopes the call needs (so clients
            can step up, RFC 6750 §3.1). When ``False`` the caller is told the target does not
            exist instead, revealing nothing about it.
        development_scopes: scopes of the development principal used when no verifier is set
            (default: every scope, or ``SECUREMCP_DEV_SCOPES``). Never used in production.
        stdio_identity: where a stdio server finds its caller's credential (default: the
            ``SECUREMCP_ACCESS_TOKEN`` environment variable), verified by ``auth=``.
        policy: a policy hook (function, object or combinator from ``securemcp.policy``) or a
            path to a TOML rules file. Without one, scopes alone decide.
        rate_limits: a ``securemcp.policy.RateLimiter`` or the ``RateLimit`` rules for an
            in-memory one.
        approvals: where approvals live (an ``ApprovalGate``/``ApprovalStore`` or a store spec);
            default: ``./.securemcp/approvals.sqlite3``, opened when first needed.
        audit: the audit log: ``None`` (default) for the local log in ``.securemcp/audit``
            (``$SECUREMCP_AUDIT_DIR``), a directory, a ``securemcp.audit.AuditLog``, or ``False``
            for none (not recommended).
        protected_resource: how this server presents itself as an OAuth protected resource over
            HTTP (RFC 9728 metadata, canonical URI, trusted proxies, allowed origins); default:
            derived from the verifier.
    """

    def __init__(
        self,
        name: str | None = None,
        instructions: str | None = None,
        *,
        hide_unauthorized: bool = True,
        disclose_required_scopes: bool = True,
        development_scopes: Sequence[str] | None = None,
        stdio_identity: StdioIdentity | None = None,
        policy: Any = None,
        rate_limits: Any = None,
        approvals: Any = None,
        audit: Any = None,
        protected_resource: ProtectedResource | None = None,
        tools: Sequence[Any] | None = None,
        lifespan: Any = None,
        **kwargs: Any,
    ) -> None:
        unknown = [
            k
            for k in kwargs
            if k not in _fastmcp_keywords() and k not in _fastmcp_removed_keywords()
        ]
        if unknown:
            known = (*_SECUREMCP_KEYWORDS, *_fastmcp_keywords())
            hints = []
            for key in unknown:
                close = difflib.get_close_matches(key, known, n=1)
                hints.append(f"{key!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            raise TypeError(
                f"securemcp.FastMCP() got unexpected keyword argument(s): {', '.join(hints)}. "
                f"securemcp adds {', '.join(_SECUREMCP_KEYWORDS)} to FastMCP's own keywords."
            )
        if development_scopes is not None:
            development_scopes = validate_scopes(development_scopes, where="development_scopes")
        self._securemcp_parents: weakref.WeakSet[FastMCP] = weakref.WeakSet()
        self._securemcp_stdio = stdio_identity or StdioIdentity()
        self._securemcp_protected_resource = protected_resource
        enforcement = None
        if policy is not None or rate_limits is not None or approvals is not None:
            from securemcp.policy.enforcement import PolicyEnforcement

            enforcement = PolicyEnforcement(
                policy=policy, rate_limits=rate_limits, approvals=approvals
            )
        self._securemcp_pipeline = SecurityPipeline(
            self,
            hide_unauthorized=hide_unauthorized,
            disclose_required_scopes=disclose_required_scopes,
            development_scopes=development_scopes,
            enforcement=enforcement,
        )
        from securemcp.auditing import resolve_audit_log

        audit_log = resolve_audit_log(audit)
        mask = kwargs.get("mask_error_details")
        if mask is None and "mask_error_details" in fastmcp.settings.model_fields_set:
            mask = fastmcp.settings.mask_error_details  # the operator's FASTMCP_ setting
        super().__init__(name, instructions, lifespan=self._wrap_lifespan(lifespan), **kwargs)
        self.__dict__["_securemcp_mask_error_details"] = mask
        install_seam_spans(self)
        install_core_spans()
        install_trace_meta()
        _dereference_listings.install(self)
        _admit_unchecked_components()
        if audit_log is not None:
            from securemcp.auditing import CallAuditor

            self._securemcp_pipeline.auditor = CallAuditor(audit_log, self.name)
            if enforcement is not None:
                enforcement.connect_audit(audit_log)
        for item in tools or ():
            self.add_tool(item)

    # --- error details ------------------------------------------------------------------

    @property
    def _mask_error_details(self) -> bool:
        """Whether the text of a component's exception is kept from the client.

        FastMCP relays it (``Error calling tool 'x': <message>``) unless told to mask it. Unless
        the author (``mask_error_details=``) or the operator (``FASTMCP_MASK_ERROR_DETAILS``)
        chose, a server with verified callers or under ``SECUREMCP_ENV=production`` masks it
        (guarantee 3: internal details never reach the client); a development server, whose
        only client is its developer, shows it. ``ToolError``/``ResourceError``/``PromptError``
        messages, raised on purpose, reach the client either way.
        """
        chosen: bool | None = self.__dict__.get("_securemcp_mask_error_details")
        if chosen is not None:
            return chosen
        return self._securemcp_pipeline.verifier() is not None or is_production()

    @_mask_error_details.setter
    def _mask_error_details(self, value: bool) -> None:
        self.__dict__["_securemcp_mask_error_details"] = value

    # --- the middleware list: pipeline always first ----------------------------------------

    @property
    def middleware(self) -> list[Middleware]:
        return self._securemcp_middleware

    @middleware.setter
    def middleware(self, value: Iterable[Middleware]) -> None:
        self._securemcp_middleware = _PipelineFirst(self._securemcp_pipeline, value)

    # --- start-up -------------------------------------------------------------------------

    def _wrap_lifespan(self, user_lifespan: Any) -> Callable[[Any], Any]:
        @asynccontextmanager
        async def securemcp_lifespan(server: Any) -> AsyncIterator[Any]:
            self.check_startup()
            if user_lifespan is None:
                yield {}
            else:
                async with user_lifespan(server) as result:
                    yield result

        return securemcp_lifespan

    def check_startup(self) -> None:
        """Refuse to start insecurely; warn loudly about development identity.

        Raises:
            ConfigurationError: no verifier is configured and ``SECUREMCP_ENV=production``.
        """
        self._check_audit_startup()
        verifier = self._securemcp_pipeline.verifier()
        if verifier is not None:
            self._check_test_identity(verifier)
            return
        if is_production():
            raise ConfigurationError(
                f"securemcp server {self.name!r} has no identity verifier and "
                "SECUREMCP_ENV=production: refusing to start with the unverified development "
                "identity. Pass auth=securemcp.auth.JWTVerifier(issuer=..., audience=...)."
            )
        principal = development_principal(self._securemcp_pipeline._development_scopes)
        logger.warning(
            "\n%s\n  securemcp DEVELOPMENT IDENTITY: server %r has no verifier configured.\n"
            "  Every call runs as the UNVERIFIED principal %r with scopes %s.\n"
            "  Configure auth=securemcp.auth.JWTVerifier(...) before exposing this server;\n"
            "  SECUREMCP_ENV=production refuses to start like this.\n%s",
            "!" * 78,
            self.name,
            principal.subject,
            " ".join(sorted(principal.scopes)),
            "!" * 78,
        )

    def _check_test_identity(self, verifier: Any) -> None:
        """Refuse to serve production traffic trusting a ``FakeIdentityProvider``.

        Its tokens are signed by keys created in this process for tests. Under
        ``SECUREMCP_ENV=production`` such a server starts only inside a pytest test (which is
        how ``securemcp.testing``'s ``production_mode`` fixture tests production behaviour).
        """
        if not getattr(verifier, "_securemcp_test_identity", False) or not is_production():
            return
        if "PYTEST_CURRENT_TEST" in os.environ:
            logger.warning(
                "securemcp server %r trusts a FakeIdentityProvider under SECUREMCP_ENV=production "
                "(allowed inside a test only)",
                self.name,
            )
            return
        raise ConfigurationError(
            f"securemcp server {self.name!r} trusts a securemcp.testing.FakeIdentityProvider "
            "(test identity) and SECUREMCP_ENV=production: refusing to start. Configure "
            "auth=securemcp.auth.JWTVerifier(issuer=..., audience=...) for your identity provider."
        )

    async def run_stdio_async(self, *args: Any, **kwargs: Any) -> None:
        """FastMCP's stdio runner, after verifying the stdio credential (refuses to start)."""
        from securemcp.auth.stdio import check_stdio_startup

        await check_stdio_startup(self)
        await super().run_stdio_async(*args, **kwargs)

    def http_app(self, *args: Any, **kwargs: Any) -> Any:
        """FastMCP's ``http_app``, with securemcp's HTTP protections around it."""
        from securemcp.auth.http import protect_http_app

        return protect_http_app(self, super().http_app(*args, **kwargs))

    def _check_audit_startup(self) -> None:
        """Open the audit log now, so an unwritable log stops start-up instead of every call."""
        auditor = self._securemcp_pipeline.auditor
        if auditor is None:
            logger.warning(
                "securemcp server %r runs with audit=False: calls are NOT audited.", self.name
            )
            return
        if not auditor.log.opened:
            from securemcp.audit import AuditUnavailable

            try:
                auditor.log.open()
            except Exception as exc:
                reason = exc.reason if isinstance(exc, AuditUnavailable) else str(exc)
                raise ConfigurationError(
                    f"securemcp server {self.name!r} cannot open its audit log in "
                    f"{auditor.log.directory}: {reason}. Pass audit=<writable folder> or set "
                    "SECUREMCP_AUDIT_DIR."
                ) from exc
        enforcement = self._securemcp_pipeline.enforcement
        if enforcement is not None:
            enforcement.audit_initial_policy()

    # --- registration: scopes= on every path ----------------------------------------------

    def _registration_changed(self) -> None:
        pipeline = getattr(self, "_securemcp_pipeline", None)
        if pipeline is not None:
            pipeline.forget_requirements()

    @overload
    def tool(
        self,
        name_or_fn: F,
        *,
        scopes: Iterable[str] | None = None,
        risk: str | None = None,
        **kwargs: Any,
    ) -> F: ...

    @overload
    def tool(
        self,
        name_or_fn: str | None = None,
        *,
        scopes: Iterable[str] | None = None,
        risk: str | None = None,
        **kwargs: Any,
    ) -> Callable[[F], F]: ...

    def tool(
        self,
        name_or_fn: Any = None,
        *,
        scopes: Iterable[str] | None = None,
        risk: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """FastMCP's ``tool`` decorator, every form, plus ``scopes=[...]`` and ``risk=``.

        ``risk`` declares the tool's risk class for policy (``read``, ``write``, ``external``,
        ``destructive``, ``admin``); without it the class is derived from MCP annotations.
        """
        if risk is not None:
            kwargs["meta"] = meta_with_risk(kwargs.get("meta"), validate_risk(risk))
        return self._decorate(super().tool, name_or_fn, scopes, kwargs)

    def _decorate(
        self,
        register: Callable[..., Any],
        name_or_fn: Any,
        scopes: Iterable[str] | None,
        kwargs: dict[str, Any],
    ) -> Any:
        """Shared body of ``tool``/``prompt``: every FastMCP calling form, plus scopes.

        The decorator-factory forms (``@tool()``, ``@tool("name")``) return a decorator of our
        own, so scopes recorded on the function by :func:`with_scopes` are seen when it arrives.
        """
        declared = validate_scopes(scopes) if scopes is not None else None
        if not inspect.isroutine(name_or_fn):
            if isinstance(name_or_fn, str) and kwargs.get("name") is None:
                kwargs = {**kwargs, "name": name_or_fn}
            elif name_or_fn is not None:  # FastMCP's own error for unsupported first arguments
                return register(name_or_fn, **kwargs)

            def decorator(fn: Any) -> Any:
                return self._decorate(register, fn, declared, kwargs)

            return decorator
        if declared is None:
            declared = function_scopes(name_or_fn)
        if declared is not None:
            kwargs = {**kwargs, "meta": meta_with_scopes(kwargs.get("meta"), declared)}
        self._registration_changed()
        return register(name_or_fn, **kwargs)

    def resource(
        self, uri: str, *, scopes: Iterable[str] | None = None, **kwargs: Any
    ) -> Callable[[F], F]:
        """FastMCP's ``resource`` decorator (URIs and URI templates) plus ``scopes=[...]``."""
        if scopes is not None:
            kwargs["meta"] = meta_with_scopes(kwargs.get("meta"), validate_scopes(scopes))
        self._registration_changed()
        return super().resource(uri, **kwargs)

    @overload
    def prompt(self, name_or_fn: F, *, scopes: Iterable[str] | None = None, **kwargs: Any) -> F: ...

    @overload
    def prompt(
        self, name_or_fn: str | None = None, *, scopes: Iterable[str] | None = None, **kwargs: Any
    ) -> Callable[[F], F]: ...

    def prompt(
        self, name_or_fn: Any = None, *, scopes: Iterable[str] | None = None, **kwargs: Any
    ) -> Any:
        """FastMCP's ``prompt`` decorator, every form, plus ``scopes=[...]``."""
        return self._decorate(super().prompt, name_or_fn, scopes, kwargs)

    def _scoped(self, item: Any, scopes: Iterable[str] | None) -> Any:
        """Apply ``scopes=`` (or scopes recorded by ``with_scopes``) to a component or function."""
        declared = validate_scopes(scopes) if scopes is not None else function_scopes(item)
        if declared is None:
            return item
        if hasattr(item, "model_copy"):
            return with_scopes(item, declared)
        return None  # a function: the caller registers it with _register_function

    def _register_function(
        self, register: Callable[[Any], Any], fn: Any, declared: tuple[str, ...]
    ) -> Any:
        """Register a function with scopes, without changing the function for anyone else.

        A function decorated with FastMCP's standalone ``@tool``/``@prompt`` carries its settings
        in ``__fastmcp__``; the scoped copy is in place only while FastMCP converts it.
        """
        fmeta = get_fastmcp_meta(fn)
        if fmeta is None:
            return None
        target = getattr(fn, "__func__", fn)
        original = target.__dict__.get("__fastmcp__")
        target.__fastmcp__ = replace(fmeta, meta=meta_with_scopes(fmeta.meta, declared))
        try:
            return register(fn)
        finally:
            if original is None:
                del target.__fastmcp__
            else:
                target.__fastmcp__ = original

    def add_tool(self, tool: Any, *, scopes: Iterable[str] | None = None) -> Tool:
        """FastMCP's ``add_tool`` plus ``scopes=[...]``."""
        self._registration_changed()
        scoped = self._scoped(tool, scopes)
        if scoped is None:
            declared = validate_scopes(scopes) if scopes is not None else function_scopes(tool)
            registered = self._register_function(super().add_tool, tool, declared or ())
            if registered is not None:
                return cast(Tool, registered)
            scoped = Tool.from_function(tool, meta=meta_with_scopes(None, declared or ()))
        return super().add_tool(scoped)

    def add_resource(self, resource: Any, *, scopes: Iterable[str] | None = None) -> Any:
        """FastMCP's ``add_resource`` plus ``scopes=[...]``."""
        self._registration_changed()
        scoped = self._scoped(resource, scopes)
        if scoped is None:
            declared = validate_scopes(scopes) if scopes is not None else function_scopes(resource)
            registered = self._register_function(super().add_resource, resource, declared or ())
            if registered is not None:
                return registered
            raise ConfigurationError(
                "add_resource() needs a Resource or a function decorated with "
                "fastmcp.resources.resource; use @mcp.resource(uri, scopes=[...]) for functions"
            )
        return super().add_resource(scoped)

    def add_template(self, template: Any, *, scopes: Iterable[str] | None = None) -> Any:
        """FastMCP's ``add_template`` plus ``scopes=[...]``."""
        self._registration_changed()
        return super().add_template(self._scoped(template, scopes) or template)

    def add_prompt(self, prompt: Any, *, scopes: Iterable[str] | None = None) -> Any:
        """FastMCP's ``add_prompt`` plus ``scopes=[...]``."""
        self._registration_changed()
        scoped = self._scoped(prompt, scopes)
        if scoped is None:
            from fastmcp.prompts import Prompt

            declared = validate_scopes(scopes) if scopes is not None else function_scopes(prompt)
            registered = self._register_function(super().add_prompt, prompt, declared or ())
            if registered is not None:
                return registered
            scoped = Prompt.from_function(prompt, meta=meta_with_scopes(None, declared or ()))
        return super().add_prompt(scoped)

    def mount(
        self,
        server: fastmcp.FastMCP[Any],
        namespace: str | None = None,
        tool_names: dict[str, str] | None = None,
    ) -> None:
        """FastMCP's ``mount``; a mounted securemcp server trusts this server's verified caller."""
        super().mount(server, namespace, tool_names)
        self._registration_changed()
        if isinstance(server, FastMCP):
            server._securemcp_parents.add(self)

    def add_provider(self, provider: Any, *args: Any, **kwargs: Any) -> None:
        super().add_provider(provider, *args, **kwargs)
        self._registration_changed()

    def add_transform(self, transform: Any) -> None:
        super().add_transform(transform)
        self._registration_changed()

    def enable(self, *args: Any, **kwargs: Any) -> Any:
        self._registration_changed()
        return super().enable(*args, **kwargs)

    def disable(self, *args: Any, **kwargs: Any) -> Any:
        self._registration_changed()
        return super().disable(*args, **kwargs)

    # --- core paths: only run what the pipeline admitted ----------------------------------
    # (and skip building FastMCP's span while no SDK could record it: _unrecorded_spans)

    async def call_tool(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        version: Any = None,
        run_middleware: bool = True,
    ) -> Any:
        if not run_middleware:
            require_admission(self, "tools/call", name)
            with quiet_core_path():
                return await super().call_tool(
                    name, arguments, version=version, run_middleware=False
                )
        return await super().call_tool(
            name, arguments, version=version, run_middleware=run_middleware
        )

    async def read_resource(
        self, uri: Any, *, version: Any = None, run_middleware: bool = True
    ) -> Any:
        if not run_middleware:
            require_admission(self, "resources/read", str(uri))
            with quiet_core_path():
                return await super().read_resource(uri, version=version, run_middleware=False)
        return await super().read_resource(uri, version=version, run_middleware=run_middleware)

    async def render_prompt(
        self,
        name: str,
        arguments: dict[str, Any] | None = None,
        *,
        version: Any = None,
        run_middleware: bool = True,
    ) -> Any:
        if not run_middleware:
            require_admission(self, "prompts/get", name)
            with quiet_core_path():
                return await super().render_prompt(
                    name, arguments, version=version, run_middleware=False
                )
        return await super().render_prompt(
            name, arguments, version=version, run_middleware=run_middleware
        )

    async def get_tool(self, name: str, version: Any = None) -> Any:
        tool = await super().get_tool(name, version)
        recheck_resolved(self, "tools/call", name, tool)
        return tool

    async def get_prompt(self, name: str, version: Any = None) -> Any:
        prompt = await super().get_prompt(name, version)
        recheck_resolved(self, "prompts/get", name, prompt)
        return prompt

    async def get_resource_template(self, uri: str, version: Any = None) -> Any:
        template = await super().get_resource_template(uri, version)
        recheck_resolved(self, "resources/read", uri, template)
        return template

    async def _lookup_resource(self, uri: str, version: Any = None) -> tuple[Any, bool]:
        # FastMCP's read_resource core resolves a concrete resource here, not via get_resource.
        resource, exists = await super()._lookup_resource(uri, version)
        recheck_resolved(self, "resources/read", uri, resource)
        return resource, exists


#: The same class under the name used by ``securemcp.Server(name=...)``.
Server = FastMCP
