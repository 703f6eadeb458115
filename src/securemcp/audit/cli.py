"""The ``securemcp audit`` and ``securemcp keys`` commands.

:func:`register` adds them to the ``securemcp`` command's sub-parsers; each leaf parser sets
``func`` to a callable taking the parsed ``argparse.Namespace`` and returning the exit code:

* ``audit verify [PATH] --keyring FILE [--trusted-checkpoint FILE] [--allow-retired-seal]
  [--json]`` — exit 0 verified, 1 tampered, 2 usage or I/O error, 3 no trusted signature (also:
  a retired key signed past its bound, or only retired keys seal the log), 4 verified but
  unsealed tail. With no PATH: the default folder against the local development keyring (with a
  warning);
* ``audit show [PATH]`` / ``audit tail [PATH] [-n N]`` — records as a table or ``--json`` lines,
  filtered by ``--user``, ``--tool``, ``--decision``, ``--type``, ``--since``, ``--until``;
* ``keys generate --name NAME [--out FILE] [--keyring FILE]`` — a new Ed25519 signing key
  (mode 0600) and its keyring line;
* ``keys retire KEY --keyring FILE (--log PATH... | --after-size N)`` — mark KEY retired in the
  keyring file (``retired-after-size=N``), after checking that each log still verifies
  (:mod:`securemcp.audit.retirement`); exit 0 done, 2 refused (nothing written).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Final, TextIO

from securemcp._files import KEYRING_MAX_BYTES, open_regular, read_regular_text
from securemcp.audit.errors import KeyringError
from securemcp.audit.keys import DEV_KEYRING_FILE, Keyring, default_key_dir, generate_key_file
from securemcp.audit.reader import RecordFilter, iter_records, parse_time, tail_records
from securemcp.audit.retirement import plan_retirement, retire_in_text, write_keyring
from securemcp.audit.storage import default_audit_dir
from securemcp.audit.verifier import VerificationReport, verify

__all__ = ["register"]

_EXIT_USAGE: Final = 2
_HEADINGS: Final = ("SEQ", "TIME (UTC)", "TYPE", "USER", "TARGET", "RESULT", "DETAIL")


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``audit`` (``verify``, ``show``, ``tail``) and ``keys`` (``generate``, ``retire``)."""
    audit = subparsers.add_parser(
        "audit",
        help="verify and read the signed audit log",
        description="Verify and read the signed, hash-chained audit log.",
    )
    audit.set_defaults(func=_usage(audit))
    commands = audit.add_subparsers(dest="audit_command", metavar="COMMAND")

    check = commands.add_parser(
        "verify",
        help="verify a log offline against a pinned keyring",
        description=(
            "Verify an audit log offline. Exit status: 0 verified, 1 tampered, 2 usage or I/O "
            "error, 3 no trusted signature, 4 verified but unsealed tail."
        ),
    )
    check.add_argument("path", nargs="?", help="log folder (default: the local log)")
    check.add_argument("--keyring", metavar="FILE", help="trusted public keys, one per line")
    check.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="a signed checkpoint obtained out of band (from a witness or SIEM)",
    )
    check.add_argument(
        "--allow-retired-seal",
        action="store_true",
        help="accept a log sealed only by retired keys (an archive sealed before a rotation)",
    )
    check.add_argument("--json", action="store_true", help="print the report as JSON")
    check.add_argument("--workers", type=int, default=None, help=argparse.SUPPRESS)
    check.set_defaults(func=_verify)

    for name, summary in (
        ("show", "print records, oldest first"),
        ("tail", "print the last records"),
    ):
        reader = commands.add_parser(name, help=summary, description=summary.capitalize() + ".")
        reader.add_argument("path", nargs="?", help="log folder (default: the local log)")
        if name == "tail":
            reader.add_argument("-n", "--lines", type=int, default=20, help="how many (20)")
        else:
            reader.add_argument("--limit", type=int, default=None, help="print at most N")
        reader.add_argument("--user", help="only this identity subject")
        reader.add_argument("--tool", help="only this target (tool, resource or prompt)")
        reader.add_argument("--decision", help="only decisions with this result (allow, deny...)")
        reader.add_argument("--type", help="only this record type")
        reader.add_argument("--since", help="from this time (RFC 3339, or 15m / 2h / 7d ago)")
        reader.add_argument("--until", help="up to this time (RFC 3339, or 15m / 2h / 7d ago)")
        reader.add_argument("--json", action="store_true", help="one JSON record per line")
        reader.set_defaults(func=_show if name == "show" else _tail)

    keys = subparsers.add_parser(
        "keys", help="manage audit signing keys", description="Manage audit signing keys."
    )
    keys.set_defaults(func=_usage(keys))
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    generate = key_commands.add_parser(
        "generate",
        help="generate an Ed25519 checkpoint signing key",
        description=(
            "Generate an Ed25519 signing key (file mode 0600) and print its public keyring line."
        ),
    )
    generate.add_argument("--name", default="securemcp-audit", help="key name (no spaces or +)")
    generate.add_argument("--out", metavar="FILE", help="private key file (default: key folder)")
    generate.add_argument(
        "--keyring", metavar="FILE", help="also append the public line to this keyring file"
    )
    generate.add_argument("--force", action="store_true", help="overwrite an existing key file")
    generate.set_defaults(func=_generate)

    retire = key_commands.add_parser(
        "retire",
        help="retire a key in a keyring after a rotation",
        description=(
            "Mark KEY retired in the keyring file: trusted only for checkpoints of at most N "
            "records (retired-after-size=N). N is the largest checkpoint KEY signed in the "
            "logs given (each must verify, and still verify once KEY is retired: pin the new "
            "key first), or --after-size. Exit 0 done, 2 refused (nothing written)."
        ),
    )
    retire.add_argument("key", metavar="KEY", help="NAME, NAME+KEYID or the verifier key")
    retire.add_argument("--keyring", metavar="FILE", required=True, help="keyring file to edit")
    bound = retire.add_mutually_exclusive_group(required=True)
    bound.add_argument(
        "--log",
        metavar="PATH",
        action="append",
        help="a log folder KEY signed (repeat for every log it signed)",
    )
    bound.add_argument("--after-size", metavar="N", type=int, help="the bound, given directly")
    retire.set_defaults(func=_retire)


