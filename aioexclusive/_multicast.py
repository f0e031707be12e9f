"""Multicast: the one explicit opt-in that shares a UDP port, done right on every platform.

Several receivers on one host legitimately share a multicast group and port, so
a multicast receiver is the only UDP socket the exclusive loop lets share. It
does so only when asked (``multicast=``) and only for a real multicast address;
the sharing option and the address bound come from the bind plan's
``Role.UDP_MULTICAST`` rows (`aioexclusive._plan.RULES`), never from here.

This module adds what the plan does not cover: which interface to join on,
how each OS spells a membership request (``ip_mreqn``, ``ip_mreq``,
``ipv6_mreq``, source-specific requests), the sender options (TTL, loopback,
outgoing interface), and leaving the group when the transport closes.

The request encodings are pure functions of (platform, family, request), like
the plan, so every platform's bytes are unit-tested on every platform; only
`create_multicast_endpoint` touches sockets.
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._binding import check_port, clear_forbidden_options, new_socket, open_bound_sockets, resolve
from ._errors import ExclusivityError
from ._plan import BindPlan, Platform, Role, current_platform

__all__ = [
    "FACTS",
    "Interface",
    "MembershipRequest",
    "Multicast",
    "MulticastTransport",
    "PlatformFacts",
    "SockOpt",
    "create_multicast_endpoint",
    "is_multicast",
    "membership_request",
    "receiver_options",
    "resolve_interface",
    "sender_options",
]

logger = logging.getLogger("aioexclusive")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


# -- the user's request ------------------------------------------------------------


@dataclass(frozen=True)
class Multicast:
    """How a multicast endpoint joins its group and sends to it.

    Pass it as ``loop.create_datagram_endpoint(..., multicast=Multicast(...))``;
    ``multicast=True`` is ``Multicast()``, every field at the OS default.

    Attributes:
        interface: where to join (receivers) and send (senders): an interface
            name (``"eth0"``), one of its addresses (``"192.0.2.10"``,
            ``"fe80::1%eth0"``) or its index. ``None`` lets the OS choose from
            its routing table, which on a multi-homed host may not be the
            network you mean; IPv6 link-scope groups (``ff02::...``) need an
            interface, here or as the group's scope (``"ff02::1%eth0"``).
        ttl: hop limit of datagrams sent to the group (``IP_MULTICAST_TTL`` /
            ``IPV6_MULTICAST_HOPS``). ``None`` keeps the OS default, 1: the
            datagrams stay on the local link.
        loopback: whether datagrams sent to the group are also delivered to
            receivers on this host (``IP_MULTICAST_LOOP``); ``None`` keeps the
            OS default (on).
        source: source-specific multicast (SSM): receive only datagrams sent
            by this address. IPv4 on Linux, Windows and macOS/BSD; IPv6 on
            Linux.
    """

    interface: str | int | None = None
    ttl: int | None = None
    loopback: bool | None = None
    source: str | None = None

    def __post_init__(self) -> None:
        if self.interface is not None:
            if isinstance(self.interface, bool) or not isinstance(self.interface, (str, int)):
                raise TypeError(
                    f"Multicast(interface=...) must be an interface name, an address, an index or None, "
                    f"got {self.interface!r}"
                )
            if isinstance(self.interface, int) and self.interface < 1:
                raise ValueError(
                    f"Multicast(interface={self.interface}): interface indexes start at 1; "
                    "pass None to let the OS choose"
                )
            if isinstance(self.interface, str) and not self.interface:
                raise ValueError("Multicast(interface='') is empty; pass None to let the OS choose")
        if self.ttl is not None:
            if isinstance(self.ttl, bool) or not isinstance(self.ttl, int):
                raise TypeError(f"Multicast(ttl=...) must be an int in 0-255 or None, got {self.ttl!r}")
            if not 0 <= self.ttl <= 255:
                raise ValueError(f"Multicast(ttl=...) must be 0-255, got {self.ttl}")
        if self.loopback is not None and not isinstance(self.loopback, bool):
            raise TypeError(f"Multicast(loopback=...) must be True, False or None, got {self.loopback!r}")
        if self.source is not None:
            if not isinstance(self.source, str):
                raise TypeError(f"Multicast(source=...) must be an IP address string or None, got {self.source!r}")
            try:
                source = ipaddress.ip_address(self.source)
            except ValueError:
                raise ValueError(
                    f"Multicast(source={self.source!r}) is not an IP address (source-specific multicast "
                    "filters by the sender's address; host names are not resolved here)"
                ) from None
            if source.is_multicast or source.is_unspecified:
                raise ValueError(f"Multicast(source={self.source!r}) must be a unicast sender address")


def _options_of(multicast: object) -> Multicast:
    if multicast is True:
        return Multicast()
    if isinstance(multicast, Multicast):
        return multicast
    raise TypeError(f"multicast must be True, an aioexclusive.Multicast or None, got {multicast!r}")


def is_multicast(host: str) -> bool:
    """True when *host* is a numeric IPv4 or IPv6 multicast address (scope ids allowed)."""
    try:
        return ipaddress.ip_address(host).is_multicast
    except ValueError:
        return False


def _plain(address: IPAddress) -> IPAddress:
    # ipaddress keeps "%scope" on IPv6 addresses, which changes str() and ==.
    if isinstance(address, ipaddress.IPv6Address) and address.scope_id:
        return ipaddress.IPv6Address(address.packed)
    return address


def _needs_link(group: IPAddress) -> bool:
    """IPv6 interface- and link-local scope groups (ffx1::, ffx2::) mean nothing without an interface."""
    return isinstance(group, ipaddress.IPv6Address) and group.packed[1] & 0x0F in (1, 2)


# -- the platform facts (one place per fact) -----------------------------------------


@dataclass(frozen=True)
class PlatformFacts:
    """How one platform family spells multicast requests.

    Attributes:
        ipv4_index: how an IPv4 join names the interface by index: Linux takes
            ``struct ip_mreqn`` (address *or* index); Windows reads an
            ``ip_mreq`` interface address in 0.0.0.0/8 as an index; macOS takes
            only an address, so there an interface must be given as one.
        ssm_order: field order of ``struct ip_mreq_source``: Linux puts the
            interface before the source, Windows and the BSDs after.
        ipv4_byte_options: BSD documents ``IP_MULTICAST_TTL``/``LOOP`` as
            ``u_char``; Linux and Windows take an int.
        ipv6_source_join: IPv6 SSM through ``MCAST_JOIN_SOURCE_GROUP`` and a
            ``struct group_source_req`` laid out as this Python's C ABI does
            (only Linux is built and tested that way here).
        deliver_all_off: options that make the kernel deliver a group to this
            socket only while *it* is a member. Linux's default
            (``IP_MULTICAST_ALL``=1) hands a socket every group any socket on
            the host joined, as long as the address and port match; with it
            on, leaving would not stop delivery.
        constants: option numbers the ``socket`` module does not export.
    """

    ipv4_index: Literal["ip_mreqn", "index_as_address", "none"]
    ssm_order: Literal["interface_source", "source_interface"]
    ipv4_byte_options: bool
    ipv6_source_join: bool
    deliver_all_off: tuple[tuple[str, str], ...]
    constants: Mapping[str, int]


FACTS: Mapping[Platform, PlatformFacts] = {
    "linux": PlatformFacts(
        ipv4_index="ip_mreqn",
        ssm_order="interface_source",
        ipv4_byte_options=False,
        ipv6_source_join=True,
        deliver_all_off=(("IPPROTO_IP", "IP_MULTICAST_ALL"), ("IPPROTO_IPV6", "IPV6_MULTICAST_ALL")),
        # <linux/in.h>, <linux/in6.h>
        constants={
            "IP_ADD_SOURCE_MEMBERSHIP": 39,
            "IP_DROP_SOURCE_MEMBERSHIP": 40,
            "MCAST_JOIN_SOURCE_GROUP": 46,
            "MCAST_LEAVE_SOURCE_GROUP": 47,
            "IP_MULTICAST_ALL": 49,
            "IPV6_MULTICAST_ALL": 29,
        },
    ),
    "windows": PlatformFacts(
        ipv4_index="index_as_address",
        ssm_order="source_interface",
        ipv4_byte_options=False,
        ipv6_source_join=False,
        deliver_all_off=(),
        # <ws2ipdef.h>
        constants={"IP_ADD_SOURCE_MEMBERSHIP": 15, "IP_DROP_SOURCE_MEMBERSHIP": 16},
    ),
    "bsd": PlatformFacts(
        ipv4_index="none",
        ssm_order="source_interface",
        ipv4_byte_options=True,
        ipv6_source_join=False,
        deliver_all_off=(),
        # <netinet/in.h> on macOS and FreeBSD
        constants={"IP_ADD_SOURCE_MEMBERSHIP": 70, "IP_DROP_SOURCE_MEMBERSHIP": 71},
    ),
}

_LEVELS = {"IPPROTO_IP": 0, "IPPROTO_IPV6": 41}


@dataclass(frozen=True)
class SockOpt:
    """One ``setsockopt`` call, by name: *optional* ones may be missing from an older kernel."""

    level: str
    name: str
    value: int | bytes
    optional: bool = False


@dataclass(frozen=True)
class MembershipRequest:
    """The ``setsockopt`` that joins a group, and the one that leaves it again."""

    level: str
    join: str
    leave: str
    payload: bytes
    description: str


def _constant(name: str, platform: Platform | None = None) -> int | None:
    value = getattr(socket, name, None)
    if value is not None:
        return int(value)
    return FACTS[platform or current_platform()].constants.get(name)


def _setsockopt(sock: Any, opt: SockOpt) -> None:
    level = getattr(socket, opt.level, _LEVELS[opt.level])
    name = _constant(opt.name)
    if name is None:
        if opt.optional:
            return
        raise OSError(errno.ENOPROTOOPT, f"{opt.name} is not available on this system")
    try:
        sock.setsockopt(level, name, opt.value)
    except OSError as exc:
        if not (opt.optional and exc.errno in (errno.ENOPROTOOPT, errno.EINVAL)):
            raise


def _apply_all(sock: Any, opts: list[SockOpt], what: str) -> None:
    for opt in opts:
        try:
            _setsockopt(sock, opt)
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
            raise OSError(exc.errno, f"could not set {opt.name} for {what}: {reason}") from exc


# -- interfaces --------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    """An interface resolved for one address family: by index, by IPv4 address, or neither (OS default)."""

    index: int = 0
    address: str | None = None
    label: str = "the default interface"


def _known_interfaces() -> str:
    try:
        names = [name for _, name in socket.if_nameindex()]
    except (OSError, AttributeError):
        return ""
    return f" (interfaces here: {', '.join(names)})" if names else ""


def _no_such_interface(what: str) -> OSError:
    return OSError(errno.ENODEV, f"multicast interface {what} does not exist on this host{_known_interfaces()}")


def _ipv6_index_of(address: ipaddress.IPv6Address) -> int:
    """The index of the interface holding a (global) IPv6 address; Linux only, via /proc."""
    try:
        with open("/proc/net/if_inet6", encoding="ascii") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 2 and bytes.fromhex(fields[0]) == address.packed:
                    return int(fields[1], 16)
    except OSError:
        pass
    return 0


def resolve_interface(spec: str | int | None, family: int) -> Interface:
    """Turn ``Multicast.interface`` into what the OS wants for *family*, or a clear error.

    Names and indexes are checked here, before any socket exists, so a typo
    fails without opening anything.
    """
    if spec is None:
        return Interface()
    if isinstance(spec, int):
        try:
            name = socket.if_indextoname(spec)
        except OSError:
            raise _no_such_interface(f"index {spec}") from None
        return Interface(index=spec, label=f"interface {name!r} (index {spec})")
    try:
        address = ipaddress.ip_address(spec)
    except ValueError:
        try:
            index = socket.if_nametoindex(spec)
        except OSError:
            raise _no_such_interface(repr(spec)) from None
        return Interface(index=index, label=f"interface {spec!r}")
    wanted = 4 if family == socket.AF_INET else 6
    if address.version != wanted:
        raise ValueError(
            f"Multicast(interface={spec!r}) is an IPv{address.version} address but the group is IPv{wanted}; "
            "give the interface by name, or by an address of the group's family"
        )
    if isinstance(address, ipaddress.IPv4Address):
        return Interface(address=str(address), label=f"the interface with address {spec}")
    # IPv6 joins take an index only: from the scope id, or from the address table.
    scope = address.scope_id
    if scope:
        try:
            index = int(scope) if scope.isdigit() else socket.if_nametoindex(scope)
        except OSError:
            raise _no_such_interface(repr(scope)) from None
    else:
        index = _ipv6_index_of(address)
    if not index:
        raise ValueError(
            f"Multicast(interface={spec!r}): no interface with this IPv6 address could be found; "
            "give the interface by name or index instead"
        )
    return Interface(index=index, label=f"the interface with address {spec} (index {index})")


# -- request encodings (pure) --------------------------------------------------------


def _in4(address: str | None) -> bytes:
    return ipaddress.IPv4Address(address or "0.0.0.0").packed


def _ipv4_interface_field(platform: Platform, iface: Interface, purpose: str) -> bytes:
    """The 4-byte interface field of ``ip_mreq``/``IP_MULTICAST_IF`` where an index cannot go in ``ip_mreqn``."""
    if iface.address is not None or not iface.index:
        return _in4(iface.address)
    if FACTS[platform].ipv4_index == "index_as_address":
        # Windows: "an interface index in network byte order, within 0.0.0.0/8".
        return struct.pack("!I", iface.index)
    raise ValueError(
        f"Multicast(interface=...): on {platform} an IPv4 {purpose} names its interface by address only; "
        f"give one of {iface.label}'s IPv4 addresses instead"
    )


def _sockaddr_storage(address: IPAddress, scope: int = 0) -> bytes:
    """A ``struct sockaddr_storage`` holding *address* (Linux layout: native family, 128 bytes)."""
    if isinstance(address, ipaddress.IPv4Address):
        raw = struct.pack("=H", socket.AF_INET) + b"\0\0" + address.packed
    else:
        raw = struct.pack("=H", socket.AF_INET6) + b"\0\0" + b"\0" * 4 + address.packed + struct.pack("=I", scope)
    return raw.ljust(128, b"\0")


def _group_source_req(index: int, group: IPAddress, source: IPAddress, scope: int = 0) -> bytes:
    # struct group_source_req { uint32_t gsr_interface; struct sockaddr_storage
    # gsr_group, gsr_source; }: sockaddr_storage is aligned like a C long, so
    # the padding after the index is what native struct alignment gives.
    offset = struct.calcsize("@IL") - struct.calcsize("@L")
    align = struct.calcsize("@L")
    body = struct.pack("@I", index).ljust(offset, b"\0")
    body += _sockaddr_storage(group, scope) + _sockaddr_storage(source, scope)
    return body.ljust(-(-len(body) // align) * align, b"\0")


def membership_request(
    platform: Platform, group: IPAddress, iface: Interface, source: IPAddress | None = None
) -> MembershipRequest:
    """The join/leave ``setsockopt`` for *group* on *iface*, as *platform* spells it."""
    facts = FACTS[platform]
    group = _plain(group)
    where = f"{group} on {iface.label}"
    if source is not None and source.version != group.version:
        raise ValueError(f"Multicast(source={str(source)!r}) is IPv{source.version} but the group {group} is not")
    if isinstance(group, ipaddress.IPv4Address):
        if source is None:
            if iface.index and iface.address is None and facts.ipv4_index == "ip_mreqn":
                payload = struct.pack("@4s4si", group.packed, _in4(None), iface.index)
            else:
                payload = group.packed + _ipv4_interface_field(platform, iface, "join")
            return MembershipRequest("IPPROTO_IP", "IP_ADD_MEMBERSHIP", "IP_DROP_MEMBERSHIP", payload, where)
        where += f" from {source}"
        if iface.index and iface.address is None and facts.ipv4_index == "ip_mreqn":
            # struct ip_mreq_source takes an address; only the protocol-independent
            # request takes an index.
            return MembershipRequest(
                "IPPROTO_IP",
                "MCAST_JOIN_SOURCE_GROUP",
                "MCAST_LEAVE_SOURCE_GROUP",
                _group_source_req(iface.index, group, source),
                where,
            )
        interface = _ipv4_interface_field(platform, iface, "source-specific join")
        if facts.ssm_order == "interface_source":
            payload = group.packed + interface + source.packed
        else:
            payload = group.packed + source.packed + interface
        return MembershipRequest(
            "IPPROTO_IP", "IP_ADD_SOURCE_MEMBERSHIP", "IP_DROP_SOURCE_MEMBERSHIP", payload, where
        )
    if source is None:
        payload = struct.pack("@16sI", group.packed, iface.index)
        return MembershipRequest("IPPROTO_IPV6", "IPV6_JOIN_GROUP", "IPV6_LEAVE_GROUP", payload, where)
    if not facts.ipv6_source_join:
        raise ValueError(
            f"Multicast(source=...): source-specific IPv6 multicast is only supported on Linux here, not on {platform}"
        )
    return MembershipRequest(
        "IPPROTO_IPV6",
        "MCAST_JOIN_SOURCE_GROUP",
        "MCAST_LEAVE_SOURCE_GROUP",
        _group_source_req(iface.index, group, source, iface.index if _needs_link(group) else 0),
        f"{where} from {source}",
    )


def sender_options(platform: Platform, family: int, options: Multicast, iface: Interface) -> list[SockOpt]:
    """``setsockopt`` calls for sending to a group: outgoing interface, TTL/hops, loopback."""
    facts = FACTS[platform]
    opts: list[SockOpt] = []
    if family == socket.AF_INET:
        if iface.index or iface.address:
            if iface.address is None and facts.ipv4_index == "ip_mreqn":
                # Linux's IP_MULTICAST_IF takes struct ip_mreqn, so an index works.
                value = struct.pack("@4s4si", _in4(None), _in4(None), iface.index)
            else:
                value = _ipv4_interface_field(platform, iface, "outgoing interface")
            opts.append(SockOpt("IPPROTO_IP", "IP_MULTICAST_IF", value))
        as_value: Callable[[int], int | bytes] = (lambda v: bytes([v])) if facts.ipv4_byte_options else int
        if options.ttl is not None:
            opts.append(SockOpt("IPPROTO_IP", "IP_MULTICAST_TTL", as_value(options.ttl)))
        if options.loopback is not None:
            opts.append(SockOpt("IPPROTO_IP", "IP_MULTICAST_LOOP", as_value(int(options.loopback))))
    else:
        if iface.index:
            opts.append(SockOpt("IPPROTO_IPV6", "IPV6_MULTICAST_IF", iface.index))
        if options.ttl is not None:
            opts.append(SockOpt("IPPROTO_IPV6", "IPV6_MULTICAST_HOPS", options.ttl))
        if options.loopback is not None:
            opts.append(SockOpt("IPPROTO_IPV6", "IPV6_MULTICAST_LOOP", int(options.loopback)))
    return opts


def receiver_options(platform: Platform, family: int) -> list[SockOpt]:
    """Options that make delivery follow this socket's own memberships (see `PlatformFacts.deliver_all_off`)."""
    level = "IPPROTO_IP" if family == socket.AF_INET else "IPPROTO_IPV6"
    return [SockOpt(lvl, name, 0, optional=True) for lvl, name in FACTS[platform].deliver_all_off if lvl == level]


