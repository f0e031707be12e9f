"""The bind path: ``create_server`` followed by ``close`` + ``wait_closed``.

This is where the exclusive loop does its own work (plan, resolve, socket,
options, bind, listen) before handing the socket to the base loop, so it is
where a cost can appear. The cases: one numeric host; a host that resolves
to two addresses (IPv4 and IPv6 loopback), where the exclusive loop makes one
base server per address and wraps them in a `MultiServer`; and ``host=None``
(``0.0.0.0`` and ``::``), without a target, which shows what the wildcard hold
costs on Linux (`aioexclusive._wildcard`: a socket that picks the port, a
second descriptor per listener, the closing listener demoted into the hold)
next to a base loop that resolves ``None`` through ``getaddrinfo``.
"""

from __future__ import annotations

import asyncio
import socket
from typing import Any

from ._harness import Result, Stopwatch, compare


def two_address_host() -> tuple[Any, str]:
    """A ``host`` argument that gives one IPv4 and one IPv6 loopback address, and how it was chosen.

    ``"localhost"`` when the resolver maps it to both 127.0.0.1 and ::1 (so
    name resolution is part of what is timed, as for users), otherwise the two
    addresses as a list, which asyncio's ``create_server`` also accepts.
    """
    try:
        infos = socket.getaddrinfo("localhost", 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        found = {info[4][0] for info in infos}
    except OSError:
        found = set()
    if "127.0.0.1" in found and "::1" in found and len(found) == 2:
        return "localhost", "'localhost' (resolves to 127.0.0.1 and ::1)"
    return ["127.0.0.1", "::1"], (
        f"['127.0.0.1', '::1'] ('localhost' resolves to {sorted(found) or 'nothing'} here, not to both)"
    )


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
        return True
    except OSError:
        return False


class _Idle(asyncio.Protocol):
    pass


def create_server_latency(
    base: str, pairs: int, *, host: Any, label: str, iterations: int, target: float | None = 1.10
) -> Result:
    """Microseconds per ``create_server(host, 0)`` + ``close()`` + ``wait_closed()``."""

    async def workload(loop: asyncio.AbstractEventLoop) -> Stopwatch:
        watch = Stopwatch()
        watch.start()
        for _ in range(iterations):
            server = await loop.create_server(_Idle, host, 0)
            server.close()
            await server.wait_closed()
        return watch.stop()

    result = Result(
        "create_server+close",
        label,
        base,
        "us",
        higher_is_better=False,
        target=target,
        extra={"host": host, "iterations": iterations},
    )
    return compare(result, pairs, workload, iterations, scale=1e6)
