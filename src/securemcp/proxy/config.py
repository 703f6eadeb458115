"""The proxy's configuration file: which upstreams, and what each upstream component may do.

A TOML file (format in ``docs/proxy.md``) names one or more upstream MCP servers, each reached
over streamable HTTP (``url``) or as a stdio subprocess (``command``), and, per tool, resource and
prompt, the scopes a caller needs, the risk class and the policy that applies. What the file does
not list is **denied and hidden**; ``expose_unlisted = "read-only"`` is the explicit opt-in that
exposes unlisted resources, prompts and tools whose *pinned* definition says ``readOnlyHint``.

Validation is strict: an unknown key is an error (a typo must never widen access), and every
error names the upstream and key it was found in. Secrets are never in this file, only
references to where they are (``secret_env``, ``secret_file``): see
:mod:`securemcp.proxy.credentials`.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal

from securemcp._files import CONFIG_FILE_MAX_BYTES, read_regular
from securemcp.errors import ConfigurationError
from securemcp.policy.decision import ArgumentBound
from securemcp.policy.request import RiskClass
from securemcp.scopes import validate_scopes

__all__ = [
    "ComponentRule",
    "ExposeUnlisted",
    "IdentityConfig",
    "ProxyConfig",
    "ProxyConfigError",
    "UpstreamConfig",
    "exposed_uri",
    "load_config",
    "namespaced_uri",
]

ExposeUnlisted = Literal["none", "read-only"]

_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_-]{0,62}$")
_TOP_KEYS: Final = frozenset({"proxy", "identity", "upstreams"})
_PROXY_KEYS: Final = frozenset({"name", "lockfile", "policy", "instructions"})
_IDENTITY_KEYS: Final = frozenset(
    {"issuer", "audience", "jwks_uri", "resource_url", "allow_insecure_loopback"}
)
_UPSTREAM_KEYS: Final = frozenset(
    {
        "url",
        "command",
        "args",
        "env",
        "cwd",
        "namespace",
        "auth",
        "timeout_seconds",
        "connect_timeout_seconds",
        "max_sessions",
        "idle_seconds",
        "pin_check_seconds",
        "expose_unlisted",
        "unlisted_scopes",
        "tools",
        "resources",
        "templates",
        "prompts",
    }
)
_RULE_KEYS: Final = frozenset(
    {"scopes", "risk", "approval", "timeout_seconds", "max_result_bytes", "arguments", "deny"}
)
_KINDS: Final = {
    "tools": "tool",
    "resources": "resource",
    "templates": "template",
    "prompts": "prompt",
}


def namespaced_uri(namespace: str, uri: str) -> str:
    """FastMCP's convention for mounted resources: ``scheme://namespace/rest``."""
    if not namespace:
        return uri
    scheme, sep, rest = uri.partition("://")
    if not sep:
        return f"{namespace}/{uri}"
    return f"{scheme}://{namespace}/{rest}"


def exposed_uri(namespace: str, uri: str) -> str:
    """The URI clients see for an upstream resource: namespaced, then normalised exactly as the
    exposed component's ``AnyUrl`` normalises it (``file://ns//x`` is ``file://ns/x``, hosts are
    lower case)."""
    from pydantic import AnyUrl

    raw = namespaced_uri(namespace, uri)
    try:
        return str(AnyUrl(raw))
    except ValueError:
        return raw


class ProxyConfigError(ConfigurationError):
    """The proxy configuration file is missing, unreadable or invalid."""

    code = "invalid_proxy_config"


