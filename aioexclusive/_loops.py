"""The exclusive loop: one mixin over any base loop class.

The mixin binds every listening socket itself, by the bind plan, and hands the
bound sockets to the base loop's own ``sock=`` path, so the stdlib loops, uvloop
and winloop all serve through their unchanged, native code. Where a base loop
changes a socket it adopts (libuv's ``uv_udp_open`` turns ``SO_REUSEADDR`` back
on), the mixin avoids or undoes that, as commented at each place.
"""

from __future__ import annotations

import _socket
import asyncio
import functools
import socket
import sys
import warnings
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, Callable, ClassVar, TypeVar

from ._binding import (
    _BIND_MESSAGE_STR,
    bind_message_from_str,
    audit_socket,
    bind_now,
    check_port,
    clear_forbidden_options,
    hosts_of,
    kernel_kind,
    listen_at_adoption,
    new_socket,
    numeric_addrinfo,
    open_bound_sockets,
    resolve,
    translate_bind_error,
)
from ._errors import ExclusivityError, is_address_in_use
from ._plan import BindPlan, Role, make_plan
from ._server import MultiServer

__all__ = ["ExclusiveLoopMixin", "LoopOptions", "exclusive_loop_class"]

_UNSET: Any = object()

# Keyword arguments that appeared in later Pythons: passing one to an older
# Python's loop is a TypeError there, so it is one here too.
_ADDED_IN = {
    "ssl_shutdown_timeout": (3, 11),
    "keep_alive": (3, 13),
}
# create_datagram_endpoint(reuse_address=...) left asyncio's signature in 3.11
# (uvloop still takes it, deprecated); reuse_address=False warns where it exists.
_DATAGRAM_REUSE_ADDRESS_UNTIL = (3, 11)
_REUSE_ADDRESS_DEPRECATED = {
    "asyncio": "The *reuse_address* parameter has been deprecated as of 3.5.10 and is scheduled for removal in 3.11.",
    "uvloop": "The *reuse_address* parameter has been deprecated as of 0.15.",
}


def _reject_unknown_kwargs(method: str, **given: Any) -> None:
    for name, value in given.items():
        if value is not _UNSET and sys.version_info < _ADDED_IN[name]:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")


@dataclass(frozen=True)
class LoopOptions:
    """How an exclusive loop treats requests to share a port.

    Attributes:
        allow_reuse_port: honour ``reuse_port=True``. This lets other processes
            of the same user bind the same port and take a share of its
            connections or datagrams; only for pre-fork servers that want it.
        strict: on Windows, refuse to serve when ``SO_EXCLUSIVEADDRUSE`` cannot
            be set, instead of warning and serving unprotected.
        bind_retry: ``(attempts, delay)``: when a TCP server's port is still
            held (the previous instance of a restarting server), try the
            exclusive bind up to *attempts* times, *delay* seconds apart,
            before raising `AddressInUseError`. ``None`` (default): no retry.
    """

    allow_reuse_port: bool = False
    strict: bool = False
    bind_retry: tuple[int, float] | None = None

    @classmethod
    def from_kwargs(cls, caller: str, options: dict[str, Any]) -> LoopOptions:
        known = {f.name for f in fields(cls)}
        for name, value in options.items():
            if name not in known:
                raise TypeError(
                    f"{caller}() got an unexpected option {name!r}; the options are: {', '.join(sorted(known))}"
                )
            if name == "bind_retry":
                from ._restart import check_bind_retry

                options = {**options, name: check_bind_retry(value, f"{caller}() option bind_retry")}
            elif not isinstance(value, bool):
                raise TypeError(f"{caller}() option {name} must be True or False, got {value!r}")
        return cls(**options)


if TYPE_CHECKING:
    # For the type checker the mixin *is* a loop: super() then reaches typed
    # base methods. At run time it is a plain mixin, put before the real base
    # class by exclusive_loop_class.
    _LoopBase = asyncio.BaseEventLoop
else:
    _LoopBase = object


