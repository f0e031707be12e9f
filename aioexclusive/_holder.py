"""Who holds a port (or a socket path): the process named in `AddressInUseError`.

Only ever called on the error path, and strictly best effort: psutil is an
optional extra and is imported lazily; when it is missing, when the OS refuses
to show other users' sockets (psutil's ``AccessDenied``, or a ``pid`` of
``None`` for sockets of other users on Linux as non-root), or when anything
else goes wrong, the answer is ``None`` and the error message falls back to
saying how to find out (``ss``/``netstat``). A diagnostic must never turn a
clear "address in use" into a different exception.
"""

from __future__ import annotations

import contextvars
import ipaddress
from dataclasses import dataclass
from typing import Any

__all__ = ["Holder", "describe_holder", "find_holders"]

_WILDCARDS = {"", "0.0.0.0", "::"}

# Off while `retry_bind` makes attempts that are expected to fail: scanning
# every process's sockets costs tens of milliseconds, and only the error that
# finally reaches the caller needs the name.
lookups_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("aioexclusive_holder_lookups", default=True)


@dataclass(frozen=True)
class Holder:
    """One process holding a socket on the address asked about."""

    pid: int
    name: str | None
    user: str | None
    uid: int | None

    def __str__(self) -> str:
        details = ", ".join(part for part in (self.name, f"user {self.user}" if self.user else None) if part)
        return f"pid {self.pid}" + (f" ({details})" if details else "")


def _same_family(a: str, b: str) -> bool:
    return (":" in a) == (":" in b)


def _overlaps(wanted: str, bound: str) -> bool:
    """True when a socket bound to *bound* conflicts with a bind to *wanted*.

    A wildcard conflicts with every address of its family, which is how the
    kernel decides conflicts too (an IPv4-mapped IPv6 form is normalised).
    """
    wanted, bound = _normalise(wanted), _normalise(bound)
    if wanted == bound:
        return True
    if not _same_family(wanted, bound):
        return False
    return wanted in _WILDCARDS or bound in _WILDCARDS


def _normalise(address: str) -> str:
    address = address.split("%", 1)[0]
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    mapped = getattr(ip, "ipv4_mapped", None)
    return str(mapped if mapped is not None else ip)


def _resolve_numeric(host: str | None) -> str:
    if not host:
        return ""
    try:
        return _normalise(host)
    except ValueError:
        return host


def find_holders(protocol: str, host: str | None, port: int | None, *, path: str | None = None) -> list[Holder]:
    """The processes holding *protocol* ``host:port`` (or the AF_UNIX *path*); ``[]`` if unknown.

    *protocol* is ``"TCP"``, ``"UDP"`` or ``"UNIX"``. Never raises.
    """
    if not lookups_enabled.get():
        return []
    try:
        return _find_holders(protocol, host, port, path)
    except Exception:  # noqa: BLE001 - best effort by design, see the module docstring
        return []


def _find_holders(protocol: str, host: str | None, port: int | None, path: str | None) -> list[Holder]:
    try:
        import psutil
    except ImportError:
        return []
    kind = {"TCP": "tcp", "UDP": "udp", "UNIX": "unix"}.get(protocol)
    if kind is None:
        return []
    try:
        connections = psutil.net_connections(kind=kind)
    except (psutil.AccessDenied, psutil.Error, OSError, NotImplementedError):
        # macOS needs root for other processes' sockets; be quiet about it.
        return []
    wanted = _resolve_numeric(host)
    pids: list[int] = []
    for conn in connections:
        # pid 0 is no process: Windows' "System Idle Process", and what Wine
        # reports for every socket.
        if not conn.pid:
            continue
        if kind == "unix":
            if path is None or conn.laddr != path:
                continue
        else:
            laddr: Any = conn.laddr
            if not laddr or laddr.port != port:
                continue
            if kind == "tcp" and conn.status != psutil.CONN_LISTEN:
                # Established and TIME_WAIT entries share the port number but
                # are not what blocks (or steals from) a listener.
                continue
            if not _overlaps(wanted, str(laddr.ip)):
                continue
        if conn.pid not in pids:
            pids.append(conn.pid)
    holders = []
    for pid in pids:
        holders.append(_describe_pid(psutil, pid))
    return holders


def _describe_pid(psutil: Any, pid: int) -> Holder:
    name = user = None
    uid = None
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            name = proc.name()
            try:
                uid = proc.uids().real
            except (AttributeError, psutil.Error):
                uid = None
            try:
                user = proc.username()
            except (KeyError, psutil.Error):
                # A uid without a passwd entry (containers): show the number.
                user = str(uid) if uid is not None else None
    except psutil.Error:
        pass
    return Holder(pid=pid, name=name, user=user, uid=uid)


def describe_holder(protocol: str, host: str | None, port: int | None, *, path: str | None = None) -> str | None:
    """A one-line description of who holds the address, or ``None`` when it cannot be known."""
    holders = find_holders(protocol, host, port, path=path)
    if not holders:
        return None
    return "; ".join(str(holder) for holder in holders)


def family_wildcard(host: str) -> str:
    """The wildcard address of *host*'s family."""
    return "::" if ":" in host else "0.0.0.0"


def is_wildcard(host: str | None) -> bool:
    return _resolve_numeric(host) in _WILDCARDS


def loopback_of(host: str) -> str:
    return "::1" if ":" in host else "127.0.0.1"
