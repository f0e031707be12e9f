"""Fast restarts on exclusive ports: graceful shutdown and an opt-in bind retry.

Why this exists: on Windows a port bound with ``SO_EXCLUSIVEADDRUSE`` cannot be
bound again while connections accepted on it are still open (or, after an
abortive close, until the OS has finished with them). Microsoft's advice for a
server that wants to restart quickly is a graceful shutdown of every
connection: ``shutdown(SD_SEND)``, read until the peer's EOF, then close; never
``SO_LINGER`` tricks, which turn the close into a reset and lose data in
flight. The same sequence is the polite way to stop on every OS: a client sees
a clean EOF at a request boundary and can reconnect to the next instance.

`GracefulShutdown` tracks a server's connections (it wraps the protocols, since
neither uvloop's nor older stdlib ``Server`` objects expose them) and performs
that sequence; `retry_bind` (and the loop option ``bind_retry=(attempts,
delay)``) covers the short moment a new instance may still find the port held.
"""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar, Union

from ._errors import is_address_in_use

__all__ = ["GracefulShutdown", "ShutdownResult", "check_bind_retry", "retry_bind"]

_T = TypeVar("_T")
_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)

# After an abort, connection_lost is only scheduled; it must come, but never
# hang a shutdown on a transport that misbehaves.
_ABORT_GRACE = 5.0


# Bounds for bind_retry/retry_bind: a restart waits seconds, not forever. A
# value past these is a mistake (a unit error, inf from a config file).
_MAX_ATTEMPTS = 10_000
_MAX_DELAY = 60.0
_MAX_TOTAL = 3600.0


def check_bind_retry(value: object, name: str = "bind_retry") -> tuple[int, float] | None:
    """Validate ``(attempts, delay)``; ``None`` means no retry."""
    if value is None:
        return None
    if not isinstance(value, tuple) or len(value) != 2:
        raise TypeError(f"{name} must be an (attempts, delay) tuple or None, got {value!r}")
    attempts, delay = value
    if isinstance(attempts, bool) or not isinstance(attempts, int):
        raise TypeError(f"{name} attempts must be an int, got {attempts!r}")
    if isinstance(delay, bool) or not isinstance(delay, (int, float)):
        raise TypeError(f"{name} delay must be a number of seconds, got {delay!r}")
    if not 1 <= attempts <= _MAX_ATTEMPTS:
        raise ValueError(f"{name} attempts must be 1-{_MAX_ATTEMPTS}, got {attempts}")
    # Written so that NaN fails too; infinity would wait forever on a held port.
    if not 0 <= delay <= _MAX_DELAY:
        raise ValueError(f"{name} delay must be 0-{_MAX_DELAY:g} seconds, got {delay}")
    if attempts * delay > _MAX_TOTAL:
        raise ValueError(
            f"{name} would wait up to {attempts * delay:g} seconds on a held port; at most {_MAX_TOTAL:g} are allowed"
        )
    return attempts, float(delay)


async def retry_bind(
    attempt: Callable[[], Union[Awaitable[_T], _T]],
    *,
    attempts: int = 10,
    delay: float = 0.1,
) -> _T:
    """Call *attempt* until it stops failing with "address in use", at most *attempts* times.

    *attempt* is a function returning an awaitable or a value, typically
    ``lambda: loop.create_server(factory, host, port)``. Only "address in
    use" (`AddressInUseError`, or any ``OSError`` with ``EADDRINUSE`` /
    ``WSAEADDRINUSE`` / ``WSAEACCES``) is retried, after *delay* seconds; any
    other error, and the last "in use", propagate unchanged. It never binds
    with a sharing option: a port held by someone else stays theirs.
    """
    checked = check_bind_retry((attempts, delay), "retry_bind")
    assert checked is not None
    attempts, delay = checked
    from ._holder import lookups_enabled

    for remaining in range(attempts - 1, -1, -1):
        # Naming the holder is for the error the caller finally sees, not for
        # attempts that will be retried (it scans every process's sockets).
        token = lookups_enabled.set(remaining == 0)
        try:
            result = attempt()
            if inspect.isawaitable(result):
                return await result
            return result
        except OSError as exc:
            if remaining == 0 or not is_address_in_use(exc):
                raise
        finally:
            lookups_enabled.reset(token)
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")  # pragma: no cover


@dataclass(frozen=True)
class ShutdownResult:
    """What `GracefulShutdown.shutdown` did.

    Attributes:
        drained: connections that closed gracefully (the peer's EOF arrived,
            or the application closed them) within the timeout.
        aborted: connections still open at the timeout, then aborted.
    """

    drained: int
    aborted: int


