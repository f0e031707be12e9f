"""Service announcement over multicast, on an exclusive event loop.

Every listener on the host shares the group's port (the one kind of sharing the
exclusive loop allows, because it is asked for with ``multicast=``), while the
service's own unicast port stays exclusive.

    python examples/multicast_announce.py listen --interface eth0       # as many as you like
    python examples/multicast_announce.py announce --interface eth0 --name printer --port 631

The default TTL of 1 keeps the announcements on the local link. Multicast is not
private: any host on the link can join the group and read them, so announce only
what may be public.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import sys

import aioexclusive

GROUP_V4 = "239.255.77.77"
GROUP_V6 = "ff02::4d4d"  # link-local scope: needs --interface
PORT = 47777


class Listener(asyncio.DatagramProtocol):
    def __init__(self, count: int | None) -> None:
        self.left = count
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            service = json.loads(data)
            print(f"{service['name']} at {addr[0]} port {service['port']}", flush=True)
        except (ValueError, KeyError, TypeError):
            print(f"ignored a malformed announcement from {addr[0]}", file=sys.stderr, flush=True)
            return
        if self.left is not None:
            self.left -= 1
            if self.left <= 0 and not self.done.done():
                self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


async def listen(group: str, options: aioexclusive.Multicast, count: int | None) -> None:
    loop = asyncio.get_running_loop()
    transport, listener = await loop.create_datagram_endpoint(
        lambda: Listener(count), local_addr=(group, PORT), multicast=options
    )
    print(f"listening on {group} port {PORT}", file=sys.stderr, flush=True)
    try:
        await listener.done
    finally:
        transport.close()  # also leaves the group


async def announce(
    group: str, options: aioexclusive.Multicast, name: str, port: int, count: int | None, interval: float
) -> None:
    loop = asyncio.get_running_loop()
    # A sender: an ordinary exclusive UDP socket with the multicast options set
    # before its first datagram. No port is shared.
    transport, _ = await loop.create_datagram_endpoint(
        asyncio.DatagramProtocol, remote_addr=(group, PORT), multicast=options
    )
    message = json.dumps({"name": name, "port": port}).encode()
    try:
        sent = 0
        while count is None or sent < count:
            transport.sendto(message)
            sent += 1
            await asyncio.sleep(interval)
    finally:
        transport.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=["listen", "announce"])
    parser.add_argument("--interface", help="interface name, address or index (default: the OS's choice)")
    parser.add_argument("--ipv6", action="store_true", help=f"use {GROUP_V6} instead of {GROUP_V4}")
    parser.add_argument("--name", default=socket.gethostname())
    parser.add_argument("--port", type=int, default=8000, help="the port of the service being announced")
    parser.add_argument("--count", type=int, help="stop after this many announcements")
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--base", default=None, help="asyncio (default), uvloop or winloop")
    args = parser.parse_args(argv)
    interface: str | int | None = args.interface
    if args.interface is not None and args.interface.isdigit():
        interface = int(args.interface)
    options = aioexclusive.Multicast(interface=interface, ttl=1, loopback=True)
    group = GROUP_V6 if args.ipv6 else GROUP_V4
    if args.mode == "listen":
        coro = listen(group, options, args.count)
    else:
        coro = announce(group, options, args.name, args.port, args.count, args.interval)
    try:
        aioexclusive.run(coro, base=args.base)
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
