"""Linux only: the kernel's socket tables in ``/proc/net/{tcp,tcp6,udp,udp6}`` and their owners.

Read without touching any socket: ``/proc/net/*`` lists every TCP and UDP
socket of the reader's network namespace (address, port, state, owning uid,
inode) to every user, and ``/proc/PID/fd/*`` maps an inode to the process and
file descriptor holding it (for other users' processes only with ptrace
rights, i.e. as root or the same user). No psutil needed.

Two details of the table format matter and are easy to get wrong:

* Addresses are printed as 32-bit words, each ``%08X`` of the word *in host
  byte order*: ``0100007F`` is 127.0.0.1 on a little-endian machine. An IPv6
  address is four such words. Decoding each word with the native byte order
  (``struct.pack("=I", ...)``) gives back the network-order bytes on any CPU.
* An IPv6 socket that is not ``IPV6_V6ONLY`` and was bound to an IPv4-mapped
  address (``::ffff:a.b.c.d``) shows up in ``tcp6``/``udp6`` with that mapped
  address; `ProcSocket.ipv4` gives the IPv4 address it really serves.

Stable API (used by the audit and the probe): `ProcSocket`, `read_sockets`,
`parse_table`, `socket_owners`, `OwnerScan`, `PROC_FILES`.
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
import struct
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from typing import Literal

__all__ = [
    "PROC_FILES",
    "TCP_STATES",
    "WILDCARD_ADDRESSES",
    "OwnerScan",
    "ProcSocket",
    "decode_address",
    "parse_table",
    "read_sockets",
    "socket_owners",
]

Proto = Literal["tcp", "udp"]

#: Every wildcard as the tables print it. An AF_INET6 socket bound to the IPv4-mapped ``::ffff:0.0.0.0``
#: (dual-stack, the only way it binds) serves every IPv4 address as ``0.0.0.0`` does.
WILDCARD_ADDRESSES = frozenset(("0.0.0.0", "::", "::ffff:0.0.0.0"))

#: The table files, each with its protocol and address family.
PROC_FILES: dict[str, tuple[Proto, int]] = {
    "tcp": ("tcp", socket.AF_INET),
    "tcp6": ("tcp", socket.AF_INET6),
    "udp": ("udp", socket.AF_INET),
    "udp6": ("udp", socket.AF_INET6),
}

#: ``st`` column values (include/net/tcp_states.h). UDP uses only CLOSE
#: (bound, not connected) and ESTABLISHED (connected).
TCP_STATES: dict[int, str] = {
    0x01: "ESTABLISHED",
    0x02: "SYN_SENT",
    0x03: "SYN_RECV",
    0x04: "FIN_WAIT1",
    0x05: "FIN_WAIT2",
    0x06: "TIME_WAIT",
    0x07: "CLOSE",
    0x08: "CLOSE_WAIT",
    0x09: "LAST_ACK",
    0x0A: "LISTEN",
    0x0B: "CLOSING",
    0x0C: "NEW_SYN_RECV",
}

_SOCKET_LINK = re.compile(r"socket:\[(\d+)\]\Z")


@dataclass(frozen=True)
class ProcSocket:
    """One row of ``/proc/net/{tcp,tcp6,udp,udp6}``."""

    proto: Proto
    """``"tcp"`` or ``"udp"``."""
    family: int
    """`socket.AF_INET` or `socket.AF_INET6` (the table it came from)."""
    address: str
    """The local address, compressed text (``"::ffff:127.0.0.1"`` for a mapped one)."""
    port: int
    """The local port (0 for a socket that is not bound)."""
    state: str
    """A `TCP_STATES` name, e.g. ``"LISTEN"``; for UDP ``"CLOSE"`` (unconnected) or ``"ESTABLISHED"``."""
    uid: int
    """The uid that created the socket (the file's owner as the kernel recorded it)."""
    inode: int
    """The socket's inode: ``/proc/PID/fd/N`` of its holders links to ``socket:[inode]``."""
    remote_address: str = ""
    """The peer's address (the wildcard of the family when not connected)."""
    remote_port: int = 0
    """The peer's port (0 when not connected)."""

    @property
    def ipv4(self) -> str | None:
        """The IPv4 address this socket serves: its own for AF_INET, the mapped one for ``::ffff:a.b.c.d``."""
        if self.family == socket.AF_INET:
            return self.address
        mapped = ipaddress.IPv6Address(self.address).ipv4_mapped
        return str(mapped) if mapped is not None else None

    @property
    def is_wildcard(self) -> bool:
        """Bound to a wildcard: ``0.0.0.0``, ``::`` or ``::ffff:0.0.0.0`` (`WILDCARD_ADDRESSES`)."""
        return self.address in WILDCARD_ADDRESSES

    @property
    def is_listening(self) -> bool:
        """A TCP listener, or a UDP socket that is bound and not connected (it receives from anyone)."""
        if self.proto == "tcp":
            return self.state == "LISTEN"
        return self.state == "CLOSE" and self.port != 0

    @property
    def connected(self) -> bool:
        """Has a peer (TCP: any state with a remote port; UDP: ``connect()`` was called)."""
        return self.remote_port != 0


def decode_address(text: str) -> str:
    """The address text of a ``/proc/net`` hex address (8 hex digits IPv4, 32 IPv6), e.g. ``0100007F``.

    Raises `ValueError` for anything else.
    """
    if len(text) not in (8, 32):
        raise ValueError(f"not a /proc/net address: {text!r}")
    # Each 32-bit word is printed as a number in the CPU's byte order; "=I"
    # turns it back into the bytes the kernel stores (network order).
    raw = b"".join(struct.pack("=I", int(text[i : i + 8], 16)) for i in range(0, len(text), 8))
    if len(raw) == 4:
        return str(ipaddress.IPv4Address(raw))
    ip = ipaddress.IPv6Address(raw)
    if ip.ipv4_mapped is not None:
        # One spelling on every Python (3.13 changed str() of mapped addresses).
        return f"::ffff:{ip.ipv4_mapped}"
    return str(ip)


def _endpoint(text: str) -> tuple[str, int]:
    address, _, port = text.partition(":")
    return decode_address(address), int(port, 16)


def parse_table(text: str, proto: Proto, family: int) -> list[ProcSocket]:
    """Every socket in the text of one table file; malformed lines are skipped, not fatal."""
    sockets: list[ProcSocket] = []
    lines = iter(text.splitlines())
    next(lines, None)  # the header
    for line in lines:
        parts = line.split()
        # sl local remote st tx:rx tr:when retrnsmt uid timeout inode ...
        if len(parts) < 10:
            continue
        try:
            address, port = _endpoint(parts[1])
            remote_address, remote_port = _endpoint(parts[2])
            state_number = int(parts[3], 16)
            uid = int(parts[7])
            inode = int(parts[9])
        except ValueError:
            continue
        sockets.append(
            ProcSocket(
                proto=proto,
                family=family,
                address=address,
                port=port,
                state=TCP_STATES.get(state_number, f"0x{state_number:02X}"),
                uid=uid,
                inode=inode,
                remote_address=remote_address,
                remote_port=remote_port,
            )
        )
    return sockets


def read_sockets(
    tables: Iterable[str] = ("tcp", "tcp6", "udp", "udp6"),
    *,
    net_dir: str = "/proc/net",
    ports: Collection[int] | None = None,
) -> list[ProcSocket]:
    """The sockets listed in the chosen *tables* (keys of `PROC_FILES`) of *net_dir*.

    *net_dir* is ``/proc/net`` (this process's network namespace) or
    ``/proc/PID/net`` (the namespace of PID). A missing table (a kernel without
    IPv6) is skipped. *ports*, when given, keeps only sockets on those local
    ports. Raises `OSError` only when no table at all can be read.
    """
    found: list[ProcSocket] = []
    read_any = False
    error: OSError | None = None
    for name in tables:
        proto, family = PROC_FILES[name]
        try:
            with open(os.path.join(net_dir, name), encoding="ascii") as table:
                text = table.read()
        except OSError as exc:
            error = exc
            continue
        read_any = True
        seen: set[int] = set()
        for sock in parse_table(text, proto, family):
            # The kernel prints a table in chunks, and a socket added or removed
            # between two chunks can make another appear twice: once per inode.
            if sock.inode in seen and sock.inode:
                continue
            seen.add(sock.inode)
            if ports is None or sock.port in ports:
                found.append(sock)
    if not read_any and error is not None:
        raise error
    return found


@dataclass
class OwnerScan:
    """What `socket_owners` found: every holder of every socket inode it could see."""

    owners: dict[int, list[tuple[int, int]]] = field(default_factory=dict)
    """inode -> [(pid, fd), ...]; one socket may be held by several processes (fork, fd passing)."""
    unreadable: list[int] = field(default_factory=list)
    """pids whose fd table could not be read (other users' processes without root)."""


def socket_owners(inodes: Collection[int] | None = None, *, proc: str = "/proc") -> OwnerScan:
    """Map socket inodes to ``(pid, fd)`` through ``/proc/*/fd``.

    *inodes*, when given, limits the answer to those sockets (the scan is the
    same; only matches are kept). Processes that vanish during the scan are
    skipped; those whose fds cannot be read are listed in ``unreadable``.
    Threads share their process's fd table, so only processes are scanned.
    """
    scan = OwnerScan()
    wanted = None if inodes is None else set(inodes)
    try:
        entries = list(os.scandir(proc))
    except OSError:
        return scan
    for entry in entries:
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        fd_dir = os.path.join(proc, entry.name, "fd")
        try:
            fds = list(os.scandir(fd_dir))
        except PermissionError:
            scan.unreadable.append(pid)
            continue
        except OSError:  # gone, or a zombie
            continue
        for fd_entry in fds:
            try:
                target = os.readlink(fd_entry.path)
            except OSError:
                continue
            match = _SOCKET_LINK.match(target)
            if match is None:
                continue
            inode = int(match.group(1))
            if wanted is not None and inode not in wanted:
                continue
            scan.owners.setdefault(inode, []).append((pid, int(fd_entry.name)))
    return scan
