"""The declarative rules file: matchers, defaults, validation, hot reload, explain."""

from __future__ import annotations

import asyncio
import logging
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
from policy_helpers import principal, request

from securemcp.policy import Effect, evaluate, first_match
from securemcp.policy.rules import PolicyChange, RulesFileError, RulesPolicy
from securemcp.policy.rules_compile import compile_rules

POLICY = textwrap.dedent(
    """
    name = "test-policy"
    default = "deny"

    [[rule]]
    name = "block-mallory"
    effect = "deny"
    reason = "mallory is banned"
    subjects = ["mallory"]

    [[rule]]
    name = "contractors-no-writes"
    effect = "deny"
    risk = ["write", "destructive"]
    claims = { employment = "contractor" }

    [[rule]]
    name = "big-transfers-need-approval"
    effect = "require_approval"
    tools = ["transfer_*"]
    arguments = { amount = { ge = 1000 } }

    [[rule]]
    name = "small-transfers"
    effect = "constrain"
    tools = ["transfer_*"]
    scopes = ["payments:write"]
    arguments = { amount = { lt = 1000, gt = 0 }, currency = { in = ["EUR", "USD"] } }
    [rule.constraints]
    timeout_seconds = 5
    arguments = { memo = { max_length = 140 } }

    [[rule]]
    name = "acme-finance-reports"
    effect = "allow"
    tools = "report"
    tenants = ["acme"]
    tags = ["finance", "reports"]
    claims = { groups = { contains = "finance" } }

    [[rule]]
    name = "ops-by-client"
    effect = "allow"
    tools = ["deploy"]
    client_ids = ["ci-bot"]
    issuers = ["https://ci.example"]
    any_scopes = ["deploy:prod", "deploy:staging"]
    all_tags = ["ops", "ci"]

    [[rule]]
    name = "search-safe-queries"
    effect = "allow"
    tools = ["search"]
    arguments = { query = { regex = "[a-z ]+", max_length = 20 } }

    [[rule]]
    name = "reads"
    effect = "allow"
    risk = ["read"]
    claims = { "org.level" = { ge = 2 } }
    """
)


@pytest.fixture
def policy() -> RulesPolicy:
    return RulesPolicy.from_string(POLICY, source="policy.toml")


def decide(policy: RulesPolicy, *args: object, **kwargs: object) -> tuple[str, str | None]:
    decision = policy.evaluate(request(*args, **kwargs))  # type: ignore[arg-type]
    assert decision is not None
    return decision.effect.value, decision.rule


def test_subject_matcher_and_first_match_order(policy: RulesPolicy) -> None:
    assert decide(policy, "report", who=principal("mallory", tenant="acme")) == (
        "deny",
        "block-mallory",
    )


def test_claim_equality_and_risk(policy: RulesPolicy) -> None:
    contractor = principal("carol", employment="contractor", groups=["finance"])
    assert decide(policy, "anything", who=contractor) == ("deny", "contractors-no-writes")
    # read-only tools are not matched by the contractor rule (risk matcher)
    reader = principal("carol", employment="contractor", org={"level": 3})
    assert decide(policy, "get", who=reader, annotations={"readOnlyHint": True}) == (
        "allow",
        "reads",
    )


def test_argument_predicates_and_constraints(policy: RulesPolicy) -> None:
    payer = principal("bob", scopes=("payments:write",))
    assert decide(policy, "transfer_eur", {"amount": 5000}, who=payer) == (
        "require_approval",
        "big-transfers-need-approval",
    )
    decision = policy.evaluate(
        request("transfer_eur", {"amount": 10, "currency": "EUR"}, who=payer)
    )
    assert decision is not None and decision.effect is Effect.CONSTRAIN
    assert decision.constraints.timeout_seconds == 5
    assert decision.constraints.violations({"memo": "x" * 200})
    # predicates: wrong currency, non-number, missing argument -> no match -> default deny
    assert decide(policy, "transfer_eur", {"amount": 10, "currency": "GBP"}, who=payer)[1] == (
        "default"
    )
    assert decide(policy, "transfer_eur", {"amount": "10", "currency": "EUR"}, who=payer)[1] == (
        "default"
    )
    assert decide(policy, "transfer_eur", {"amount": True, "currency": "EUR"}, who=payer)[1] == (
        "default"
    )
    assert decide(policy, "transfer_eur", {"currency": "EUR"}, who=payer)[1] == "default"
    # scope matcher
    assert decide(policy, "transfer_eur", {"amount": 10, "currency": "EUR"})[1] == "default"


