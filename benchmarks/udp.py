"""UDP: ping-pong rate over 127.0.0.1, and the cost of opening many endpoints.

The ping-pong server is opened with ``create_datagram_endpoint(local_addr=...)``
(the path the exclusive loop overrides), the clients with ``remote_addr=`` only.
Loopback does not drop datagrams at this pace, but a watchdog re-sends for any
client that made no progress for a while, so a lost datagram can slow a trial
down but never hang it.
"""

from __future__ import annotations

import asyncio
import functools
import statistics
import time
from typing import Any

import aioexclusive

from ._harness import EXCLUSIVE, PLAIN, Result, Stopwatch, compare

BLOCK = 1000  # endpoints per block in the within-run growth check

HOST = "127.0.0.1"


class EchoServer(asyncio.DatagramProtocol):
    transport: Any

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class PingClient(asyncio.DatagramProtocol):
    transport: Any

    def __init__(self, done: asyncio.Future[None], count: int, payload: bytes) -> None:
        self.done, self.left, self.payload = done, count, payload

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def start(self) -> None:
        self.transport.sendto(self.payload)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.left -= 1
        if self.left > 0:
            self.transport.sendto(self.payload)
        elif not self.done.done():
            self.done.set_result(None)

    def error_received(self, exc: Exception) -> None:
        if not self.done.done():
            self.done.set_exception(exc)


async def _watchdog(clients: list[PingClient]) -> None:
    seen = [c.left for c in clients]
    while True:
        await asyncio.sleep(0.25)
        for i, client in enumerate(clients):
            if client.left == seen[i] and not client.done.done():
                client.start()
            seen[i] = client.left


def ping_pong(base: str, pairs: int, *, clients: int, per_client: int, size: int = 32, control: bool = False) -> Result:
    """Round trips per second with *clients* endpoints each keeping one datagram in flight.

    *control*: plain against plain, to show the noise floor (see `compare`).
    """
    payload = b"p" * size

    async def workload(loop: asyncio.AbstractEventLoop) -> Stopwatch:
        server, _ = await loop.create_datagram_endpoint(EchoServer, local_addr=(HOST, 0))
        address = server.get_extra_info("sockname")
        pingers: list[PingClient] = []
        watch = Stopwatch()
        dog = None
        try:
            for _ in range(clients):
                done = loop.create_future()
                _, client = await loop.create_datagram_endpoint(
                    functools.partial(PingClient, done, per_client, payload), remote_addr=address
                )
                pingers.append(client)
            watch.start()
            for client in pingers:
                client.start()
            dog = asyncio.ensure_future(_watchdog(pingers))
            await asyncio.wait_for(asyncio.gather(*(c.done for c in pingers)), timeout=120)
            watch.stop()
        finally:
            if dog is not None:
                dog.cancel()
                await asyncio.gather(dog, return_exceptions=True)
            for client in pingers:
                client.transport.close()
            server.close()
            for _ in range(3):
                await asyncio.sleep(0)
        return watch

    result = Result(
        "UDP ping-pong",
        f"({size} B, {clients} clients)",
        base,
        "rt/s",
        higher_is_better=True,
        target=0.99,
        extra={"clients": clients, "round_trips_per_client": per_client, "payload_bytes": size},
    )
    return compare(result, pairs, workload, clients * per_client, control=control)


class _Quiet(asyncio.DatagramProtocol):
    def __init__(self, closed: asyncio.Future[None]) -> None:
        self.closed = closed

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


def open_endpoints(base: str, pairs: int, count: int, *, warmup: bool = False) -> Result:
    """Microseconds per endpoint to open *count* UDP endpoints on 127.0.0.1, one after another.

    Closing is not timed, but every endpoint is closed and its
    ``connection_lost`` awaited before the trial ends.

    Growth is also checked inside each run, which trial-to-trial noise cannot
    blur: the CPU time of every block of 1,000 endpoints is recorded, and
    ``extra["within_run_growth"]`` is, per side, the median over runs of what
    the last third of the blocks cost over the first third (1.00 = linear).
    """
    blocks: dict[str, list[list[float]]] = {PLAIN: [], EXCLUSIVE: []}

    async def workload(loop: asyncio.AbstractEventLoop) -> Stopwatch:
        transports: list[Any] = []
        closed: list[asyncio.Future[None]] = []
        marks: list[float] = []
        watch = Stopwatch()
        try:
            watch.start()
            marks.append(time.process_time())
            for i in range(count):
                if i and i % BLOCK == 0:
                    marks.append(time.process_time())
                future = loop.create_future()
                transport, _ = await loop.create_datagram_endpoint(
                    functools.partial(_Quiet, future), local_addr=(HOST, 0)
                )
                transports.append(transport)
                closed.append(future)
            watch.stop()
            marks.append(time.process_time())
            side = EXCLUSIVE if isinstance(loop, aioexclusive.ExclusiveLoopMixin) else PLAIN
            blocks[side].append([b - a for a, b in zip(marks, marks[1:])])
        finally:
            for transport in transports:
                transport.close()
            await asyncio.wait_for(asyncio.gather(*closed[: len(transports)]), timeout=120)
        return watch

    result = Result(
        "UDP endpoints open",
        f"(x{count:,})",
        base,
        "us/endpoint",
        higher_is_better=False,
        target=None,
        extra={"count": count},
    )
    compare(result, pairs, workload, count, scale=1e6, warmup=warmup)
    if warmup:  # the warm-up trial of each side is not part of the figures
        for side in blocks:
            del blocks[side][:1]
    result.extra["block_cpu_seconds"] = blocks
    if count >= 3 * BLOCK:
        growth = {}
        for side, runs in blocks.items():
            third = len(runs[0]) // 3 if runs else 0
            if third:
                growth[side] = statistics.median(sum(r[-third:]) / sum(r[:third]) for r in runs)
        result.extra["within_run_growth"] = growth
    return result
