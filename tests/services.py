"""Small counting services for the attack tests: what reached *our* server."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

LOOPBACK = {4: "127.0.0.1", 6: "::1"}
WILDCARD = {4: "0.0.0.0", 6: "::"}


class Counter:
    def __init__(self) -> None:
        self.count = 0
        self._changed = asyncio.Event()

    def hit(self) -> None:
        self.count += 1
        self._changed.set()

    async def wait_for(self, expected: int, timeout: float = 5.0) -> int:
        """Wait until *expected* hits arrived (or the timeout passed); return the count."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self.count < expected and loop.time() < deadline:
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), deadline - loop.time())
            except asyncio.TimeoutError:
                break
        # A little longer, so extra hits (a broken count) would show too.
        await asyncio.sleep(0.01)
        return self.count


class _TCPCounting(asyncio.Protocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def connection_made(self, transport: Any) -> None:
        self.counter.hit()
        transport.close()


class _UDPCounting(asyncio.DatagramProtocol):
    def __init__(self, counter: Counter) -> None:
        self.counter = counter

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.counter.hit()


class Service:
    """A TCP server or UDP endpoint on the running loop that counts what it receives."""

    def __init__(self, closer: Any, port: int, counter: Counter, sockets: list[Any]) -> None:
        self._closer = closer
        self.port = port
        self.counter = counter
        self.sockets = sockets

    async def close(self) -> None:
        closer = self._closer
        closer.close()
        if hasattr(closer, "wait_closed"):
            await closer.wait_closed()
        else:
            await asyncio.sleep(0)


async def open_service(proto: str, host: str, port: int = 0, **kwargs: Any) -> Service:
    loop = asyncio.get_running_loop()
    counter = Counter()
    if proto == "tcp":
        server = await loop.create_server(lambda: _TCPCounting(counter), host, port, **kwargs)
        sockets = list(server.sockets)
        return Service(server, sockets[0].getsockname()[1], counter, sockets)
    transport, _ = await loop.create_datagram_endpoint(lambda: _UDPCounting(counter), local_addr=(host, port), **kwargs)
    sock = transport.get_extra_info("socket")
    return Service(transport, transport.get_extra_info("sockname")[1], counter, [sock])


async def adopt_service(proto: str, sock: socket.socket) -> Service:
    """The same, for a socket the caller bound (the ``sock=`` paths)."""
    loop = asyncio.get_running_loop()
    counter = Counter()
    port = sock.getsockname()[1]
    if proto == "tcp":
        server = await loop.create_server(lambda: _TCPCounting(counter), sock=sock)
        return Service(server, port, counter, list(server.sockets))
    transport, _ = await loop.create_datagram_endpoint(lambda: _UDPCounting(counter), sock=sock)
    return Service(transport, port, counter, [transport.get_extra_info("socket")])