def test_tenant_tags_and_claim_membership(policy: RulesPolicy) -> None:
    analyst = principal("dana", tenant="acme", groups=["finance", "staff"])
    assert decide(policy, "report", who=analyst, tags={"finance"}) == (
        "allow",
        "acme-finance-reports",
    )
    other_tenant = principal("dana", tenant="globex", groups=["finance"])
    assert decide(policy, "report", who=other_tenant, tags={"finance"})[1] == "default"
    no_group = principal("dana", tenant="acme", groups=["staff"])
    assert decide(policy, "report", who=no_group, tags={"finance"})[1] == "default"
    single = principal("dana", tenant="acme", groups="finance")  # a string claim counts as one
    assert decide(policy, "report", who=single, tags={"reports"})[1] == "acme-finance-reports"
    assert decide(policy, "report", who=analyst, tags={"hr"})[1] == "default"


def test_client_issuer_any_scopes_all_tags(policy: RulesPolicy) -> None:
    bot = principal("svc", issuer="https://ci.example", client_id="ci-bot", scopes=("deploy:prod",))
    assert decide(policy, "deploy", who=bot, tags={"ops", "ci", "x"})[1] == "ops-by-client"
    assert decide(policy, "deploy", who=bot, tags={"ops"})[1] == "default"
    other_client = principal(
        "svc", issuer="https://ci.example", client_id="laptop", scopes=("deploy:prod",)
    )
    assert decide(policy, "deploy", who=other_client, tags={"ops", "ci"})[1] == "default"
    other_issuer = principal(
        "svc", issuer="https://evil.example", client_id="ci-bot", scopes=("deploy:prod",)
    )
    assert decide(policy, "deploy", who=other_issuer, tags={"ops", "ci"})[1] == "default"
    no_scope = principal("svc", issuer="https://ci.example", client_id="ci-bot")
    assert decide(policy, "deploy", who=no_scope, tags={"ops", "ci"})[1] == "default"


def test_regex_is_anchored_and_length_bounded(policy: RulesPolicy) -> None:
    assert decide(policy, "search", {"query": "cats and dogs"})[1] == "search-safe-queries"
    assert decide(policy, "search", {"query": "cats; DROP TABLE"})[1] == "default"
    assert decide(policy, "search", {"query": "a" * 21})[1] == "default"
    assert decide(policy, "search", {"query": 42})[1] == "default"


def test_default_deny_carries_version(policy: RulesPolicy) -> None:
    decision = policy.evaluate(request("unknown_tool"))
    assert decision is not None and decision.effect is Effect.DENY
    assert decision.rule == "default" and decision.policy_version == policy.version
    assert policy.version.startswith("sha256:")
    matched = policy.evaluate(request("search", {"query": "x"}))
    assert matched is not None and matched.policy_version == policy.version


@pytest.mark.parametrize(
    ("default", "effect"),
    [("allow", "allow"), ("deny", "deny"), ("risk", "require_approval"), ("abstain", None)],
)
def test_configurable_default(default: str, effect: str | None) -> None:
    policy = RulesPolicy.from_string(f'default = "{default}"\n')
    decision = policy.evaluate(request("drop", annotations={"destructiveHint": True}))
    assert (decision.effect.value if decision else None) == effect


async def test_abstaining_rules_compose_with_first_match() -> None:
    rules = RulesPolicy.from_string(
        'default = "abstain"\n[[rule]]\nname = "a"\neffect = "deny"\ntools = ["rm"]\n'
    )
    policy = first_match(rules, lambda r: True)
    assert (await evaluate(policy, request("rm"))).rule == "a"
    assert (await evaluate(policy, request("ls"))).effect is Effect.ALLOW


