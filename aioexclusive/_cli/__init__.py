"""``python -m aioexclusive``: plan | demo | probe | audit.

argparse only (no dependency); colour through the optional ``rich`` when a
person is reading a terminal (see `aioexclusive._cli.term`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Literal

__all__ = ["main"]

_DESCRIPTION = "aioexclusive: asyncio event loops whose listening sockets nobody else can bind."


def _port(text: str) -> int:
    try:
        port = int(text, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"PORT must be a number 1-65535, got {text!r}") from None
    if not 1 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"PORT must be 1-65535, got {port}")
    return port


def _parser() -> argparse.ArgumentParser:
    from .. import __version__

    parser = argparse.ArgumentParser(prog="python -m aioexclusive", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"aioexclusive {__version__}")
    color_help = "colour output through the optional rich package: auto (a terminal, NO_COLOR unset), always, never"
    parser.add_argument("--color", choices=("auto", "always", "never"), default="auto", help=color_help)
    # Accepted after the sub-command too; SUPPRESS keeps it from overriding a
    # value given before the sub-command with its default.
    color = argparse.ArgumentParser(add_help=False)
    color.add_argument("--color", choices=("auto", "always", "never"), default=argparse.SUPPRESS, help=color_help)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    plan = commands.add_parser(
        "plan",
        parents=[color],
        help="print the bind plan: which socket options each socket gets on each OS, and why",
        description="Print the bind plan for every platform (this one marked *): what aioexclusive sets before "
        "bind() and never allows, per kind of socket, each with its reason.",
    )
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")

    commands.add_parser(
        "demo",
        parents=[color],
        help="hijack a service on loopback, then show the exclusive loop refusing the attacker",
        description="On this machine and on 127.0.0.1 only: a TCP server with reuse_port=True and a UDP service "
        "opened the usual way are hijacked by a separate attacker process (uid 65534 for the cross-user case "
        "when run as root), then the same services on the exclusive loop refuse it. Takes a few seconds. Exit 0 "
        "when every exclusive service kept all its traffic.",
    )

    probe = commands.add_parser(
        "probe",
        parents=[color],
        help="check whether another socket could co-bind a running service's port",
        description="Audit a running service without disturbing it: try to co-bind HOST PORT with every "
        "combination of SO_REUSEADDR and SO_REUSEPORT, on its address and the wildcard, as this user and (as "
        "root) as an unprivileged user. Every socket is closed at once; TCP sockets with SO_REUSEPORT never "
        "listen. Exit 0: nothing could co-bind; 1: something could (listed); 2: bad input or cannot probe.",
    )
    probe.add_argument("host", metavar="HOST", help="the service's address or host name (e.g. 127.0.0.1, ::1, 0.0.0.0)")
    probe.add_argument("port", metavar="PORT", type=_port, help="the service's port")
    probe.add_argument("--udp", action="store_true", help="probe a UDP service (default: TCP)")
    probe.add_argument(
        "--user",
        metavar="NAME",
        action="append",
        help="as root: also try as this user (repeatable; default: nobody, plus the service's user if psutil can tell)",
    )
    probe.add_argument("--json", action="store_true", help="print a JSON report for scripts")

    audit = commands.add_parser(
        "audit",
        parents=[color],
        help="list every listening socket on this host (Linux), who holds it and who could take it over",
        description="Read-only audit of this network namespace (Linux): every listening TCP and bound UDP socket "
        "from /proc/net, the process and user holding it, its real SO_REUSEADDR/SO_REUSEPORT/IPV6_V6ONLY read "
        "through pidfd_getfd, and a verdict by the bind plan's rules. Nothing is bound, connected or sent "
        "(unless --probe). Exit 0: nothing shareable; 1: something shareable; 2: bad input or nothing could "
        "be read.",
    )
    audit.add_argument("--port", metavar="N[-M]", help="only sockets on this port or port range")
    audit.add_argument("--pid", metavar="PID", type=int, help="only sockets held by this process")
    audit.add_argument("--user", metavar="NAME", help="only sockets owned by this user (name or uid)")
    audit_kind = audit.add_mutually_exclusive_group()
    audit_kind.add_argument("--tcp", action="store_true", help="only TCP listeners")
    audit_kind.add_argument("--udp", action="store_true", help="only bound UDP sockets")
    audit.add_argument(
        "--probe",
        action="store_true",
        help="for sockets whose options cannot be read, fall back to the bind probe (binds next to them)",
    )
    audit.add_argument("--json", action="store_true", help="print a JSON report for scripts")
    run = commands.add_parser(
        "run",
        help="run a program with the guard and its post-import hooks on: run [--mode M] [--allow A] -- CMD ARGS...",
        description="Run CMD with AIOEXCLUSIVE_GUARD set (and AIOEXCLUSIVE_GUARD_ALLOW, given --allow) in every "
        "Python process it starts: Python binds become exclusive as the mode says, and grpc, uvloop, gunicorn, "
        "tornado and aiocoap get exclusive defaults. CMD replaces this process (same pid, signals, exit status).",
    )
    run.add_argument(
        "--mode",
        choices=("enforce", "raise", "warn", "off"),
        default="enforce",
        help="the guard's mode (default: enforce)",
    )
    run.add_argument(
        "--allow",
        metavar="HOST:PORT",
        action="append",
        help="a bind to leave shareable (repeatable, or comma-separated; e.g. '*:5353' for mDNS); replaces an "
        "inherited AIOEXCLUSIVE_GUARD_ALLOW",
    )
    run.add_argument("program", nargs=argparse.REMAINDER, metavar="-- CMD ARGS", help="the program and its arguments")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "run":
        from .launcher import launch

        return launch(args.mode, args.allow, args.program)
    from .term import Out

    out = Out(args.color)
    if args.command == "plan":
        if args.json:
            from .planview import plan_rows

            print(json.dumps(plan_rows(), indent=2))
            return 0
        from .planview import show_plan

        show_plan(out)
        return 0
    if args.command == "demo":
        from .demo import run_demo

        return run_demo(out)
    if args.command == "audit":
        from .audit import run_audit

        kind: Literal["tcp", "udp"] | None = "tcp" if args.tcp else "udp" if args.udp else None
        return run_audit(
            out, ports=args.port, pid=args.pid, user=args.user, proto=kind, probe=args.probe, as_json=args.json
        )
    from .probe import run_probe

    return run_probe(out, args.host, args.port, udp=args.udp, users=args.user, as_json=args.json)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
