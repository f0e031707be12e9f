"""Fast restarts: graceful shutdown of live connections, and the opt-in bind retry."""

from __future__ import annotations

import asyncio
import re
import socket
import sys
from typing import Any

import pytest
from harness import run

import aioexclusive

pytestmark = pytest.mark.skipif(
    sys.platform == "win32", reason="uses the POSIX loops (the Windows leg runs under Wine)"
)


class LineService(asyncio.Protocol):
    """Answers each ``req N`` line with ``ok N``; records what it processed."""

    def __init__(self, processed: list[str], instance: int) -> None:
        self.processed = processed
        self.instance = instance
        self.buffer = b""
        self.lost = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while b"\n" in self.buffer:
            line, self.buffer = self.buffer.split(b"\n", 1)
            request = line.decode()
            self.processed.append(request)
            self.transport.write(f"ok {request} from {self.instance}\n".encode())

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost = True


async def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_graceful_shutdown_half_closes_and_drains(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        graceful = aioexclusive.GracefulShutdown()
        processed: list[str] = []
        services: list[LineService] = []

        def factory() -> LineService:
            services.append(LineService(processed, 1))
            return services[-1]

        server = await loop.create_server(graceful.wrap(factory), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a\n")
        assert await reader.readline() == b"ok a from 1\n"
        assert graceful.connections == 1

        shutdown = asyncio.ensure_future(graceful.shutdown(server, timeout=30))
        # The server half-closed its write side: the client reads a clean EOF...
        assert await reader.read() == b""
        assert not shutdown.done()  # ...and the server waits for ours.
        # Data sent while draining is not served (it could not be answered).
        writer.write(b"late\n")
        await writer.drain()
        writer.write_eof()
        result = await shutdown
        assert result == aioexclusive.ShutdownResult(drained=1, aborted=0)
        assert processed == ["a"]
        assert services[0].lost
        assert graceful.connections == 0
        writer.close()
        await writer.wait_closed()
        assert not server.is_serving()

    run(main(), base)


def test_peer_that_never_closes_is_aborted_after_the_timeout(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        graceful = aioexclusive.GracefulShutdown()
        processed: list[str] = []
        server = await loop.create_server(graceful.wrap(lambda: LineService(processed, 1)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"a\n")
        await reader.readline()
        result = await graceful.shutdown(server, timeout=0.2)
        assert result == aioexclusive.ShutdownResult(drained=0, aborted=1)
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass

    run(main(), base)


def test_streams_handler_is_tracked(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        graceful = aioexclusive.GracefulShutdown()
        finished = asyncio.Event()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while line := await reader.readline():
                writer.write(line.upper())
            writer.close()
            finished.set()

        server = await asyncio.start_server(graceful.wrap_handler(handle), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"hello\n")
        assert await reader.readline() == b"HELLO\n"
        assert graceful.connections == 1
        shutdown = asyncio.ensure_future(graceful.shutdown(server, timeout=30))
        assert await reader.read() == b""
        writer.close()
        await writer.wait_closed()
        assert (await shutdown).drained == 1
        await finished.wait()

    run(main(), base)


def test_restart_cycles_with_live_connections_lose_nothing(base: str, no_fd_leak: None) -> None:
    """Clients keep persistent connections busy while the server restarts on the same port.

    A request the server processed must have been answered completely; a
    client sees only complete answers, clean EOFs between requests (the
    graceful half-close) and refused connects while no instance listens.
    """
    cycles, clients, requests = 4, 4, 30

    async def main() -> None:
        port = await _free_port()
        processed: list[str] = []
        answered: list[str] = []
        failures: list[str] = []
        done = asyncio.Event()
        drained: list[int] = []

        async def client(cid: int) -> None:
            sent = 0
            writer = None
            while sent < requests:
                if writer is None:
                    try:
                        reader, writer = await asyncio.open_connection("127.0.0.1", port)
                    except ConnectionRefusedError:
                        await asyncio.sleep(0.01)  # between two instances
                        continue
                request = f"{cid}-{sent}"
                writer.write(f"{request}\n".encode())
                try:
                    line = await reader.readline()
                except ConnectionResetError as exc:
                    failures.append(f"{request}: {exc!r}")
                    line = b""
                if line.startswith(f"ok {request} ".encode()) and line.endswith(b"\n"):
                    answered.append(request)
                    sent += 1
                elif line:
                    failures.append(f"{request}: partial answer {line!r}")
                else:
                    # Clean EOF: the server is shutting down; this request was
                    # not served. Reconnect (to the next instance) and resend.
                    await _close_quietly(writer)
                    writer = None
                await asyncio.sleep(0.002)
            if writer is not None:
                writer.close()
                await writer.wait_closed()

        async def server_cycles() -> None:
            loop = asyncio.get_running_loop()
            for instance in range(1, cycles + 1):
                graceful = aioexclusive.GracefulShutdown()
                server = await loop.create_server(
                    graceful.wrap(lambda: LineService(processed, instance)), "127.0.0.1", port
                )
                target = len(processed) + clients * requests // (cycles + 1)
                while len(processed) < target and not done.is_set():
                    await asyncio.sleep(0.005)
                if instance < cycles:
                    result = await graceful.shutdown(server, timeout=30)
                    assert result.aborted == 0
                    drained.append(result.drained)
            await done.wait()
            await graceful.shutdown(server, timeout=30)

        serving = asyncio.ensure_future(server_cycles())
        await asyncio.gather(*(client(c) for c in range(clients)))
        done.set()
        await serving
        assert failures == []
        # The restarts really happened with clients connected.
        assert len(drained) == cycles - 1 and sum(drained) >= cycles - 1, drained
        assert sorted(answered) == sorted(f"{c}-{i}" for c in range(clients) for i in range(requests))
        # Every request the servers processed was answered, exactly once.
        assert sorted(processed) == sorted(answered)

    # bind_retry: the next instance binds while the previous one's connections close.
    run(main(), base, bind_retry=(100, 0.02))


def test_bind_retry_waits_for_the_previous_instance(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        previous = socket.create_server(("127.0.0.1", 0))
        port = previous.getsockname()[1]
        loop.call_later(0.2, previous.close)
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        assert server.sockets[0].getsockname()[1] == port
        server.close()
        await server.wait_closed()

    run(main(), base, bind_retry=(200, 0.02))


def test_without_retry_or_when_it_runs_out_the_error_is_address_in_use(base: str, no_fd_leak: None) -> None:
    holder = socket.create_server(("127.0.0.1", 0))
    port = holder.getsockname()[1]

    async def main() -> None:
        with pytest.raises(aioexclusive.AddressInUseError):
            await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port)

    try:
        run(main(), base)
        run(main(), base, bind_retry=(3, 0.01))
    finally:
        holder.close()


def test_retry_bind_retries_only_address_in_use() -> None:
    calls = []

    async def main() -> None:
        def failing() -> None:
            calls.append(1)
            raise PermissionError(13, "not allowed")

        with pytest.raises(PermissionError):
            await aioexclusive.retry_bind(failing, attempts=5, delay=0)
        assert len(calls) == 1

        attempts = iter([OSError(98, "in use"), OSError(98, "in use"), None])

        async def eventually() -> str:
            exc = next(attempts)
            if exc is not None:
                raise exc
            return "bound"

        assert await aioexclusive.retry_bind(eventually, attempts=3, delay=0) == "bound"

    asyncio.run(main())


@pytest.mark.parametrize(
    ("value", "error"),
    [((0, 1.0), ValueError), ((3, -1), ValueError), ((3,), TypeError), ("3,1", TypeError), ((2.5, 1), TypeError)],
)
def test_bind_retry_is_validated(value: object, error: type) -> None:
    with pytest.raises(error, match="bind_retry"):
        aioexclusive.new_event_loop(bind_retry=value)  # type: ignore[arg-type]


def test_graceful_restart_example_runs() -> None:
    import subprocess
    from pathlib import Path

    example = Path(__file__).resolve().parent.parent / "examples" / "graceful_restart.py"
    out = subprocess.run([sys.executable, str(example), "--restarts", "2"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert re.search(r"instance 2 stopped: [1-4] connections drained, 0 aborted", out.stdout), out.stdout
    assert out.stdout.rstrip().endswith("0 broken"), out.stdout


# -- answers in flight (issue 14.9) and just-accepted connections (issue 14.10) ------------


class SlowService(asyncio.Protocol):
    """Answers ``q`` with ``answer q`` only once *release* is set: a request still being processed."""

    def __init__(self, received: asyncio.Event, release: asyncio.Event, errors: list[BaseException]) -> None:
        self.received, self.release, self.errors = received, release, errors
        self.tasks: list[asyncio.Task[None]] = []

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received.set()
        self.tasks.append(asyncio.ensure_future(self.answer(data)))

    async def answer(self, data: bytes) -> None:
        await self.release.wait()
        try:
            self.transport.write(b"answer " + data)
        except Exception as exc:  # noqa: BLE001 - "write() after write_eof()" is what the test looks for
            self.errors.append(exc)


async def _clean_up(writer: asyncio.StreamWriter, shutdown: asyncio.Future[Any]) -> None:
    """On a failed assertion, leave nothing that keeps the loop from closing (a failure, not a hang)."""
    writer.transport.abort()
    if not shutdown.done():
        try:
            await asyncio.wait_for(shutdown, 5)
        except BaseException:  # noqa: BLE001 - the assertion that brought us here is what matters
            pass


async def _let_shutdown_start() -> None:
    # More iterations than shutdown() needs to close the listener and reach
    # every connection (the old code half-closed in its first step).
    for _ in range(20):
        await asyncio.sleep(0)


async def _close_quietly(writer: asyncio.StreamWriter) -> None:
    """Close a client whose server may have reset or aborted it already."""
    writer.close()
    try:
        await writer.wait_closed()
    except OSError:
        pass


class _InFlight:
    """A `SlowService` server behind *graceful* and one client whose request ``q`` it received, unanswered."""

    received: asyncio.Event
    release: asyncio.Event
    errors: list[BaseException]
    services: list[SlowService]
    server: asyncio.AbstractServer
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    @classmethod
    async def open(cls, graceful: aioexclusive.GracefulShutdown) -> _InFlight:
        self = cls()
        self.received, self.release = asyncio.Event(), asyncio.Event()
        self.errors, self.services = [], []

        def factory() -> SlowService:
            self.services.append(SlowService(self.received, self.release, self.errors))
            return self.services[-1]

        self.server = await asyncio.get_running_loop().create_server(graceful.wrap(factory), "127.0.0.1", 0)
        port = self.server.sockets[0].getsockname()[1]
        self.reader, self.writer = await asyncio.open_connection("127.0.0.1", port)
        self.writer.write(b"q\n")
        await self.received.wait()
        return self


async def _shutdown_from_the_factory(
    graceful: aioexclusive.GracefulShutdown, timeout: float
) -> tuple[list[asyncio.Future[aioexclusive.ShutdownResult]], asyncio.StreamReader, asyncio.StreamWriter]:
    """A `LineService` server whose factory starts ``graceful.shutdown(server, timeout)`` and one client.

    The protocol factory runs after the accept and before connection_made on
    every loop, so starting the shutdown from inside it is that moment, every time.
    Returns (the started shutdown, in a list filled by the first accept; the client).
    """
    started: list[asyncio.Future[aioexclusive.ShutdownResult]] = []

    def factory() -> LineService:
        if not started:
            started.append(asyncio.ensure_future(graceful.shutdown(server, timeout=timeout)))
        return LineService([], 1)

    server = await asyncio.get_running_loop().create_server(graceful.wrap(factory), "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
    return started, reader, writer


def test_answer_in_flight_is_delivered_before_the_half_close(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        graceful = aioexclusive.GracefulShutdown()
        slow = await _InFlight.open(graceful)
        shutdown = asyncio.ensure_future(graceful.shutdown(slow.server, timeout=30))
        try:
            await _let_shutdown_start()
            assert not slow.server.is_serving()
            slow.release.set()  # the answer is written now, while shutting down
            # The client gets the answer, then the clean EOF.
            assert await asyncio.wait_for(slow.reader.read(), 5) == b"answer q\n"
            slow.writer.close()
            await slow.writer.wait_closed()
            assert await shutdown == aioexclusive.ShutdownResult(drained=1, aborted=0)
            await asyncio.gather(*slow.services[0].tasks)
            assert slow.errors == []
        finally:
            await _clean_up(slow.writer, shutdown)

    run(main(), base)


def test_streams_answer_in_flight_is_delivered(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        graceful = aioexclusive.GracefulShutdown()
        received, release, finished = asyncio.Event(), asyncio.Event(), asyncio.Event()
        errors: list[BaseException] = []

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while line := await reader.readline():
                    received.set()
                    await release.wait()
                    writer.write(b"answer " + line)  # a request in flight: answered
                    await writer.drain()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
            finally:
                writer.close()
                finished.set()

        server = await asyncio.start_server(graceful.wrap_handler(handle), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"q\n")
        await received.wait()
        shutdown = asyncio.ensure_future(graceful.shutdown(server, timeout=30))
        try:
            await _let_shutdown_start()
            release.set()
            assert await asyncio.wait_for(reader.read(), 5) == b"answer q\n"
            writer.close()
            await writer.wait_closed()
            assert await shutdown == aioexclusive.ShutdownResult(drained=1, aborted=0)
            await finished.wait()
            assert errors == []
        finally:
            await _clean_up(writer, shutdown)

    run(main(), base)


def test_idle_connections_are_still_half_closed_at_once(base: str, no_fd_leak: None) -> None:
    """Waiting for answers in flight must not hold up idle connections (answered, or never asked)."""

    async def main() -> None:
        loop = asyncio.get_running_loop()
        graceful = aioexclusive.GracefulShutdown()
        processed: list[str] = []
        server = await loop.create_server(graceful.wrap(lambda: LineService(processed, 1)), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        answered_r, answered_w = await asyncio.open_connection("127.0.0.1", port)
        answered_w.write(b"a\n")
        assert await answered_r.readline() == b"ok a from 1\n"
        silent_r, silent_w = await asyncio.open_connection("127.0.0.1", port)
        while graceful.connections < 2:
            await asyncio.sleep(0.01)
        shutdown = asyncio.ensure_future(graceful.shutdown(server, timeout=30))
        for reader, writer in ((answered_r, answered_w), (silent_r, silent_w)):
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
        assert await shutdown == aioexclusive.ShutdownResult(drained=2, aborted=0)

    run(main(), base)


def test_a_request_never_answered_is_aborted_at_the_timeout(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        graceful = aioexclusive.GracefulShutdown()
        slow = await _InFlight.open(graceful)
        result = await asyncio.wait_for(graceful.shutdown(slow.server, timeout=0.2), 5)
        assert result == aioexclusive.ShutdownResult(drained=0, aborted=1)
        for task in slow.services[0].tasks:
            task.cancel()
        await _close_quietly(slow.writer)

    run(main(), base)


def test_connection_accepted_as_shutdown_begins_is_drained(base: str, no_fd_leak: None) -> None:
    """Shutdown starts between accept() and connection_made: the connection must not be forgotten."""

    async def main() -> None:
        started, reader, writer = await _shutdown_from_the_factory(aioexclusive.GracefulShutdown(), 30)
        try:
            # Half-closed like every other connection (before the fix: left fully open).
            assert await asyncio.wait_for(reader.read(), 5) == b""
            writer.close()
            await writer.wait_closed()
            assert await asyncio.wait_for(started[0], 5) == aioexclusive.ShutdownResult(drained=1, aborted=0)
        finally:
            await _clean_up(writer, started[0])

    run(main(), base)


def test_connection_accepted_as_shutdown_begins_is_aborted_at_the_timeout(base: str, no_fd_leak: None) -> None:
    async def main() -> None:
        started, reader, writer = await _shutdown_from_the_factory(aioexclusive.GracefulShutdown(), 0.2)
        try:
            # The client never closes: the timeout's abort must reach this connection too.
            result = await asyncio.wait_for(started[0], 5)
            assert result == aioexclusive.ShutdownResult(drained=0, aborted=1)
            try:
                assert await asyncio.wait_for(reader.read(), 5) == b""
            except ConnectionResetError:
                pass
        finally:
            await _clean_up(writer, started[0])
        await _close_quietly(writer)

    run(main(), base)


@pytest.mark.parametrize("handler", [False, True], ids=["protocol", "streams"])
def test_burst_of_idle_clients_during_shutdown_every_one_is_closed(base: str, handler: bool, no_fd_leak: None) -> None:
    """A burst of clients connects as the shutdown starts; repeated, since it is a race.

    Every connection the server made is counted and closed within the timeout;
    every client sees EOF (or a reset, if the listener closed before accepting it).
    """
    trials, clients = 6, 12

    async def trial() -> None:
        loop = asyncio.get_running_loop()
        graceful = aioexclusive.GracefulShutdown()
        made: list[int] = []
        started: list[asyncio.Future[aioexclusive.ShutdownResult]] = []

        def begin() -> None:
            made.append(1)
            if not started:
                started.append(asyncio.ensure_future(graceful.shutdown(server, timeout=0.5)))

        if handler:

            async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                begin()
                await reader.read()
                writer.close()

            server = await asyncio.start_server(graceful.wrap_handler(handle), "127.0.0.1", 0)
        else:

            def factory() -> LineService:
                begin()
                return LineService([], 1)

            server = await loop.create_server(graceful.wrap(factory), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]

        async def client() -> None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                return
            try:
                await asyncio.wait_for(reader.read(), 5)
            except ConnectionResetError:
                pass
            except asyncio.TimeoutError:
                hung.append(1)  # left open by the server: a failure (abort, not a hang)
                writer.transport.abort()
                return
            await _close_quietly(writer)

        hung: list[int] = []
        await asyncio.gather(*(client() for _ in range(clients)))
        result = await asyncio.wait_for(started[0], 5)
        assert not hung, f"{len(hung)} of {len(made)} connections were neither drained nor aborted"
        assert result.drained + result.aborted == len(made), (result, len(made))
        assert graceful.connections == 0

    async def main() -> None:
        for _ in range(trials):
            await trial()

    run(main(), base)