def test_explain_names_the_rule(policy: RulesPolicy) -> None:
    payer = principal("bob", scopes=("payments:write",))
    explanation = policy.explain(
        request("transfer_x", {"amount": 10, "currency": "EUR"}, who=payer)
    )
    assert explanation.rule == "small-transfers"
    headers = [i + 1 for i, line in enumerate(POLICY.splitlines()) if line == "[[rule]]"]
    assert explanation.line == headers[3]
    trace = {step.rule: step for step in explanation.trace}
    assert trace["block-mallory"].why_not == "subject 'bob' is not one of ['mallory']"
    assert "claim 'employment' is missing" in str(trace["contractors-no-writes"].why_not)
    assert "argument 'amount' fails ge 1000" in str(trace["big-transfers-need-approval"].why_not)
    text = str(explanation)
    assert "decision: constrain by 'small-transfers'" in text
    assert "timeout_seconds" in text
    fallback = policy.explain(request("nothing"))
    assert fallback.rule == "default" and "default deny" in str(fallback)


def test_explain_line_numbers() -> None:
    text = '[[rule]]\nname = "one"\neffect = "allow"\n\n[[rule]]\nname = "two"\neffect = "deny"\n'
    policy = RulesPolicy.from_string(text)
    assert [rule.line for rule in policy.rules] == [1, 5]
    assert policy.explain(request()).line == 1


# --- validation ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ('[[rule]]\nname = "a"\neffect = "allow"\ntols = ["x"]\n', 4, "unknown key 'tols'"),
        ('[[rule]]\nname = "a"\neffect = "permit"\n', 3, "'effect' must be one of"),
        ('[[rule]]\neffect = "allow"\n', 1, "needs a non-empty 'name'"),
        ('x = 1\n[[rule]]\nname = "a"\neffect = "allow"\n', 1, "unknown top-level key 'x'"),
        ('default = "maybe"\n', 1, "'default' must be one of"),
        (
            '[[rule]]\nname = "a"\neffect = "allow"\n\n[rule.arguments]\namount = { lt = "x" }\n',
            6,
            "'lt' needs a number",
        ),
        (
            '[[rule]]\nname = "a"\neffect = "allow"\narguments = { q = { regex = "(" } }\n',
            4,
            "invalid regex",
        ),
        ('[[rule]]\nname = "a"\neffect = "allow"\nrisk = ["scary"]\n', 4, "unknown risk class"),
        ('[[rule]]\nname = "a"\neffect = "constrain"\n', 3, "needs a [rule.constraints]"),
        (
            '[[rule]]\nname = "a"\neffect = "allow"\n[rule.constraints]\ntimeout_seconds = 1\n',
            4,
            "only apply to effect constrain",
        ),
        ('[[rule]]\nname = "a"\neffect = "allow"\ntools = []\n', 4, "could never match"),
        (
            '[[rule]]\nname = "a"\neffect = "allow"\n[[rule]]\nname = "a"\neffect = "deny"\n',
            4,
            "duplicate",
        ),
        ('[[rule]]\nname = "a"\neffect = "allow"\nscopes = 3\n', 4, "must be a string or a list"),
        (
            '[[rule]]\nname = "a"\neffect = "allow"\nclaims = { x = { between = 1 } }\n',
            4,
            "unknown operator",
        ),
        ('[[rule]\nname = "a"\n', 1, "column"),
        ('[[rule]]\nname = "a"\nname = "b"\n', 3, "Cannot overwrite"),
    ],
)
def test_validation_errors_are_line_precise(text: str, line: int, message: str) -> None:
    with pytest.raises(RulesFileError) as caught:
        compile_rules(text, source="p.toml")
    issues = caught.value.issues
    assert any(issue.line == line and message in issue.message for issue in issues), issues
    assert str(caught.value).startswith("p.toml:")


def test_every_problem_is_reported_at_once() -> None:
    text = (
        '[[rule]]\nname = "a"\neffect = "nope"\n\n[[rule]]\nname = "b"\neffect = "allow"\nfoo = 1\n'
    )
    with pytest.raises(RulesFileError) as caught:
        compile_rules(text)
    assert [issue.line for issue in caught.value.issues] == [3, 8]


# --- hot reload ---------------------------------------------------------------------------------


def write(path: Path, text: str) -> None:
    """Rewrite ``path`` and move its mtime forward (visible even on coarse clocks)."""
    path.write_text(text)
    stat = path.stat()
    bump = stat.st_mtime_ns + 2_000_000_000
    os.utime(path, ns=(bump, bump))


