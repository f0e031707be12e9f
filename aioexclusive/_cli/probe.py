"""``python -m aioexclusive probe HOST PORT [--udp] [--user NAME] [--json]``: can anyone co-bind a running service?

It tries what an attacker would: every combination of ``SO_REUSEADDR`` and
``SO_REUSEPORT``, on the service's own address and on the wildcard (or, for a
wildcard service, a specific address under it), as this user and, when run as
root, as an unprivileged user (``nobody`` unless ``--user`` says otherwise,
plus the service's own user, read from ``/proc/net`` on Linux or from psutil:
``SO_REUSEPORT`` only shares within one user). On Linux it also tries the
two-step binds of the kernel fast path (docs/limits.md) against a wildcard
service of either family: a priming ``SO_REUSEPORT`` bind (alone, and with
``SO_REUSEADDR``, which gets past TIME_WAIT and connections) on the other
family's wildcard, closed, then a dual-stack ``[::]`` bind with ``SO_REUSEPORT``. The final "Fix:" line names
what helps for the program that holds the port (gRPC, granian, gunicorn, ...),
found through psutil or ``/proc``. Every socket is closed as soon as its answer is known.

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
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from .._holder import find_holders
from .attack import NOBODY, Agent, attempt, option_sets, resolve_user
from .term import Out

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
    v6only: bool = True
    primed_with: str | None = None  # the priming bind of a two-step attempt
    prime_options: list[str] | None = None  # the priming bind's options


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
        # A link-local IPv6 address keeps its zone (fe80::1%eth0): without the
        # scope id the kernel cannot tell which link, and bind fails (EINVAL).
        address = str(sockaddr[0])
        scope = int(sockaddr[3]) if family == socket.AF_INET6 and len(sockaddr) == 4 else 0
        if scope and "%" not in address:
            try:
                zone = socket.if_indextoname(scope)
            except OSError:
                zone = str(scope)
            address = f"{address}%{zone}"
        if address not in found:
            found.append(address)
    if not found:
        raise ProbeError(f"host {host!r} has no IPv4 or IPv6 address")
    return found


def _attempt_as(identity: Identity) -> Callable[..., dict[str, Any]]:
    """`attack.attempt` with *identity*: in this process, or the same call in its agent process."""
    return attempt if identity.agent is None else identity.agent.attempt


@dataclass(frozen=True)
class _Plan:
    """One attempt: where, with what, whether it may listen, and an optional priming bind first."""

    target: str
    what: str
    options: tuple[str, ...]
    listen: bool
    v6only: bool = True
    prime: tuple[str, bool, tuple[str, ...]] | None = None  # (address, v6only, options), bound and closed first


def _plans(address: str, proto: str) -> list[_Plan]:
    """Every attempt against a service on *address*, single binds and two-step binds."""
    plans: list[_Plan] = []
    targets = [(address, "the service's address", True)]
    if _is_wildcard(address):
        targets.append((_loopback(address), "a specific address under the wildcard", True))
    else:
        targets.append((_wildcard(address), "the wildcard address", True))
    if socket.has_ipv6:
        # A dual-stack [::] overlaps every IPv4 and IPv6 address of the port.
        targets.append(("::", "the dual-stack wildcard [::] (IPV6_V6ONLY=0)", False))
    for target, what, v6only in targets:
        for options in option_sets():
            # Never listen with SO_REUSEPORT (it would join the service's
            # group); elsewhere than Linux never listen.
            listen = proto == "tcp" and ON_LINUX and "SO_REUSEPORT" not in options
            plans.append(_Plan(target, what, options, listen, v6only))
    if proto == "tcp" and ON_LINUX and hasattr(socket, "SO_REUSEPORT") and socket.has_ipv6 and _is_wildcard(address):
        # The kernel fast path (docs/limits.md): a SO_REUSEPORT bind that
        # passes on the *other* family's wildcard leaves the port's bind
        # bucket in "fast reuse" state for this uid; a dual-stack [::] bind
        # with SO_REUSEPORT then skips the conflict check against the service.
        # Neither socket listens: bind runs the same check listen does, so a
        # bind that passes is a listen that would pass, and nothing is taken.
        # Tried for 0.0.0.0 services too: a dual-stack [::] thief with
        # SO_BINDTODEVICE scores above the IPv4 listener in the kernel's
        # lookup and, with SO_INCOMING_CPU, takes every IPv4 connection
        # (red team, 200/200; without SO_BINDTODEVICE the IPv4 socket wins,
        # which is what commit c32d2fa measured).
        prime_at = ("0.0.0.0", True) if ":" in address else ("::", True)
        # The prime once with SO_REUSEPORT alone and once with SO_REUSEADDR
        # too: SO_REUSEADDR gets it past TIME_WAIT and connected sockets left
        # on the other family's side of the port (a closed listener's last
        # connections), where a SO_REUSEPORT-only prime fails with EADDRINUSE.
        for prime_options in (("SO_REUSEPORT",), ("SO_REUSEADDR", "SO_REUSEPORT")):
            prime = (prime_at[0], prime_at[1], prime_options)
            plans.append(
                _Plan("::", "the dual-stack wildcard [::] after a priming bind", ("SO_REUSEPORT",), False, False, prime)
            )
            if ":" in address:
                plans.append(
                    _Plan(address, "the service's address after a priming bind", ("SO_REUSEPORT",), False, True, prime)
                )
    return plans


def _presence(me: Identity, proto: str, address: str, port: int) -> str | None:
    """Why nothing is there to audit on *address*, or ``None`` if a service holds it (see the module docstring)."""
    plain = _attempt_as(me)(proto, address, port, (), listen=False)
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
        lone = _attempt_as(me)(proto, address, port, ("SO_REUSEADDR",), listen=True)
        if lone["listened"]:
            return f"nothing is listening on {address} port {port} (TCP); only connections or TIME_WAIT hold it"
    return None


@dataclass(frozen=True)
class _Owner:
    """A process holding the service's socket, as far as this machine lets us see."""

    pid: int | None
    uid: int | None
    name: str | None
    cmdline: str
    grpc: bool  # grpc's C core is loaded (it binds in C, SO_REUSEPORT on by default)


