"""A TCP + UDP echo service on the exclusive loop, and what an attacker sees.

    python examples/echo_server.py            # stdlib loop
    python examples/echo_server.py uvloop     # uvloop, if installed

It starts both services on 127.0.0.1 (ephemeral ports), shows the options the
loop set, tries what a port thief would try (a second socket with
SO_REUSEADDR and SO_REUSEPORT), and talks to its own services once.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import aioexclusive


class UDPEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


async def tcp_echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(1024))
    await writer.drain()
    writer.close()


def steal(kind: int, port: int) -> str:
    thief = socket.socket(socket.AF_INET, kind)
    try:
        thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if hasattr(socket, "SO_REUSEPORT"):
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        thief.bind(("127.0.0.1", port))
        if kind == socket.SOCK_STREAM:
            thief.listen()
        return "HIJACKED: the thief shares the port"
    except OSError as exc:
        return f"refused ({exc.strerror})"
    finally:
        thief.close()


async def main() -> None:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(tcp_echo, "127.0.0.1", 0)
    udp, _ = await loop.create_datagram_endpoint(UDPEcho, local_addr=("127.0.0.1", 0))
    tcp_port = server.sockets[0].getsockname()[1]
    udp_port = udp.get_extra_info("sockname")[1]
    print(f"loop: {type(loop).__name__}")
    print(f"TCP echo on 127.0.0.1:{tcp_port}, UDP echo on 127.0.0.1:{udp_port}")
    print(f"  thief on TCP port: {steal(socket.SOCK_STREAM, tcp_port)}")
    print(f"  thief on UDP port: {steal(socket.SOCK_DGRAM, udp_port)}")
    try:
        await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
    except aioexclusive.ExclusivityError as exc:
        print(f"  reuse_port=True: {type(exc).__name__}: {exc}")

    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
    writer.write(b"hello over TCP")
    print(f"  TCP echo: {(await reader.read(1024)).decode()}")
    writer.close()
    await writer.wait_closed()

    udp.close()
    server.close()
    await server.wait_closed()


if __name__ == "__main__":
    aioexclusive.run(main(), base=sys.argv[1] if len(sys.argv) > 1 else None)
