"""A TCP + UDP echo service on Windows that a port thief cannot take over.

    python examples/windows_server.py [proactor|selector|winloop]

On Windows a listener without SO_EXCLUSIVEADDRUSE can be taken over by any later
socket of the same user that sets SO_REUSEADDR (Microsoft, "Using SO_REUSEADDR
and SO_EXCLUSIVEADDRUSE"). This starts the service on the exclusive loop, prints
the options of every socket it opened, lets a thief try both ports with
SO_REUSEADDR, and checks the service still answers. For comparison it does the
same against a plain asyncio server: on Windows the thief gets that port.
Loopback only. Exit status 0 when the exclusive service held both ports.
"""

from __future__ import annotations

import asyncio
import socket
import sys
from typing import Any

import aioexclusive

BASES = {"proactor": "asyncio", "selector": "selector", "winloop": "winloop"}


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


def options(sock: Any) -> str:
    exclusive = sock.getsockopt(socket.SOL_SOCKET, socket.SO_EXCLUSIVEADDRUSE)
    reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
    return f"SO_EXCLUSIVEADDRUSE={exclusive} SO_REUSEADDR={reuse}"


def thief(kind: int, port: int) -> str:
    """What a later socket with SO_REUSEADDR gets on 127.0.0.1:port."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
            if kind == socket.SOCK_STREAM:
                sock.listen()
        except OSError as exc:
            return f"refused (WinError {getattr(exc, 'winerror', None) or exc.errno})"
        return "HIJACKED: the thief bound the port"


async def echo_round_trip(tcp_port: int, udp_port: int) -> tuple[bytes, bytes]:
    loop = asyncio.get_running_loop()
    reader, writer = await asyncio.open_connection("127.0.0.1", tcp_port)
    writer.write(b"hello over TCP\n")
    tcp_reply = await asyncio.wait_for(reader.readline(), 10)
    writer.close()
    await writer.wait_closed()

    replies: asyncio.Queue[bytes] = asyncio.Queue()

    class Client(asyncio.DatagramProtocol):
        def datagram_received(self, data: bytes, addr: Any) -> None:
            replies.put_nowait(data)

    transport, _ = await loop.create_datagram_endpoint(Client, remote_addr=("127.0.0.1", udp_port))
    transport.sendto(b"hello over UDP")  # type: ignore[attr-defined]
    udp_reply = await asyncio.wait_for(replies.get(), 10)
    transport.close()
    return tcp_reply, udp_reply


async def service(label: str) -> bool:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Echo, "127.0.0.1", 0)
    udp, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
    try:
        tcp_port = server.sockets[0].getsockname()[1]
        udp_port = udp.get_extra_info("sockname")[1]
        print(f"{label}: {type(loop).__name__}")
        for sock in server.sockets:
            print(f"  TCP {sock.getsockname()}: {options(sock)}")
        print(f"  UDP {udp.get_extra_info('sockname')}: {options(udp.get_extra_info('socket'))}")
        tcp_thief, udp_thief = thief(socket.SOCK_STREAM, tcp_port), thief(socket.SOCK_DGRAM, udp_port)
        print(f"  thief on TCP port: {tcp_thief}")
        print(f"  thief on UDP port: {udp_thief}")
        tcp_reply, udp_reply = await echo_round_trip(tcp_port, udp_port)
        print(f"  TCP echo: {tcp_reply.decode().strip()}")
        print(f"  UDP echo: {udp_reply.decode()}")
        return "HIJACKED" not in tcp_thief + udp_thief
    finally:
        udp.close()
        server.close()
        await server.wait_closed()


def under_wine() -> bool:
    import ctypes

    return hasattr(ctypes.WinDLL("ntdll"), "wine_get_version")  # type: ignore[attr-defined]


def main() -> int:
    if sys.platform != "win32":
        print("this example shows Windows behaviour; see examples/echo_server.py elsewhere")
        return 2
    name = sys.argv[1] if len(sys.argv) > 1 else "proactor"
    if name not in BASES:
        print(f"usage: {sys.argv[0]} [{'|'.join(BASES)}]")
        return 2
    held = aioexclusive.run(service(f"exclusive loop ({name})"), base=BASES[name])

    plain = asyncio.ProactorEventLoop()
    try:
        plain.run_until_complete(service("plain asyncio loop, for comparison"))
    finally:
        plain.close()
    if under_wine():
        print("(under Wine: its bind rules are Linux-like, so it refuses even the plain loop's thief;")
        print(" a real Windows kernel lets that thief bind)")
    print("exclusive service held its ports" if held else "exclusive service was HIJACKED")
    return 0 if held else 1


if __name__ == "__main__":
    sys.exit(main())
