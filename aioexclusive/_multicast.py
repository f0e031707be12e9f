"""Multicast, the half that touches sockets: join, leave, and the endpoint.

A multicast receiver is the one UDP socket the exclusive loop lets share, and
only when asked (``multicast=``) for a real group address. What to set, and
how each OS spells it, is data from ``_multicast_plan`` (pure, tested for
every platform everywhere); the sharing option and the bound address come
from the bind plan's ``Role.UDP_MULTICAST`` rows. This module resolves the
interface, makes the socket through ``_binding``, joins, and hands the socket
to the base loop through the one datagram path (``_datagram.adopt``), under a
`MulticastTransport` that leaves the group when it closes.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import ipaddress
import logging
import socket
from collections.abc import Callable
from typing import Any

from ._binding import open_bound_sockets
from ._datagram import Candidate, DatagramBase, Request, adopt, enable_broadcast, open_endpoint, resolve_address
from ._multicast_plan import (
    FACTS,
    LEVELS,
    Interface,
    MembershipRequest,
    Multicast,
    SockOpt,
    ip_of,
    is_multicast,
    link_index,
    membership_request,
    needs_link,
    not_multicast,
    options_of,
    receiver_bind_address,
    receiver_options,
    sender_options,
)
from ._plan import BindPlan, Platform, Role, current_platform

__all__ = [
    "Multicast",
    "MulticastTransport",
    "create_multicast_endpoint",
    "is_multicast",
    "resolve_interface",
]

logger = logging.getLogger("aioexclusive")


# -- setting options -----------------------------------------------------------------


def _constant(name: str, platform: Platform | None = None) -> int | None:
    value = getattr(socket, name, None)
    if value is not None:
        return int(value)
    return FACTS[platform or current_platform()].constants.get(name)


def _setsockopt(sock: Any, opt: SockOpt) -> None:
    level = getattr(socket, opt.level, LEVELS[opt.level])
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


# -- membership and the transport ------------------------------------------------------


class _Membership:
    """One socket's membership in one group: join, leave, leave quietly on close."""

    def __init__(self, sock: socket.socket, request: MembershipRequest) -> None:
        self.sock = sock
        self.request = request
        self.joined = False

    def _call(self, name: str) -> None:
        _setsockopt(self.sock, SockOpt(self.request.level, name, self.request.payload))

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


def _one_bound_socket(info: Any, plan: BindPlan, strict: bool) -> socket.socket:
    # The receiver's socket is made as the base loops make a listener's, not as
    # `_datagram` makes a unicast one: IPV6_V6ONLY on (an IPv6 group's receiver
    # bound to the wildcard must not take IPv4 traffic too) and a family the
    # host cannot make skipped, so the next resolved family is tried.
    sockets = open_bound_sockets([info], plan, backlog=None, strict=strict)
    if not sockets:
        # open_bound_sockets skips a family the host cannot make, as asyncio does.
        raise OSError(errno.EAFNOSUPPORT, f"this host can not make a socket for {info[4][0]}")
    return sockets[0]


