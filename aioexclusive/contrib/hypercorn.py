"""hypercorn with listening sockets bound by the bind plan.

``hypercorn.config.Config.create_sockets`` binds every socket itself, before
any loop is involved, and opens three holes:

* ``SO_REUSEPORT`` whenever ``workers > 1``: any process of the same user that
  sets it too can listen on the port and receive a share of the connections.
  It is not even needed: ``hypercorn.run.run`` creates the sockets once and
  hands the *same* sockets to every worker (spawned workers unpickle them;
  on Windows they are shared with ``socket.share``), so the workers already
  accept from one queue.
* ``SO_REUSEADDR`` on the QUIC (UDP) sockets: on Linux a socket of *any* user
  that sets it too can bind the port and receive the datagrams.
* a unix socket file is removed before binding, even while a live server
  answers on it.

`ExclusiveConfig` is a drop-in ``Config`` without them::

    from aioexclusive.contrib.hypercorn import ExclusiveConfig
    config = ExclusiveConfig()
    config.bind = ["127.0.0.1:8000"]
    config.workers = 4
    hypercorn.run.run(config)                       # or:
    aioexclusive.run(hypercorn.asyncio.serve(app, config))

Only the sockets hypercorn binds are covered by the class; the workers of
``hypercorn.run.run`` serve on hypercorn's own loops. Serve with
``hypercorn.asyncio.serve`` inside ``aioexclusive.run`` (one process) to make
the loop exclusive too, for whatever the application binds itself.
"""

from __future__ import annotations

import asyncio
import os
import socket
from typing import Any

import hypercorn.config

from .._bases import libuv_sets_reuse
from .._binding import audit_socket, bind_socket
from .._errors import ExclusivityError
from .._loops import ExclusiveLoopMixin
from .._plan import Role, make_plan
from .._unix import bind_unix_path, remove_own_path
from . import _v6_default_is_dualstack

__all__ = ["ExclusiveConfig"]


def _parse_host_port(bind: str) -> tuple[str, int]:
    # Exactly hypercorn's reading of "host:port", "[::1]:port" and "host".
    bind = bind.replace("[", "").replace("]", "")
    try:
        host, port = bind.rsplit(":", 1)
        return host, int(port)
    except (ValueError, IndexError):
        return bind, 8000


def _quic_refusal(quic_bind: list[str]) -> ExclusivityError:
    return ExclusivityError(
        f"QUIC sockets for {quic_bind} would be served by a plain uvloop loop, whose uv_udp_open turns "
        "SO_REUSEADDR back on (on Linux any user could then receive the datagrams). Serve them on an "
        "asyncio loop (worker_class='asyncio' and no uvloop.install()), or with hypercorn.asyncio.serve "
        "inside aioexclusive.run(..., base='uvloop')."
    )


def _adopting_loop_is_uvloop(worker_class: str | None) -> bool:
    """Will a plain uvloop loop adopt the QUIC sockets?

    libuv's ``uv_udp_open`` switches ``SO_REUSEADDR`` (Linux) / ``SO_REUSEPORT``
    (BSD) back on for every UDP socket it adopts, undoing the exclusive bind.
    The exclusive loop switches it off again; a plain uvloop loop does not.
    """
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        # hypercorn.run.run: the workers' loop is hypercorn's choice (checked
        # again in create_ssl_context, on the loop that adopts the sockets).
        return worker_class == "uvloop"
    if isinstance(loop, ExclusiveLoopMixin):
        return False
    return libuv_sets_reuse(loop)


