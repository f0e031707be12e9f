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

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="uses the POSIX loops (the Windows leg runs under Wine)")




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
                    writer.close()
                    try:
                        await writer.wait_closed()
                    except OSError:
                        pass
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