@dataclass(frozen=True, slots=True)
class ComponentRule:
    """What the configuration says about one upstream tool, resource, template or prompt.

    Attributes:
        scopes: every scope a caller must hold.
        risk: the declared risk class (``None``: derived from the pinned annotations).
        approval: every call needs an approver's approval (``require_approval``).
        timeout_seconds: the call is cancelled after this long.
        max_result_bytes: larger results are withheld.
        arguments: argument bounds (same format as a rules file's ``arguments``).
        deny: listed only to be refused (documents an explicit "no").
    """

    scopes: tuple[str, ...] = ()
    risk: RiskClass | None = None
    approval: bool = False
    timeout_seconds: float | None = None
    max_result_bytes: int | None = None
    arguments: Mapping[str, ArgumentBound] = field(default_factory=dict)
    deny: bool = False

    @property
    def has_policy(self) -> bool:
        """Whether this rule needs a policy decision beyond scopes."""
        return bool(
            self.approval
            or self.deny
            or self.timeout_seconds is not None
            or self.max_result_bytes is not None
            or self.arguments
        )


@dataclass(frozen=True, slots=True)
class UpstreamConfig:
    """One upstream MCP server and the rules for its components.

    Exactly one of ``url`` (streamable HTTP, or SSE when it ends in ``/sse``) and ``command``
    (a stdio subprocess) is set. ``rules`` maps ``(kind, key)`` (kind ``tool``, ``resource``,
    ``template`` or ``prompt``; key the name, URI or URI template as the upstream names it) to
    its :class:`ComponentRule`.
    """

    name: str
    url: str | None = None
    command: str | None = None
    args: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    cwd: str | None = None
    namespace: str | None = None
    auth: Mapping[str, Any] = field(default_factory=lambda: {"type": "none"})
    timeout_seconds: float = 30.0
    connect_timeout_seconds: float = 10.0
    max_sessions: int = 64
    idle_seconds: float = 300.0
    pin_check_seconds: float = 60.0
    expose_unlisted: ExposeUnlisted = "none"
    unlisted_scopes: tuple[str, ...] = ()
    rules: Mapping[tuple[str, str], ComponentRule] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ProxyConfigError(f"upstream name {self.name!r} must match {_NAME.pattern}")
        if (self.url is None) == (self.command is None):
            raise ProxyConfigError(
                f"upstream {self.name!r}: give exactly one of 'url' (HTTP) or 'command' (stdio)"
            )
        if self.url is not None and not re.match(r"^https?://", self.url):
            raise ProxyConfigError(f"upstream {self.name!r}: 'url' must be an http(s) URL")
        for label, value in (
            ("timeout_seconds", self.timeout_seconds),
            ("connect_timeout_seconds", self.connect_timeout_seconds),
            ("idle_seconds", self.idle_seconds),
            ("pin_check_seconds", self.pin_check_seconds),
        ):
            if not value > 0:
                raise ProxyConfigError(f"upstream {self.name!r}: {label!r} must be positive")
        if self.max_sessions < 1:
            raise ProxyConfigError(f"upstream {self.name!r}: 'max_sessions' must be at least 1")
        if self.expose_unlisted not in ("none", "read-only"):
            raise ProxyConfigError(
                f'upstream {self.name!r}: \'expose_unlisted\' must be "none" or "read-only"'
            )

    @property
    def transport_kind(self) -> Literal["http", "stdio"]:
        return "http" if self.url is not None else "stdio"

    def rule(self, kind: str, key: str) -> ComponentRule | None:
        """The configured rule for one component, or ``None`` when the file does not list it."""
        return self.rules.get((kind, key))


@dataclass(frozen=True, slots=True)
class IdentityConfig:
    """How the proxy verifies its callers (a JWT issuer: :class:`securemcp.auth.JWTVerifier`)."""

    issuer: str
    audience: str
    jwks_uri: str | None = None
    resource_url: str | None = None
    allow_insecure_loopback: bool = False


