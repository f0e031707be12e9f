"""TCP data path: echo throughput (large messages, streaming) and request rate (small, many connections).

Server and clients run on the loop under test, over 127.0.0.1, with bare
protocols (no streams) so that the loop's own cost is as large a share of the
time as it can be: if the exclusive loop slowed the data path, this is where it
would show. Only the data exchange is timed, not connecting or closing.
"""

from __future__ import annotations

import asyncio
import functools
from typing import Any

from ._harness import Result, Stopwatch, compare

HOST = "127.0.0.1"


class EchoServer(asyncio.Protocol):
    """Writes back what it reads; stops reading while its peer is not keeping up."""

    transport: Any

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)

    # Flow control: without it a slow reader would make the server buffer the
    # whole stream in memory.
    def pause_writing(self) -> None:
        self.transport.pause_reading()

    def resume_writing(self) -> None:
        self.transport.resume_reading()


class _Client(asyncio.Protocol):
    transport: Any

    def __init__(self, done: asyncio.Future[None]) -> None:
        self.done = done

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_exception(exc or ConnectionError("the echo server closed the connection early"))


class StreamClient(_Client):
    """Sends *total* bytes in *chunk*-sized writes as fast as flow control lets it; done when all came back."""

    def __init__(self, done: asyncio.Future[None], total: int, chunk: bytes) -> None:
        super().__init__(done)
        self.total, self.chunk = total, chunk
        self.sent = self.received = 0
        self.paused = False

    def start(self) -> None:
        self._pump()

    def _pump(self) -> None:
        while not self.paused and self.sent < self.total:
            self.transport.write(self.chunk)
            self.sent += len(self.chunk)

    def pause_writing(self) -> None:
        self.paused = True

    def resume_writing(self) -> None:
        self.paused = False
        self._pump()

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.total and not self.done.done():
            self.done.set_result(None)


class RequestClient(_Client):
    """Sends a small request, waits for the whole echo, repeats *count* times."""

    def __init__(self, done: asyncio.Future[None], count: int, request: bytes) -> None:
        super().__init__(done)
        self.left, self.request = count, request
        self.pending = 0

    def start(self) -> None:
        self.pending = len(self.request)
        self.transport.write(self.request)

    def data_received(self, data: bytes) -> None:
        self.pending -= len(data)
        if self.pending > 0:
            return
        self.left -= 1
        if self.left > 0:
            self.pending = len(self.request)
            self.transport.write(self.request)
        elif not self.done.done():
            self.done.set_result(None)


async def _exchange(loop: asyncio.AbstractEventLoop, make_client: Any, connections: int) -> Stopwatch:
    server = await loop.create_server(EchoServer, HOST, 0)
    port = server.sockets[0].getsockname()[1]
    clients = []
    watch = Stopwatch()
    try:
        for _ in range(connections):
            done = loop.create_future()
            _, client = await loop.create_connection(functools.partial(make_client, done), HOST, port)
            clients.append(client)
        watch.start()
        for client in clients:
            client.start()
        await asyncio.wait_for(asyncio.gather(*(c.done for c in clients)), timeout=120)
        watch.stop()
    finally:
        for client in clients:
            client.transport.close()
        server.close()
        await server.wait_closed()
        # Let the transports finish closing before the loop does.
        for _ in range(3):
            await asyncio.sleep(0)
    return watch


def throughput(base: str, pairs: int, *, total: int, chunk_size: int = 256 * 1024) -> Result:
    """MB/s echoed through one connection, *total* bytes each way per trial."""
    chunk = b"x" * chunk_size

    async def workload(loop: asyncio.AbstractEventLoop) -> Stopwatch:
        return await _exchange(loop, lambda done: StreamClient(done, total, chunk), 1)

    result = Result(
        "TCP echo throughput",
        f"({chunk_size // 1024} KiB writes, {total >> 20} MiB)",
        base,
        "MB/s",
        higher_is_better=True,
        target=0.99,
        extra={"total_bytes": total, "chunk_bytes": chunk_size, "connections": 1},
    )
    # Work in megabytes (10**6) each way, as throughput is usually quoted.
    return compare(result, pairs, workload, total / 1e6)


def request_rate(
    base: str, pairs: int, *, connections: int, per_connection: int, size: int = 64, control: bool = False
) -> Result:
    """Round trips per second of *size*-byte requests over *connections* concurrent connections.

    *control*: plain against plain, to show the noise floor (see `compare`).
    """
    request = b"r" * size

    async def workload(loop: asyncio.AbstractEventLoop) -> Stopwatch:
        return await _exchange(loop, lambda done: RequestClient(done, per_connection, request), connections)

    result = Result(
        "TCP request rate",
        f"({size} B, {connections} conns)",
        base,
        "req/s",
        higher_is_better=True,
        target=0.99,
        extra={"connections": connections, "requests_per_connection": per_connection, "request_bytes": size},
    )
    return compare(result, pairs, workload, connections * per_connection, control=control)


def transport_classes(base: str) -> dict[str, list[str]]:
    """The classes of the server, accepted, client and UDP transports each side's loop makes.

    Timing cannot prove a 1 % difference on a busy machine; this shows why
    there should be none: when the exclusive loop's transports are the base
    loop's own classes, everything after the bind runs the base loop's code.
    """
    from ._harness import EXCLUSIVE, PLAIN, loop_factory

    async def probe(loop: asyncio.AbstractEventLoop) -> list[str]:
        accepted: list[Any] = []

        class Server(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                accepted.append(transport)

        server = await loop.create_server(Server, HOST, 0)
        client, _ = await loop.create_connection(asyncio.Protocol, HOST, server.sockets[0].getsockname()[1])
        udp, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(HOST, 0))
        try:
            while not accepted:
                await asyncio.sleep(0.001)
            return [f"{type(obj).__module__}.{type(obj).__qualname__}" for obj in (server, accepted[0], client, udp)]
        finally:
            for transport in (client, udp, *accepted):
                transport.close()
            server.close()
            await server.wait_closed()
            await asyncio.sleep(0)

    found = {}
    for side in (PLAIN, EXCLUSIVE):
        loop = loop_factory(base, side)()
        try:
            found[side] = loop.run_until_complete(asyncio.wait_for(probe(loop), timeout=30))
        finally:
            loop.close()
    return found
