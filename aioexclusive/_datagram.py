"""The datagram path: UDP endpoints made by the plan and adopted by the base loop.

Every UDP endpoint the exclusive loop makes comes through here, unicast and
multicast alike (``_multicast`` builds its sockets, then calls `adopt`), and so
does a caller's ``sock=``. The steps, in order:

1. the address check and resolution, as the base loop does them
   (`check_address`, `resolve_endpoint`);
2. a socket made and bound by the plan (``_binding``), ``SO_BROADCAST`` if
   asked (`enable_broadcast`), connected if there is a peer;
3. the base loop's adoption of that socket (`adopt`), so its native transport
   serves.

What differs per base loop is decided by `DatagramBase`, which the mixin
builds from ``_bases``; nothing here looks into the loop object for it:

* asyncio's transports know their peer only when asyncio connected the socket
  itself, so a connected socket is given to the same private constructor
  asyncio's own ``remote_addr`` path uses;
* libuv on POSIX (uvloop) turns ``SO_REUSEADDR`` on for every UDP socket it
  adopts (``uv_udp_open``): the socket is handed over *unbound* and bound from
  inside the protocol factory, which uvloop calls after ``uv_udp_open`` and
  before the loop runs again, with the option switched off first
  (`_LibuvFactory`). A connected endpoint cannot be bound after adoption, so
  uvloop's own ``remote_addr`` path makes it (`_connected_by_libuv`).

A failure at any step closes what was made: no bound socket and no transport
outlives an exception or a cancellation.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._bases import check_open
from ._binding import (
    audit_socket,
    bind_now,
    clear_forbidden_options,
    kernel_view,
    new_socket,
    resolve,
    translate_bind_error,
)
from ._errors import ExclusivityError, is_address_in_use
from ._plan import BindPlan, Role, make_plan

__all__ = [
    "DatagramBase",
    "Request",
    "adopt",
    "adopt_given_socket",
    "check_address",
    "enable_broadcast",
    "open_endpoint",
    "resolve_endpoint",
]

Endpoint = tuple[asyncio.BaseTransport, asyncio.BaseProtocol]
ProtocolFactory = Callable[[], asyncio.BaseProtocol]
# Sets options on a socket before anything is sent through it.
Prepare = Callable[[socket.socket], None]


class Candidate(NamedTuple):
    """One (family, protocol) the endpoint can be made with, and its resolved addresses."""

    family: int
    proto: int
    local: Any  # a sockaddr, or None
    remote: Any  # a sockaddr, or None


# Not frozen: one is made per create_datagram_endpoint call, and a frozen
# dataclass's __init__ costs twice as much; nothing changes it after that.
@dataclass(slots=True)
class DatagramBase:
    """The base loop's datagram path and the facts about it, handed down by the mixin.

    Attributes:
        loop: the exclusive loop (for ``sock_connect`` and futures).
        create: the *base* loop's ``create_datagram_endpoint`` (the mixin's
            ``super()`` one), which adopts a socket through ``sock=``.
        stdlib: the base is asyncio's (`_bases.is_stdlib`).
        sets_reuse: the base is libuv on POSIX (`_bases.libuv_sets_reuse`).
        allow_reuse_port: the loop option of that name.
        strict: the loop option of that name (Windows ``SO_EXCLUSIVEADDRUSE``).
    """

    loop: asyncio.AbstractEventLoop
    create: Callable[..., Awaitable[Endpoint]]
    stdlib: bool
    sets_reuse: bool
    allow_reuse_port: bool
    strict: bool

    def plan(self, role: Role, **request: Any) -> BindPlan:
        """The bind plan for *role* under this loop's options."""
        return make_plan(role, allow_reuse_port=self.allow_reuse_port, **request)

    def check_open(self) -> None:
        """The base loop's error for a closed loop, before anything is made."""
        check_open(self.loop)