def _proc_owners(proto: str, address: str, port: int) -> list[_Owner]:
    """The holders of *address* port *port* from ``/proc/net`` and ``/proc/*/fd``: no psutil needed (Linux).

    The uid comes from the kernel's socket table, readable by every user, so
    it is known even when the process is not (another user's, not as root).
    """
    if not ON_LINUX:
        return []
    try:
        from .._holder import _overlaps
        from .._procnet import read_sockets, socket_owners

        rows = [
            row
            for row in read_sockets(("tcp", "tcp6") if proto == "tcp" else ("udp", "udp6"), ports={port})
            if row.is_listening and _overlaps(address, row.address)
        ]
        scan = socket_owners({row.inode for row in rows}) if rows else None
    except Exception:  # noqa: BLE001 - a diagnostic: never turn the probe into a traceback
        return []
    owners: list[_Owner] = []
    seen: set[tuple[int | None, int]] = set()
    for row in rows:
        pids: list[int | None] = [pid for pid, _ in (scan.owners.get(row.inode, []) if scan is not None else [])]
        pids = pids or [None]
        for pid in pids:
            if (pid, row.uid) in seen:
                continue
            seen.add((pid, row.uid))
            owners.append(_describe_process(pid, row.uid))
    return owners


def _describe_process(pid: int | None, uid: int | None) -> _Owner:
    name = cmdline = None
    grpc = False
    if pid is not None:
        try:
            with open(f"/proc/{pid}/comm", encoding="utf-8", errors="replace") as f:
                name = f.read().strip()
            with open(f"/proc/{pid}/cmdline", "rb") as fb:
                cmdline = fb.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
            # gRPC's C core runs threads of its own (grpc_global_timer,
            # event_engine) once a server or channel exists; merely importing
            # grpc starts none. Thread names are readable without ptrace.
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/comm", encoding="utf-8", errors="replace") as f:
                    if f.read().startswith(("grpc_global_tim", "event_engine")):
                        grpc = True
                        break
        except OSError:
            pass
    return _Owner(pid, uid, name, cmdline or "", grpc)