# -- membership and the transport ------------------------------------------------------


class _Membership:
    """One socket's membership in one group: join, leave, leave quietly on close."""

    def __init__(self, sock: socket.socket, request: MembershipRequest) -> None:
        self.sock = sock
        self.request = request
        self.joined = False

    def _call(self, name: str) -> None:
        level = getattr(socket, self.request.level, _LEVELS[self.request.level])
        option = _constant(name)
        if option is None:
            raise OSError(errno.ENOPROTOOPT, f"{name} is not available on this system")
        self.sock.setsockopt(level, option, self.request.payload)

    def join(self) -> None:
        if self.joined:
            return
        try:
            self._call(self.request.join)
        except OSError as exc:
            raise _join_error(exc, self.request) from exc
        self.joined = True

    def leave(self) -> None:
        if not self.joined:
            return
        self.joined = False
        if self.sock.fileno() == -1:
            return  # closed: the kernel dropped the membership with the socket
        self._call(self.request.leave)

    def leave_on_close(self) -> None:
        try:
            self.leave()
        except OSError as exc:
            # The interface may be gone already; closing the socket drops the
            # membership anyway, so this is worth a log line, not an error.
            logger.debug("leaving multicast group %s failed: %s", self.request.description, exc)


def _join_error(exc: OSError, request: MembershipRequest) -> OSError:
    reasons = {
        errno.ENODEV: "no such interface (or, with no interface given, no route to pick one)",
        errno.EADDRNOTAVAIL: "the interface address is not on this host, or the group is not joined",
        errno.EADDRINUSE: "this socket has already joined the group",
        errno.ENOBUFS: "the per-socket membership limit is reached",
    }
    reason = reasons.get(exc.errno or 0, (exc.strerror or str(exc)).lower())
    return OSError(exc.errno, f"could not join multicast group {request.description}: {reason}")