@dataclass(slots=True)
class Request:
    """What one endpoint call asks for beyond its addresses (one per call, like `DatagramBase`).

    Attributes:
        protocol_factory: the caller's protocol factory.
        plan: the bind plan for the endpoint's role.
        allow_broadcast: ``SO_BROADCAST`` before bind and connect.
        prepare: sets options on the socket before anything can be sent
            through it (a multicast sender's TTL, interface and loopback): on
            a socket of ours before bind, on one libuv made before the
            protocol hears of it.
    """

    protocol_factory: ProtocolFactory
    plan: BindPlan
    allow_broadcast: bool
    prepare: Prepare | None = None


# -- addresses ---------------------------------------------------------------------


def check_address(base: DatagramBase, name: str, addr: Any) -> None:
    """The base loop's own test of a ``local_addr``/``remote_addr`` and its own error.

    asyncio takes a 2-tuple only (an ``assert`` before 3.11, a ``TypeError``
    since); uvloop a tuple or a list of two. The host and port are judged by
    the resolver, again as the base loop does.
    """
    if base.stdlib:
        if not (isinstance(addr, tuple) and len(addr) == 2):
            raise (TypeError if sys.version_info >= (3, 11) else AssertionError)("2-tuple is expected")
    elif not (isinstance(addr, (tuple, list)) and len(addr) == 2):
        raise TypeError(f"{name} must be a tuple of (host, port)")


async def resolve_address(
    base: DatagramBase, name: str, addr: Any, *, family: int, proto: int, flags: int
) -> list[Any]:
    """Check *addr* and resolve it for UDP, as the base loop does (*name* is the argument's)."""
    check_address(base, name, addr)
    return await resolve(
        base.loop,
        addr[0],
        addr[1],
        family=family,
        type=socket.SOCK_DGRAM,
        proto=proto,
        flags=flags,
        name=f"{name} port",
    )


async def resolve_endpoint(
    base: DatagramBase, local_addr: Any, remote_addr: Any, family: int, proto: int, flags: int
) -> list[Candidate]:
    """(family, protocol) -> [local, remote] pairs, resolved and matched as asyncio does."""
    # asyncio takes an empty address ((), "", []) for none at all; uvloop only None.
    if (not (local_addr or remote_addr)) if base.stdlib else (local_addr is None and remote_addr is None):
        # asyncio refuses only family 0 here (socket() judges the rest); uvloop any non-IP family.
        if family == 0 or (not base.stdlib and family not in (socket.AF_INET, socket.AF_INET6)):
            raise ValueError("unexpected address family")
        # uvloop makes this socket with the family alone; asyncio passes proto to socket().
        return [Candidate(family, proto if base.stdlib else 0, None, None)]
    pairs: dict[tuple[int, int], list[Any]] = {}
    for index, name, addr in ((0, "local_addr", local_addr), (1, "remote_addr", remote_addr)):
        if addr is None:
            continue
        # Each address is checked right before it is resolved, as the base loop does.
        for fam, _, pro, _, sockaddr in await resolve_address(
            base, name, addr, family=family, proto=proto, flags=flags
        ):
            pairs.setdefault((fam, pro), [None, None])[index] = sockaddr
    candidates = [
        Candidate(fam, pro, local, remote)
        for (fam, pro), (local, remote) in pairs.items()
        if not ((local_addr is not None and local is None) or (remote_addr is not None and remote is None))
    ]
    if not candidates:
        raise ValueError("can not get address information")
    return candidates


# -- sockets -------------------------------------------------------------------------


def enable_broadcast(sock: socket.socket, allow_broadcast: object) -> None:
    """``SO_BROADCAST`` when asked, as every base loop sets it: before bind and connect."""
    if allow_broadcast:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)


async def open_endpoint(base: DatagramBase, request: Request, candidates: list[Candidate]) -> Endpoint:
    """The first candidate that opens, as asyncio tries them; else the first error."""
    errors: list[OSError] = []
    for candidate in candidates:
        try:
            return await _open_one(base, request, candidate)
        except OSError as exc:
            errors.append(exc)
    raise errors[0]