@dataclass(frozen=True, slots=True)
class ProxyConfig:
    """The whole proxy: its name, the upstreams, the lockfile and an optional rules file."""

    upstreams: tuple[UpstreamConfig, ...]
    name: str = "securemcp-proxy"
    lockfile: Path = Path("securemcp-proxy.lock.json")
    policy: Path | None = None
    instructions: str | None = None
    identity: IdentityConfig | None = None
    source: Path | None = None

    def __post_init__(self) -> None:
        if not self.upstreams:
            raise ProxyConfigError("the proxy needs at least one upstream")
        names = [u.name for u in self.upstreams]
        if len(set(names)) != len(names):
            raise ProxyConfigError("upstream names must be unique")
        self._check_namespaces()

    def _check_namespaces(self) -> None:
        """Refuse namespaces under which two upstreams could ever expose the same name.

        ``ns_name`` and ``scheme://ns/...`` are equal for two namespaces only when one is the
        other followed by ``_`` (``a`` + ``b_c`` and ``a_b`` + ``c`` are both ``a_b_c``) or when
        they are equal ignoring case (URI hosts are case-insensitive); an empty namespace next
        to another upstream could collide with anything. Checked here for every upstream,
        pinned or not, so no name can become ambiguous later when a lockfile changes; the
        running proxy still re-checks every catalog it builds.
        """
        if len(self.upstreams) < 2:
            return
        spaces = [(u.name, self.namespace_of(u)) for u in self.upstreams]
        for i, (name, original) in enumerate(spaces):
            space = original.casefold()
            if not space:
                raise ProxyConfigError(
                    f"upstream {name!r}: with several upstreams each needs a non-empty namespace"
                )
            for other, other_original in spaces[i + 1 :]:
                other_space = other_original.casefold()
                if (
                    space == other_space
                    or other_space.startswith(space + "_")
                    or space.startswith(other_space + "_")
                ):
                    raise ProxyConfigError(
                        f"upstreams {name!r} and {other!r}: namespaces {original!r} and "
                        f"{other_original!r} could expose the same name; "
                        "choose namespaces that are not equal (ignoring case) and where neither "
                        "is the other followed by '_'"
                    )
        exposed: dict[tuple[str, str], str] = {}
        for upstream in self.upstreams:
            space = self.namespace_of(upstream)
            for kind, key in upstream.rules:
                if kind in ("tool", "prompt"):
                    name = f"{space}_{key}"
                elif kind == "resource":
                    name = exposed_uri(space, key)
                else:
                    name = namespaced_uri(space, key)
                owner = exposed.setdefault((kind, name.casefold()), upstream.name)
                if owner != upstream.name:
                    raise ProxyConfigError(
                        f"upstreams {owner!r} and {upstream.name!r} both configure {kind} "
                        f"{name!r}; give one of them another namespace"
                    )

    def upstream(self, name: str) -> UpstreamConfig:
        for upstream in self.upstreams:
            if upstream.name == name:
                return upstream
        raise ProxyConfigError(f"no upstream named {name!r}")

    def namespace_of(self, upstream: UpstreamConfig) -> str:
        """The prefix the upstream's components are exposed under ("" for none).

        Default: no prefix for a single upstream, the upstream's name for several.
        """
        if upstream.namespace is not None:
            return upstream.namespace
        return "" if len(self.upstreams) == 1 else upstream.name


# --- parsing ---------------------------------------------------------------------------------


