"""``securemcp policy ...`` and ``securemcp approvals ...`` subcommands.

The top-level CLI calls :func:`register` with its subparsers; every leaf parser sets ``func``,
which takes the parsed ``argparse.Namespace`` and returns the exit code::

    securemcp policy check FILE              0 valid, 1 invalid (file:line: message), 2 unreadable
    securemcp policy explain FILE --tool T --subject S [--issuer I] [--client-id C]
        [--tenant T] [--scope S ...] [--claim k=v ...] [--arg k=v ...] [--tag T ...]
        [--risk R] [--method M] [--version V]
        [--template URI_TEMPLATE [--param NAME=TYPE ...]] [--prompt-param NAME=TYPE ...]
                                             0 explained, 1 invalid file, 2 unreadable
    securemcp approvals list [--all] [--json] [--store PATH|URL]
    securemcp approvals approve ID [--reusable-for SECONDS] [--store ...]
    securemcp approvals deny ID [--reason TEXT] [--store ...]
                                             0 done, 1 refused, 2 store unavailable

``k=v`` values are parsed as JSON when they parse (``amount=500`` is a number,
``groups=["a","b"]`` a list) and are strings otherwise.

The approver identity of ``approvals approve|deny`` is the **local operator** (the OS user on
this host, issuer ``securemcp:local-operator``; see
:func:`securemcp.policy.approvals.local_operator`): being able to run this command against the
store (the SQLite file, or the Redis URL and its credentials) is the authority to approve.
The store defaults to ``$SECUREMCP_APPROVAL_STORE`` or ``./.securemcp/approvals.sqlite3``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from datetime import UTC, datetime
from typing import Any

__all__ = ["register"]


def _value(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return text


def _pairs(items: list[str] | None, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{what} must look like key=value, got {item!r}")
        out[key] = _value(value)
    return out


# --- policy ----------------------------------------------------------------------------------


def _load(path: str) -> tuple[Any, int]:
    """(RuleSet, 0) or (None, exit code) after printing the problem."""
    from securemcp.policy._hot_reload import read_policy_file
    from securemcp.policy.rules_compile import RulesFileError, compile_rules

    try:
        data = read_policy_file(path)
    except OSError as exc:
        print(f"{path}: cannot read: {exc.strerror or exc}", file=sys.stderr)
        return None, 2
    try:
        return compile_rules(data, source=path), 0
    except RulesFileError as exc:
        for issue in exc.issues:
            print(issue.format(path), file=sys.stderr)
        return None, 1


def _check(args: argparse.Namespace) -> int:
    ruleset, code = _load(args.file)
    if ruleset is None:
        return code
    count = len(ruleset.rules)
    print(
        f"{args.file}: OK, {count} rule{'s' if count != 1 else ''}, "
        f"default {ruleset.default}, version {ruleset.version}"
    )
    return 0


def _explain(args: argparse.Namespace) -> int:
    from securemcp.context import Principal
    from securemcp.policy.request import CallRequest
    from securemcp.policy.rules import explain_ruleset

    ruleset, code = _load(args.file)
    if ruleset is None:
        return code
    try:
        claims = _pairs(args.claim, "--claim")
        arguments = _pairs(args.arg, "--arg")
    except ValueError as exc:
        print(f"securemcp policy explain: {exc}", file=sys.stderr)
        return 2
    scopes = {s for chunk in args.scope or () for s in chunk.split()}
    principal = Principal(
        subject=args.subject,
        issuer=args.issuer,
        client_id=args.client_id,
        scopes=frozenset(scopes),
        tenant=args.tenant,
        claims=claims,
    )
    method, target, uri = args.method, args.tool, None
    spellings: tuple[str, ...] = ()
    respelling: Any = None
    if args.template is not None:
        try:
            method, target, spellings, respelling = _template_read(
                args.template, args.tool, args.param
            )
        except ValueError as exc:
            print(f"securemcp policy explain: {exc}", file=sys.stderr)
            return 2
        uri = args.tool
    elif args.prompt_param:
        method = "prompts/get"
    request = CallRequest.build(
        principal,
        target,
        arguments,
        method=method,
        tags=args.tag or (),
        risk=args.risk,
        version=args.version,
        uri=uri,
        template=args.template,
    )
    version = f" version {request.version}" if request.version is not None else ""
    print(
        f"call: {request.method} {request.target!r}{version} as {principal.subject!r}"
        f" (risk {request.risk})"
    )
    if respelling is not None:  # rules naming a read are written canonically too
        request = dataclasses.replace(request, canonical_spelling=respelling)
    if args.prompt_param:
        try:
            sent = {
                key: value for key, _, value in (item.partition("=") for item in args.arg or ())
            }
            return _explain_prompt(ruleset, request, sent, args.prompt_param)
        except ValueError as exc:
            print(f"securemcp policy explain: {exc}", file=sys.stderr)
            return 2
    if not spellings:
        print(explain_ruleset(ruleset, request))
        return 0
    # a template read is judged as FastMCP reads it and as the function receives it
    print(
        f"canonical spelling: {spellings[0]!r}"
        "; each spelling is judged, the strictest decision wins"
    )
    return _judged(ruleset, [request, dataclasses.replace(request, target=spellings[0])])


def _judged(ruleset: Any, requests: list[Any]) -> int:
    """Explain each form of one call (``as ...:``), then the strictest decision."""
    from securemcp.policy.hooks import strictest
    from securemcp.policy.rules import explain_ruleset

    decisions = []
    for form in requests:
        explanation = explain_ruleset(ruleset, form)
        decisions.append(explanation.decision)
        shown = form.target if form.method == "resources/read" else dict(form.arguments)
        print(f"as {shown!r}:")
        print(explanation)
    decided = strictest(decisions)
    effect = decided.effect.value if decided is not None else "abstain"
    rule = f" by {decided.rule!r}" if decided is not None and decided.rule else ""
    print(f"strictest decision: {effect}{rule}")
    return 0


def _declared(declared: list[str] | None, option: str) -> dict[str, type]:
    """``NAME=TYPE`` items (``--param``, ``--prompt-param``) as annotations by name."""
    from securemcp._template_values import DECLARABLE

    types: dict[str, type] = {}
    for item in declared or ():
        name, sep, kind = item.partition("=")
        if not sep or not name or kind not in DECLARABLE:
            raise ValueError(
                f"{option} must look like NAME=TYPE with TYPE one of "
                f"{', '.join(DECLARABLE)}, got {item!r}"
            )
        types[name] = DECLARABLE[kind]
    return types


def _template_read(
    template: str, uri: str, declared: list[str] | None
) -> tuple[str, str, tuple[str, ...], Any]:
    """(method, target, canonical spellings, respelling) of a read of ``uri`` served by
    ``template`` whose parameters are annotated as ``declared`` (``NAME=TYPE``), as a server
    would judge it."""
    from securemcp._template_values import Respelling, declared_values, template_target
    from securemcp.components import template_query_names

    types = _declared(declared, "--param")
    query_names = template_query_names(template)
    values = declared_values(template, types)
    spellings = values.spellings(uri, query_names)
    respelling = Respelling(values, query_names) if types else None
    return "resources/read", template_target(uri, template, query_names), spellings, respelling


def _explain_prompt(ruleset: Any, request: Any, sent: dict[str, str], declared: list[str]) -> int:
    """Explain a prompts/get call with the arguments ``sent`` (the texts of ``--arg``: prompt
    arguments are strings on the wire) whose prompt function's parameters are annotated as
    ``declared``: as sent, as the function receives them and as canonical text, as a server
    judges them (the strictest decision wins)."""
    from securemcp._prompt_values import ArgumentRespelling, declared_prompt_values

    values = declared_prompt_values(_declared(declared, "--prompt-param"))
    request = dataclasses.replace(
        request, arguments=sent, canonical_argument=ArgumentRespelling(values)
    )
    forms = values.forms(sent)
    if forms is None:
        print("arguments: as sent (each reaches the function as written, or FastMCP refuses one)")
        return _judged(ruleset, [request])
    received = dataclasses.replace(request, arguments=forms.received)
    canonical = dataclasses.replace(request, arguments=forms.texts[0])
    print(
        f"arguments as sent: {sent!r}; as received: {dict(forms.received)!r}; "
        f"canonical: {dict(forms.texts[0])!r}; each form is judged, the strictest decision wins"
    )
    others = [received] + ([canonical] if canonical.arguments != request.arguments else [])
    return _judged(ruleset, [request, *others])


# --- approvals -------------------------------------------------------------------------------


def _when(ts: float | None) -> str:
    if ts is None:
        return "-"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def _run(coro: Any) -> int:
    from securemcp.policy.errors import ApprovalInvalid

    try:
        result: int = asyncio.run(coro)
    except ApprovalInvalid as exc:
        print(f"refused: {exc.client_message}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"securemcp approvals: {exc}", file=sys.stderr)
        return 2
    except (OSError, ConnectionError) as exc:
        print(f"approval store unavailable: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        if type(exc).__module__.startswith(("redis", "sqlite3")):
            print(f"approval store unavailable: {exc}", file=sys.stderr)
            return 2
        raise
    return result


async def _close(store: Any) -> None:
    close = getattr(store, "aclose", None)
    if close is not None:
        await close()


def _list(args: argparse.Namespace) -> int:
    from securemcp.policy.approvals import describe_target, open_store

    async def work() -> int:
        store = open_store(args.store)
        try:
            approvals = await store.list(include_decided=args.all)
        finally:
            await _close(store)
        if args.json:
            print(json.dumps([a.to_dict() for a in approvals], indent=2))
            return 0
        if not approvals:
            print("no pending approval requests" if not args.all else "no approval records")
            return 0
        for a in approvals:
            tenant = f" tenant={a.tenant}" if a.tenant else ""
            decided = f"\n    decided by {a.decided_by} at {_when(a.decided_at)}"
            target = describe_target(a.tool)
            print(
                f"{a.id}  {a.status.value:<8} {target} for {a.subject} ({a.issuer}){tenant}\n"
                f"    requested {_when(a.created_at)}, expires {_when(a.expires_at)}; "
                f"args {a.args_hash[:23]}...; reason: {a.reason or '-'}"
                + (decided if a.decided_by else "")
            )
        return 0

    return _run(work())


def _decide(args: argparse.Namespace, *, approve: bool) -> int:
    from securemcp.policy.approvals import local_operator, open_store

    async def work() -> int:
        store = open_store(args.store)
        operator = local_operator()
        try:
            if approve:
                approval = await store.approve(args.id, operator, args.reusable_for)
            else:
                approval = await store.deny(args.id, operator, args.reason or "")
        finally:
            await _close(store)
        verb = "approved" if approve else "denied"
        extra = ""
        if approve:
            extra = (
                f", reusable until {_when(approval.expires_at)}"
                if approval.reusable
                else f", single use until {_when(approval.expires_at)}"
            )
        print(f"{approval.id} {verb} by {operator.subject}{extra}")
        return 0

    return _run(work())


def register(subparsers: Any) -> None:
    """Add the ``policy`` and ``approvals`` commands to the top-level CLI's subparsers."""
    policy = subparsers.add_parser("policy", help="check and explain a declarative rules file")
    policy_cmds = policy.add_subparsers(dest="policy_command", metavar="COMMAND", required=True)

    check = policy_cmds.add_parser("check", help="validate a rules file (exit 0 valid, 1 invalid)")
    check.add_argument("file", help="the rules file (TOML)")
    check.set_defaults(func=_check)

    explain = policy_cmds.add_parser("explain", help="show which rule decides a given call")
    explain.add_argument("file", help="the rules file (TOML)")
    explain.add_argument("--tool", required=True, help="tool name (the call's target)")
    explain.add_argument("--subject", required=True, help="the caller's subject (sub)")
    explain.add_argument("--issuer", default="https://issuer.example", help="the caller's issuer")
    explain.add_argument("--client-id", default=None, help="the OAuth client id")
    explain.add_argument("--tenant", default=None, help="the caller's tenant")
    explain.add_argument("--scope", action="append", help="a granted scope (repeatable)")
    explain.add_argument("--claim", action="append", metavar="K=V", help="a token claim")
    explain.add_argument("--arg", action="append", metavar="K=V", help="a call argument")
    explain.add_argument("--tag", action="append", help="a tag of the tool (repeatable)")
    explain.add_argument(
        "--risk",
        choices=["read", "write", "external", "destructive", "admin"],
        default=None,
        help="the tool's risk class (default write)",
    )
    explain.add_argument("--method", default="tools/call", help="MCP method (default tools/call)")
    explain.add_argument(
        "--version",
        default=None,
        help="the version of the component the call runs (e.g. 2; default: unversioned)",
    )
    explain.add_argument(
        "--template",
        default=None,
        metavar="URI_TEMPLATE",
        help="for a resource template read (--tool is then the URI read): the URI template "
        "that serves it, e.g. 'items://{id}'",
    )
    explain.add_argument(
        "--param",
        action="append",
        metavar="NAME=TYPE",
        help="with --template: a parameter's annotation in the template function, "
        "int, float, bool or str (the default), e.g. id=int (repeatable)",
    )
    explain.add_argument(
        "--prompt-param",
        action="append",
        metavar="NAME=TYPE",
        help="for a prompts/get call (--tool is the prompt, --arg its arguments, as the text "
        "sent): a parameter's annotation in the prompt function, int, float, bool or str, "
        "e.g. amount=int (repeatable)",
    )
    explain.set_defaults(func=_explain)

    approvals = subparsers.add_parser("approvals", help="list, approve or deny approval requests")
    approval_cmds = approvals.add_subparsers(
        dest="approvals_command", metavar="COMMAND", required=True
    )
    store_help = "approval store: a SQLite path or redis:// URL (default ./.securemcp/...)"

    listing = approval_cmds.add_parser("list", help="list pending approval requests")
    listing.add_argument("--all", action="store_true", help="include decided and expired ones")
    listing.add_argument("--json", action="store_true", help="print JSON")
    listing.add_argument("--store", default=None, help=store_help)
    listing.set_defaults(func=_list)

    approve = approval_cmds.add_parser("approve", help="approve a request (as the local operator)")
    approve.add_argument("id", help="the approval id")
    approve.add_argument(
        "--reusable-for",
        type=float,
        default=None,
        metavar="SECONDS",
        help="allow repeated identical calls for this long (default: single use)",
    )
    approve.add_argument("--store", default=None, help=store_help)
    approve.set_defaults(func=lambda args: _decide(args, approve=True))

    deny = approval_cmds.add_parser("deny", help="deny a request (as the local operator)")
    deny.add_argument("id", help="the approval id")
    deny.add_argument("--reason", default="", help="why (recorded)")
    deny.add_argument("--store", default=None, help=store_help)
    deny.set_defaults(func=lambda args: _decide(args, approve=False))