async def _open_one(base: DatagramBase, request: Request, candidate: Candidate) -> Endpoint:
    """One UDP socket made by the plan, bound, connected, and adopted by the base loop."""
    local, remote = candidate.local, candidate.remote
    plan, prepare = request.plan, request.prepare
    if (
        base.sets_reuse
        and remote is not None
        and {name for name, _ in plan.set} <= {"SO_REUSEPORT"}
        and (prepare is None or (local is not None and local[1]))
    ):
        # A connected endpoint on libuv: libuv's own path (see _connected_by_libuv),
        # with SO_REUSEPORT where the loop allows it and the call asked for it.
        # Options to prepare go on before connect where that matters for
        # routing (a multicast sender's interface): on a port the kernel picks,
        # which nobody can aim at, the socket is ours, connected, then adopted.
        return await _connected_by_libuv(base, request, candidate)
    sock = new_socket(candidate.family, socket.SOCK_DGRAM, candidate.proto, plan, strict=base.strict, address=local)
    # libuv adopts an unconnected socket unbound, and it is bound inside the
    # factory (see the module docstring). A connected one is bound first:
    # connect() would bind it anyway, and libuv must see it connected.
    bind_later = local if base.sets_reuse and local is not None and remote is None else None
    try:
        if prepare is not None:
            prepare(sock)
        enable_broadcast(sock, request.allow_broadcast)
        if local is not None and bind_later is None:
            bind_now(sock, local, plan.role)
        # asyncio leaves a broadcast endpoint unconnected (replies to a
        # broadcast come from any host); uvloop connects it. Follow the base.
        if remote is not None and not (request.allow_broadcast and base.stdlib):
            await base.loop.sock_connect(sock, remote)
    except BaseException:
        sock.close()
        raise
    return await adopt(base, request.protocol_factory, sock, plan, remote=remote, bind_later=bind_later)


async def _connected_by_libuv(base: DatagramBase, request: Request, candidate: Candidate) -> Endpoint:
    """A connected UDP endpoint on uvloop, made by uvloop itself.

    libuv records "connected" when it adopts a socket, so a connected endpoint
    cannot be bound after adoption, and adopting a bound socket makes it
    shareable (uv_udp_open sets SO_REUSEADDR) until we switch that off: a
    window another process looping on bind lands in. uvloop's own
    local_addr/remote_addr path creates the socket in libuv and binds it with
    no reuse flag (uv_udp_bind(..., 0)), which is what the plan asks for on
    POSIX (nothing set, nothing shareable), so it is used as is, with the
    addresses already resolved. *prepare* runs on libuv's socket before the
    protocol's connection_made, so nothing is sent before it (`_Preparing`).
    """
    family, proto, local, remote = candidate
    plan = request.plan
    if local is not None and local[1]:
        # uvloop leaves its half-made transport open when its bind fails;
        # find a conflict first, with a socket of ours, so that failure is
        # ours to report (AddressInUseError) and leaves nothing behind.
        probe = new_socket(family, socket.SOCK_DGRAM, proto, plan, address=local)
        try:
            bind_now(probe, local, plan.role)
        finally:
            probe.close()
    factory = _LibuvFactory(request.protocol_factory, prepare=request.prepare)
    making = base.create(
        factory,
        local_addr=None if local is None else _host_port_pair(local),
        remote_addr=_host_port_pair(remote),
        family=family,
        proto=proto,
        allow_broadcast=request.allow_broadcast or None,
        **({"reuse_port": True} if plan.set else {}),
    )
    try:
        return await _built_by_libuv(factory, making)
    except OSError as exc:
        cause = exc.__cause__
        if isinstance(cause, OSError) and is_address_in_use(cause):
            raise translate_bind_error(cause, plan.role, local) from exc
        raise


# -- adoption --------------------------------------------------------------------------


