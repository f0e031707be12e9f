"""Multicast, the pure half: what to ask of each OS, as data (no sockets here).

Several receivers on one host legitimately share a multicast group and port, so
a multicast receiver is the only UDP socket the exclusive loop lets share. It
does so only when asked (``multicast=``) and only for a real multicast address;
the sharing option and the address bound come from the bind plan's
``Role.UDP_MULTICAST`` rows (`aioexclusive._plan.RULES`), never from here.

This module adds what the plan does not cover, as pure functions of (platform,
family, request) like the plan, so every platform's bytes are unit-tested on
every platform: the user's request (`Multicast`), how each OS spells a
membership request (``ip_mreqn``, ``ip_mreq``, ``ipv6_mreq``, source-specific
requests), the sender options (TTL, loopback, outgoing interface), and which
address a receiver binds. ``_multicast`` applies them to sockets.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from ._errors import ExclusivityError
from ._plan import BindPlan, Platform

__all__ = [
    "FACTS",
    "LEVELS",
    "Interface",
    "MembershipRequest",
    "Multicast",
    "PlatformFacts",
    "SockOpt",
    "ip_of",
    "is_multicast",
    "link_index",
    "membership_request",
    "needs_link",
    "not_multicast",
    "options_of",
    "receiver_bind_address",
    "receiver_options",
    "sender_options",
]

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


def options_of(multicast: object) -> Multicast:
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


def needs_link(group: IPAddress) -> bool:
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

LEVELS = {"IPPROTO_IP": 0, "IPPROTO_IPV6": 41}


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


# -- interfaces --------------------------------------------------------------------


@dataclass(frozen=True)
class Interface:
    """An interface resolved for one address family: by index, by IPv4 address, or neither (OS default)."""

    index: int = 0
    address: str | None = None
    label: str = "the default interface"


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
        return MembershipRequest("IPPROTO_IP", "IP_ADD_SOURCE_MEMBERSHIP", "IP_DROP_SOURCE_MEMBERSHIP", payload, where)
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
        _group_source_req(iface.index, group, source, iface.index if needs_link(group) else 0),
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


def ip_of(sockaddr: Any) -> IPAddress:
    return ipaddress.ip_address(sockaddr[0])


def not_multicast(name: str, addr: Any, found: Any) -> ExclusivityError:
    return ExclusivityError(
        f"multicast= was asked for {name} {addr!r}, but {found} is not a multicast address "
        "(IPv4 224.0.0.0/4, IPv6 ff00::/8); refused because only multicast receivers may share a port: a "
        "unicast UDP port shared through SO_REUSEADDR can be joined by another socket that takes its "
        "datagrams. Give a multicast group, or drop multicast= for an exclusive unicast endpoint."
    )


def link_index(group: IPAddress, iface: Interface, scope: int, what: str) -> int:
    """The interface index for an IPv6 group: the interface's, or the group's own scope id."""
    if iface.index and scope and iface.index != scope:
        raise ValueError(
            f"{what}: the group's scope id ({scope}) and Multicast(interface=...) ({iface.label}) disagree"
        )
    index = iface.index or scope
    if needs_link(group) and not index:
        raise ValueError(
            f"{what}: {group} is an IPv6 link-scope group, which exists once per link; name the interface, "
            f"as Multicast(interface='eth0') or as the group's scope ('{group}%eth0')"
        )
    return index


def receiver_bind_address(plan: BindPlan, family: int, sockaddr: Any, iface: Interface) -> Any:
    """The address a receiver of the group at *sockaddr* binds, by the plan's multicast row."""
    if plan.bind_to == "wildcard":
        # Windows delivers multicast to a wildcard bind, and binding a group
        # address there fails; the plan says so.
        return ("0.0.0.0", sockaddr[1]) if family == socket.AF_INET else ("::", sockaddr[1], 0, 0)
    if family == socket.AF_INET6:
        # Binding the group (not the wildcard) keeps unicast datagrams to the
        # shared port out. Linux binds a link-scope address only with its scope.
        scope = iface.index if needs_link(ip_of(sockaddr)) else sockaddr[3]
        return (sockaddr[0], sockaddr[1], sockaddr[2], scope)
    return sockaddr
