"""A gRPC echo server as an unmodified program would write it (tests of AIOEXCLUSIVE_GUARD's grpc hook).

usage: ix_grpc_server.py sync|aio HOST [share]
``share`` passes options=[("grpc.so_reuseport", 1)] (grpc's multiprocessing pattern).
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
    options = [("grpc.so_reuseport", 1)] if sys.argv[3:] == ["share"] else None
    target = f"[{host}]:0" if ":" in host else f"{host}:0"
    if kind == "sync":
        server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[HANDLER], options=options)
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
        server = grpc.aio.server(handlers=[HANDLER], options=options)
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
