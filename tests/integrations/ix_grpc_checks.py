"""aioexclusive.contrib.grpc checks that need no attacker, in a process of their own (gRPC's C core starts
threads that would stay in the test process). Prints one JSON object of results."""

from __future__ import annotations

import asyncio
import json
from concurrent import futures

from aioexclusive import AddressInUseError, ExclusivityError
from aioexclusive.contrib.grpc import aio_server, server

out: dict[str, object] = {}

holder = server(futures.ThreadPoolExecutor(1))
port = holder.add_insecure_port("127.0.0.1:0")
holder.start()
try:
    try:
        server(futures.ThreadPoolExecutor(1)).add_insecure_port(f"127.0.0.1:{port}")
    except AddressInUseError as exc:
        out["sync_taken"] = [type(exc).__name__, exc.port == port, exc.protocol, isinstance(exc, OSError)]

    async def aio_add() -> None:  # grpc.aio servers are made inside a running loop
        try:
            aio_server().add_insecure_port(f"127.0.0.1:{port}")
        except AddressInUseError as exc:
            out["aio_taken"] = [type(exc).__name__, exc.port == port]

    asyncio.run(aio_add())
finally:
    holder.stop(None)

# Not "in use": an address nobody here can bind keeps grpc's own report.
try:
    server(futures.ThreadPoolExecutor(1)).add_insecure_port("192.0.2.1:50999")
except Exception as exc:  # noqa: BLE001
    out["other_failure"] = [type(exc).__name__, isinstance(exc, OSError)]


def sync_share() -> object:
    return server(None, options=[("grpc.so_reuseport", 1)])


def aio_share() -> object:
    return aio_server(options=(("grpc.so_reuseport", True),))


for name, make in (("sync_share", sync_share), ("aio_share", aio_share)):
    try:
        make()
    except ExclusivityError as exc:
        out[name] = ["ExclusivityError", "allow_reuse_port=True" in str(exc)]

print(json.dumps(out), flush=True)
