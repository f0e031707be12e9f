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
family's wildcard, closed, then a dual-stack ``[::]`` bind with ``SO_REUSEPORT``; a specific
address served by a wildcard listener (nothing listens on the address itself) gets the wildcard's
attempts too; and a prime bound to another network interface, which only passes next to a listener
bound to one interface (`_device_plans`; a note when no other interface exists, so nobody here can
perform it; "unknown", exit 2, when binding to one fails for another reason). The final "Fix:" line names
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
or cannot probe (a clear message says why), or an attack could not be tried
and nothing was found (the report's ``unknown`` says which).
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
import struct
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
    prime_device: str | None = None  # the interface the prime was bound to
    device: str | None = None  # the interface the attempt was bound to


def _ipv4_of(address: str) -> ipaddress.IPv4Address | None:
    """The IPv4 address *address* serves: itself, or the one an IPv4-mapped ``::ffff:a.b.c.d`` maps."""
    ip = ipaddress.ip_address(address.partition("%")[0])
    if isinstance(ip, ipaddress.IPv4Address):
        return ip
    return ip.ipv4_mapped


def _is_wildcard(address: str) -> bool:
    """``0.0.0.0``, ``::``, or the IPv4-mapped ``::ffff:0.0.0.0`` (an IPv4 wildcard on an AF_INET6 socket)."""
    v4 = _ipv4_of(address)
    return v4.is_unspecified if v4 is not None else ipaddress.ip_address(address.partition("%")[0]).is_unspecified


def _ipv4_side(address: str) -> bool:
    return _ipv4_of(address) is not None


def _wildcard(address: str) -> str:
    return "0.0.0.0" if _ipv4_side(address) else "::"


def _loopback(address: str) -> str:
    return "127.0.0.1" if _ipv4_side(address) else "::1"


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
    prime_device: str | None = None  # the interface the prime is bound to (SO_BINDTODEVICE)
    device: str | None = None  # the interface the attempt is bound to


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
        prime_at = ("::", True) if _ipv4_side(address) else ("0.0.0.0", True)
        # The prime once with SO_REUSEPORT alone and once with SO_REUSEADDR
        # too: SO_REUSEADDR gets it past TIME_WAIT and connected sockets left
        # on the other family's side of the port (a closed listener's last
        # connections), where a SO_REUSEPORT-only prime fails with EADDRINUSE.
        for prime_options in (("SO_REUSEPORT",), ("SO_REUSEADDR", "SO_REUSEPORT")):
            prime = (prime_at[0], prime_at[1], prime_options)
            plans.append(
                _Plan("::", "the dual-stack wildcard [::] after a priming bind", ("SO_REUSEPORT",), False, False, prime)
            )
            if not _ipv4_side(address):
                plans.append(
                    _Plan(address, "the service's address after a priming bind", ("SO_REUSEPORT",), False, True, prime)
                )
    return plans


# How many other interfaces a device-bound prime is tried on (one passes unless the listener is bound to it).
_PRIME_DEVICES = 3
_DEVICE_TARGET = "the service's address on its interface after a priming bind on another interface"


def _device_plans(address: str, proto: str) -> tuple[list[_Plan], str | None]:
    """The device-bound takeover (red team 4, F6), and a note when nobody can perform it here (else ``None``).

    A TCP listener bound to one interface (SO_BINDTODEVICE, or a link-local
    address's scope id) conflicts only with sockets of no interface or of its
    own. A SO_REUSEPORT prime on the wildcard bound to *another* interface
    therefore passes next to it and leaves the port's fast-reuse record for
    this uid; a SO_REUSEPORT bind of the service's address on its interface
    then skips the conflict check. Against a listener of no interface the
    prime conflicts and is refused. Neither socket listens.
    """
    if not (proto == "tcp" and ON_LINUX and hasattr(socket, "SO_REUSEPORT") and hasattr(socket, "if_nameindex")):
        return [], None
    own = _device_of(address)
    try:
        names = [name for _, name in socket.if_nameindex()]
    except OSError:
        names = []
    others = [name for name in names if name != own][:_PRIME_DEVICES]
    # The prime must be tried on an interface the listener is surely not bound to: one other than the
    # address's own, or, when that is not known, two (the listener can be bound to one of them only).
    if len(others) < (1 if own else 2):
        # Not "unknown": the attack needs a second interface to prime on, and without one nobody here
        # (no user without CAP_NET_ADMIN in this namespace) can perform it, against any listener.
        return [], (
            f"the device-bound takeover of {address} was not tried: it needs a network interface other than "
            f"{own or 'the one the listener may be bound to'} to prime on, and this network namespace has "
            f"{'none' if not others else 'only ' + others[0]}, so nobody can perform it here now (if an interface "
            "is added, a listener bound to one interface becomes open to it: the audit reads SO_BINDTODEVICE)"
        )
    # (prime, thief, thief's IPV6_V6ONLY): the service's own family's wildcard, then the service's address;
    # for a wildcard service also the two-step's shape (the other family's wildcard, then a dual-stack [::]),
    # which gets past the other family's side held by a socket bound to one interface.
    shapes = [(_wildcard(address), address, True)]
    if _is_wildcard(address) and socket.has_ipv6:
        shapes.append(("::" if _ipv4_side(address) else "0.0.0.0", "::", False))
    plans = [
        _Plan(
            target,
            _DEVICE_TARGET
            if target == address
            else "the dual-stack wildcard [::] after a priming bind on another interface",
            ("SO_REUSEPORT",),
            False,
            v6only,
            (prime_at, True, ("SO_REUSEPORT",)),
            prime_device=device,
            device=own,
        )
        for prime_at, target, v6only in shapes
        for device in others
    ]
    return plans, None


def _device_of(address: str) -> str | None:
    """The interface *address* belongs to, as far as this machine says (Linux), else ``None``."""
    base, _, zone = address.partition("%")
    try:
        if zone:
            return socket.if_indextoname(int(zone)) if zone.isdigit() else zone
        ip = ipaddress.ip_address(base)
        v4 = _ipv4_of(base)
        if ip.is_unspecified or (v4 is not None and v4.is_unspecified):
            return None
        names = [name for _, name in socket.if_nameindex()]
        if ip.is_loopback or (v4 is not None and v4.is_loopback):
            return "lo" if "lo" in names else None
        if v4 is None:
            with open("/proc/net/if_inet6", encoding="ascii") as table:
                for line in table:
                    parts = line.split()
                    if len(parts) == 6 and ipaddress.IPv6Address(int(parts[0], 16)) == ip:
                        return parts[5]
            return None
        import fcntl

        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe_sock:
            for name in names:
                # SIOCGIFADDR: the interface's (primary) IPv4 address.
                try:
                    reply = fcntl.ioctl(probe_sock.fileno(), 0x8915, struct.pack("256s", name.encode()[:15]))
                except OSError:
                    continue
                if ipaddress.IPv4Address(reply[20:24]) == v4:
                    return name
    except (OSError, ValueError):
        return None
    return None


def _serving_wildcards(proto: str, address: str, port: int) -> list[str]:
    """The wildcard listeners that serve *address* (a specific one) because nothing listens on it exactly (Linux).

    The kernel hands a connection to ``127.0.0.1:P`` to a listener on exactly
    that address if there is one, else to one on the wildcard
    (``0.0.0.0``, ``::ffff:0.0.0.0``, a dual-stack ``[::]``; for IPv6,
    ``[::]``): that is the socket an attacker takes over (red team 4, F5).
    """
    if proto != "tcp" or not ON_LINUX or _is_wildcard(address):
        return []
    try:
        from .._procnet import read_sockets

        rows = [row for row in read_sockets(("tcp", "tcp6"), ports={port}) if row.is_listening]
    except Exception:  # noqa: BLE001 - a diagnostic: never turn the probe into a traceback
        return []
    v4 = _ipv4_of(address)
    wanted = ipaddress.ip_address(address.partition("%")[0])
    found: list[str] = []
    for row in rows:
        row_v4 = _ipv4_of(row.address)
        if (v4 is not None and row_v4 == v4) or (v4 is None and ipaddress.ip_address(row.address) == wanted):
            return []  # a listener on the address itself serves it
        if not row.is_wildcard:
            continue
        # 0.0.0.0 and ::ffff:0.0.0.0 serve IPv4; [::] serves IPv6, and IPv4 too when dual-stack (the
        # two-step attempts on it are refused if it is: nothing is claimed that is not tried).
        if (row_v4 is not None and v4 is not None) or row.address == "::":
            if row.address not in found:
                found.append(row.address)
    return found


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
    if a.prime_device is not None:
        return (
            f"{a.user} can bind {a.address} with {options}"
            + ("" if a.v6only else " and IPV6_V6ONLY=0")
            + (f" on interface {a.device}" if a.device else "")
            + f" after a priming bind of {a.primed_with} with SO_REUSEPORT on interface {a.prime_device}: what "
            "holds the port there (the listener, or the socket holding its other family's side) is bound to one "
            "interface, so a prime on another one does not conflict with it and the kernel fast path skips the "
            f"conflict check; such a listener on the service's interface wins its {unit} (with SO_INCOMING_CPU)"
        )
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
    # A specific address with no listener of its own is served by a wildcard listener: attack that one too.
    served_by: dict[str, list[str]] = {}
    targets = list(present)
    for address in present:
        for wildcard in _serving_wildcards(proto, address, port):
            served_by.setdefault(address, []).append(wildcard)
            if wildcard not in targets:
                targets.append(wildcard)
    # The same holder once, though a specific address and its wildcard both name it.
    holders = list({str(h): h for address in targets for h in find_holders(proto.upper(), address, port)}.values())
    owners = list({(o.pid, o.uid): o for address in targets for o in _proc_owners(proto, address, port)}.values())
    # The service's uid: psutil's answer, or the kernel's socket table (no
    # psutil needed; SO_REUSEPORT shares within one uid, so it must be tried).
    holder_uids = {h.uid for h in holders if h.uid is not None} | {o.uid for o in owners if o.uid is not None}
    if not owners and holders:
        owners = [_describe_process(h.pid, h.uid) for h in holders]
    identities = _identities(users, holder_uids)
    attempts: list[Attempt] = []
    # (address, why) for each device-bound takeover an identity could not try.
    untried: list[tuple[str, str]] = []
    notes: list[str] = []
    plans_of: dict[str, list[_Plan]] = {}
    for address in targets:
        # The device-bound takeover last: a prime that passes leaves the fast-reuse record for this uid.
        device_plans, not_here = _device_plans(address, proto)
        plans_of[address] = _plans(address, proto) + device_plans
        if not_here is not None:
            notes.append(not_here)
    try:
        for identity in identities:
            found = False
            for address in targets:
                for plan in plans_of[address]:
                    if found and plan.prime_device is not None:
                        # This user already co-bound: a bind that passed with SO_REUSEPORT left the port's
                        # fast-reuse record for it, so a device-bound attempt would pass whatever the listener.
                        continue
                    prime = None
                    if plan.prime is not None:
                        prime = {
                            "host": plan.prime[0],
                            "options": list(plan.prime[2]),
                            "v6only": plan.prime[1],
                            "device": plan.prime_device,
                        }
                    r = _attempt_as(identity)(
                        proto,
                        plan.target,
                        port,
                        plan.options,
                        listen=plan.listen,
                        v6only=plan.v6only,
                        prime=prime,
                        device=plan.device,
                    )
                    if plan.prime_device is not None and r["stage"] == "prime" and r["error"] != "EADDRINUSE":
                        # Not refused by a conflict: the attack was not tried (an old kernel's EPERM, a
                        # vanished interface). Refusals by conflict are what "exclusive" rests on.
                        why = (
                            f"the device-bound takeover of {address} could not be tried as {identity.label}: "
                            f"binding to interface {plan.prime_device} failed ({r['error']})"
                        )
                        if (address, why) not in untried:
                            untried.append((address, why))
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
                            prime_device=plan.prime_device,
                            device=plan.device,
                        )
                    )
                    found = found or attempts[-1].co_bound
    finally:
        for identity in identities:
            if identity.agent is not None:
                identity.agent.close()
    findings = [a for a in attempts if a.co_bound]
    # Tried for an address when some identity's prime passed or was refused by a conflict.
    device_tried = {
        a.address
        for a in attempts
        if a.prime_device is not None and (a.failed_at != "prime" or a.error == "EADDRINUSE")
    }
    # An identity that could bind to some interface answered the question: drop what another could not.
    unknown = [why for address, why in untried if address not in device_tried]
    return {
        "host": host,
        "port": port,
        "protocol": proto.upper(),
        "addresses": present,
        "served_by": served_by,
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
        # Attacks that could not be tried: without a finding the answer is "unknown" (exit 2), never "exclusive".
        "unknown": [] if findings else unknown,
        # Attacks nobody can perform in this network namespace now, and why.
        "notes": notes,
        "exit": 1 if findings else (2 if unknown else 0),
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
    for note in report.get("notes", []):
        out.line(f"note: {note}", "note")
    for address, wildcards in report.get("served_by", {}).items():
        out.line(
            f"{address} has no listener of its own: {' and '.join(wildcards)} port {report['port']} serves it, "
            "so that listener is attacked too",
            "note",
        )
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
        if a.get("device"):
            options += f" on {a['device']}"
        if a.get("primed_with"):
            primed = "+".join(a.get("prime_options") or ["SO_REUSEPORT"])
            if a.get("prime_device"):
                primed += f" on {a['prime_device']}"
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
    elif report.get("unknown"):
        out.line(
            f"unknown: none of the {len(report['attempts'])} attempts could co-bind, but not all were tried:", "bad"
        )
        for why in report["unknown"]:
            out.line(f"  - {why}")
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
