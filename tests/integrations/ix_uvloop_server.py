"""A UDP echo service on uvloop, as an unmodified program writes it (tests of AIOEXCLUSIVE_GUARD's uvloop hook).

usage: ix_uvloop_server.py run|new_event_loop|install|policy local_addr|sock
Opens a UDP endpoint on 127.0.0.1 with local_addr=, or binds a plain UDP socket and hands it over with
sock=; on a plain uvloop loop libuv's uv_udp_open turns SO_REUSEADDR on either way. Prints "PORT <n> LOOP <class>" once serving; answers each datagram with b"pid <pid>";
stops on SIGINT/SIGTERM.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys

import uvloop


class Echo(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.transport.sendto(b"pid %d" % os.getpid(), addr)  # type: ignore[attr-defined]


async def serve() -> None:
    loop = asyncio.get_running_loop()
    if sys.argv[2] == "sock":
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        transport, _ = await loop.create_datagram_endpoint(Echo, sock=sock)
    else:
        transport, _ = await loop.create_datagram_endpoint(Echo, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    print(f"PORT {port} LOOP {type(loop).__name__}", flush=True)
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    transport.close()


def main() -> None:
    how = sys.argv[1]
    if how == "run":
        uvloop.run(serve())
    elif how == "new_event_loop":
        loop = uvloop.new_event_loop()
        try:
            loop.run_until_complete(serve())
        finally:
            loop.close()
    elif how in ("install", "policy"):
        import warnings

        warnings.simplefilter("ignore", DeprecationWarning)
        if how == "install":
            uvloop.install()
        else:
            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
        asyncio.run(serve())


if __name__ == "__main__":
    main()