def _check_keys(table: Mapping[str, Any], allowed: frozenset[str], where: str) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ProxyConfigError(
            f"{where}: unknown key(s) {', '.join(map(repr, unknown))} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )


def _table(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ProxyConfigError(f"{where} must be a table")
    return value


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ProxyConfigError(f"{where} must be a non-empty string")
    return value


def _number(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ProxyConfigError(f"{where} must be a positive number")
    return float(value)


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ProxyConfigError(f"{where} must be an array of strings")
    return tuple(value)


def _scopes(value: Any, where: str) -> tuple[str, ...]:
    try:
        return validate_scopes(_strings(value, where), where=where)
    except ProxyConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ProxyConfigError(f"{where}: {exc}") from None


def _rule(table: Mapping[str, Any], where: str) -> ComponentRule:
    _check_keys(table, _RULE_KEYS, where)
    risk: RiskClass | None = None
    if "risk" in table:
        try:
            risk = RiskClass(_string(table["risk"], f"{where}.risk"))
        except ValueError:
            allowed = ", ".join(r.value for r in RiskClass)
            raise ProxyConfigError(f"{where}.risk must be one of {allowed}") from None
    for flag in ("approval", "deny"):
        if flag in table and not isinstance(table[flag], bool):
            raise ProxyConfigError(f"{where}.{flag} must be true or false")
    max_bytes = table.get("max_result_bytes")
    if max_bytes is not None and (
        isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 1
    ):
        raise ProxyConfigError(f"{where}.max_result_bytes must be a positive integer")
    arguments: dict[str, ArgumentBound] = {}
    for name, spec in _table(table.get("arguments", {}), f"{where}.arguments").items():
        try:
            arguments[name] = ArgumentBound.from_mapping(_table(spec, f"{where}.arguments.{name}"))
        except (TypeError, ValueError) as exc:
            raise ProxyConfigError(f"{where}.arguments.{name}: {exc}") from None
    timeout = table.get("timeout_seconds")
    return ComponentRule(
        scopes=_scopes(table.get("scopes", []), f"{where}.scopes"),
        risk=risk,
        approval=bool(table.get("approval", False)),
        timeout_seconds=_number(timeout, f"{where}.timeout_seconds")
        if timeout is not None
        else None,
        max_result_bytes=max_bytes,
        arguments=arguments,
        deny=bool(table.get("deny", False)),
    )


def _upstream(name: str, table: Mapping[str, Any], base: Path) -> UpstreamConfig:
    where = f"upstreams.{name}"
    _check_keys(table, _UPSTREAM_KEYS, where)
    rules: dict[tuple[str, str], ComponentRule] = {}
    for section, kind in _KINDS.items():
        for key, spec in _table(table.get(section, {}), f"{where}.{section}").items():
            rule_table = _table(spec, f"{where}.{section}.{key}")
            if kind in ("resource", "template") and "arguments" in rule_table:
                # A read has no arguments (a template's parameters are in the URI): a bound
                # here would never be checked, so it is refused rather than ignored.
                raise ProxyConfigError(
                    f"{where}.{section}.{key}.arguments: argument bounds apply to tools and "
                    "prompts, not to resources or templates"
                )
            rules[(kind, key)] = _rule(rule_table, f"{where}.{section}.{key}")
    command = table.get("command")
    args: tuple[str, ...] = ()
    if isinstance(command, list):
        parts = _strings(command, f"{where}.command")
        if not parts:
            raise ProxyConfigError(f"{where}.command must not be empty")
        command, args = parts[0], parts[1:]
    elif command is not None:
        command = _string(command, f"{where}.command")
    if "args" in table:
        args = args + _strings(table["args"], f"{where}.args")
    env = _table(table.get("env", {}), f"{where}.env")
    for key, value in env.items():
        if not isinstance(value, str):
            raise ProxyConfigError(f"{where}.env.{key} must be a string (secrets go in auth)")
    cwd = table.get("cwd")
    if cwd is not None:
        cwd = str((base / _string(cwd, f"{where}.cwd")).resolve())
    numbers = {
        key: _number(table[key], f"{where}.{key}")
        for key in (
            "timeout_seconds",
            "connect_timeout_seconds",
            "idle_seconds",
            "pin_check_seconds",
        )
        if key in table
    }
    max_sessions = table.get("max_sessions", 64)
    if isinstance(max_sessions, bool) or not isinstance(max_sessions, int):
        raise ProxyConfigError(f"{where}.max_sessions must be an integer")
    namespace = table.get("namespace")
    if namespace is not None and (
        not isinstance(namespace, str) or (namespace and not _NAME.match(namespace))
    ):
        raise ProxyConfigError(
            f"{where}.namespace must be empty or match {_NAME.pattern} (it becomes part of "
            "names and URIs)"
        )
    return UpstreamConfig(
        name=name,
        url=_string(table["url"], f"{where}.url") if "url" in table else None,
        command=command,
        args=args,
        env=dict(env),
        cwd=cwd,
        namespace=namespace,
        auth=dict(_table(table.get("auth", {"type": "none"}), f"{where}.auth")),
        max_sessions=max_sessions,
        expose_unlisted=table.get("expose_unlisted", "none"),
        unlisted_scopes=_scopes(table.get("unlisted_scopes", []), f"{where}.unlisted_scopes"),
        rules=rules,
        **numbers,
    )


def _identity(table: Mapping[str, Any]) -> IdentityConfig:
    _check_keys(table, _IDENTITY_KEYS, "identity")
    loopback = table.get("allow_insecure_loopback", False)
    if not isinstance(loopback, bool):
        raise ProxyConfigError("identity.allow_insecure_loopback must be true or false")
    return IdentityConfig(
        issuer=_string(table.get("issuer"), "identity.issuer"),
        audience=_string(table.get("audience"), "identity.audience"),
        jwks_uri=_string(table["jwks_uri"], "identity.jwks_uri") if "jwks_uri" in table else None,
        resource_url=(
            _string(table["resource_url"], "identity.resource_url")
            if "resource_url" in table
            else None
        ),
        allow_insecure_loopback=loopback,
    )


def parse_config(data: Mapping[str, Any], *, base: Path | None = None) -> ProxyConfig:
    """Build a :class:`ProxyConfig` from parsed TOML (paths resolve against ``base``)."""
    base = base or Path.cwd()
    _check_keys(data, _TOP_KEYS, "configuration")
    proxy = _table(data.get("proxy", {}), "proxy")
    _check_keys(proxy, _PROXY_KEYS, "proxy")
    upstreams = _table(data.get("upstreams", {}), "upstreams")
    lockfile = proxy.get("lockfile", "securemcp-proxy.lock.json")
    policy = proxy.get("policy")
    instructions = proxy.get("instructions")
    if instructions is not None and not isinstance(instructions, str):
        raise ProxyConfigError("proxy.instructions must be a string")
    return ProxyConfig(
        upstreams=tuple(
            _upstream(name, _table(table, f"upstreams.{name}"), base)
            for name, table in upstreams.items()
        ),
        name=_string(proxy.get("name", "securemcp-proxy"), "proxy.name"),
        lockfile=(base / _string(lockfile, "proxy.lockfile")).resolve(),
        policy=(base / _string(policy, "proxy.policy")).resolve() if policy is not None else None,
        instructions=instructions,
        identity=_identity(_table(data["identity"], "identity")) if "identity" in data else None,
    )


def load_config(path: str | os.PathLike[str]) -> ProxyConfig:
    """Read and validate a proxy configuration file.

    Raises:
        ProxyConfigError: the file is missing, is not TOML, or does not validate.
    """
    source = Path(path)
    try:
        data = tomllib.loads(read_regular(source, limit=CONFIG_FILE_MAX_BYTES).decode("utf-8"))
    except FileNotFoundError:
        raise ProxyConfigError(f"proxy configuration {str(source)!r} not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ProxyConfigError(f"cannot read proxy configuration {str(source)!r}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ProxyConfigError(f"{source}: not valid TOML: {exc}") from None
    config = parse_config(data, base=source.resolve().parent)
    return ProxyConfig(
        upstreams=config.upstreams,
        name=config.name,
        lockfile=config.lockfile,
        policy=config.policy,
        instructions=config.instructions,
        identity=config.identity,
        source=source.resolve(),
    )


def upstream_from(
    name: str,
    *,
    url: str | None = None,
    command: Sequence[str] | None = None,
    **settings: Any,
) -> UpstreamConfig:
    """An :class:`UpstreamConfig` for the Python API (``command`` as an argv list)."""
    argv = list(command) if command is not None else None
    return UpstreamConfig(
        name=name,
        url=url,
        command=argv[0] if argv else None,
        args=tuple(argv[1:]) if argv else tuple(settings.pop("args", ())),
        **settings,
    )
