"""``create_proxy``: a securemcp server in front of third-party MCP servers.

The proxy is an ordinary :class:`securemcp.FastMCP` server whose components come from upstream
servers (one :class:`~securemcp.proxy.components.UpstreamProvider` per upstream), so every
proxied call runs the same pipeline as a local tool: verified identity, scopes, policy,
approvals, rate limits, the audit log's decision and outcome records and telemetry. A call the
pipeline refuses never reaches the upstream.

Per-component settings from the configuration file that go beyond scopes (``approval``,
``max_result_bytes``, ``arguments`` bounds, ``deny``) become a policy,
:class:`ConfiguredRules`, combined with ``all_of`` with the proxy's rules file and any
``policy=`` given in Python: the strictest answer wins. The rules are resolved through the
proxy's :class:`~securemcp.proxy.components.ProxyCatalog`, by the component that serves each
call (``timeout_seconds`` is applied by the component itself, for every kind).
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from securemcp.errors import ConfigurationError
from securemcp.policy.decision import Constraints, Decision
from securemcp.policy.request import CallRequest
from securemcp.proxy.components import ProxyCatalog, UpstreamProvider, exposure_of
from securemcp.proxy.config import ProxyConfig, load_config
from securemcp.proxy.credentials import UpstreamAuth, auth_from_config
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.upstream import Upstream

if TYPE_CHECKING:
    from securemcp.server import FastMCP

__all__ = ["ConfiguredRules", "create_proxy"]

logger = logging.getLogger("securemcp.proxy")


class ConfiguredRules:
    """The configuration file's per-component policy (approval, bounds, result size, deny).

    A call is judged by the upstream component(s) that serve it, never by the client's spelling
    of its name or URI: rules are looked up by (upstream, kind, key) through the proxy's
    catalog. A read is judged on the URI the upstream receives, combining strictest-wins the
    rules of every configured resource and template that URI may name (and of every template
    that could serve the read); a pinned resource the configuration hides is refused however
    the read reaches it, and one it exposes adds its scopes. A name two components claim is
    refused. Components the file lists with nothing beyond scopes, and unlisted components
    exposed by opt-in, are allowed here (scopes are checked by the pipeline before any policy).
    """

    name = "proxy-config"

    def __init__(self, catalog: ProxyCatalog) -> None:
        self._catalog = catalog

    def evaluate(self, request: CallRequest) -> Decision:
        label = f"proxy-config:{request.target}"
        rules = self._catalog.rules_for(request.method, request.target)
        raw = request.uri
        if raw is not None and raw != request.target:
            # A read's target is the URI decoded (so spellings share rules); FastMCP matches
            # templates on the URI as sent (``a%2Fb`` fills one parameter, ``a/b`` matches
            # nothing): judge both, strictest-wins, so neither spelling escapes a rule.
            as_sent = self._catalog.rules_for(request.method, raw)
            if as_sent is not None:
                if rules is None:
                    rules = as_sent
                else:
                    rules.merge(as_sent)
        if rules is None:  # not an upstream component (a tool the proxy defines itself)
            return Decision.allow(rule=label)
        if rules.denied:
            return Decision.deny(
                f"denied by the proxy configuration: {rules.denied[0]}", rule=label
            )
        missing = request.principal.missing_scopes(rules.scopes)
        if missing:
            return Decision.deny(
                f"the resource read needs scope(s) {' '.join(sorted(missing))}", rule=label
            )
        constraints = Constraints(
            max_result_bytes=rules.max_result_bytes, arguments=dict(rules.arguments)
        )
        problems = constraints.violations(request.arguments) if constraints.arguments else ()
        if problems:  # refused outright: no approver is asked about a call that cannot run
            return Decision.deny(f"constraint violated: {'; '.join(problems)}", rule=label)
        if rules.approval:
            return Decision.require_approval(
                "the proxy configuration requires approval", rule=label, constraints=constraints
            )
        if constraints:
            return Decision.constrain(constraints=constraints, rule=label)
        return Decision.allow(rule=label)


def _credential_reader(server: FastMCP) -> Any:
    def credential() -> str | None:
        from fastmcp.server.dependencies import get_access_token

        token = get_access_token()
        if token is not None:
            return token.token
        return server._securemcp_stdio.credential(None)

    return credential


def _identity_verifier(config: ProxyConfig) -> Any:
    if config.identity is None:
        return None
    from securemcp.auth.jwt import JWTVerifier

    identity = config.identity
    kwargs: dict[str, Any] = {}
    if identity.jwks_uri is not None:
        kwargs["jwks_uri"] = identity.jwks_uri
    if identity.allow_insecure_loopback:
        kwargs["allow_insecure_loopback"] = True
    return JWTVerifier(issuer=identity.issuer, audience=identity.audience, **kwargs)


def create_proxy(
    config: ProxyConfig | str | os.PathLike[str],
    *,
    lockfile: str | os.PathLike[str] | None = None,
    upstream_auth: Mapping[str, UpstreamAuth] | None = None,
    policy: Any = None,
    **server_kwargs: Any,
) -> FastMCP:
    """A securemcp server that re-exposes the configured upstream MCP servers.

    Args:
        config: a :class:`ProxyConfig` or the path of a proxy configuration file.
        lockfile: overrides the configuration's lockfile path.
        upstream_auth: per-upstream credentials built in Python (overrides the file's ``auth``).
        policy: an extra policy, combined with the file's rules (strictest wins).
        **server_kwargs: passed to :class:`securemcp.FastMCP` (``auth=``, ``audit=``,
            ``rate_limits=``, ``approvals=``, ...). ``auth=`` defaults to a
            :class:`~securemcp.auth.JWTVerifier` built from the file's ``[identity]``.

    Raises:
        ConfigurationError: invalid configuration, lockfile, or two upstreams exposing the
            same name.
    """
    from securemcp.policy.hooks import all_of
    from securemcp.server import FastMCP

    if not isinstance(config, ProxyConfig):
        config = load_config(config)
    catalog = ProxyCatalog()
    policies: list[Any] = []
    if config.policy is not None:
        from securemcp.policy.rules import RulesPolicy

        policies.append(RulesPolicy.from_file(config.policy))
    if policy is not None:
        policies.append(policy)

    upstreams: list[Upstream] = []

    @asynccontextmanager
    async def close_upstreams(server: Any) -> AsyncIterator[dict[str, Any]]:
        try:
            yield {}
        finally:
            for upstream in upstreams:
                await upstream.aclose()

    server_kwargs.setdefault("auth", _identity_verifier(config))
    user_lifespan = server_kwargs.pop("lifespan", None)
    if user_lifespan is not None:
        raise ConfigurationError("create_proxy() manages the server lifespan itself")
    server = FastMCP(
        config.name,
        config.instructions,
        policy=all_of(ConfiguredRules(catalog), *policies, name="proxy"),
        lifespan=close_upstreams,
        **server_kwargs,
    )
    auditor = server._securemcp_pipeline.auditor

    def on_event(event: str, fields: dict[str, Any]) -> None:
        if auditor is not None:
            auditor.log.config_change(what=event, details=fields)

    pins = PinState(lockfile if lockfile is not None else config.lockfile, on_event=on_event)
    credential = _credential_reader(server)
    providers: list[UpstreamProvider] = []
    for upstream_config in config.upstreams:
        auth = (upstream_auth or {}).get(upstream_config.name) or auth_from_config(
            upstream_config.auth
        )
        upstream = Upstream(
            upstream_config,
            auth,
            pins,
            credential_of_call=credential,
            # An upstream's error text can quote arguments: logged only where they are recorded.
            record_arguments=auditor is not None and auditor.log.record_arguments,
        )
        upstreams.append(upstream)
        providers.append(
            UpstreamProvider(upstream, config.namespace_of(upstream_config), registry=catalog)
        )
    problems = catalog.collisions()  # re-checked on every rebuild; at start-up, refused
    if problems:
        raise ConfigurationError(f"{problems[0]}; give each a distinct name or namespace")
    for provider in providers:
        server.add_provider(provider)
        _report_exposure(provider.upstream, provider)
    server._securemcp_upstreams = upstreams  # type: ignore[attr-defined]
    return server


def _report_exposure(upstream: Upstream, provider: UpstreamProvider) -> None:
    lock = upstream.pins.upstream(upstream.name)
    if lock is None:
        logger.warning(
            "securemcp proxy: upstream %r has no pins in %s; none of its components are exposed "
            "until you run `securemcp proxy lock`",
            upstream.name,
            upstream.pins.path,
        )
        return
    hidden = [pin.key for pin in lock.entries.values() if exposure_of(upstream.config, pin) is None]
    if hidden:
        logger.info(
            "securemcp proxy: upstream %r: %d pinned component(s) not listed in the "
            "configuration are hidden and denied",
            upstream.name,
            len(hidden),
        )
    for kind, key in upstream.config.rules:
        if lock.get(kind, key) is None:  # type: ignore[arg-type]
            logger.warning(
                "securemcp proxy: upstream %r: configured %s %r is not in the lockfile; it stays "
                "unavailable until it is locked",
                upstream.name,
                kind,
                key,
            )