ALLOW_ADD = '[[rule]]\nname = "allow-add"\neffect = "allow"\ntools = ["add"]\n'
DENY_ADD = '[[rule]]\nname = "deny-add"\neffect = "deny"\ntools = ["add"]\n'


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def reloading(path: Path, events: list[PolicyChange], clock: FakeClock) -> RulesPolicy:
    policy = RulesPolicy.from_file(path, on_policy_change=events.append)
    policy._clock = clock  # drive the once-per-second check deterministically
    policy._next_check = clock.now + 1.0
    return policy


def test_hot_reload(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ALLOW_ADD)
    events: list[PolicyChange] = []
    clock = FakeClock()
    policy = reloading(path, events, clock)
    assert [e.kind for e in events] == ["loaded"]
    first = policy.version
    assert decide(policy, "add") == ("allow", "allow-add")
    write(path, DENY_ADD)
    assert decide(policy, "add") == ("allow", "allow-add")  # checked at most once per second
    clock.now += 1.0
    assert decide(policy, "add") == ("deny", "deny-add")
    assert events[-1].kind == "reloaded"
    assert events[-1].previous_version == first and events[-1].policy_version == policy.version


def test_broken_file_keeps_old_policy_and_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ALLOW_ADD)
    events: list[PolicyChange] = []
    clock = FakeClock()
    policy = reloading(path, events, clock)
    version = policy.version
    write(path, ALLOW_ADD + 'bogus = "x"\n')
    clock.now += 1.0
    with caplog.at_level(logging.ERROR, logger="securemcp.policy"):
        assert decide(policy, "add") == ("allow", "allow-add")
    assert policy.version == version
    failed = events[-1]
    assert failed.kind == "reload_failed" and failed.policy_version == version
    assert failed.errors == (f"{path}:5: unknown key 'bogus' in rule",)
    assert "failed to reload" in caplog.text and "bogus" in caplog.text
    # the same broken content is reported once, not on every check
    write(path, ALLOW_ADD + 'bogus = "x"\n')
    clock.now += 1.0
    decide(policy, "add")
    assert [e.kind for e in events].count("reload_failed") == 1
    # a syntax error too
    write(path, "[[rule]\n")
    clock.now += 1.0
    assert decide(policy, "add") == ("allow", "allow-add")
    assert events[-1].kind == "reload_failed" and ":1:" in events[-1].errors[0]
    # a deleted file keeps the policy as well
    path.unlink()
    clock.now += 1.0
    assert decide(policy, "add") == ("allow", "allow-add")
    assert events[-1].kind == "reload_failed" and "cannot read" in events[-1].errors[0]
    # fixing the file installs the fix
    write(path, DENY_ADD)
    clock.now += 1.0
    assert decide(policy, "add") == ("deny", "deny-add")
    assert events[-1].kind == "reloaded"


def test_callback_errors_do_not_break_evaluation(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ALLOW_ADD)

    def explode(event: PolicyChange) -> None:
        raise RuntimeError("audit down")

    policy = RulesPolicy.from_file(path, on_policy_change=explode)
    write(path, DENY_ADD)
    assert policy.reload() is True
    assert decide(policy, "add") == ("deny", "deny-add")