def _usage(parser: argparse.ArgumentParser) -> Any:
    def show_help(args: argparse.Namespace) -> int:
        parser.print_help(sys.stderr)
        return _EXIT_USAGE

    return show_help


def _error(message: str) -> int:
    print(f"securemcp: {message}", file=sys.stderr)
    return _EXIT_USAGE


# --- audit verify ----------------------------------------------------------------------------


def _verify(args: argparse.Namespace) -> int:
    from securemcp.audit._progress import ProgressBar

    if args.path is None:
        path = default_audit_dir()
        keyring = Path(args.keyring) if args.keyring else default_key_dir() / DEV_KEYRING_FILE
        if not args.keyring:
            print(
                "warning: verifying the local log against the local development keyring "
                f"({keyring}); a key kept next to the log proves little. Pin a keyring from a "
                "trusted source with --keyring.",
                file=sys.stderr,
            )
    elif not args.keyring:
        return _error("audit verify: --keyring FILE is required when PATH is given")
    else:
        path, keyring = Path(args.path), Path(args.keyring)
    if not keyring.exists():
        return _error(f"audit verify: keyring {keyring} not found")
    if not keyring.is_file():  # stat only: opening a FIFO would block
        return _error(f"audit verify: keyring {keyring} is not a regular file")
    bar = ProgressBar(sys.stderr)
    try:
        report = verify(
            path,
            keyring=keyring,
            trusted_checkpoint=args.trusted_checkpoint,
            progress=bar,
            workers=args.workers,
            allow_retired_seal=args.allow_retired_seal,
        )
    finally:
        bar.finish()
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, sort_keys=True))
    else:
        _print_report(report, sys.stdout)
    return report.exit_code


def _print_report(report: VerificationReport, out: TextIO) -> None:
    title = report.status.upper().replace("_", " ")
    if report.status == "verified":
        closed = ", closed cleanly" if report.closed else ", still open or not closed cleanly"
        print(f"{title}: {report.detail}{closed}.", file=out)
    else:
        where = f" at seq {report.first_bad_seq}" if report.first_bad_seq is not None else ""
        kind = f" [{report.kind}]" if report.kind else ""
        print(f"{title}{where}{kind}: {report.detail}", file=out)
    if report.log_id:
        print(f"  log:         {report.log_id}", file=out)
    if report.status != "io_error" or report.records:  # nothing was read: no zero counts
        print(
            f"  records:     {report.records} verified, {report.sealed} sealed by "
            f"{report.trusted_checkpoints}/{report.checkpoints} trusted checkpoint(s), "
            f"{report.segments} segment(s)",
            file=out,
        )
    if report.signers:
        print(f"  signed by:   {', '.join(report.signers)}", file=out)
    for warning in report.warnings:
        print(f"  warning:     {warning}", file=out)


# --- audit show / tail -----------------------------------------------------------------------


def _filter(args: argparse.Namespace) -> RecordFilter:
    return RecordFilter(
        user=args.user,
        tool=args.tool,
        decision=args.decision,
        type=args.type,
        since=parse_time(args.since) if args.since else None,
        until=parse_time(args.until) if args.until else None,
    )


def _show(args: argparse.Namespace) -> int:
    return _read(args, tail=False)


def _tail(args: argparse.Namespace) -> int:
    return _read(args, tail=True)