class _MembershipProtocol(asyncio.DatagramProtocol):
    """Sits between the base loop's transport and the application's protocol.

    It exists for one callback: ``connection_lost`` is the one moment every
    base loop (stdlib and uvloop alike, on ``close()``, ``abort()`` or a fatal
    error) reports that the transport is done while the socket is still open,
    so the membership can be dropped there. Everything else is forwarded.
    """

    def __init__(self, app: asyncio.BaseProtocol, membership: _Membership) -> None:
        self.membership = membership
        self.wrapper: MulticastTransport | None = None
        self.set_app(app)

    def set_app(self, app: asyncio.BaseProtocol) -> None:
        self.app = app
        # The per-datagram path skips this layer: the base transport looks
        # ``datagram_received`` up on its protocol for every datagram, and finds
        # the application's bound method here, so no extra call is made.
        for name in ("datagram_received", "error_received"):
            method = getattr(app, name, None)
            if method is not None:
                setattr(self, name, method)
            else:
                self.__dict__.pop(name, None)

    def wrap(self, transport: asyncio.BaseTransport) -> MulticastTransport:
        if self.wrapper is None:
            self.wrapper = MulticastTransport(transport, self)  # type: ignore[arg-type]
        return self.wrapper

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.app.connection_made(self.wrap(transport))

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.app.datagram_received(data, addr)  # type: ignore[attr-defined]

    def error_received(self, exc: Exception) -> None:
        self.app.error_received(exc)  # type: ignore[attr-defined]

    def pause_writing(self) -> None:
        self.app.pause_writing()

    def resume_writing(self) -> None:
        self.app.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        try:
            self.membership.leave_on_close()
        finally:
            self.app.connection_lost(exc)