def _advice(owners: list[_Owner]) -> str:
    """The "Fix:" line: what helps for the program that holds the port (it may not bind in Python at all)."""
    generic = (
        "open the service on an exclusive loop (loop_factory=aioexclusive.new_event_loop) or bind it "
        "with aioexclusive.bind_socket(); see `python -m aioexclusive plan`."
    )
    hints: list[str] = []
    for owner in owners:
        words = f"{owner.name or ''} {owner.cmdline}".lower()
        who = f"pid {owner.pid} ({owner.name})" if owner.pid is not None else "the holder"
        if owner.grpc or "grpc" in words:
            hint = (
                f"{who} is a gRPC server, which binds in C with SO_REUSEPORT on by default: create it with "
                'options=[("grpc.so_reuseport", 0)] (aioexclusive.contrib.grpc does that)'
            )
        elif "granian" in words:
            hint = (
                f"{who} is granian, which binds in Rust: the exclusive loop cannot reach its sockets; start it "
                "without SO_REUSEPORT sharing (no --reuse-port style option, a single process per socket) or pass "
                "it a socket bound by aioexclusive.bind_socket() if your version accepts one"
            )
        elif "gunicorn" in words:
            hint = (
                f"{who} is gunicorn: drop --reuse-port (reuse_port = False), and with uvicorn workers use "
                "aioexclusive.contrib.uvicorn"
            )
        elif "hypercorn" in words:
            hint = f"{who} is hypercorn: use aioexclusive.contrib.hypercorn.ExclusiveConfig"
        elif "uvicorn" in words:
            hint = f"{who} is uvicorn: use aioexclusive.contrib.uvicorn (or --loop aioexclusive:new_event_loop)"
        elif owner.name is not None and not owner.name.startswith("python") and "python" not in words:
            hint = (
                f"{who} is not a Python program: aioexclusive cannot change how it binds; turn off its "
                "SO_REUSEPORT/SO_REUSEADDR option in its own configuration"
            )
        else:
            continue
        if hint not in hints:
            hints.append(hint)
    return "; ".join(hints) + "." if hints else generic


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
        # own user too (from /proc/net or psutil).
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
    if a.primed_with is not None:
        return (
            f"{a.user} can bind {a.address} with {options}"
            + ("" if a.v6only else " and IPV6_V6ONLY=0")
            + f" after a priming bind of {a.primed_with} with {'+'.join(a.prime_options or ['SO_REUSEPORT'])} "
            "(kernel fast path: the conflict check "
            f"is skipped); such a listener competes for the service's {unit} and, with SO_INCOMING_CPU, wins them"
        )
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
    owners = [o for address in present for o in _proc_owners(proto, address, port)]
    # The service's uid: psutil's answer, or the kernel's socket table (no
    # psutil needed; SO_REUSEPORT shares within one uid, so it must be tried).
    holder_uids = {h.uid for h in holders if h.uid is not None} | {o.uid for o in owners if o.uid is not None}
    if not owners and holders:
        owners = [_describe_process(h.pid, h.uid) for h in holders]
    identities = _identities(users, holder_uids)
    attempts: list[Attempt] = []
    try:
        for identity in identities:
            for address in present:
                for plan in _plans(address, proto):
                    prime = None
                    if plan.prime is not None:
                        prime = {"host": plan.prime[0], "options": list(plan.prime[2]), "v6only": plan.prime[1]}
                    r = _attempt_as(identity)(
                        proto, plan.target, port, plan.options, listen=plan.listen, v6only=plan.v6only, prime=prime
                    )
                    attempts.append(
                        Attempt(
                            user=identity.label,
                            uid=identity.uid,
                            address=plan.target,
                            target=plan.what,
                            options=list(plan.options),
                            bound=r["bound"],
                            listened=r["listened"],
                            failed_at=r["stage"],
                            error=r["error"],
                            co_bound=bool(r["bound"]) and r["listened"] is not False,
                            v6only=plan.v6only,
                            primed_with=None if plan.prime is None else plan.prime[0],
                            prime_options=None if plan.prime is None else list(plan.prime[2]),
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
        "holders": [str(h) for h in holders]
        or [f"pid {o.pid} ({o.name}, uid {o.uid})" if o.pid is not None else f"uid {o.uid}" for o in owners],
        "fix": _advice(owners),
        "users": [i.label for i in identities],
        "attempts": [asdict(a) for a in attempts],
        "shareable": bool(findings),
        # Found only by a two-step bind (prime, close, bind again): see docs/limits.md.
        "kernel_fast_path": any(a.primed_with is not None for a in findings),
        "findings": [_meaning(a, proto) for a in findings],
        "exit": 1 if findings else 0,
    }


def _show(out: Out, report: dict[str, Any]) -> None:
    proto = report["protocol"]
    held = f" (held by {', '.join(report['holders'])})" if report["holders"] else ""
    out.line(f"Probing {proto} {report['host']} port {report['port']}{held}", "head")
    out.line(
        f"as: {', '.join(report['users'])}; every socket closed at once"
        + ("; TCP attempts with SO_REUSEPORT bind but never listen" if proto == "TCP" else ""),
        "note",
    )
    for note in report["not_held"]:
        out.line(f"skipped: {note}", "note")
    out.line()
    rows, marked = [], []
    for a in report["attempts"]:
        if a["co_bound"]:
            result = "CO-BOUND" + (" and listened" if a["listened"] else "")
        else:
            result = f"refused at {a['failed_at']} ({a['error']})"
        options = "+".join(a["options"]) or "-"
        if not a.get("v6only", True):
            options += " V6ONLY=0"
        if a.get("primed_with"):
            primed = "+".join(a.get("prime_options") or ["SO_REUSEPORT"])
            options = f"{a['primed_with']} ({primed}) then {options}"
        rows.append([a["user"], a["address"], options, result])
        marked.append(a["co_bound"])
    out.table(["user", "address", "options", "result"], rows, marked=marked)
    out.line()
    if report["shareable"]:
        fast_path = " (kernel fast path)" if report.get("kernel_fast_path") else ""
        out.line(f"shareable{fast_path}: {len(report['findings'])} attempt(s) could co-bind (marked *):", "bad")
        for finding in report["findings"]:
            out.line(f"  - {finding}")
        out.line(f"Fix: {report['fix']}", "note")
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