async def create_multicast_endpoint(
    base: DatagramBase,
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
    unicast socket with the sender options. Addresses are checked and
    resolved as the base loop checks and resolves them (`_datagram.resolve_address`).
    """
    options = options_of(multicast)
    if sock is not None:
        raise ValueError(
            "multicast= and sock= can not be combined: the loop binds and joins a multicast socket itself "
            "(pass local_addr=(group, port))"
        )
    platform = current_platform()
    local = remote = None
    if local_addr is not None:
        local = await resolve_address(base, "local_addr", local_addr, family=family, proto=proto, flags=flags)
    if remote_addr is not None:
        remote = await resolve_address(base, "remote_addr", remote_addr, family=family, proto=proto, flags=flags)
    # After the addresses, as the unicast path (and asyncio) find a closed loop.
    base.check_open()

    if local is not None and all(ip_of(info[4]).is_multicast for info in local):
        if remote_addr is not None:
            raise ValueError(
                "a multicast receiver (local_addr is a group) can not have a remote_addr: a socket connected to "
                "a peer only receives from that peer, and datagrams never come *from* a group. Send to the group "
                "with transport.sendto(data, (group, port)) instead"
            )
        plan = base.plan(Role.UDP_MULTICAST, reuse_port=reuse_port, address=local_addr)
        return await _receiver(base, protocol_factory, local, options, plan, platform, allow_broadcast, local_addr)
    if local is not None and remote is None:
        found = next(info[4][0] for info in local if not ip_of(info[4]).is_multicast)
        raise not_multicast("local_addr", local_addr, found)
    if remote is not None and not all(ip_of(info[4]).is_multicast for info in remote):
        found = next(info[4][0] for info in remote if not ip_of(info[4]).is_multicast)
        raise not_multicast("remote_addr", remote_addr, found)
    if remote is None and family not in (socket.AF_INET, socket.AF_INET6):
        raise ValueError(
            "multicast= with neither local_addr nor remote_addr makes an unconnected sender: pass "
            "family=socket.AF_INET or socket.AF_INET6"
        )
    plan = base.plan(Role.UDP_UNICAST, reuse_address=reuse_address, reuse_port=reuse_port, address=local_addr)
    return await _sender(base, protocol_factory, local, remote, family, proto, options, plan, platform, allow_broadcast)


async def _receiver(
    base: DatagramBase,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    infos: list[Any],
    options: Multicast,
    plan: BindPlan,
    platform: Platform,
    allow_broadcast: bool | None,
    local_addr: Any,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    errors: list[OSError] = []
    for fam, type_, proto, _, sockaddr in infos:
        group = ip_of(sockaddr)
        source = ipaddress.ip_address(options.source) if options.source is not None else None
        # Everything that can be refused is refused before a socket exists.
        iface = resolve_interface(options.interface, fam)
        if fam == socket.AF_INET6:
            index = link_index(group, iface, sockaddr[3], f"local_addr {local_addr!r}")
            iface = Interface(index=index, label=iface.label if iface.index or not index else f"scope {index}")
        request = membership_request(platform, group, iface, source)
        sending = sender_options(platform, fam, options, iface)
        bind_to = receiver_bind_address(plan, fam, sockaddr, iface)
        try:
            sock = _one_bound_socket((fam, type_, proto, "", bind_to), plan, base.strict)
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
            enable_broadcast(sock, allow_broadcast)
        except OSError as exc:
            sock.close()
            errors.append(exc)
            continue
        except BaseException:
            sock.close()
            raise
        shims: list[_MembershipProtocol] = []

        def shim_factory() -> _MembershipProtocol:
            shims.append(_MembershipProtocol(protocol_factory(), membership))
            return shims[0]

        # The one adoption path: the base loop's own transport, and on uvloop
        # whatever uv_udp_open turns on that the plan forbids is switched off
        # again before the loop runs on (the multicast row's own option stays).
        transport, _ = await adopt(base, shim_factory, sock, plan)
        return shims[0].wrap(transport), shims[0].app
    raise errors[0]


async def _sender(
    base: DatagramBase,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    local: list[Any] | None,
    remote: list[Any] | None,
    family: int,
    proto: int,
    options: Multicast,
    plan: BindPlan,
    platform: Platform,
    allow_broadcast: bool | None,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """An ordinary exclusive UDP socket that sends to a group with the sender options set before first use."""
    if remote is not None:
        fam, _, proto, _, target = remote[0]
    else:
        fam, target = family, None
    iface = resolve_interface(options.interface, fam)
    if fam == socket.AF_INET6 and target is not None:
        index = link_index(ip_of(target), iface, target[3], f"remote_addr {target[0]!r}")
        iface = Interface(index=index, label=iface.label)
        target = (target[0], target[1], target[2], index if needs_link(ip_of(target)) else target[3])
    if options.source is not None:
        raise ValueError("Multicast(source=...) filters what a receiver accepts; a sender has no use for it")
    setup = sender_options(platform, fam, options, iface)
    bound = None
    if local is not None:
        bound = next((info for info in local if info[0] == fam), None)
        if bound is None:
            raise ValueError("local_addr and remote_addr are of different address families")
    what = f"sending to {target[0] if target else 'a group'} on {iface.label}"
    # The unicast path, whole: the plan's exclusive socket, bound and connected
    # as the base loop would (on uvloop without a moment of libuv's SO_REUSEADDR
    # on a bound socket), with the sender options set before anything can be
    # sent. Unbound, the OS picks the port at connect or first send, and the
    # plan still applies (Windows: SO_EXCLUSIVEADDRUSE before that implicit bind).
    candidate = Candidate(fam, proto, None if bound is None else bound[4], target)
    prepare = functools.partial(_apply_all, opts=setup, what=what)
    return await open_endpoint(base, Request(protocol_factory, plan, bool(allow_broadcast), prepare), [candidate])