class ExclusiveLoopMixin(_LoopBase):
    """Overrides the listening paths of an asyncio event loop; see the module docstring.

    Mixed in *before* the base loop class, so ``super()`` reaches the base loop.
    """

    _exclusive_options: ClassVar[LoopOptions] = LoopOptions()
    # Is the base libuv on POSIX, which turns SO_REUSEADDR on by itself: on UDP
    # sockets it adopts (uv_udp_open) and on TCP sockets it binds (uv__tcp_bind)?
    _exclusive_libuv_sets_reuse: ClassVar[bool] = False

    @property
    def exclusive_options(self) -> LoopOptions:
        """The `LoopOptions` this loop was built with."""
        return self._exclusive_options

    def _allow_shared_sock(self) -> bool:
        # allow_reuse_port lets a caller's sock= carry SO_REUSEPORT. Windows has
        # no such option (and the plan refuses reuse_port there outright), so
        # there the loop option changes nothing and sockets are audited as usual.
        return self._exclusive_options.allow_reuse_port and hasattr(socket, "SO_REUSEPORT")

    def _plan(self, role: Role, **request: Any) -> BindPlan:
        return make_plan(role, allow_reuse_port=self._exclusive_options.allow_reuse_port, **request)

    # -- TCP servers ---------------------------------------------------------

    async def create_server(  # type: ignore[override]  # one signature for every Python 3.10-3.13 (kwargs added later are checked at run time)
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        host: Any = None,
        port: Any = None,
        *,
        family: int = socket.AF_UNSPEC,
        flags: int = socket.AI_PASSIVE,
        sock: Any = None,
        backlog: int = 100,
        ssl: Any = None,
        reuse_address: bool | None = None,
        reuse_port: bool | None = None,
        keep_alive: Any = _UNSET,
        ssl_handshake_timeout: float | None = None,
        ssl_shutdown_timeout: Any = _UNSET,
        start_serving: bool = True,
    ) -> asyncio.AbstractServer:
        """Like `asyncio.loop.create_server`, with every socket bound exclusively.

        ``reuse_port=True`` raises `ExclusivityError` unless the loop was built
        with ``allow_reuse_port=True``; ``reuse_address=True`` does on Windows.
        Each socket listens as soon as it is bound, so with
        ``start_serving=False`` the port is already reserved and connections
        wait in the backlog until `start_serving`.
        """
        _reject_unknown_kwargs("create_server", keep_alive=keep_alive, ssl_shutdown_timeout=ssl_shutdown_timeout)
        if isinstance(ssl, bool):
            raise TypeError("ssl argument must be an SSLContext or None")
        if ssl_handshake_timeout is not None and ssl is None:
            raise ValueError("ssl_handshake_timeout is only meaningful with ssl")
        if ssl_shutdown_timeout not in (None, _UNSET) and ssl is None:
            raise ValueError("ssl_shutdown_timeout is only meaningful with ssl")
        tls: dict[str, Any] = {"ssl": ssl, "ssl_handshake_timeout": ssl_handshake_timeout}
        if ssl_shutdown_timeout is not _UNSET:
            tls["ssl_shutdown_timeout"] = ssl_shutdown_timeout
        base_create_server = super().create_server
        if sock is None and host is None and port is None:
            # Nothing to bind: the base loop's own ValueError, word for word.
            return await base_create_server(
                protocol_factory, backlog=backlog, start_serving=start_serving, **tls
            )

        if sock is not None:
            if host is not None or port is not None:
                raise ValueError("host/port and sock can not be specified at the same time")
            kernel_family, kernel_type = kernel_kind(sock)
            if kernel_type == socket.SOCK_STREAM and kernel_family in (socket.AF_INET, socket.AF_INET6):
                # Judged by what the kernel says the socket is (kernel_kind).
                # With allow_reuse_port the caller may hand over a socket it shares on
                # purpose. reuse_port=True itself is ignored with sock=, as asyncio
                # ignores it: the audit judges the socket as it is.
                shared_ok = self._allow_shared_sock()
                plan = self._plan(Role.TCP_LISTENER, reuse_port=shared_ok)
                audit_socket(sock, plan)
                self._exclusive_check_open()
                listen_at_adoption(sock, backlog, plan.role)
            server: asyncio.AbstractServer = await base_create_server(
                protocol_factory, sock=sock, backlog=backlog, start_serving=start_serving, **tls
            )
            return server

        self._exclusive_check_open()
        check_port(port)
        plan = self._plan(Role.TCP_LISTENER, reuse_address=reuse_address, reuse_port=reuse_port, address=host)
        hosts = hosts_of(host)
        if len(hosts) == 1 or all(h is None or numeric_addrinfo(h, 0) for h in hosts):
            # Nothing here waits for DNS, so one by one costs nothing, while
            # gather would wrap each in a task (a loop iteration each).
            found = [await resolve(self, h, port, family=family, flags=flags) for h in hosts]
        else:
            found = await asyncio.gather(
                *(resolve(self, h, port, family=family, flags=flags) for h in hosts)
            )
        # asyncio dedupes with a set; keep first-seen order so sockets are stable. The
        # canonical name is left out of the key: an address reached through a name and as
        # a literal is one address, bound once (asyncio would bind it twice).
        unique: dict[tuple[Any, ...], Any] = {}
        for group in found:
            for info in group:
                unique.setdefault((*info[:3], info[4]), info)
        infos = list(unique.values())
        stdlib_313 = isinstance(self, asyncio.BaseEventLoop) and sys.version_info >= (3, 13)
        bind = functools.partial(
            open_bound_sockets,
            infos,
            plan,
            backlog=backlog,
            keep_alive=bool(keep_alive) and keep_alive is not _UNSET,
            strict=self._exclusive_options.strict,
            skip_unavailable=stdlib_313,
        )
        retry = self._exclusive_options.bind_retry
        # Bind errors in this base loop's words (uvloop keeps the pre-3.13 wording).
        wording = bind_message_from_str.set(_BIND_MESSAGE_STR and isinstance(self, asyncio.BaseEventLoop))
        try:
            if retry is None:
                sockets = bind()
            else:
                from ._restart import retry_bind

                sockets = await retry_bind(bind, attempts=retry[0], delay=retry[1])
        finally:
            bind_message_from_str.reset(wording)
        if not sockets:
            return await self._exclusive_no_socket(infos, protocol_factory, backlog, start_serving, stdlib_313, tls)
        servers: list[asyncio.AbstractServer] = []
        try:
            for bound in sockets:
                # Never start serving inside the base call: a cancellation at its
                # internal await would leave a server we hold no reference to,
                # whose socket we would then close under its registered reader
                # (the next socket can get that fd number and is never polled).
                servers.append(
                    await base_create_server(protocol_factory, sock=bound, backlog=backlog, start_serving=False, **tls)
                )
            if start_serving:
                for started in servers:
                    await started.start_serving()
        except BaseException:
            for started in servers:
                started.close()
            for bound in sockets[len(servers) :]:
                bound.close()
            raise
        if len(servers) == 1:
            return servers[0]
        return MultiServer(self, servers)

    async def _exclusive_no_socket(
        self,
        infos: list[Any],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        start_serving: bool,
        stdlib_313: bool,
        tls: dict[str, Any],
    ) -> asyncio.AbstractServer:
        """What the base loop does when no address gave a socket (an empty host list, say)."""
        if stdlib_313:
            # Python 3.13 raises here (bpo-30945); earlier ones serve nothing.
            raise OSError(f"could not bind on any address out of {[info[4] for info in infos]!r}")
        if isinstance(self, asyncio.BaseEventLoop):
            args: list[Any] = [tls["ssl"], backlog, tls["ssl_handshake_timeout"]]
            if sys.version_info >= (3, 11):
                args.append(tls.get("ssl_shutdown_timeout"))
            server = asyncio.base_events.Server(self, [], protocol_factory, *args)
            if start_serving:
                server._start_serving()  # type: ignore[attr-defined]  # asyncio.Server internals, the stdlib base only
            return server
        for cls in type(self).__mro__:
            # uvloop/winloop: their own Server class, empty (it is serving once started, as theirs is).
            server_class = getattr(sys.modules.get(cls.__module__), "Server", None)
            if cls.__module__.partition(".")[0] in ("uvloop", "winloop") and server_class is not None:
                empty = server_class(self)
                if start_serving:
                    await empty.start_serving()
                return empty
        return MultiServer(self, [])

    # -- UDP -----------------------------------------------------------------

    async def create_datagram_endpoint(  # type: ignore[override]  # adds multicast=, and reuse_address= until 3.13
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        local_addr: Any = None,
        remote_addr: Any = None,
        *,
        family: int = 0,
        proto: int = 0,
        flags: int = 0,
        reuse_address: Any = _UNSET,
        reuse_port: bool | None = None,
        allow_broadcast: bool | None = None,
        sock: Any = None,
        multicast: Any = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Like `asyncio.loop.create_datagram_endpoint`, never sharing the port.

        ``reuse_port=True`` (unless the loop allows it) and
        ``reuse_address=True`` raise `ExclusivityError`; a ``sock=`` with
        ``SO_REUSEPORT``, or ``SO_REUSEADDR``, is refused the same way.
        ``multicast=True`` or ``multicast=aioexclusive.Multicast(...)`` is the
        one opt-in that shares a port: see `aioexclusive.Multicast`.
        """
        stdlib = isinstance(self, asyncio.BaseEventLoop)
        if reuse_address is not _UNSET:
            if stdlib and sys.version_info >= _DATAGRAM_REUSE_ADDRESS_UNTIL:
                # Not in asyncio's signature any more: its own TypeError, word for word.
                return await super().create_datagram_endpoint(
                    protocol_factory, reuse_address=reuse_address
                )
            if not reuse_address and sock is None and not stdlib:
                # uvloop warns first thing; asyncio (3.10) once the addresses are resolved, below.
                warnings.warn(_REUSE_ADDRESS_DEPRECATED["uvloop"], DeprecationWarning, stacklevel=2)
        if multicast is not None and multicast is not False:
            # An opt-in: its module is loaded on first use (see __init__).
            from ._multicast import create_multicast_endpoint

            return await create_multicast_endpoint(
                self, super().create_datagram_endpoint, protocol_factory, local_addr, remote_addr, multicast,
                family=family, proto=proto, flags=flags, reuse_address=reuse_address is True,
                reuse_port=reuse_port, allow_broadcast=allow_broadcast, sock=sock,
            )
        base_create = super().create_datagram_endpoint
        inet = (socket.AF_INET, socket.AF_INET6)
        sock_kind = kernel_kind(sock) if sock is not None else None
        is_unix = family == getattr(socket, "AF_UNIX", None) or (sock_kind is not None and sock_kind[0] not in inet)
        extra = {} if reuse_address is _UNSET else {"reuse_address": reuse_address}
        plan = self._plan(
            Role.UDP_UNICAST, reuse_address=reuse_address is True, reuse_port=reuse_port, address=local_addr
        )

        if sock is not None:
            # With allow_reuse_port the caller may hand over a socket it shares on purpose.
            plan = self._plan(Role.UDP_UNICAST, reuse_port=self._allow_shared_sock())
            factory = protocol_factory
            if not is_unix and sock_kind is not None and sock_kind[1] == socket.SOCK_DGRAM:
                audit_socket(sock, plan)
                if self._exclusive_libuv_sets_reuse:
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
                    # which uvloop calls before the loop runs again, and before
                    # anything can bind the socket.
                    factory = functools.partial(_clear_then_build, sock, plan, protocol_factory)
            return await base_create(
                factory,
                local_addr,
                remote_addr,
                family=family,
                proto=proto,
                flags=flags,
                reuse_port=reuse_port,
                allow_broadcast=allow_broadcast,
                sock=sock,
                **extra,
            )

        if is_unix:
            if isinstance(self, asyncio.BaseEventLoop) and isinstance(local_addr, str) and not reuse_port:
                from ._unix import create_unix_datagram_endpoint, guards_path

                if guards_path(local_addr):
                    # asyncio removes a live datagram server's socket file here;
                    # bind the path by the AF_UNIX rules instead (_unix.py).
                    self._exclusive_check_open()
                    return await create_unix_datagram_endpoint(
                        self, protocol_factory, local_addr, remote_addr, proto=proto, allow_broadcast=allow_broadcast
                    )
            return await base_create(
                protocol_factory, local_addr, remote_addr, family=family, proto=proto, flags=flags,
                reuse_port=reuse_port, allow_broadcast=allow_broadcast, **extra,
            )
        self._exclusive_check_open()
        candidates = await self._exclusive_datagram_candidates(local_addr, remote_addr, family, proto, flags)
        if stdlib and reuse_address is not _UNSET and not reuse_address:
            warnings.warn(_REUSE_ADDRESS_DEPRECATED["asyncio"], DeprecationWarning, stacklevel=2)
        errors: list[OSError] = []
        for (fam, pro), (local, remote) in candidates:
            try:
                return await self._exclusive_open_datagram(
                    protocol_factory, plan, fam, pro, local, remote, bool(allow_broadcast)
                )
            except OSError as exc:
                errors.append(exc)
        raise errors[0]

    async def _exclusive_datagram_candidates(
        self, local_addr: Any, remote_addr: Any, family: int, proto: int, flags: int
    ) -> list[tuple[tuple[int, int], list[Any]]]:
        """(family, protocol) -> [local, remote] pairs, resolved and matched as asyncio does."""
        if local_addr is None and remote_addr is None:
            # asyncio refuses only family 0 here (socket() judges the rest); uvloop any non-IP family.
            if family == 0 or (
                not isinstance(self, asyncio.BaseEventLoop) and family not in (socket.AF_INET, socket.AF_INET6)
            ):
                raise ValueError("unexpected address family")
            # uvloop makes this socket with the family alone; asyncio passes proto to socket().
            return [((family, proto if isinstance(self, asyncio.BaseEventLoop) else 0), [None, None])]
        pairs: dict[tuple[int, int], list[Any]] = {}
        stdlib = isinstance(self, asyncio.BaseEventLoop)
        for index, addr in ((0, local_addr), (1, remote_addr)):
            if addr is None:
                continue
            # Each address is checked right before it is resolved, with the
            # base loop's own test and words (uvloop also takes a list).
            name = ("local_addr", "remote_addr")[index]
            if stdlib and not (isinstance(addr, tuple) and len(addr) == 2):
                # An assert in asyncio before 3.11, a TypeError since.
                raise (TypeError if sys.version_info >= (3, 11) else AssertionError)("2-tuple is expected")
            if not stdlib and not (isinstance(addr, (tuple, list)) and len(addr) == 2):
                raise TypeError(f"{name} must be a tuple of (host, port)")
            for fam, _, pro, _, sockaddr in await resolve(
                self, addr[0], addr[1], family=family, type=socket.SOCK_DGRAM, proto=proto, flags=flags,
                name=f"{name} port",
            ):
                pairs.setdefault((fam, pro), [None, None])[index] = sockaddr
        candidates = [
            (key, pair)
            for key, pair in pairs.items()
            if not ((local_addr is not None and pair[0] is None) or (remote_addr is not None and pair[1] is None))
        ]
        if not candidates:
            raise ValueError("can not get address information")
        return candidates

    async def _exclusive_open_datagram(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        plan: BindPlan,
        family: int,
        proto: int,
        local: Any,
        remote: Any,
        allow_broadcast: bool,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """One UDP socket made by the plan, bound, connected, and adopted by the base loop."""
        if self._exclusive_libuv_sets_reuse and remote is not None and not plan.set:
            return await self._exclusive_connected_datagram_by_libuv(
                protocol_factory, plan, family, proto, local, remote, allow_broadcast
            )
        sock = new_socket(family, socket.SOCK_DGRAM, proto, plan, strict=self._exclusive_options.strict, address=local)
        try:
            if allow_broadcast:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
            # libuv's uv_udp_open turns SO_REUSEADDR (Linux) / SO_REUSEPORT (BSD)
            # on for every socket it adopts. So a libuv loop is handed the socket
            # *unbound*, and it is bound from inside the protocol factory, which
            # uvloop calls after uv_udp_open and before connection_made: when the
            # bind happens the option is off again, so the bound socket is never
            # shareable. A connected endpoint must be connected before adoption
            # (libuv records that at open time); it is bound first and cleaned
            # in the same synchronous step, before the loop runs again.
            deferred = self._exclusive_libuv_sets_reuse and local is not None and remote is None
            if local is not None and not deferred:
                bind_now(sock, local, plan.role)
            # asyncio leaves a broadcast endpoint unconnected (replies to a
            # broadcast come from any host); uvloop connects it. Follow the base.
            if remote is not None and not (allow_broadcast and isinstance(self, asyncio.BaseEventLoop)):
                await self.sock_connect(sock, remote)
        except BaseException:
            sock.close()
            raise
        return await self._exclusive_adopt_datagram(
            protocol_factory, sock, plan, remote=remote, bind_later=local if deferred else None
        )

    async def _exclusive_connected_datagram_by_libuv(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        plan: BindPlan,
        family: int,
        proto: int,
        local: Any,
        remote: Any,
        allow_broadcast: bool,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """A connected UDP endpoint on uvloop, made by uvloop itself.

        libuv records "connected" when it adopts a socket, so a connected
        endpoint cannot be bound after adoption, and adopting a bound socket
        makes it shareable (uv_udp_open sets SO_REUSEADDR) until we switch that
        off: a window another process looping on bind lands in. uvloop's own
        local_addr/remote_addr path creates the socket in libuv and binds it
        with no reuse flag (uv_udp_bind(..., 0)), which is what the plan asks
        for on POSIX (nothing set, nothing shareable), so it is used as is,
        with the addresses already resolved.
        """
        if local is not None and local[1]:
            # uvloop leaves its half-made transport open when its bind fails;
            # find a conflict first, with a socket of ours, so that failure is
            # ours to report (AddressInUseError) and leaves nothing behind.
            probe = new_socket(family, socket.SOCK_DGRAM, proto, plan, address=local)
            try:
                bind_now(probe, local, plan.role)
            finally:
                probe.close()
        building = asyncio.ensure_future(
            super().create_datagram_endpoint(
                protocol_factory,
                local_addr=None if local is None else _host_port_pair(local),
                remote_addr=_host_port_pair(remote),
                family=family,
                proto=proto,
                allow_broadcast=allow_broadcast or None,
            )
        )
        try:
            transport, protocol = await asyncio.shield(building)
        except asyncio.CancelledError:
            # uvloop makes the transport before its last await: close what it made.
            building.add_done_callback(_close_transport_of)
            raise
        except OSError as exc:
            cause = exc.__cause__
            if isinstance(cause, OSError) and is_address_in_use(cause):
                raise translate_bind_error(cause, plan.role, local) from exc
            raise
        return transport, protocol

    async def _exclusive_adopt_datagram(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        plan: BindPlan,
        *,
        remote: Any = None,
        bind_later: Any = None,
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Hand a UDP socket made by the plan to the base loop; it is closed if that fails.

        *remote*: the peer it is connected to. *bind_later*: the address to bind
        once a libuv loop has adopted the still-unbound socket (see above).
        """
        if remote is not None and isinstance(self, asyncio.BaseEventLoop):
            # The stdlib transports know their peer only when asyncio connected
            # the socket itself (it passes r_addr to the transport); adopted
            # through sock= they have none, and the Proactor's then reads with
            # recvfrom and sends sendto(data) through WSASendTo(addr=None), a
            # TypeError that kills the transport. So build the transport the way
            # asyncio's own remote_addr path does, with the peer.
            try:
                protocol = protocol_factory()
                waiter = self.create_future()
                transport = self._make_datagram_transport(sock, protocol, remote, waiter)  # type: ignore[attr-defined]  # asyncio internals, the stdlib bases only
            except BaseException:
                sock.close()
                raise
            try:
                await waiter
            except BaseException:
                transport.close()
                raise
            return transport, protocol
        if not self._exclusive_libuv_sets_reuse:
            try:
                transport, protocol = await super().create_datagram_endpoint(
                    protocol_factory, sock=sock
                )
            except BaseException:
                sock.close()
                raise
            return transport, protocol

        failure: list[OSError] = []

        def bind_then_build() -> asyncio.BaseProtocol:
            if bind_later is not None:
                clear_forbidden_options(sock, plan)
                try:
                    bind_now(sock, bind_later, plan.role)
                except OSError as exc:
                    # Raising here would leave uvloop's half-made transport
                    # unclosed; hand it a placeholder and close it below.
                    failure.append(exc)
                    return asyncio.DatagramProtocol()
                return protocol_factory()
            return _clear_then_build(sock, plan, protocol_factory)

        # uvloop makes the transport before its last await: cancelled there, it
        # leaves a live transport nobody holds. So the adoption runs to its end
        # in a task of its own, and whatever it made is closed if we are cancelled.
        building = asyncio.ensure_future(
            super().create_datagram_endpoint(bind_then_build, sock=sock)
        )
        try:
            transport, protocol = await asyncio.shield(building)
        except BaseException:
            if building.done():
                _close_built(sock, building)
            else:
                building.add_done_callback(functools.partial(_close_built, sock))
            raise
        if failure:
            transport.close()
            await asyncio.sleep(0)
            raise failure[0]
        return transport, protocol

    # -- clients with a fixed local port --------------------------------------

    async def create_connection(  # type: ignore[override]  # passes every keyword through to the base loop unchanged
        self, protocol_factory: Callable[[], asyncio.BaseProtocol], host: Any = None, port: Any = None, **kwargs: Any
    ) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
        """Like `asyncio.loop.create_connection`; a fixed ``local_addr`` port is bound exclusively."""
        local_addr = kwargs.get("local_addr")
        base_connect = super().create_connection
        if local_addr is None or kwargs.get("sock") is not None:
            return await base_connect(protocol_factory, host, port, **kwargs)
        if not (isinstance(local_addr, (tuple, list)) and len(local_addr) >= 2):
            # Not an address this code can read: the base loop's own error for it.
            return await base_connect(protocol_factory, host, port, **kwargs)
        # A list, or (host, port, flowinfo, scope_id), as the base loops take it.
        check_port(local_addr[1], "local_addr port")
        plan = self._plan(Role.FIXED_PORT_CLIENT, address=local_addr)
        if not local_addr[1] or not (plan.set or self._exclusive_libuv_sets_reuse):
            # An ephemeral port is the kernel's to pick, and on POSIX the plan
            # only forbids SO_REUSEPORT, which asyncio never sets on a client.
            # libuv's TCP bind (uv__tcp_bind) always sets SO_REUSEADDR, so under
            # uvloop another user could bind and listen on a connected client's
            # port: there the socket is bound here, by the plan.
            return await base_connect(protocol_factory, host, port, **kwargs)
        sock = await self._exclusive_connect_from_fixed_port(plan, host, port, local_addr, kwargs)
        passed = {k: v for k, v in kwargs.items() if k in ("ssl", "ssl_handshake_timeout", "ssl_shutdown_timeout")}
        if passed.get("ssl"):
            passed["server_hostname"] = kwargs.get("server_hostname") or host
        try:
            return await base_connect(protocol_factory, sock=sock, **passed)
        except BaseException:
            sock.close()
            raise

    async def _exclusive_connect_from_fixed_port(
        self, plan: BindPlan, host: Any, port: Any, local_addr: Any, kwargs: dict[str, Any]
    ) -> socket.socket:
        family, proto, flags = kwargs.get("family", 0), kwargs.get("proto", 0), kwargs.get("flags", 0)
        remotes = await resolve(self, host, port, family=family, proto=proto, flags=flags)
        locals_ = await resolve(self, local_addr[0], local_addr[1], family=family, proto=proto, flags=flags)
        errors: list[OSError] = []
        for remote in remotes:
            for local in locals_:
                if local[0] != remote[0]:
                    continue
                try:
                    (sock,) = open_bound_sockets([local], plan, backlog=None, strict=self._exclusive_options.strict)
                except OSError as exc:
                    errors.append(exc)
                    continue
                try:
                    await self.sock_connect(sock, remote[4])
                except OSError as exc:
                    sock.close()
                    errors.append(exc)
                    continue
                except BaseException:
                    sock.close()
                    raise
                return sock
        if not errors:
            raise OSError(f"no matching local address with family={remotes[0][0]!r} found")
        raise errors[0]

    # -- AF_UNIX servers ------------------------------------------------------

    async def create_unix_server(  # type: ignore[override]  # passes every keyword through to the base loop unchanged
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        path: Any = None,
        *,
        sock: Any = None,
        backlog: int = 100,
        **kwargs: Any,
    ) -> asyncio.AbstractServer:
        """Like `asyncio.loop.create_unix_server`, never taking over a live server's path.

        A socket file where a live server answers raises `AddressInUseError`
        naming the path (the stdlib would remove it and bind over it); a stale
        one is replaced; abstract names and ``sock=`` go to the base loop
        unchanged. The rules and the race they close are in ``_unix.py``.
        """
        from ._unix import bind_unix_listener, guards_path, remove_own_path

        base_create = super().create_unix_server
        if sock is not None and path is None:
            kernel_family, kernel_type = kernel_kind(sock)
            if kernel_type == socket.SOCK_STREAM and kernel_family in (socket.AF_INET, socket.AF_INET6):
                # An object that says AF_UNIX around a TCP socket (socket.fromfd):
                # the base loop believes the object and would serve it, so it is
                # judged as the TCP listener it is, as create_server(sock=) does.
                plan = self._plan(Role.TCP_LISTENER, reuse_port=self._allow_shared_sock())
                audit_socket(sock, plan)
                self._exclusive_check_open()
                listen_at_adoption(sock, backlog, plan.role)
        if sock is not None or not guards_path(path):
            return await base_create(
                protocol_factory, path, sock=sock, backlog=backlog, **kwargs
            )
        self._exclusive_check_open()
        bound = await bind_unix_listener(path, backlog)
        try:
            return await base_create(
                protocol_factory, sock=bound, backlog=backlog, **kwargs
            )
        except BaseException:
            remove_own_path(bound, path)
            raise

    def _exclusive_check_open(self) -> None:
        if self.is_closed():
            raise RuntimeError("Event loop is closed")


def _close_built(sock: socket.socket, building: asyncio.Future[Any]) -> None:
    # The adoption's transport if it got one (closing it closes the socket), else the socket.
    if not building.cancelled() and building.exception() is None:
        building.result()[0].close()
    else:
        sock.close()


def _is_bound(sock: Any) -> bool:
    # Asked of the kernel through the C method: a socket subclass may override
    # getsockname() and say "unbound" about a bound socket.
    try:
        address = _socket.socket.getsockname(sock) if isinstance(sock, _socket.socket) else sock.getsockname()
    except OSError:
        return False
    return isinstance(address, tuple) and len(address) >= 2 and bool(address[1])


def _host_port_pair(sockaddr: Any) -> tuple[str, int]:
    """A resolved sockaddr as the (host, port) pair uvloop takes, scope id kept in the host."""
    host, port = sockaddr[0], sockaddr[1]
    if len(sockaddr) >= 4 and sockaddr[3]:
        host = f"{host}%{sockaddr[3]}"
    return host, port


def _close_transport_of(building: asyncio.Future[Any]) -> None:
    if not building.cancelled() and building.exception() is None:
        building.result()[0].close()


def _clear_then_build(
    sock: socket.socket, plan: BindPlan, protocol_factory: Callable[[], asyncio.BaseProtocol]
) -> asyncio.BaseProtocol:
    clear_forbidden_options(sock, plan)
    return protocol_factory()


# -- building loop classes ------------------------------------------------------

_CLASSES: dict[type, type] = {}


_LoopT = TypeVar("_LoopT", bound=asyncio.AbstractEventLoop)


def exclusive_loop_class(base: type[_LoopT]) -> type[_LoopT]:
    """The exclusive subclass of a loop class, made once per base.

    Typed as the class it is given: ``exclusive_loop_class(uvloop.Loop)`` is a
    ``type[uvloop.Loop]`` to the type checker (and an `ExclusiveLoopMixin` at run time).
    """
    if issubclass(base, ExclusiveLoopMixin):
        return base
    cls = _CLASSES.get(base)
    if cls is None:
        attrs = {
            "__module__": __name__,
            "__doc__": f"{base.__module__}.{base.__qualname__} with every listening socket bound exclusively.",
            # libuv's uv_udp_open sets SO_REUSEADDR/SO_REUSEPORT on adopted UDP
            # sockets on POSIX (src/unix/udp.c), uv__tcp_bind SO_REUSEADDR on TCP
            # (src/unix/tcp.c); its Windows code does neither.
            "_exclusive_libuv_sets_reuse": base.__module__.partition(".")[0] == "uvloop",
        }
        cls = type(f"Exclusive{base.__name__.lstrip('_')}", (ExclusiveLoopMixin, base), attrs)
        _CLASSES[base] = cls
    return cls
