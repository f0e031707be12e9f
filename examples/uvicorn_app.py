"""uvicorn on exclusive sockets and loops.

One process, no code change, uvicorn >= 0.36::

    uvicorn uvicorn_app:app --loop aioexclusive:new_event_loop

Workers or reload (uvicorn pre-binds those with SO_REUSEADDR, which on Windows
lets another socket take the port over)::

    python examples/uvicorn_app.py --workers 2 --port 8000
    python examples/uvicorn_app.py --uds /tmp/app.sock

``GET /`` answers with the serving process, its loop class and whether that
loop refused a ``reuse_port=True`` server (it should: "refused").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
from typing import Any

import aioexclusive


async def reuse_port_probe() -> str:
    """Ask the serving loop for a port-sharing server; an exclusive loop refuses."""
    loop = asyncio.get_running_loop()
    try:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
    except aioexclusive.ExclusivityError:
        return "refused"
    server.close()
    await server.wait_closed()
    return "allowed"


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A plain ASGI application: no framework needed."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    body = json.dumps(
        {
            "server": "uvicorn",
            "pid": os.getpid(),
            "loop": type(asyncio.get_running_loop()).__name__,
            "reuse_port": await reuse_port_probe(),
        }
    ).encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": body})


def main() -> None:
    from aioexclusive.contrib.uvicorn import run

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--uds", help="serve on this unix socket path instead")
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()
    # Workers import the application by name, from this file's directory.
    run(
        "uvicorn_app:app",
        app_dir=os.path.dirname(os.path.abspath(__file__)),
        host=args.host,
        port=args.port,
        uds=args.uds,
        workers=args.workers,
        log_level="info",
    )


if __name__ == "__main__":
    main()
