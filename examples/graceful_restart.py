"""Restart a server on the same exclusive port while clients keep talking to it.

    python examples/graceful_restart.py [--base uvloop] [--restarts 3]

A line-echo service on 127.0.0.1 restarts a few times in place. Each instance
stops with `aioexclusive.GracefulShutdown`: it stops accepting, half-closes
every connection's write side once its answers are sent, waits for the
client's EOF, then closes. Clients therefore only ever see complete answers
and clean EOFs between requests; they reconnect to the next instance, which
binds with ``bind_retry`` in case the port is still held for a moment (on
Windows an exclusive port stays held while accepted connections linger).

The same pattern in a real server: call ``graceful.shutdown(server)`` from
your SIGTERM handler, exit, and let the supervisor start the new version.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import socket

import aioexclusive


class Echo(asyncio.Protocol):
    def __init__(self, instance: int) -> None:
        self.instance = instance

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        for line in data.splitlines():
            self.transport.write(b"instance %d: %s\n" % (self.instance, line))


async def client(port: int, name: str, requests: int, stats: dict[str, int]) -> None:
    sent = 0
    writer = None
    while sent < requests:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except ConnectionRefusedError:
                await asyncio.sleep(0.01)  # between two instances
                continue
        writer.write(f"{name} #{sent}\n".encode())
        line = await reader.readline()
        if line.endswith(b"\n") and line.startswith(b"instance "):
            sent += 1
            stats["answers"] += 1
        elif line:  # a truncated answer: what a non-graceful stop can cause
            stats["broken"] += 1
            sent += 1
        else:  # clean EOF: the instance is restarting; reconnect and resend
            stats["reconnects"] += 1
            writer.close()
            await writer.wait_closed()
            writer = None
        await asyncio.sleep(0.005)
    if writer is not None:
        writer.close()
        await writer.wait_closed()


async def main(restarts: int) -> None:
    loop = asyncio.get_running_loop()
    with socket.socket() as probe:  # pick a free port for the demo
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    stats = {"answers": 0, "reconnects": 0, "broken": 0}
    per_instance = 40
    clients = asyncio.gather(
        *(client(port, f"client-{i}", per_instance * (restarts + 1) // 4, stats) for i in range(4))
    )
    for instance in range(1, restarts + 2):
        graceful = aioexclusive.GracefulShutdown()
        server = await loop.create_server(graceful.wrap(functools.partial(Echo, instance)), "127.0.0.1", port)
        print(f"instance {instance} serving on 127.0.0.1:{port}")
        target = stats["answers"] + per_instance
        while stats["answers"] < target and not clients.done():
            await asyncio.sleep(0.01)
        if instance <= restarts:
            result = await graceful.shutdown(server, timeout=10)
            print(f"instance {instance} stopped: {result.drained} connections drained, {result.aborted} aborted")
    await clients
    await graceful.shutdown(server, timeout=10)
    print(
        f"done: {stats['answers']} complete answers, {stats['reconnects']} clean reconnects, {stats['broken']} broken"
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default=None, help="asyncio (default), uvloop, ...")
    parser.add_argument("--restarts", type=int, default=3)
    args = parser.parse_args()
    aioexclusive.run(main(args.restarts), base=args.base, bind_retry=(50, 0.05))
