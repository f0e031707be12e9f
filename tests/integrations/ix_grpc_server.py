"""A gRPC echo server as an unmodified program would write it (tests of AIOEXCLUSIVE_GUARD's grpc hook).

usage: ix_grpc_server.py sync|aio|contrib-sync|contrib-aio HOST [share]
``share`` passes options=[("grpc.so_reuseport", 1)] (grpc's multiprocessing pattern; the contrib kinds add
allow_reuse_port=True). The contrib kinds use aioexclusive.contrib.grpc.server / aio_server.
Prints "PORT <n>" once serving, then serves until SIGINT/SIGTERM. Each call answers with this pid.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import threading
from concurrent import futures

import grpc


def echo(request: bytes, context: object) -> bytes:
    return b"pid %d" % os.getpid()


HANDLER = grpc.method_handlers_generic_handler("ix.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


def main() -> None:
    kind, host = sys.argv[1], sys.argv[2]
    share = sys.argv[3:] == ["share"]
    options = [("grpc.so_reuseport", 1)] if share else None
    target = f"[{host}]:0" if ":" in host else f"{host}:0"
    make_sync, make_aio, extra = grpc.server, grpc.aio.server, {}
    if kind.startswith("contrib-"):
        from aioexclusive.contrib import grpc as exclusive_grpc

        make_sync, make_aio = exclusive_grpc.server, exclusive_grpc.aio_server
        extra = {"allow_reuse_port": share}
        kind = kind[len("contrib-") :]
    if kind == "sync":
        server = make_sync(futures.ThreadPoolExecutor(4), handlers=[HANDLER], options=options, **extra)
        port = server.add_insecure_port(target)
        server.start()
        print(f"PORT {port}", flush=True)
        done = threading.Event()
        signal.signal(signal.SIGINT, lambda *_: done.set())
        signal.signal(signal.SIGTERM, lambda *_: done.set())
        done.wait()
        server.stop(None)
        return

    async def serve() -> None:
        server = make_aio(handlers=[HANDLER], options=options, **extra)
        port = server.add_insecure_port(target)
        await server.start()
        print(f"PORT {port}", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop(None)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