class MulticastTransport(asyncio.DatagramTransport):
    """The transport of a multicast receiver: the base loop's transport plus its group membership.

    Everything is the base transport's own (``sendto``, ``close``,
    ``get_extra_info``...); ``get_protocol``/``set_protocol`` see the
    application's protocol. The group is left when the transport closes, and
    can be left and joined again while it is open.

    Why leave explicitly when closing the socket drops memberships anyway: the
    kernel drops them when the *socket* goes away, which is later than
    ``close()`` whenever another file descriptor still refers to it (a forked
    or spawned child that inherited it, a ``dup()`` of
    ``get_extra_info("socket")``). Until then the host stays a member (it keeps
    answering IGMP/MLD queries, the switch keeps forwarding the group) and
    that other holder keeps receiving the group. Leaving in
    ``connection_lost`` ends both when the transport ends.
    """

    def __init__(self, transport: asyncio.DatagramTransport, shim: _MembershipProtocol) -> None:
        super().__init__()
        self._transport = transport
        self._shim = shim

    # -- membership
    @property
    def group(self) -> str:
        """The group address, as the membership request names it (with the interface)."""
        return self._shim.membership.request.description

    @property
    def joined(self) -> bool:
        """Whether the socket is a member of the group right now."""
        return self._shim.membership.joined

    def leave_group(self) -> None:
        """Stop receiving the group now; the socket stays open and can `join_group` again."""
        self._shim.membership.leave()

    def join_group(self) -> None:
        """Join the group again after `leave_group`."""
        if self._transport.is_closing():
            raise RuntimeError("the transport is closing; open a new endpoint to join again")
        self._shim.membership.join()

    # -- the base transport
    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._shim.app

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._shim.set_app(protocol)

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._transport.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self._transport.is_closing()

    def close(self) -> None:
        self._transport.close()

    def abort(self) -> None:
        self._transport.abort()

    def sendto(self, data: Any, addr: Any = None) -> None:
        self._transport.sendto(data, addr)

    def __getattr__(self, name: str) -> Any:
        # Anything else a base transport offers (pause_reading, is_reading...).
        if name.startswith("__") or name in ("_transport", "_shim"):
            raise AttributeError(name)
        return getattr(self._transport, name)

    def __repr__(self) -> str:
        state = "joined" if self.joined else "not joined"
        return f"<MulticastTransport {self.group} {state} {self._transport!r}>"


