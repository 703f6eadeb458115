"""``create_proxy``: a securemcp server in front of third-party MCP servers.

The proxy is an ordinary :class:`securemcp.FastMCP` server whose components come from upstream
servers (one :class:`~securemcp.proxy.components.UpstreamProvider` per upstream), so every
proxied call runs the same pipeline as a local tool: verified identity, scopes, policy,
approvals, rate limits, the audit log's decision and outcome records and telemetry. A call the
pipeline refuses never reaches the upstream.

Per-component settings from the configuration file that go beyond scopes (``approval``,
``max_result_bytes``, ``arguments`` bounds, ``deny``) become a policy,
:class:`ConfiguredRules`, combined with ``all_of`` with the proxy's rules file and any
``policy=`` given in Python: the strictest answer wins.
"""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from fastmcp.resources.template import match_uri_template

from securemcp.errors import ConfigurationError
from securemcp.policy.decision import Decision
from securemcp.policy.request import CallRequest
from securemcp.proxy.components import UpstreamProvider, exposure_of, namespaced_uri
from securemcp.proxy.config import ComponentRule, ProxyConfig, load_config
from securemcp.proxy.credentials import UpstreamAuth, auth_from_config
from securemcp.proxy.pinstate import PinState
from securemcp.proxy.upstream import Upstream

if TYPE_CHECKING:
    from securemcp.server import FastMCP

__all__ = ["ConfiguredRules", "create_proxy"]

logger = logging.getLogger("securemcp.proxy")

_METHOD_OF_KIND = {"tool": "tools/call", "prompt": "prompts/get"}


class ConfiguredRules:
    """The configuration file's per-component policy (approval, bounds, result size, deny).

    Components the file lists with nothing beyond scopes, and unlisted components exposed by
    opt-in, are allowed here (scopes are checked by the pipeline before any policy).
    """

    name = "proxy-config"

    def __init__(
        self,
        rules: Mapping[tuple[str, str], ComponentRule],
        templates: Sequence[tuple[str, ComponentRule]] = (),
    ) -> None:
        self._rules = dict(rules)
        self._templates = tuple(templates)

    def _rule(self, request: CallRequest) -> ComponentRule | None:
        """The rule for this call: its component's, or for a read of a URI no resource rule
        names, the rule of the first configured template the URI matches (a concrete resource
        shadows templates, as in FastMCP)."""
        rule = self._rules.get((request.method, request.target))
        if rule is None and request.method == "resources/read":
            for template, template_rule in self._templates:
                if match_uri_template(request.target, template) is not None:
                    return template_rule
        return rule

    def evaluate(self, request: CallRequest) -> Decision:
        rule = self._rule(request)
        label = f"proxy-config:{request.target}"
        if rule is None:
            return Decision.allow(rule=label)
        if rule.deny:
            return Decision.deny("denied by the proxy configuration", rule=label)
        if rule.approval:
            return Decision.require_approval(
                "the proxy configuration requires approval", rule=label
            )
        if rule.max_result_bytes is not None or rule.arguments:
            return Decision.constrain(
                max_result_bytes=rule.max_result_bytes, arguments=rule.arguments, rule=label
            )
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
    rules: dict[tuple[str, str], ComponentRule] = {}
    templates: list[tuple[str, ComponentRule]] = []
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
    for upstream_config in config.upstreams:
        namespace = config.namespace_of(upstream_config)
        for (kind, key), rule in upstream_config.rules.items():
            if not rule.has_policy:
                continue
            if kind == "resource":
                rules[("resources/read", namespaced_uri(namespace, key))] = rule
            elif kind == "template":
                templates.append((namespaced_uri(namespace, key), rule))
            else:
                method = _METHOD_OF_KIND[kind]
                rules[(method, f"{namespace}_{key}" if namespace else key)] = rule
    server = FastMCP(
        config.name,
        config.instructions,
        policy=all_of(ConfiguredRules(rules, templates), *policies, name="proxy"),
        lifespan=close_upstreams,
        **server_kwargs,
    )
    auditor = server._securemcp_pipeline.auditor

    def on_event(event: str, fields: dict[str, Any]) -> None:
        if auditor is not None:
            auditor.log.config_change(what=event, details=fields)

    pins = PinState(lockfile if lockfile is not None else config.lockfile, on_event=on_event)
    credential = _credential_reader(server)
    exposed: dict[tuple[str, str], str] = {}
    for upstream_config in config.upstreams:
        auth = (upstream_auth or {}).get(upstream_config.name) or auth_from_config(
            upstream_config.auth
        )
        upstream = Upstream(upstream_config, auth, pins, credential_of_call=credential)
        upstreams.append(upstream)
        provider = UpstreamProvider(upstream, config.namespace_of(upstream_config))
        catalog = provider.catalog()
        for kind, names in (
            ("tool", catalog.tools),
            ("prompt", catalog.prompts),
            ("resource", catalog.resources),
            ("template", catalog.templates),
        ):
            for name in names:
                owner = exposed.setdefault((kind, name), upstream_config.name)
                if owner != upstream_config.name:
                    raise ConfigurationError(
                        f"upstreams {owner!r} and {upstream_config.name!r} both expose {kind} "
                        f"{name!r}; give one of them a namespace"
                    )
        server.add_provider(provider)
        _report_exposure(upstream, provider)
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
