"""The proxy configuration file: strict validation, exposure rules, name collisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from securemcp.policy.request import RiskClass
from securemcp.proxy.components import exposure_of
from securemcp.proxy.config import ProxyConfigError, load_config, parse_config
from securemcp.proxy.pinning import PinnedDefinition


def upstream(**extra: Any) -> dict[str, Any]:
    return {"upstreams": {"vendor": {"url": "https://vendor.example/mcp", **extra}}}


def test_full_file_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "proxy.toml"
    path.write_text(
        """
[proxy]
name = "gateway"
lockfile = "locks/proxy.lock.json"

[identity]
issuer = "https://idp.example"
audience = "https://gateway.example/mcp"

[upstreams.vendor]
url = "https://vendor.example/mcp"
timeout_seconds = 5
auth = { type = "bearer", secret_env = "VENDOR_TOKEN" }

[upstreams.vendor.tools.search]
scopes = ["vendor:read"]
risk = "read"

[upstreams.vendor.tools.delete]
scopes = ["vendor:admin"]
risk = "destructive"
approval = true
arguments = { id = { min = 1 } }

[upstreams.files]
command = ["npx", "-y", "@vendor/files"]
env = { LOG_LEVEL = "info" }
expose_unlisted = "read-only"
""",
        encoding="utf-8",
    )
    cfg = load_config(path)
    assert cfg.name == "gateway"
    assert cfg.lockfile == (tmp_path / "locks/proxy.lock.json").resolve()
    assert cfg.identity is not None and cfg.identity.audience == "https://gateway.example/mcp"
    vendor, files = cfg.upstreams
    assert vendor.transport_kind == "http" and vendor.timeout_seconds == 5.0
    assert vendor.rule("tool", "delete").approval  # type: ignore[union-attr]
    assert vendor.rule("tool", "search").risk is RiskClass.READ  # type: ignore[union-attr]
    assert files.command == "npx" and files.args == ("-y", "@vendor/files")
    # Two upstreams: each exposed under its own name unless told otherwise.
    assert cfg.namespace_of(vendor) == "vendor" and cfg.namespace_of(files) == "files"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"upstreams": {"v": {"url": "https://x", "tols": {}}}}, "unknown key"),
        (upstream(tools={"search": {"scope": ["a"]}}), "unknown key"),
        (upstream(tools={"search": {"risk": "harmless"}}), "risk must be one of"),
        (upstream(tools={"search": {"scopes": "vendor:read"}}), "array of strings"),
        (upstream(tools={"search": {"scopes": ["two words"]}}), "scopes"),
        (upstream(tools={"search": {"approval": "yes"}}), "true or false"),
        (
            upstream(resources={"docs://a": {"arguments": {"x": {"max": 1}}}}),
            "apply to tools and prompts",
        ),
        (
            upstream(templates={"notes://{t}": {"arguments": {"t": {"max": 1}}}}),
            "apply to tools and prompts",
        ),
        (upstream(timeout_seconds=0), "positive"),
        (upstream(expose_unlisted="all"), "expose_unlisted"),
        (upstream(env={"TOKEN": 5}), "secrets go in auth"),
        ({"upstreams": {"v": {}}}, "exactly one of"),
        ({"upstreams": {"v": {"url": "https://x", "command": "y"}}}, "exactly one of"),
        ({"upstreams": {"v": {"url": "file:///etc/passwd"}}}, "http"),
        ({"upstreams": {"bad name": {"url": "https://x"}}}, "must match"),
        ({"upstreams": {}}, "at least one upstream"),
        ({"proxy": {"lockfiles": "x"}, **upstream()}, "unknown key"),
        ({"identity": {"issuer": "https://i"}, **upstream()}, "identity.audience"),
    ],
)
def test_invalid_configuration_is_refused(data: dict[str, Any], message: str) -> None:
    with pytest.raises(ProxyConfigError, match=message):
        parse_config(data)


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ProxyConfigError, match="not found"):
        load_config(tmp_path / "nope.toml")
    broken = tmp_path / "broken.toml"
    broken.write_text("[upstreams.v\nurl=", encoding="utf-8")
    with pytest.raises(ProxyConfigError, match="not valid TOML"):
        load_config(broken)


def pin(kind: str, definition: dict[str, Any]) -> PinnedDefinition:
    return PinnedDefinition.of(kind, definition)  # type: ignore[arg-type]


READ_TOOL = pin(
    "tool",
    {"name": "list", "inputSchema": {"type": "object"}, "annotations": {"readOnlyHint": True}},
)
LYING_TOOL = pin(
    "tool",
    {
        "name": "wipe",
        "inputSchema": {"type": "object"},
        "annotations": {"readOnlyHint": True, "destructiveHint": True},
    },
)
WRITE_TOOL = pin("tool", {"name": "write", "inputSchema": {"type": "object"}})
RESOURCE = pin("resource", {"uri": "docs://readme", "name": "readme"})


def test_unlisted_components_are_hidden_by_default() -> None:
    cfg = parse_config(upstream(tools={"write": {"scopes": ["w"]}})).upstreams[0]
    assert exposure_of(cfg, READ_TOOL) is None
    assert exposure_of(cfg, RESOURCE) is None
    listed = exposure_of(cfg, WRITE_TOOL)
    assert listed is not None and listed.scopes == ("w",)


def test_read_only_opt_in_exposes_only_read_only_components() -> None:
    cfg = parse_config(
        upstream(expose_unlisted="read-only", unlisted_scopes=["vendor:read"])
    ).upstreams[0]
    exposed = exposure_of(cfg, READ_TOOL)
    assert exposed is not None
    assert exposed.scopes == ("vendor:read",) and exposed.risk is RiskClass.READ
    assert exposure_of(cfg, WRITE_TOOL) is None  # no read-only hint
    assert exposure_of(cfg, LYING_TOOL) is None  # "read-only" and destructive: not trusted
    assert exposure_of(cfg, RESOURCE) is not None


def test_deny_rule_hides_even_with_opt_in() -> None:
    cfg = parse_config(upstream(expose_unlisted="read-only", tools={"list": {"deny": True}}))
    assert exposure_of(cfg.upstreams[0], READ_TOOL) is None


@pytest.mark.parametrize(
    ("first", "second"),
    [
        ("", ""),  # two upstreams without a namespace: any two equal names collide
        ("", "b"),  # an empty namespace next to another could collide with anything
        ("a", "a_b"),  # a + b_c and a_b + c are both a_b_c
        ("Docs", "docs"),  # URI hosts ignore case: scheme://Docs/x is scheme://docs/x
        ("same", "same"),
    ],
)
def test_namespaces_that_could_collide_are_refused(first: str, second: str) -> None:
    """Refused at load, for every upstream whether or not anything is pinned yet, so no lockfile
    change can later make two upstreams expose (and share the rules of) one name."""
    data = {
        "upstreams": {
            "a": {"url": "https://a.example/mcp", "namespace": first, "tools": {"b_c": {}}},
            "a_b": {"url": "https://b.example/mcp", "namespace": second, "tools": {"c": {}}},
        },
    }
    with pytest.raises(ProxyConfigError, match="namespace"):
        parse_config(data)


@pytest.mark.parametrize("namespace", ["a/b", "a b", "x://y", "_a"])
def test_a_namespace_is_a_plain_name(namespace: str) -> None:
    with pytest.raises(ProxyConfigError, match="namespace"):
        parse_config(upstream(namespace=namespace))


def test_distinct_namespaces_and_one_unnamespaced_upstream_are_fine() -> None:
    data = {
        "upstreams": {
            "a": {"url": "https://a.example/mcp", "tools": {"b_c": {}}},
            "ab": {"url": "https://b.example/mcp", "namespace": "a-b", "tools": {"c": {}}},
        },
    }
    cfg = parse_config(data)
    assert [cfg.namespace_of(u) for u in cfg.upstreams] == ["a", "a-b"]
    assert (
        parse_config(upstream(namespace="")).namespace_of(
            parse_config(upstream(namespace="")).upstreams[0]
        )
        == ""
    )


def test_the_documented_example_configuration_is_valid() -> None:
    import re
    import tomllib

    docs = (Path(__file__).parents[2] / "docs" / "proxy.md").read_text(encoding="utf-8")
    example = re.search(r"```toml\n(.*?)```", docs, re.S)
    assert example is not None
    cfg = parse_config(tomllib.loads(example.group(1)))
    assert [u.name for u in cfg.upstreams] == ["vendor", "files"]
    assert cfg.upstreams[0].rule("tool", "delete_record").approval  # type: ignore[union-attr]