def _read(args: argparse.Namespace, *, tail: bool) -> int:
    directory = Path(args.path) if args.path else default_audit_dir()
    if not directory.is_dir():
        return _error(f"no audit log at {directory}")
    try:
        where = _filter(args)
    except ValueError as exc:
        return _error(str(exc))
    try:
        if tail:
            records: Iterable[dict[str, Any]] = tail_records(directory, args.lines, where=where)
        else:
            records = iter_records(directory, where=where)
            if args.limit is not None:
                records = (r for i, r in enumerate(records) if i < args.limit)
        _print_records(records, as_json=args.json, out=sys.stdout)
    except OSError as exc:
        return _error(f"cannot read {directory}: {exc}")
    except BrokenPipeError:  # pragma: no cover - e.g. piped into head
        return 0
    return 0


def _row(record: Mapping[str, Any]) -> tuple[str, ...]:
    identity = record.get("identity")
    user = identity.get("subject") if isinstance(identity, Mapping) else None
    decision = record.get("decision")
    result: Any = "-"
    detail: Any = ""
    if isinstance(decision, Mapping):
        result = decision.get("result")
        detail = decision.get("reason") or decision.get("rule") or ""
    elif record.get("type") == "outcome":
        result = record.get("outcome")
        detail = f"{record.get('duration_ms')} ms" + (
            f" {record['error']}" if record.get("error") else ""
        )
    elif "reason" in record:
        detail = record.get("reason")
    ts = str(record.get("ts", ""))
    return (
        str(record.get("seq", "")),
        ts.replace("T", " ").rstrip("Z")[:23],
        str(record.get("type", "")),
        str(user or "-"),
        str(record.get("target") or "-"),
        str(result or "-"),
        str(detail or ""),
    )


def _print_records(records: Iterable[dict[str, Any]], *, as_json: bool, out: TextIO) -> None:
    if as_json:
        for record in records:
            print(json.dumps(record, ensure_ascii=False, sort_keys=True), file=out)
        return
    widths = (6, 23, 13, 16, 20, 10)
    heading = [h.ljust(w) for h, w in zip(_HEADINGS, widths, strict=False)]
    print("  ".join([*heading, _HEADINGS[-1]]), file=out)
    for record in records:
        row = _row(record)
        cells = [cell[:width].ljust(width) for cell, width in zip(row, widths, strict=False)]
        print("  ".join([*cells, row[-1]]).rstrip(), file=out)


# --- keys generate ---------------------------------------------------------------------------


def _generate(args: argparse.Namespace) -> int:
    out = Path(args.out) if args.out else default_key_dir() / f"{args.name}.key"
    keyring_fd = -1
    if args.keyring:  # opened first: no key is written for a keyring that cannot take its line
        try:
            keyring_fd = open_regular(args.keyring, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        except OSError as exc:
            return _error(f"keys generate: cannot append to {args.keyring}: {exc}")
    try:
        try:
            signer = generate_key_file(out, args.name, overwrite=args.force)
        except FileExistsError:
            return _error(f"keys generate: {out} exists (use --force to overwrite)")
        except KeyringError as exc:
            return _error(f"keys generate: {exc}")
        except OSError as exc:
            return _error(f"keys generate: cannot write {out}: {exc}")
        line = str(signer.verifier_key())
        if keyring_fd >= 0:
            with os.fdopen(keyring_fd, "w", encoding="utf-8") as handle:
                keyring_fd = -1
                handle.write(line + "\n")
    finally:
        if keyring_fd >= 0:
            os.close(keyring_fd)
    print(line)
    print(f"private key written to {out} (mode 0600); keep it secret.", file=sys.stderr)
    return 0


# --- keys retire -----------------------------------------------------------------------------


def _retire(args: argparse.Namespace) -> int:
    path = Path(args.keyring)
    try:
        text = read_regular_text(path, limit=KEYRING_MAX_BYTES)  # never blocks on a FIFO
        keyring = Keyring.parse(text)
        plan = plan_retirement(
            keyring, args.key, after_size=args.after_size, logs=tuple(args.log or ())
        )
        if not plan.unchanged:
            write_keyring(path, retire_in_text(text, plan))
    except (KeyringError, ValueError) as exc:  # ValueError: not UTF-8
        return _error(f"keys retire: {exc}; {path} is unchanged")
    except OSError as exc:
        return _error(f"keys retire: cannot update {path}: {exc}")
    key = plan.key
    if plan.unchanged:
        print(f"{key.name} is already retired after {plan.after_size} records.", file=sys.stderr)
        return 0
    print(f"{key} retired-after-size={plan.after_size}")
    print(
        f"{key.name} is trusted only for checkpoints of at most {plan.after_size} records"
        + (
            f"; {len(plan.reports)} log(s) still verify"
            if plan.reports
            else "; no log was checked (pass --log PATH to check)"
        )
        + f". Distribute {path} to every verifier and writer.",
        file=sys.stderr,
    )
    return 0