class ExclusiveConfig(hypercorn.config.Config):
    """`hypercorn.config.Config` whose ``create_sockets`` follows the bind plan.

    * TCP (``bind``, ``insecure_bind``): bound and listening at once with the
      plan's options (``SO_EXCLUSIVEADDRUSE`` on Windows, ``SO_REUSEADDR`` only
      on POSIX), never ``SO_REUSEPORT``, whatever ``workers`` says: the workers
      share these very sockets.
    * QUIC (``quic_bind``): UDP without ``SO_REUSEADDR``/``SO_REUSEPORT``
      (``SO_EXCLUSIVEADDRUSE`` on Windows). Refused with `ExclusivityError`
      when a plain uvloop loop would adopt them, since libuv turns
      ``SO_REUSEADDR`` back on: up front for ``worker_class="uvloop"``, and
      in the worker on the loop that actually adopts them (an application
      module that calls ``uvloop.install()`` makes the asyncio worker's loop
      a uvloop one).
    * ``HOST:PORT`` with an IPv6 ``HOST`` keeps hypercorn's address
      semantics: ``[::]:P`` is dual-stack where the system default is (one
      socket, exclusive for IPv4 and IPv6 alike).
    * ``unix:PATH``: `AddressInUseError` when a live server answers at PATH; a
      stale socket file is replaced; a failed start removes the files it
      bound itself.
    * ``fd://N``: adopted as hypercorn does, then audited: a shareable TCP or
      UDP socket raises `ExclusivityError`.

    All or nothing: if one bind fails, every socket made so far is closed.
    Port in use: `AddressInUseError`.
    """

    def create_ssl_context(self) -> Any:
        """hypercorn's SSL context; first, refuse QUIC when the loop about to adopt it is a plain uvloop loop.

        hypercorn's worker (``worker_serve``) asks for the context on the very
        loop that then adopts the QUIC sockets, right before it does: this is
        where the adopting loop is known, whatever ``worker_class`` says (an
        application module that calls ``uvloop.install()`` makes the
        ``asyncio`` worker's loop a uvloop one).
        """
        if self.quic_bind and _adopting_loop_is_uvloop(None):
            raise _quic_refusal(self.quic_bind)
        return super().create_ssl_context()

    def create_sockets(self) -> hypercorn.config.Sockets:
        made: list[tuple[socket.socket, bool, str | None]] = []  # (socket, borrowed from fd://, unix path)
        try:
            if self.ssl_enabled:
                secure = self._exclusive_sockets(self.bind, socket.SOCK_STREAM, made)
                insecure = self._exclusive_sockets(self.insecure_bind, socket.SOCK_STREAM, made)
                if self.quic_bind and _adopting_loop_is_uvloop(self.worker_class):
                    raise _quic_refusal(self.quic_bind)
                quic = self._exclusive_sockets(self.quic_bind, socket.SOCK_DGRAM, made)
                # hypercorn advertises QUIC through an alt-svc header built here.
                self._set_quic_addresses(quic)
            else:
                secure, quic = [], []
                insecure = self._exclusive_sockets(self.bind, socket.SOCK_STREAM, made)
        except BaseException:
            for sock, borrowed, path in made:
                if borrowed:
                    sock.detach()  # an fd:// socket belongs to whoever passed it
                elif path is not None:
                    remove_own_path(sock, path)  # a failed start leaves no socket file of its own
                else:
                    sock.close()
            raise
        return hypercorn.config.Sockets(secure, insecure, quic)

    def _exclusive_sockets(
        self, binds: list[str], type_: int, made: list[tuple[socket.socket, bool, str | None]]
    ) -> list[socket.socket]:
        sockets = []
        for bind in binds:
            sock = self._exclusive_socket(bind, type_)
            made.append((sock, bind.startswith("fd://"), bind[5:] if bind.startswith("unix:") else None))
            sockets.append(sock)
            sock.setblocking(False)
            try:
                sock.set_inheritable(True)
            except AttributeError:  # pragma: no cover - platforms without it
                pass
        return sockets

    def _exclusive_socket(self, bind: str, type_: int) -> socket.socket:
        backlog = self.backlog if type_ == socket.SOCK_STREAM else None
        if bind.startswith("unix:"):
            path = bind[5:]
            sock = bind_unix_path(path, type=type_, backlog=backlog, umask=self.umask)
            if self.user is not None and self.group is not None:
                try:
                    os.chown(path, self.user, self.group)
                except BaseException:
                    remove_own_path(sock, path)
                    raise
            return sock
        if bind.startswith("fd://"):
            sock = socket.socket(fileno=int(bind[5:]))
            try:
                actual = sock.getsockopt(socket.SOL_SOCKET, socket.SO_TYPE)
                if actual != type_:
                    raise hypercorn.config.SocketTypeError(type_, actual)
                if sock.family in (socket.AF_INET, socket.AF_INET6):
                    role = Role.TCP_LISTENER if type_ == socket.SOCK_STREAM else Role.UDP_UNICAST
                    audit_socket(sock, make_plan(role))
            except BaseException:
                sock.detach()  # the fd belongs to whoever passed it
                raise
            return sock
        host, port = _parse_host_port(bind)
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        # hypercorn leaves IPV6_V6ONLY at the system default, so "[::]:P" is
        # dual-stack on Linux: keep it (one socket, exclusive on both families).
        dualstack = family == socket.AF_INET6 and type_ == socket.SOCK_STREAM and _v6_default_is_dualstack()
        # A wildcard listener is a _wildcard.HeldListener, which pickles for
        # hypercorn's spawned workers as a plain socket does (copyreg, _wildcard).
        sock = bind_socket((host, port), type=type_, family=family, backlog=backlog, dualstack_ipv6=dualstack)
        if type_ == socket.SOCK_STREAM:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except BaseException:
                sock.close()
                raise
        return sock