# -- the endpoint ------------------------------------------------------------------------


def _check_addr(name: str, addr: Any) -> None:
    if addr is not None:
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise TypeError(f"{name} must be a (host, port) tuple, got {addr!r}")
        if not isinstance(addr[0], str):
            raise TypeError(f"{name} host must be a str, got {addr[0]!r}")
        check_port(addr[1], f"{name} port")


def _ip(sockaddr: Any) -> IPAddress:
    return ipaddress.ip_address(sockaddr[0])


def _not_multicast(name: str, addr: Any, found: Any) -> ExclusivityError:
    return ExclusivityError(
        f"multicast= was asked for {name} {addr!r}, but {found} is not a multicast address "
        "(IPv4 224.0.0.0/4, IPv6 ff00::/8); refused because only multicast receivers may share a port: a "
        "unicast UDP port shared through SO_REUSEADDR can be joined by another socket that takes its "
        "datagrams. Give a multicast group, or drop multicast= for an exclusive unicast endpoint."
    )


def _link_index(group: IPAddress, iface: Interface, scope: int, what: str) -> int:
    """The interface index for an IPv6 group: the interface's, or the group's own scope id."""
    if iface.index and scope and iface.index != scope:
        raise ValueError(
            f"{what}: the group's scope id ({scope}) and Multicast(interface=...) ({iface.label}) disagree"
        )
    index = iface.index or scope
    if _needs_link(group) and not index:
        raise ValueError(
            f"{what}: {group} is an IPv6 link-scope group, which exists once per link; name the interface, "
            f"as Multicast(interface='eth0') or as the group's scope ('{group}%eth0')"
        )
    return index


