"""aiohttp on an exclusive loop.

``web.run_app`` with the one-argument change::

    web.run_app(app, loop=aioexclusive.new_event_loop())
    python examples/aiohttp_app.py --run-app --port 8080

or ``AppRunner``/``TCPSite`` inside ``aioexclusive.run`` (the default here; it
prints the address it got, so ``--port 0`` works)::

    python examples/aiohttp_app.py --port 0

``GET /`` answers with the serving process, its loop class and whether a
``TCPSite(..., reuse_port=True)`` was refused.
"""

from __future__ import annotations

import argparse
import asyncio
import os

from aiohttp import web

import aioexclusive


async def reuse_port_probe(runner: web.BaseRunner | None) -> str:
    """Ask for a port-sharing listener: the exclusive loop refuses it.

    With our own runner, as a second ``TCPSite(..., reuse_port=True)``;
    under ``run_app`` (whose runner is internal), straight from the loop.
    """
    try:
        if runner is not None:
            site = web.TCPSite(runner, "127.0.0.1", 0, reuse_port=True)
            await site.start()
            await site.stop()
        else:
            server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
            server.close()
            await server.wait_closed()
    except aioexclusive.ExclusivityError:
        return "refused"
    return "allowed"


async def index(request: web.Request) -> web.Response:
    runner = request.app.get(RUNNER)
    return web.json_response(
        {
            "server": "aiohttp",
            "pid": os.getpid(),
            "loop": type(asyncio.get_running_loop()).__name__,
            "reuse_port": await reuse_port_probe(runner),
        }
    )


RUNNER = web.AppKey("runner", web.BaseRunner)


def make_app() -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    return app


async def serve(host: str, port: int) -> None:
    app = make_app()
    runner = web.AppRunner(app)
    app[RUNNER] = runner
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        for address in runner.addresses:
            print(f"serving on http://{address[0]}:{address[1]}", flush=True)
        await asyncio.Event().wait()  # until Ctrl+C
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--run-app", action="store_true", help="use web.run_app instead of AppRunner")
    args = parser.parse_args()
    if args.run_app:
        web.run_app(make_app(), host=args.host, port=args.port, loop=aioexclusive.new_event_loop())
        return
    try:
        aioexclusive.run(serve(args.host, args.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
