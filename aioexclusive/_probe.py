"""``python -m aioexclusive probe HOST PORT [--udp] [--user NAME] [--json]``: can anyone co-bind a running service?

It tries what an attacker would: every combination of ``SO_REUSEADDR`` and
``SO_REUSEPORT``, on the service's own address and on the wildcard (or, for a
wildcard service, a specific address under it), as this user and, when run as
root, as an unprivileged user (``nobody`` unless ``--user`` says otherwise,
plus the service's own user when psutil can name it: ``SO_REUSEPORT`` only
shares within one user). Every socket is closed as soon as its answer is known.

Not disturbing the service is the point, and it decides how TCP is probed:

* A UDP socket that binds next to the service starts receiving its datagrams
  at once, so each one is closed immediately after ``bind``; the bind itself
  is the finding. (A datagram arriving in those microseconds could still land
  in it; that window is the price of an honest answer.)
* A TCP socket only takes connections once it *listens*. One that binds with
  ``SO_REUSEPORT`` must never listen: it would join the service's reuseport
  group and receive a share of its connections, which the probe would then
  reset. It does not need to. On Linux, ``bind`` next to a *listening* socket
  fails unless both sockets set ``SO_REUSEPORT`` and belong to the same user
  (``inet_csk_bind_conflict``: a listener conflicts with everything else, even
  ``SO_REUSEADDR``), and ``listen`` re-checks exactly that rule. So with a
  listener present, "bind succeeded" already means "listen would succeed":
  the port is shareable. The probe therefore first establishes that something
  *listens* there, with attempts that cannot steal anything:

  - a bind with no options succeeding means nothing holds the address at all;
  - on Linux, a bind with ``SO_REUSEADDR`` alone that also *listens*
    successfully means no listener holds it (only TIME_WAIT or unconnected
    sockets). A non-``SO_REUSEPORT`` listener can never share a live
    listener's port, so trying it takes nothing from anyone.

  Either way the probe says there is nothing to audit (exit 2). On Windows and
  BSD, where the sharing rules differ, TCP attempts never listen and a
  successful bind is reported as the finding it is.

Exit status: 0 nothing could co-bind, 1 something could (listed), 2 bad input
or cannot probe (a clear message says why).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import sys
from dataclasses import asdict, dataclass
from typing import Any

from ._attack import NOBODY, Agent, attempt, option_sets, resolve_user
from ._holder import find_holders
from ._term import Out

__all__ = ["ProbeError", "run_probe"]

ON_LINUX = sys.platform.startswith("linux")


class ProbeError(Exception):
    """Bad input, or the probe cannot run: exit status 2 with this message."""


@dataclass
class Identity:
    label: str
    uid: int | None
    agent: Agent | None  # None: attempts made in this process


@dataclass
class Attempt:
    user: str
    uid: int | None
    address: str
    target: str
    options: list[str]
    bound: bool
    listened: bool | None
    failed_at: str | None
    error: str | None
    co_bound: bool


def _is_wildcard(address: str) -> bool:
    return ipaddress.ip_address(address).is_unspecified


def _wildcard(address: str) -> str:
    return "::" if ":" in address else "0.0.0.0"


def _loopback(address: str) -> str:
    return "::1" if ":" in address else "127.0.0.1"


def _addresses(host: str, port: int, proto: str) -> list[str]:
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    flags = socket.AI_PASSIVE
    if not host or all(c in "0123456789." for c in host) or ":" in host:
        # Looks like an address: never let a typo turn into a DNS query.
        flags |= socket.AI_NUMERICHOST
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, kind, 0, flags)
    except socket.gaierror as exc:
        what = "not a valid address" if flags & socket.AI_NUMERICHOST else "cannot resolve it"
        raise ProbeError(f"bad host {host!r}: {what} ({exc.strerror})") from None
    except UnicodeError as exc:
        raise ProbeError(f"bad host {host!r}: {exc}") from None
    found: list[str] = []
    for family, _, _, _, sockaddr in infos:
        if family not in (socket.AF_INET, socket.AF_INET6):
            continue
        address = str(sockaddr[0]).split("%", 1)[0]
        if address not in found:
            found.append(address)
    if not found:
        raise ProbeError(f"host {host!r} has no IPv4 or IPv6 address")
    return found


def _run(identity: Identity, proto: str, address: str, port: int, options: tuple[str, ...], listen: bool) -> dict[str, Any]:
    if identity.agent is None:
        return attempt(proto, address, port, options, listen=listen)
    return identity.agent.attempt(proto, address, port, options, listen=listen)


def _presence(me: Identity, proto: str, address: str, port: int) -> str | None:
    """Why nothing is there to audit on *address*, or ``None`` if a service holds it (see the module docstring)."""
    plain = _run(me, proto, address, port, (), listen=False)
    if plain["bound"]:
        return f"nothing is bound to {address} port {port} ({proto.upper()})"
    if plain["error"] == "EADDRNOTAVAIL":
        raise ProbeError(f"{address} is not an address of this machine: a service cannot be bound there")
    if plain["error"] in ("EACCES", "EPERM"):
        raise ProbeError(
            f"binding {proto.upper()} port {port} on {address} is not allowed for this user ({plain['error']}), "
            "so nothing can be learnt from trying; run the probe as root"
        )
    if plain["error"] != "EADDRINUSE":
        raise ProbeError(f"cannot probe {address} port {port}: bind failed with {plain['error']}")
    if proto == "tcp" and ON_LINUX and hasattr(socket, "SO_REUSEADDR"):
        lone = _run(me, proto, address, port, ("SO_REUSEADDR",), listen=True)
        if lone["listened"]:
            return f"nothing is listening on {address} port {port} (TCP); only connections or TIME_WAIT hold it"
    return None


def _identities(users: list[str] | None, holder_uids: set[int]) -> list[Identity]:
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    me_uid = os.getuid() if hasattr(os, "getuid") else None
    identities = [Identity("this user" + (f" (uid {me_uid})" if me_uid is not None else ""), me_uid, None)]
    if users and not is_root:
        raise ProbeError("--user needs root: switching to another user requires it")
    if not is_root:
        return identities
    wanted: list[tuple[str, int, int]] = []
    for name in users or ["nobody"]:
        try:
            uid, gid = resolve_user(name)
        except KeyError:
            if users:
                raise ProbeError(f"unknown user {name!r}") from None
            uid, gid = NOBODY, NOBODY
        wanted.append((name, uid, gid))
    if not users:
        # SO_REUSEPORT only shares with the same user: ask as the service's
        # own user too, when psutil could tell who that is.
        for uid in sorted(holder_uids):
            if uid != me_uid and all(uid != w[1] for w in wanted):
                wanted.append((f"uid {uid} (the service's user)", uid, _gid_of(uid)))
    for name, uid, gid in wanted:
        label = name if name.startswith("uid ") else f"{name} (uid {uid})"
        try:
            agent = Agent(uid, gid)
            agent.whoami()
        except OSError as exc:
            raise ProbeError(f"cannot run as {label}: {exc}") from None
        identities.append(Identity(label, uid, agent))
    return identities


def _gid_of(uid: int) -> int:
    try:
        import pwd

        return pwd.getpwuid(uid).pw_gid
    except (ImportError, KeyError):
        return uid


def _meaning(a: Attempt, proto: str) -> str:
    unit = "connections" if proto == "tcp" else "datagrams"
    options = "+".join(a.options) or "no options"
    if a.target == "the service's address":
        # SO_REUSEPORT alone: the kernel balances between the sockets; with
        # SO_REUSEADDR (UDP) the newest socket may get everything.
        share = "a share of" if a.options == ["SO_REUSEPORT"] or proto == "tcp" else "some or all of"
        return f"{a.user} can bind {a.address} with {options} and would receive {share} the service's {unit}"
    return (
        f"{a.user} can bind {a.address} ({a.target}) with {options} next to the service; "
        f"depending on the OS that socket can receive {unit} meant for it"
    )


def probe(host: str, port: int, *, udp: bool = False, users: list[str] | None = None) -> dict[str, Any]:
    """Run the probe; the report as a dict (``exit``: 0 or 1). Raises `ProbeError` (exit 2)."""
    proto = "udp" if udp else "tcp"
    if not 1 <= port <= 65535:
        raise ProbeError(f"port must be 1-65535, got {port}")
    addresses = _addresses(host, port, proto)
    me = Identity("this user", os.getuid() if hasattr(os, "getuid") else None, None)
    present: list[str] = []
    absent: list[str] = []
    for address in addresses:
        reason = _presence(me, proto, address, port)
        (absent if reason else present).append(reason or address)
    if not present:
        raise ProbeError("; ".join(absent) + ": start the service first, then probe it")
    holders = [h for address in present for h in find_holders(proto.upper(), address, port)]
    identities = _identities(users, {h.uid for h in holders if h.uid is not None})
    attempts: list[Attempt] = []
    try:
        for identity in identities:
            for address in present:
                targets = [(address, "the service's address")]
                if _is_wildcard(address):
                    targets.append((_loopback(address), "a specific address under the wildcard"))
                else:
                    targets.append((_wildcard(address), "the wildcard address"))
                for target, what in targets:
                    for options in option_sets():
                        # Never listen with SO_REUSEPORT (it would join the
                        # service's group); elsewhere than Linux never listen.
                        listen = proto == "tcp" and ON_LINUX and "SO_REUSEPORT" not in options
                        r = _run(identity, proto, target, port, options, listen)
                        attempts.append(
                            Attempt(
                                user=identity.label,
                                uid=identity.uid,
                                address=target,
                                target=what,
                                options=list(options),
                                bound=r["bound"],
                                listened=r["listened"],
                                failed_at=r["stage"],
                                error=r["error"],
                                co_bound=bool(r["bound"]) and r["listened"] is not False,
                            )
                        )
    finally:
        for identity in identities:
            if identity.agent is not None:
                identity.agent.close()
    findings = [a for a in attempts if a.co_bound]
    return {
        "host": host,
        "port": port,
        "protocol": proto.upper(),
        "addresses": present,
        "not_held": absent,
        "holders": [str(h) for h in holders],
        "users": [i.label for i in identities],
        "attempts": [asdict(a) for a in attempts],
        "shareable": bool(findings),
        "findings": [_meaning(a, proto) for a in findings],
        "exit": 1 if findings else 0,
    }


def _show(out: Out, report: dict[str, Any]) -> None:
    proto = report["protocol"]
    held = f" (held by {', '.join(report['holders'])})" if report["holders"] else ""
    out.line(f"Probing {proto} {report['host']} port {report['port']}{held}", "head")
    out.line(f"as: {', '.join(report['users'])}; every socket closed at once" + (
        "; TCP attempts with SO_REUSEPORT bind but never listen" if proto == "TCP" else ""), "note")
    for note in report["not_held"]:
        out.line(f"skipped: {note}", "note")
    out.line()
    rows, marked = [], []
    for a in report["attempts"]:
        if a["co_bound"]:
            result = "CO-BOUND" + (" and listened" if a["listened"] else "")
        else:
            result = f"refused at {a['failed_at']} ({a['error']})"
        rows.append([a["user"], a["address"], "+".join(a["options"]) or "-", result])
        marked.append(a["co_bound"])
    out.table(["user", "address", "options", "result"], rows, marked=marked)
    out.line()
    if report["shareable"]:
        out.line(f"shareable: {len(report['findings'])} attempt(s) could co-bind (marked *):", "bad")
        for finding in report["findings"]:
            out.line(f"  - {finding}")
        out.line(
            "Fix: open the service on an exclusive loop (loop_factory=aioexclusive.new_event_loop) or bind it "
            "with aioexclusive.bind_socket(); see `python -m aioexclusive plan`.",
            "note",
        )
    else:
        out.line(f"exclusive: none of the {len(report['attempts'])} attempts could co-bind.", "good")


def run_probe(out: Out, host: str, port: int, *, udp: bool, users: list[str] | None, as_json: bool) -> int:
    """The ``probe`` sub-command; returns the exit status."""
    try:
        report = probe(host, port, udp=udp, users=users)
    except ProbeError as exc:
        if as_json:
            print(json.dumps({"error": str(exc), "exit": 2}))
        else:
            print(f"probe: {exc}", file=sys.stderr)
        return 2
    if as_json:
        print(json.dumps(report, indent=2))
    else:
        _show(out, report)
    return int(report["exit"])