def _one_bound_socket(info: Any, plan: BindPlan, strict: bool) -> socket.socket:
    sockets = open_bound_sockets([info], plan, backlog=None, strict=strict)
    if not sockets:
        # open_bound_sockets skips a family the host cannot make, as asyncio does.
        raise OSError(errno.EAFNOSUPPORT, f"this host can not make a socket for {info[4][0]}")
    return sockets[0]


async def create_multicast_endpoint(
    loop: Any,
    base_create: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    local_addr: Any,
    remote_addr: Any,
    multicast: object,
    *,
    family: int = 0,
    proto: int = 0,
    flags: int = 0,
    reuse_address: bool = False,
    reuse_port: bool | None = None,
    allow_broadcast: bool | None = None,
    sock: Any = None,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """``create_datagram_endpoint(..., multicast=...)`` for an exclusive loop.

    A ``local_addr`` that is a multicast group makes a receiver: the plan's
    multicast row (sharing option, group or wildcard bind), the join, and a
    `MulticastTransport` that leaves on close. Otherwise a ``remote_addr`` (or
    no address, with ``family``) that is a group makes a sender: an exclusive
    unicast socket with the sender options.
    """
    options = _options_of(multicast)
    if sock is not None:
        raise ValueError(
            "multicast= and sock= can not be combined: the loop binds and joins a multicast socket itself "
            "(pass local_addr=(group, port))"
        )
    _check_addr("local_addr", local_addr)
    _check_addr("remote_addr", remote_addr)
    loop._exclusive_check_open()
    platform = current_platform()
    local = remote = None
    if local_addr is not None:
        local = await resolve(
            loop, local_addr[0], local_addr[1], family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
        )
    if remote_addr is not None:
        remote = await resolve(
            loop, remote_addr[0], remote_addr[1], family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags
        )

    if local is not None and all(_ip(info[4]).is_multicast for info in local):
        if remote_addr is not None:
            raise ValueError(
                "a multicast receiver (local_addr is a group) can not have a remote_addr: a socket connected to "
                "a peer only receives from that peer, and datagrams never come *from* a group. Send to the group "
                "with transport.sendto(data, (group, port)) instead"
            )
        plan: BindPlan = loop._plan(Role.UDP_MULTICAST, reuse_port=reuse_port, address=local_addr)
        return await _receiver(
            loop, base_create, protocol_factory, local, options, plan, platform, bool(allow_broadcast), local_addr
        )
    if local is not None and remote is None:
        found = next(info[4][0] for info in local if not _ip(info[4]).is_multicast)
        raise _not_multicast("local_addr", local_addr, found)
    if remote is not None and not all(_ip(info[4]).is_multicast for info in remote):
        found = next(info[4][0] for info in remote if not _ip(info[4]).is_multicast)
        raise _not_multicast("remote_addr", remote_addr, found)
    if remote is None and family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            "multicast= with neither local_addr nor remote_addr makes an unconnected sender: pass "
            "family=socket.AF_INET or socket.AF_INET6"
        )
    plan = loop._plan(Role.UDP_UNICAST, reuse_address=reuse_address, reuse_port=reuse_port, address=local_addr)
    return await _sender(
        loop, protocol_factory, local, remote, family, proto, options, plan, platform, bool(allow_broadcast)
    )


