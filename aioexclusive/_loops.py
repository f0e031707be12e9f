"""The exclusive loop: one mixin over any base loop class.

The mixin binds every listening socket itself, by the bind plan, and hands the
bound sockets to the base loop's own ``sock=`` path, so the stdlib loops, uvloop
and winloop all serve through their unchanged, native code. Where a base loop
changes a socket it adopts (libuv's ``uv_udp_open`` turns ``SO_REUSEADDR`` back
on), the mixin avoids or undoes that, as commented at each place.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar, cast

from ._bases import check_open, is_stdlib, libuv_server_class, libuv_sets_reuse
from ._binding import (
    _BIND_MESSAGE_STR,
    audit_socket,
    bind_message_from_str,
    check_port,
    hosts_of,
    kernel_kind,
    listen_at_adoption,
    numeric_addrinfo,
    open_bound_sockets,
    resolve,
)
from ._datagram import DatagramBase, Request, adopt_given_socket, open_endpoint, resolve_endpoint
from ._plan import BindPlan, Role, make_plan
from ._server import MultiServer

__all__ = ["ExclusiveLoopMixin", "LoopOptions", "exclusive_loop_class"]

_UNSET: Any = object()

# create_datagram_endpoint is typed as asyncio's own signature types it: the
# transport a DatagramTransport, the protocol the one the factory makes.
_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)
# What the datagram path gives back: the protocol is the one the factory made.
_Made = tuple[asyncio.DatagramTransport, Any]

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
    # What the base loop is, asked once per class (_bases): asyncio's own, and
    # does it turn SO_REUSEADDR on by itself (libuv on POSIX)?
    _exclusive_stdlib: ClassVar[bool] = False
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
            return await base_create_server(protocol_factory, backlog=backlog, start_serving=start_serving, **tls)

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
                check_open(self)
                listen_at_adoption(sock, backlog, plan.role)
            server: asyncio.AbstractServer = await base_create_server(
                protocol_factory, sock=sock, backlog=backlog, start_serving=start_serving, **tls
            )
            return server

        check_open(self)
        check_port(port)
        plan = self._plan(Role.TCP_LISTENER, reuse_address=reuse_address, reuse_port=reuse_port, address=host)
        hosts = hosts_of(host)
        if len(hosts) == 1 or all(h is None or numeric_addrinfo(h, 0) for h in hosts):
            # Nothing here waits for DNS, so one by one costs nothing, while
            # gather would wrap each in a task (a loop iteration each).
            found = [await resolve(self, h, port, family=family, flags=flags) for h in hosts]
        else:
            found = await asyncio.gather(*(resolve(self, h, port, family=family, flags=flags) for h in hosts))
        # asyncio dedupes with a set; keep first-seen order so sockets are stable. The
        # canonical name is left out of the key: an address reached through a name and as
        # a literal is one address, bound once (asyncio would bind it twice).
        unique: dict[tuple[Any, ...], Any] = {}
        for group in found:
            for info in group:
                unique.setdefault((*info[:3], info[4]), info)
        infos = list(unique.values())
        stdlib_313 = self._exclusive_stdlib and sys.version_info >= (3, 13)
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
        wording = bind_message_from_str.set(_BIND_MESSAGE_STR and self._exclusive_stdlib)
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
        if self._exclusive_stdlib and len(sockets) > 1:
            # Several sockets on asyncio: one Server over all of them, as asyncio's
            # own create_server makes it (one object, one start, one loop iteration).
            return await self._exclusive_stdlib_server(sockets, protocol_factory, backlog, start_serving, tls)
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

    async def _exclusive_stdlib_server(
        self,
        sockets: list[socket.socket],
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        backlog: int,
        start_serving: bool,
        tls: dict[str, Any],
    ) -> asyncio.AbstractServer:
        """asyncio's Server over our bound *sockets*, made and started as asyncio's create_server does.

        The arguments were checked by create_server already, with asyncio's
        own errors. A failure or a cancellation closes the sockets (or the
        server holding them): nothing is left serving that nobody holds.
        """
        args: list[Any] = [tls["ssl"], backlog, tls["ssl_handshake_timeout"]]
        if sys.version_info >= (3, 11):
            args.append(tls.get("ssl_shutdown_timeout"))
        try:
            for bound in sockets:
                bound.setblocking(False)
            server = asyncio.base_events.Server(self, sockets, protocol_factory, *args)
        except BaseException:
            for bound in sockets:
                bound.close()
            raise
        if start_serving:
            try:
                server._start_serving()  # type: ignore[attr-defined]  # asyncio.Server internals, the stdlib base only
                # One loop iteration, so that every add_reader goes through (asyncio does the same).
                await asyncio.sleep(0)
            except BaseException:
                server.close()
                raise
        return server

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
        if self._exclusive_stdlib:
            return await self._exclusive_stdlib_server([], protocol_factory, backlog, start_serving, tls)
        server_class = libuv_server_class(self)
        if server_class is not None:
            # uvloop/winloop: their own Server class, empty (it is serving once started, as theirs is).
            empty: asyncio.AbstractServer = server_class(self)
            if start_serving:
                await empty.start_serving()
            return empty
        return MultiServer(self, [])

    # -- UDP -----------------------------------------------------------------

    async def create_datagram_endpoint(  # adds multicast= (and reuse_address= until 3.13)
        self,
        protocol_factory: Callable[[], _ProtocolT],
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
    ) -> tuple[asyncio.DatagramTransport, _ProtocolT]:
        """Like `asyncio.loop.create_datagram_endpoint`, never sharing the port.

        ``reuse_port=True`` (unless the loop allows it) and
        ``reuse_address=True`` raise `ExclusivityError`; a ``sock=`` with
        ``SO_REUSEPORT``, or ``SO_REUSEADDR``, is refused the same way.
        ``multicast=True`` or ``multicast=aioexclusive.Multicast(...)`` is the
        one opt-in that shares a port: see `aioexclusive.Multicast`.
        """
        stdlib = self._exclusive_stdlib
        if reuse_address is not _UNSET:
            if stdlib and sys.version_info >= _DATAGRAM_REUSE_ADDRESS_UNTIL:
                # Not in asyncio's signature any more: its own TypeError, word for word.
                return await super().create_datagram_endpoint(protocol_factory, reuse_address=reuse_address)
            if not reuse_address and sock is None and not stdlib:
                # uvloop warns first thing; asyncio (3.10) once the addresses are resolved, below.
                warnings.warn(_REUSE_ADDRESS_DEPRECATED["uvloop"], DeprecationWarning, stacklevel=2)
        base = self._exclusive_datagram_base()
        if multicast is not None and multicast is not False:
            # An opt-in: its module is loaded on first use (see __init__).
            from ._multicast import create_multicast_endpoint

            return cast(
                _Made,
                await create_multicast_endpoint(
                    base,
                    protocol_factory,
                    local_addr,
                    remote_addr,
                    multicast,
                    family=family,
                    proto=proto,
                    flags=flags,
                    reuse_address=reuse_address is True,
                    reuse_port=reuse_port,
                    allow_broadcast=allow_broadcast,
                    sock=sock,
                ),
            )
        # Refusals first (reuse_port=True, reuse_address=True), whatever else is passed.
        plan = base.plan(
            Role.UDP_UNICAST, reuse_address=reuse_address is True, reuse_port=reuse_port, address=local_addr
        )
        passed = dict(family=family, proto=proto, flags=flags, reuse_port=reuse_port, allow_broadcast=allow_broadcast)
        if reuse_address is not _UNSET:
            passed["reuse_address"] = reuse_address
        if sock is not None:
            # With allow_reuse_port the caller may hand over a socket it shares on purpose.
            return cast(
                _Made,
                await adopt_given_socket(
                    base,
                    protocol_factory,
                    sock,
                    kernel_kind(sock),
                    self._allow_shared_sock(),
                    local_addr=local_addr,
                    remote_addr=remote_addr,
                    **passed,
                ),
            )
        if family == getattr(socket, "AF_UNIX", None):
            if stdlib and isinstance(local_addr, str):
                from ._unix import create_unix_datagram_endpoint, guards_path, refuse_live_path

                if guards_path(local_addr):
                    if reuse_port:
                        # asyncio removes the file it finds, a live server's too, and only
                        # then refuses reuse_port for AF_UNIX: keep a live one, let it refuse.
                        refuse_live_path(local_addr)
                    else:
                        # asyncio removes a live datagram server's socket file here;
                        # bind the path by the AF_UNIX rules instead (_unix.py).
                        if reuse_address is not _UNSET and not reuse_address:
                            warnings.warn(_REUSE_ADDRESS_DEPRECATED["asyncio"], DeprecationWarning, stacklevel=2)
                        base.check_open()
                        return cast(
                            _Made,
                            await create_unix_datagram_endpoint(
                                base,
                                protocol_factory,
                                local_addr,
                                remote_addr,
                                proto=proto,
                                allow_broadcast=allow_broadcast,
                            ),
                        )
            return cast(_Made, await base.create(protocol_factory, local_addr, remote_addr, **passed))
        candidates = await resolve_endpoint(base, local_addr, remote_addr, family, proto, flags)
        # After the addresses, as asyncio finds a closed loop only once it uses it.
        base.check_open()
        if stdlib and reuse_address is not _UNSET and not reuse_address:
            warnings.warn(_REUSE_ADDRESS_DEPRECATED["asyncio"], DeprecationWarning, stacklevel=2)
        request = Request(protocol_factory, plan, bool(allow_broadcast))
        return cast(_Made, await open_endpoint(base, request, candidates))

    def _exclusive_datagram_base(self) -> DatagramBase:
        """What the datagram path needs of this loop, passed down explicitly (``_datagram``)."""
        return DatagramBase(
            loop=self,
            create=super().create_datagram_endpoint,
            stdlib=self._exclusive_stdlib,
            sets_reuse=self._exclusive_libuv_sets_reuse,
            allow_reuse_port=self._exclusive_options.allow_reuse_port,
            strict=self._exclusive_options.strict,
        )

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
                check_open(self)
                listen_at_adoption(sock, backlog, plan.role)
        if sock is not None or not guards_path(path):
            return await base_create(protocol_factory, path, sock=sock, backlog=backlog, **kwargs)
        check_open(self)
        bound = await bind_unix_listener(path, backlog)
        try:
            return await base_create(protocol_factory, sock=bound, backlog=backlog, **kwargs)
        except BaseException:
            remove_own_path(bound, path)
            raise


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
            "_exclusive_stdlib": is_stdlib(base),
            "_exclusive_libuv_sets_reuse": libuv_sets_reuse(base),
        }
        cls = type(f"Exclusive{base.__name__.lstrip('_')}", (ExclusiveLoopMixin, base), attrs)
        _CLASSES[base] = cls
    return cls