async def adopt(
    base: DatagramBase,
    protocol_factory: ProtocolFactory,
    sock: socket.socket,
    plan: BindPlan,
    *,
    remote: Any = None,
    bind_later: Any = None,
    discard: Callable[[], None] | None = None,
) -> Endpoint:
    """Hand a UDP socket made by the plan to the base loop.

    *remote*: the peer the socket is connected to. *bind_later*: the address
    to bind once a libuv loop has adopted the still-unbound socket.
    *discard*: how to get rid of the socket if adoption fails (default:
    close it; an AF_UNIX endpoint also removes its file).
    """
    drop = discard or sock.close
    if remote is not None and base.stdlib:
        # The stdlib transports know their peer only when asyncio connected
        # the socket itself (it passes r_addr to the transport); adopted
        # through sock= they have none, and the Proactor's then reads with
        # recvfrom and sends sendto(data) through WSASendTo(addr=None), a
        # TypeError that kills the transport. So build the transport the way
        # asyncio's own remote_addr path does, with the peer.
        loop: Any = base.loop  # asyncio internals, the stdlib bases only
        try:
            protocol = protocol_factory()
            waiter = loop.create_future()
            transport = loop._make_datagram_transport(sock, protocol, remote, waiter)
        except BaseException:
            drop()
            raise
        try:
            await waiter
        except BaseException:
            transport.close()
            raise
        return transport, protocol
    if not base.sets_reuse:
        try:
            return await base.create(protocol_factory, sock=sock)
        except BaseException:
            drop()
            raise

    factory = _LibuvFactory(protocol_factory, sock=sock, plan=plan, bind_later=bind_later)
    return await _built_by_libuv(factory, base.create(factory, sock=sock), sock)


async def _built_by_libuv(
    factory: _LibuvFactory, making: Awaitable[Endpoint], sock: socket.socket | None = None
) -> Endpoint:
    """Run a libuv base's create_datagram_endpoint to its end; nothing it made outlives a failure.

    uvloop makes the transport before its last await: cancelled there, it
    leaves a live transport nobody holds. So the call runs to its end in a
    task of its own, and whatever it made is closed if we are cancelled. A
    failure inside the factory (our bind, the caller's protocol factory, the
    prepare step) is raised here, after the transport libuv made for it is
    closed by libuv itself: closing the socket under it would close a
    descriptor number that the next socket of the program may get.
    """
    building = asyncio.ensure_future(making)
    try:
        transport, protocol = await asyncio.shield(building)
    except BaseException:
        # Cancelled: the call is let finish (a few loop iterations: the
        # addresses are resolved already) and what it made is closed before the
        # cancellation goes on, so no task or transport outlives this call.
        while not building.done():
            try:
                await asyncio.wait([building])
            except asyncio.CancelledError:
                continue
        _close_built(sock, building)
        raise
    if factory.failure is not None:
        transport.close()
        await asyncio.sleep(0)
        raise factory.failure
    return transport, factory.protocol or protocol


class _LibuvFactory:
    """The protocol factory handed to a libuv base, which calls it right after ``uv_udp_open``.

    For a socket of ours (*sock*): ``uv_udp_open`` turns ``SO_REUSEADDR``
    (Linux) / ``SO_REUSEPORT`` (BSD) on for every socket it adopts; this runs
    before the loop runs again, so whatever the plan forbids is switched off
    before anything can join the port, then the socket is bound if it still
    has to be. Then the caller's protocol is built. Nothing raised here
    reaches libuv (which would leave its half-made transport holding the
    descriptor): a failure is kept in *failure*, a placeholder protocol is
    returned, and `_built_by_libuv` closes that transport and raises it.
    """

    def __init__(
        self,
        protocol_factory: ProtocolFactory,
        *,
        sock: socket.socket | None = None,
        plan: BindPlan | None = None,
        bind_later: Any = None,
        prepare: Prepare | None = None,
    ) -> None:
        self.protocol_factory = protocol_factory
        self.sock = sock
        self.plan = plan
        self.bind_later = bind_later
        self.prepare = prepare
        self.failure: BaseException | None = None
        # The caller's protocol when libuv was given a stand-in for it (_Preparing).
        self.protocol: asyncio.BaseProtocol | None = None

    def __call__(self) -> asyncio.BaseProtocol:
        if self.sock is not None and self.plan is not None:
            clear_forbidden_options(self.sock, self.plan)
            if self.bind_later is not None:
                try:
                    bind_now(self.sock, self.bind_later, self.plan.role)
                except OSError as exc:
                    self.failure = exc
                    return asyncio.DatagramProtocol()
        try:
            protocol = self.protocol_factory()
        except Exception as exc:
            self.failure = exc
            return asyncio.DatagramProtocol()
        if self.prepare is None:
            return protocol
        self.protocol = protocol
        return _Preparing(self, protocol)