async def _receiver(
    loop: Any,
    base_create: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    infos: list[Any],
    options: Multicast,
    plan: BindPlan,
    platform: Platform,
    allow_broadcast: bool,
    local_addr: Any,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    errors: list[OSError] = []
    for fam, type_, proto, _, sockaddr in infos:
        group = _ip(sockaddr)
        source = ipaddress.ip_address(options.source) if options.source is not None else None
        # Everything that can be refused is refused before a socket exists.
        iface = resolve_interface(options.interface, fam)
        if fam == socket.AF_INET6:
            index = _link_index(group, iface, sockaddr[3], f"local_addr {local_addr!r}")
            iface = Interface(index=index, label=iface.label if iface.index or not index else f"scope {index}")
        request = membership_request(platform, group, iface, source)
        sending = sender_options(platform, fam, options, iface)
        if plan.bind_to == "wildcard":
            # Windows delivers multicast to a wildcard bind, and binding a group
            # address there fails; the plan says so.
            bind_to: Any = ("0.0.0.0", sockaddr[1]) if fam == socket.AF_INET else ("::", sockaddr[1], 0, 0)
        elif fam == socket.AF_INET6:
            # Binding the group (not the wildcard) keeps unicast datagrams to the
            # shared port out. Linux binds a link-scope address only with its scope.
            bind_to = (sockaddr[0], sockaddr[1], sockaddr[2], iface.index if _needs_link(group) else sockaddr[3])
        else:
            bind_to = sockaddr
        try:
            sock = _one_bound_socket((fam, type_, proto, "", bind_to), plan, loop.exclusive_options.strict)
        except OSError as exc:
            errors.append(exc)
            continue
        membership = _Membership(sock, request)
        try:
            _apply_all(sock, receiver_options(platform, fam), request.description)
            # Join before the sender options: the join's error names the group
            # and the interface, the clearest report of a wrong interface.
            membership.join()
            _apply_all(sock, sending, request.description)
            if allow_broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        return await _adopt(loop, base_create, protocol_factory, sock, membership, plan)
    raise errors[0]


async def _adopt(
    loop: Any,
    base_create: Callable[..., Any],
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    sock: socket.socket,
    membership: _Membership,
    plan: BindPlan,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    shims: list[_MembershipProtocol] = []

    def factory() -> _MembershipProtocol:
        # uvloop calls this right after uv_udp_open, which turns SO_REUSEADDR
        # (Linux) / SO_REUSEPORT (BSD) on for every socket it adopts: for a
        # multicast receiver that is the plan's own option, and anything the
        # plan forbids is switched off again before the loop runs on.
        clear_forbidden_options(sock, plan)
        shims.append(_MembershipProtocol(protocol_factory(), membership))
        return shims[0]

    try:
        # The base loop's own sock= path: its native transport, unchanged. The
        # mixin's public path would (rightly) refuse a socket with SO_REUSEADDR.
        transport, _ = await base_create(factory, sock=sock)
    except BaseException:
        if sock.fileno() != -1:
            sock.close()
        raise
    shim = shims[0]
    wrapper = shim.wrap(transport)
    return wrapper, shim.app


async def _sender(
    loop: Any,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    local: list[Any] | None,
    remote: list[Any] | None,
    family: int,
    proto: int,
    options: Multicast,
    plan: BindPlan,
    platform: Platform,
    allow_broadcast: bool,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """An ordinary exclusive UDP socket that sends to a group with the sender options set before first use."""
    if remote is not None:
        fam, _, proto, _, target = remote[0]
    else:
        fam, target = family, None
    iface = resolve_interface(options.interface, fam)
    if fam == socket.AF_INET6 and target is not None:
        index = _link_index(_ip(target), iface, target[3], f"remote_addr {target[0]!r}")
        iface = Interface(index=index, label=iface.label)
        target = (target[0], target[1], target[2], index if _needs_link(_ip(target)) else target[3])
    if options.source is not None:
        raise ValueError("Multicast(source=...) filters what a receiver accepts; a sender has no use for it")
    setup = sender_options(platform, fam, options, iface)
    bound = None
    if local is not None:
        bound = next((info for info in local if info[0] == fam), None)
        if bound is None:
            raise ValueError("local_addr and remote_addr are of different address families")
    if bound is not None:
        sock = _one_bound_socket(bound, plan, loop.exclusive_options.strict)
    else:
        # Unbound: the OS picks the port at connect/first send. The plan still
        # applies (Windows: SO_EXCLUSIVEADDRUSE before that implicit bind).
        sock = new_socket(fam, socket.SOCK_DGRAM, proto, plan, strict=loop.exclusive_options.strict)
    try:
        _apply_all(sock, setup, f"sending to {target[0] if target else 'a group'} on {iface.label}")
        if allow_broadcast:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        if target is not None:
            await loop.sock_connect(sock, target)
    except BaseException:
        sock.close()
        raise
    # The loop's own adoption of a socket it made: the transport knows its peer
    # (the Proactor loop needs that for a connected socket), and whatever a
    # base loop turns on when adopting it is switched off again.
    result: tuple[asyncio.BaseTransport, asyncio.BaseProtocol] = await loop._exclusive_adopt_datagram(
        protocol_factory, sock, plan, remote=target
    )
    return result

