"""anyio on an exclusive loop.

    anyio.run(main, backend_options={"loop_factory": aioexclusive.new_event_loop})

What that covers: everything anyio does through the loop, which is UDP
(``create_udp_socket``, ``create_connected_udp_socket``, ``UDPSocket.from_socket``)
and ``connect_tcp(local_host=..., local_port=...)``. What it does not:
``create_tcp_listener`` and the unix-socket listeners bind their sockets
themselves. anyio's TCP listener is already safe by default (``SO_REUSEADDR``
on POSIX, ``SO_EXCLUSIVEADDRUSE`` on Windows), but ``reuse_port=True`` there is
honoured, not refused. For a TCP listener bound by the plan, wrap
``aioexclusive.bind_socket`` (anyio versions with ``SocketListener.from_socket``)::

    listener = await anyio.abc.SocketListener.from_socket(aioexclusive.bind_socket(("127.0.0.1", 8000)))

Run it::

    python examples/anyio_app.py --port 0

It prints its TCP and UDP ports; a line sent over TCP, or a datagram over
UDP, gets back the loop class and whether ``reuse_port=True`` was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
from functools import partial

import anyio
import anyio.abc

import aioexclusive


async def reuse_port_probe() -> str:
    """A port-sharing UDP socket: anyio asks the loop, which refuses."""
    try:
        udp = await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1", reuse_port=True)
    except aioexclusive.ExclusivityError:
        return "refused"
    await udp.aclose()
    return "allowed"


async def describe() -> bytes:
    return json.dumps(
        {
            "server": "anyio",
            "loop": type(asyncio.get_running_loop()).__name__,
            "reuse_port": await reuse_port_probe(),
        }
    ).encode()


async def handle(client: anyio.abc.SocketStream) -> None:
    async with client:
        await client.receive()
        await client.send(await describe() + b"\n")


async def serve_udp(udp: anyio.abc.UDPSocket) -> None:
    async for _, address in udp:
        await udp.sendto(await describe(), *address[:2])


async def main(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # The TCP listener binds itself (see the module docstring); the UDP socket
    # is made by the loop, so by the bind plan.
    listener = await anyio.create_tcp_listener(local_host=host, local_port=port, family=family)
    udp = await anyio.create_udp_socket(family=family, local_host=host, local_port=port)
    tcp_port = listener.extra(anyio.abc.SocketAttribute.local_port)
    udp_port = udp.extra(anyio.abc.SocketAttribute.local_port)
    print(f"serving tcp port {tcp_port} udp port {udp_port}", flush=True)
    async with listener, udp, anyio.create_task_group() as tg:
        tg.start_soon(serve_udp, udp)
        await listener.serve(handle)


def cli() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    try:
        anyio.run(
            partial(main, args.host, args.port),
            backend="asyncio",
            backend_options={"loop_factory": aioexclusive.new_event_loop},
        )
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    cli()
