"""tornado's multi-process recipes, as programs write them (tests of contrib.tornado and the guard's hook).

usage: ix_tornado_server.py PATTERN PORT WORKERS
  bind-then-fork          tornado.netutil.bind_sockets, then fork_processes, then add_sockets (tornado's recipe)
  contrib-bind-then-fork  the same with aioexclusive.contrib.tornado.bind_sockets
  fork-then-reuse-port    fork_processes, then server.listen(PORT, reuse_port=True) in each worker
Each worker prints "WORKER <pid>" when serving; GET / answers {"pid": <pid>}.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys

import tornado.netutil
import tornado.process
import tornado.web
from tornado.httpserver import HTTPServer


class Pid(tornado.web.RequestHandler):
    def get(self) -> None:
        self.set_header("Content-Type", "application/json")
        self.write(json.dumps({"pid": os.getpid()}))


def main() -> None:
    pattern, port, workers = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    app = tornado.web.Application([(r"/", Pid)])
    sockets = None
    if pattern == "bind-then-fork":
        sockets = tornado.netutil.bind_sockets(port, "127.0.0.1")
    elif pattern == "contrib-bind-then-fork":
        from aioexclusive.contrib.tornado import bind_sockets

        sockets = bind_sockets(port, "127.0.0.1")
    if sockets is not None:
        print("PORT", sockets[0].getsockname()[1], flush=True)
    # Few restarts: a worker that cannot start should not be retried 100 times here.
    tornado.process.fork_processes(workers, max_restarts=2)

    async def serve() -> None:
        server = HTTPServer(app)
        if sockets is not None:
            server.add_sockets(sockets)
        else:
            server.listen(port, "127.0.0.1", reuse_port=True)
        sys.stdout.write(f"WORKER {os.getpid()}\n")  # one write: the workers share the pipe
        sys.stdout.flush()
        await asyncio.Event().wait()

    asyncio.run(serve())


if __name__ == "__main__":
    main()
