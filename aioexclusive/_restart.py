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
from typing import Any, TypeVar, overload

from ._errors import is_address_in_use

__all__ = ["GracefulShutdown", "ShutdownResult", "check_bind_retry", "retry_bind"]

_T = TypeVar("_T")
_ProtocolT = TypeVar("_ProtocolT", bound=asyncio.BaseProtocol)

# After an abort, connection_lost is only scheduled; it must come, but never
# hang a shutdown on a transport that misbehaves.
_ABORT_GRACE = 5.0

# Loop iterations `GracefulShutdown.shutdown` yields after closing the listener
# so that connections it had just accepted are made and tracked (see there).
_SETTLE_ITERATIONS = 3


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


@overload
async def retry_bind(attempt: Callable[[], Awaitable[_T]], *, attempts: int = ..., delay: float = ...) -> _T: ...


@overload
async def retry_bind(attempt: Callable[[], _T], *, attempts: int = ..., delay: float = ...) -> _T: ...


# Two overloads so that `retry_bind(lambda: loop.create_server(...))` is typed
# as the server the awaitable gives, and a plain function as its value.
async def retry_bind(
    attempt: Callable[[], Awaitable[_T] | _T],
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

    A connection is *busy* from the moment data reaches the application until
    the application writes (its answer) or closes: that is the only sign of a
    request in flight a protocol-level wrapper can see. The application gets a
    `_WatchedTransport` so its writes are seen. A draining connection is
    half-closed only when it is idle: right away if it is, else at the end of
    the loop iteration in which the application answered (so an answer written
    in several calls in one step stays whole), and not while the application
    waits for the write buffer to drain. Once half-closed, incoming data is
    dropped (the write side is shut, so the application could not answer; a
    request read now is a request not served, and the client sees a clean EOF
    instead of a half answer).
    """

    _inner: Any

    def __init__(self, inner: asyncio.BaseProtocol, owner: GracefulShutdown) -> None:
        self._inner = inner
        self._owner = owner
        self._transport: Any = None
        self._watched: _WatchedTransport | None = None
        self._draining = False
        self._half_closed = False
        self._busy = False
        self._paused = False
        self._check_scheduled = False
        self._eof = False
        self._lost: asyncio.Future[None] | None = None

    # -- bookkeeping -------------------------------------------------------

    def _attach(self, transport: asyncio.BaseTransport, watched: _WatchedTransport | None) -> None:
        self._transport = transport
        self._watched = watched
        self._lost = asyncio.get_running_loop().create_future()
        self._owner._connections.add(self)
        self._owner._arrived(self)

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
        self._half_close_if_idle()

    def _written(self) -> None:
        """The application wrote: whatever it was processing is answered (see the class docstring)."""
        self._busy = False
        if self._draining and not self._check_scheduled:
            # Not now: the rest of the answer may follow in this same step.
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_check)

    def _scheduled_check(self) -> None:
        self._check_scheduled = False
        self._half_close_if_idle()

    def _half_close_if_idle(self) -> None:
        if not self._draining or self._half_closed:
            return
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._watched is not None and (self._busy or self._paused or self._check_scheduled):
            # A request is being processed, or the application waits in
            # drain() to write more: the half-close comes after its answer
            # (or the timeout's abort does).
            return
        self._half_closed = True
        if self._eof or not transport.can_write_eof():
            # The peer already said EOF (both directions are done), or TLS,
            # which has no half-close: close() flushes and sends close_notify.
            transport.close()
        else:
            # shutdown(SHUT_WR / SD_SEND) once buffered data is flushed.
            transport.write_eof()

    def _received(self) -> bool:
        """Whether data that just arrived goes to the application (it still can answer)."""
        if self._half_closed:
            return False
        self._busy = True
        return True

    # -- protocol interface ------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        watched = _WatchedTransport(transport, self)
        self._inner.connection_made(watched)
        # Attached after the application's connection_made: a connection made
        # during shutdown is half-closed at once, after a greeting it wrote.
        self._attach(transport, watched)

    def connection_lost(self, exc: BaseException | None) -> None:
        self._owner._connections.discard(self)
        if self._lost is not None and not self._lost.done():
            self._lost.set_result(None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._paused = True
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._paused = False
        self._inner.resume_writing()
        if self._draining and not self._check_scheduled:
            # The application's drain() wakes up in this iteration's callbacks;
            # look again after it had its chance to write more.
            self._check_scheduled = True
            asyncio.get_running_loop().call_soon(self._scheduled_check)

    def eof_received(self) -> bool | None:
        self._eof = True
        if self._half_closed:
            self._inner.eof_received()
            # Our write side is shut and now theirs is too: close.
            return False
        keep_open = self._inner.eof_received()
        if keep_open:
            # The application keeps the connection to answer what it read.
            self._busy = True
        return keep_open  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        # Anything else (application attributes reached through
        # transport.get_protocol()) comes from the application's protocol.
        return getattr(self._inner, name)


class _WatchedTransport(asyncio.Transport):
    """The transport the application sees: the real one, with its writes noted (see `_Tracked`).

    ``set_protocol``/``get_protocol`` act on the application's protocol behind
    the tracking wrapper, so swapping protocols keeps the connection tracked.
    Anything not listed (private attributes other asyncio code reads, such as
    ``_start_tls_compatible``) comes from the real transport.
    """

    def __init__(self, transport: Any, tracked: _Tracked) -> None:
        super().__init__()
        self._real = transport
        self._tracked = tracked

    def write(self, data: Any) -> None:
        self._real.write(data)
        if data:
            self._tracked._written()

    def writelines(self, list_of_data: Any) -> None:
        self._real.writelines(list_of_data)
        self._tracked._written()

    def write_eof(self) -> None:
        self._real.write_eof()
        self._tracked._written()

    def close(self) -> None:
        self._real.close()

    def abort(self) -> None:
        self._real.abort()

    def is_closing(self) -> bool:
        return bool(self._real.is_closing())

    def can_write_eof(self) -> bool:
        return bool(self._real.can_write_eof())

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return self._real.get_extra_info(name, default)

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._tracked._inner = protocol

    def get_protocol(self) -> Any:
        return self._tracked._inner

    def is_reading(self) -> bool:
        return bool(self._real.is_reading())

    def pause_reading(self) -> None:
        self._real.pause_reading()

    def resume_reading(self) -> None:
        self._real.resume_reading()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self._real.set_write_buffer_limits(high, low)

    def get_write_buffer_size(self) -> int:
        return int(self._real.get_write_buffer_size())

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._real.get_write_buffer_limits()  # type: ignore[no-any-return]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def __repr__(self) -> str:
        return f"<watched {self._real!r}>"


class _TrackedProtocol(_Tracked, asyncio.Protocol):
    def data_received(self, data: bytes) -> None:
        if self._received():
            self._inner.data_received(data)


class _TrackedBufferedProtocol(_Tracked, asyncio.BufferedProtocol):
    _scratch: bytearray | None = None

    def get_buffer(self, sizehint: int) -> Any:
        if self._half_closed:
            if self._scratch is None:
                self._scratch = bytearray(65536)
            return self._scratch
        return self._inner.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        # get_buffer decided where these bytes went; a half-close in between
        # (it only happens in a callback of its own) cannot split the pair.
        if self._received():
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
    One instance can track the connections of several servers; it stands for
    one generation of them: connections that arrive after `shutdown` began
    (accepted just before the listener closed) are drained too.
    """

    def __init__(self) -> None:
        self._connections: set[_Tracked] = set()
        self._shutting_down = False
        self._waiting = False
        self._deadline = 0.0
        self._arrival: asyncio.Future[None] | None = None

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
            watched = self._track(writer.transport)
            if watched is not None and getattr(writer, "_transport", None) is writer.transport:
                # The handler writes through the StreamWriter: let it write
                # through the watched transport, so an answer in flight is
                # seen (StreamWriter keeps its transport in ``_transport`` on
                # every supported Python; if that ever changes, the connection
                # is half-closed without waiting, as `track` does).
                writer._transport = watched  # type: ignore[attr-defined]
            return client_connected_cb(reader, writer)

        return handler

    def track(self, transport: asyncio.BaseTransport) -> None:
        """Track a connection that is already made (swaps in a forwarding protocol).

        The application keeps writing to *transport* directly, so its answers
        are not seen: such a connection is half-closed as soon as `shutdown`
        begins. Prefer `wrap` / `wrap_handler`, which wait for an answer in flight.
        """
        self._track(transport, watch=False)

    def _track(self, transport: asyncio.BaseTransport, *, watch: bool = True) -> _WatchedTransport | None:
        inner = transport.get_protocol()
        if isinstance(inner, _Tracked):
            return None
        wrapper = _wrap(inner, self)
        transport.set_protocol(wrapper)  # type: ignore[arg-type]
        watched = _WatchedTransport(transport, wrapper) if watch else None
        wrapper._attach(transport, watched)
        return watched

    def _arrived(self, conn: _Tracked) -> None:
        """A connection was made; during or after `shutdown` it is drained at once."""
        if not self._shutting_down:
            return
        conn._begin_drain()
        if self._arrival is not None and not self._arrival.done():
            self._arrival.set_result(None)  # wake `shutdown`: one more to wait for
        if self._waiting:
            return
        # `shutdown` is past its waiting: the deadline still holds.
        loop = asyncio.get_running_loop()
        left = self._deadline - loop.time()
        if left <= 0:
            conn._transport.abort()
        else:
            loop.call_later(left, self._abort_if_open, conn)

    @staticmethod
    def _abort_if_open(conn: _Tracked) -> None:
        if conn._lost is not None and not conn._lost.done():
            conn._transport.abort()

    async def shutdown(self, server: asyncio.AbstractServer | None = None, *, timeout: float = 10.0) -> ShutdownResult:
        """Stop *server* accepting, then close every tracked connection gracefully.

        Steps: ``server.close()`` (no new connections); each connection's
        write side is half-closed once it is idle, that is, once the answer
        to a request being processed has been written, and its buffered data
        is sent (``write_eof``; TLS has no half-close and gets ``close()``);
        incoming data is discarded after that until the peer's EOF, then the
        connection closes. Connections the listener accepted just before it
        closed are included. Every connection still open *timeout* seconds
        after the call is aborted, whenever it arrived. Finally
        ``server.wait_closed()``.
        """
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout >= 0:
            raise ValueError(f"timeout must be a number of seconds >= 0, got {timeout!r}")
        loop = asyncio.get_running_loop()
        self._deadline = loop.time() + timeout
        self._shutting_down = True
        self._waiting = True
        seen: set[_Tracked] = set()
        closing: asyncio.Future[None] | None = None
        try:
            if server is not None:
                server.close()
            # A connection the listener accepted just before close() reaches
            # the protocol factory, connection_made and (streams) the handler
            # that tracks it one, two and three loop iterations later; the
            # loop below waits for stragglers too, this only saves it a round.
            for _ in range(_SETTLE_ITERATIONS):
                await asyncio.sleep(0)
            if server is not None:
                # 3.12+ waits here for the server's connections: ours are
                # closed below, within the deadline, whenever they arrive.
                closing = asyncio.ensure_future(server.wait_closed())
            while True:
                current = set(self._connections)
                for conn in current - seen:
                    conn._begin_drain()
                seen |= current
                waiting: list[asyncio.Future[Any]] = [
                    conn._lost for conn in current if conn._lost is not None and not conn._lost.done()
                ]
                if closing is not None and not closing.done():
                    waiting.append(closing)
                left = self._deadline - loop.time()
                if not waiting or left <= 0:
                    break
                self._arrival = loop.create_future()
                waiting.append(self._arrival)
                await asyncio.wait(waiting, timeout=left, return_when=asyncio.FIRST_COMPLETED)
                self._arrival.cancel()
                self._arrival = None
            self._waiting = False
            seen |= self._connections
            aborted = [conn for conn in seen if conn._lost is not None and not conn._lost.done()]
            for conn in aborted:
                conn._transport.abort()
            if aborted:
                await asyncio.wait([conn._lost for conn in aborted if conn._lost is not None], timeout=_ABORT_GRACE)
            if closing is not None:
                await closing
            return ShutdownResult(drained=len(seen) - len(aborted), aborted=len(aborted))
        finally:
            self._waiting = False
            if self._arrival is not None:
                self._arrival.cancel()
                self._arrival = None
            if closing is not None and not closing.done():
                closing.cancel()