class _Preparing(asyncio.DatagramProtocol):
    """Stands in for the caller's protocol until *prepare* has run on the transport's socket.

    libuv's own path makes and connects the socket itself, and the protocol's
    ``connection_made`` is the first moment it can send through it: the
    options are set just before, then the transport is handed to the
    caller's protocol, and this one is gone.
    """

    def __init__(self, factory: _LibuvFactory, app: asyncio.BaseProtocol) -> None:
        self.factory = factory
        # Any: a datagram protocol in practice, though the factory's type says BaseProtocol.
        self.app: Any = app

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert self.factory.prepare is not None
        try:
            with kernel_view(transport.get_extra_info("socket")) as view:
                self.factory.prepare(view)
        except OSError as exc:
            self.factory.failure = exc
            transport.set_protocol(asyncio.DatagramProtocol())
            return
        transport.set_protocol(self.app)
        self.app.connection_made(transport)

    # Anything before connection_made goes to the caller's protocol, as it would have.
    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.app.datagram_received(data, addr)

    def error_received(self, exc: Exception) -> None:
        self.app.error_received(exc)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.factory.failure is None:
            self.app.connection_lost(exc)


async def adopt_given_socket(
    base: DatagramBase,
    protocol_factory: ProtocolFactory,
    sock: Any,
    kind: tuple[int, int],
    shared_ok: bool,
    **arguments: Any,
) -> Endpoint:
    """``create_datagram_endpoint(sock=...)``: the caller's socket, audited, then the base loop's path.

    *kind* is the socket's (family, type) as the kernel reports it
    (``_binding.kernel_kind``); *shared_ok* lets it carry ``SO_REUSEPORT``
    (the loop's ``allow_reuse_port``). Every other argument goes to the base
    loop unchanged, so it judges them (``sock`` with ``local_addr``...) in
    its own words.
    """
    factory = protocol_factory
    if kind[0] in (socket.AF_INET, socket.AF_INET6) and kind[1] == socket.SOCK_DGRAM:
        plan = base.plan(Role.UDP_UNICAST, reuse_port=shared_ok)
        audit_socket(sock, plan)
        if base.sets_reuse:
            if _is_bound(sock):
                # uv_udp_open turns SO_REUSEADDR on before any code of ours
                # runs again: for that moment any user's SO_REUSEADDR socket
                # can join the port, and a process looping on bind does.
                raise ExclusivityError(
                    "uvloop makes a bound UDP socket passed as sock= shareable by every user "
                    "(libuv's uv_udp_open sets SO_REUSEADDR on it) before it can be switched off; "
                    "pass local_addr=(host, port) instead, and the exclusive loop binds it with no window"
                )
            # Unbound: uv_udp_open's option is switched off in the factory,
            # before anything can bind the socket.
            built = _LibuvFactory(protocol_factory, sock=sock, plan=plan)
            return await _built_by_libuv(built, base.create(built, sock=sock, **arguments))
    return await base.create(factory, sock=sock, **arguments)


# -- helpers -----------------------------------------------------------------------------


def _close_built(sock: socket.socket | None, building: asyncio.Future[Any]) -> None:
    # The adoption's transport if it got one (closing it closes the socket), else the socket.
    if not building.cancelled() and building.exception() is None:
        building.result()[0].close()
    elif sock is not None:
        sock.close()


def _is_bound(sock: Any) -> bool:
    # Asked of the kernel (kernel_view): a socket subclass or a duck-typed
    # object may say "unbound" about a bound socket.
    with kernel_view(sock) as view:
        try:
            address = view.getsockname()
        except OSError:
            return False
    return isinstance(address, tuple) and len(address) >= 2 and bool(address[1])


def _host_port_pair(sockaddr: Any) -> tuple[str, int]:
    """A resolved sockaddr as the (host, port) pair uvloop takes, scope id kept in the host."""
    host, port = sockaddr[0], sockaddr[1]
    if len(sockaddr) >= 4 and sockaddr[3]:
        host = f"{host}%{sockaddr[3]}"
    return host, port