def test_startup_with_broken_file_fails_loudly(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text('[[rule]]\nname = "x"\n')
    with pytest.raises(RulesFileError, match="effect"):
        RulesPolicy.from_file(path)


def test_real_clock_reload(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(ALLOW_ADD)
    policy = RulesPolicy.from_file(path, check_interval=0.05)
    write(path, DENY_ADD)
    import time

    time.sleep(0.06)
    assert decide(policy, "add") == ("deny", "deny-add")


async def test_reload_under_concurrent_load_always_decides(tmp_path: Path) -> None:
    """While the file flips between versions (and a broken one), every call gets a decision
    from one complete version: allow-add or deny-add, never none and never an error."""
    path = tmp_path / "policy.toml"
    path.write_text(ALLOW_ADD)
    policy = RulesPolicy.from_file(path, check_interval=0.0)
    seen: set[tuple[str, str | None]] = set()
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            decision = await evaluate(policy, request("add"))
            seen.add((decision.effect.value, decision.rule))
            await asyncio.sleep(0)

    async def editor() -> None:
        for i in range(60):
            text = [ALLOW_ADD, DENY_ADD, "[[rule]\nbroken"][i % 3]
            await asyncio.to_thread(write, path, text)
            await asyncio.sleep(0.002)
        stop.set()

    await asyncio.gather(editor(), *(caller() for _ in range(20)))
    assert seen <= {("allow", "allow-add"), ("deny", "deny-add")}
    assert ("deny", "deny-add") in seen


def test_versions_match_the_version_that_runs() -> None:
    """``versions`` judges the resolved component's version (exact entries compare as FastMCP
    compares versions; range entries hold it), never the text the call asked for."""
    policy = RulesPolicy.from_string(
        textwrap.dedent(
            """
            default = "allow"
            [[rule]]
            name = "no-v2-purge"
            effect = "deny"
            tools = ["purge"]
            versions = ["2", ">=5,<7"]
            """
        )
    )
    for runs in ("2", "2.0", "v2", "5", "6.9"):
        # whatever was asked for (nothing, a range, another spelling)
        for asked in (None, ">=1", "2"):
            denied = request("purge", version=runs, requested_version=asked)
            assert policy.evaluate(denied).effect is Effect.DENY, (runs, asked)
    for runs in ("1", "3", "7", "10"):
        allowed = request("purge", version=runs, requested_version="2")
        assert policy.evaluate(allowed).effect is Effect.ALLOW, runs
    assert policy.evaluate(request("purge")).effect is Effect.ALLOW  # unversioned component
    assert "the component is unversioned" in str(policy.explain(request("purge")))
    explained = str(policy.explain(request("purge", version="3")))
    assert "version '3' is in none of ['2', '>=5,<7']" in explained


@pytest.mark.parametrize("effect", ["allow", "deny", "require_approval", "constrain"])
def test_an_unresolved_version_is_refused_where_a_versions_rule_could_apply(effect: str) -> None:
    """A version securemcp cannot resolve could be any the call asks for: a rule naming one of
    those refuses, whatever its effect (never more permissive than the version that may run)."""
    extra = "[rule.constraints]\ntimeout_seconds = 5\n" if effect == "constrain" else ""
    policy = RulesPolicy.from_string(
        f'default = "allow"\n[[rule]]\nname = "v2"\neffect = "{effect}"\nversions = ["2"]\n{extra}'
    )

    def unresolved(asked: str | None) -> Any:
        return request("purge", requested_version=asked, version_resolved=False)

    for asked in (None, "2", "2.0", ">=1", "<3", ">=2,<4"):
        decision = policy.evaluate(unresolved(asked))
        assert decision.effect is Effect.DENY, asked
        assert decision.rule == "v2" and decision.policy_version == policy.version
        if effect != "deny":
            assert decision.reason.startswith("version_unresolved")
        explained = policy.explain(unresolved(asked))
        assert explained.decision == decision
    for asked in ("1", "<2", ">=3", ">=3,<9"):
        assert policy.evaluate(unresolved(asked)).effect is Effect.ALLOW, asked
        assert "the version asked for" in str(policy.explain(unresolved(asked)))


@pytest.mark.parametrize("entry", ["", "==2", "<=2", ">2", "!=2", ">=1,>=2", "<", ">=1,,<2", "~=2"])
def test_a_versions_entry_that_is_not_a_version_or_range_is_an_error(entry: str) -> None:
    with pytest.raises(RulesFileError, match="versions"):
        RulesPolicy.from_string(f'[[rule]]\nname = "r"\neffect = "deny"\nversions = ["{entry}"]\n')


@pytest.mark.parametrize(
    ("entry", "asked", "overlaps"),
    [
        (">=2", None, True),
        (">=2", "<2", False),
        (">=2", "<3", True),
        (">=2,<4", ">=4", False),
        (">=2,<4", ">=3.5,<9", True),
        ("<2", ">=2", False),
        ("<2", "1.9", True),
        ("<2", "2.0", False),
        ("v2", "2.0", True),
        ("2", "weird-text", False),
    ],
)
def test_version_ranges_overlap_as_fastmcp_orders_versions(
    entry: str, asked: str | None, overlaps: bool
) -> None:
    from securemcp.policy.versions import parse_range, requested_range

    assert parse_range(entry).overlaps(requested_range(asked)) is overlaps
