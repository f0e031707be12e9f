"""hypercorn with exclusive listening sockets.

One process, on an exclusive loop (so the application's own sockets are
exclusive too)::

    python examples/hypercorn_app.py --bind 127.0.0.1:8000

Several workers (plain hypercorn sets SO_REUSEPORT here, which lets any
process of the same user take a share of the connections)::

    python examples/hypercorn_app.py --bind 127.0.0.1:8000 --workers 2

``GET /`` answers with the serving process, its loop class and whether that
loop refused a ``reuse_port=True`` server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from typing import Any

import aioexclusive


async def reuse_port_probe() -> str:
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
    except aioexclusive.ExclusivityError:
        return "refused"
    server.close()
    await server.wait_closed()
    return "allowed"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps(
        {
            "server": "hypercorn",
            "pid": os.getpid(),
            "loop": type(asyncio.get_running_loop()).__name__,
            "reuse_port": await reuse_port_probe(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    import hypercorn.asyncio
    import hypercorn.run

    from aioexclusive.contrib.hypercorn import ExclusiveConfig

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bind", action="append", help="host:port, [::1]:port or unix:PATH (repeatable)")
    parser.add_argument("--workers", type=int, default=0, help="0: serve in this process on an exclusive loop")
    args = parser.parse_args()

    config = ExclusiveConfig()
    config.bind = args.bind or ["127.0.0.1:8000"]
    config.accesslog = None
    config.errorlog = "-"
    config.graceful_timeout = 1.0
    if args.workers:
        # Workers (spawned processes) import the application by name and
        # receive the sockets this process binds, one set shared by all.
        config.workers = args.workers
        config.application_path = "hypercorn_app:app"
        sys.exit(hypercorn.run.run(config))
    aioexclusive.run(hypercorn.asyncio.serve(app, config))  # type: ignore[arg-type]


if __name__ == "__main__":
    main()