class _Tracked:
    """Forwards every protocol call to the application's protocol and watches the connection.

    While draining, incoming data is dropped (the write side is already shut,
    so the application could not answer; a request read now is a request not
    served, and the client sees a clean EOF instead of a half answer).
    """

    _inner: Any

    def __init__(self, inner: asyncio.BaseProtocol, owner: GracefulShutdown) -> None:
        self._inner = inner
        self._owner = owner
        self._transport: Any = None
        self._draining = False
        self._eof = False
        self._lost: asyncio.Future[None] | None = None

    # -- bookkeeping -------------------------------------------------------

    def _attach(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._lost = asyncio.get_running_loop().create_future()
        self._owner._connections.add(self)
        if self._owner._shutting_down:
            # Accepted just before the listener closed: drain it like the rest.
            self._begin_drain()

    def _begin_drain(self) -> None:
        if self._draining:
            return
        self._draining = True
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        try:
            # The application may have paused reading for flow control; the
            # peer's EOF must be seen for the close to be graceful.
            transport.resume_reading()
        except (AttributeError, RuntimeError, NotImplementedError):
            pass
        if self._eof or not transport.can_write_eof():
            # The peer already said EOF (both directions are done), or TLS,
            # which has no half-close: close() flushes and sends close_notify.
            transport.close()
        else:
            # shutdown(SHUT_WR / SD_SEND) once buffered data is flushed.
            transport.write_eof()

    # -- protocol interface ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._attach(transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._owner._connections.discard(self)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        self._eof = True
        keep_open = self._inner.eof_received()
        if self._draining:
            # Our write side is shut and now theirs is too: close.
            return False
        return keep_open  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # Anything else (application attributes reached through
        # transport.get_protocol()) comes from the application's protocol.
        return getattr(self._inner, name)


class _TrackedProtocol(_Tracked, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if not self._draining:
            self._inner.data_received(data)


class _TrackedBufferedProtocol(_Tracked, asyncio.BufferedProtocol):
    _scratch: bytearray | None = None

    def get_buffer(self, sizehint: int) -> Any:
        if self._draining:
            if self._scratch is None:
                self._scratch = bytearray(65536)
            return self._scratch
        return self._inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        if not self._draining:
            self._inner.buffer_updated(nbytes)


def _wrap(inner: asyncio.BaseProtocol, owner: GracefulShutdown) -> _Tracked:
    if isinstance(inner, asyncio.BufferedProtocol):
        return _TrackedBufferedProtocol(inner, owner)
    return _TrackedProtocol(inner, owner)


class GracefulShutdown:
    """Tracks a server's connections and shuts them down gracefully.

    Wrap the protocol factory (``loop.create_server``) or the client callback
    (``asyncio.start_server``), then call `shutdown` to stop::

        graceful = aioexclusive.GracefulShutdown()
        server = await loop.create_server(graceful.wrap(MyProtocol), host, port)
        # or: server = await asyncio.start_server(graceful.wrap_handler(handle), host, port)
        ...
        result = await graceful.shutdown(server, timeout=10)

    Works on every loop (the stdlib's, uvloop, winloop, exclusive or not): it
    only uses the public transport API (``write_eof``, ``close``, ``abort``).
    One instance can track the connections of several servers.
    """

    def __init__(self) -> None:
        self._connections: set[_Tracked] = set()
        self._shutting_down = False

    @property
    def connections(self) -> int:
        """How many tracked connections are open now."""
        return len(self._connections)

    def wrap(self, protocol_factory: Callable[[], _ProtocolT]) -> Callable[[], _ProtocolT]:
        """A protocol factory whose connections this object tracks."""
        if not callable(protocol_factory):
            raise TypeError(f"protocol_factory must be callable, got {protocol_factory!r}")

        def factory() -> Any:
            return _wrap(protocol_factory(), self)

        return factory

    def wrap_handler(
        self, client_connected_cb: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]
    ) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Any]:
        """An ``asyncio.start_server`` callback whose connections this object tracks."""
        if not callable(client_connected_cb):
            raise TypeError(f"client_connected_cb must be callable, got {client_connected_cb!r}")

        def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> Any:
            self.track(writer.transport)
            return client_connected_cb(reader, writer)

        return handler

    def track(self, transport: asyncio.BaseTransport) -> None:
        """Track a connection that is already made (swaps in a forwarding protocol)."""
        inner = transport.get_protocol()
        if isinstance(inner, _Tracked):
            return
        wrapper = _wrap(inner, self)
        transport.set_protocol(wrapper)  # type: ignore[arg-type]
        wrapper._attach(transport)

    async def shutdown(self, server: asyncio.AbstractServer | None = None, *, timeout: float = 10.0) -> ShutdownResult:
        """Stop *server* accepting, then close every tracked connection gracefully.

        Steps: ``server.close()`` (no new connections); each connection's
        write side is half-closed once its buffered data is sent
        (``write_eof``; TLS has no half-close and gets ``close()``); incoming
        data is discarded until the peer's EOF, then the connection closes.
        Connections still open after *timeout* seconds are aborted. Finally
        ``server.wait_closed()``.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        self._shutting_down = True
        try:
            if server is not None:
                server.close()
            tracked = list(self._connections)
            for conn in tracked:
                conn._begin_drain()
            waiting = [conn._lost for conn in tracked if conn._lost is not None]
            pending: set[asyncio.Future[None]] = set()
            if waiting:
                _, pending = await asyncio.wait(waiting, timeout=timeout)
            aborted = [conn for conn in tracked if conn._lost in pending]
            for conn in aborted:
                conn._transport.abort()
            if pending:
                await asyncio.wait(pending, timeout=_ABORT_GRACE)
            if server is not None:
                await server.wait_closed()
            return ShutdownResult(drained=len(tracked) - len(aborted), aborted=len(aborted))
        finally:
            self._shutting_down = False
