"""One `asyncio.AbstractServer` over several per-address servers.

Base loops take a single ``sock=`` per ``create_server`` call (uvloop and the
stdlib alike), so a host that resolves to several addresses becomes several
base servers. This class makes them look like the one server the stdlib would
have returned: same methods, same ``sockets`` order, same context-manager use.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

__all__ = ["MultiServer"]


class MultiServer(asyncio.AbstractServer):
    """Servers of one ``create_server`` call, driven together."""

    def __init__(self, loop: asyncio.AbstractEventLoop, servers: Sequence[asyncio.AbstractServer]) -> None:
        self._loop = loop
        self._servers = tuple(servers)
        self._serving_forever: asyncio.Future[Any] | None = None

    def __repr__(self) -> str:
        return f"<{type(self).__name__} sockets={self.sockets!r}>"

    @property
    def sockets(self) -> tuple[Any, ...]:
        return tuple(sock for server in self._servers for sock in getattr(server, "sockets", ()))

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def is_serving(self) -> bool:
        return any(server.is_serving() for server in self._servers)

    def close(self) -> None:
        for server in self._servers:
            server.close()

    def close_clients(self) -> None:
        for server in self._servers:
            server.close_clients()  # type: ignore[attr-defined]

    def abort_clients(self) -> None:
        for server in self._servers:
            server.abort_clients()  # type: ignore[attr-defined]

    async def wait_closed(self) -> None:
        # One after another: each is closing already, and gather would make a
        # task (a loop iteration) per server.
        for server in self._servers:
            await server.wait_closed()

    async def start_serving(self) -> None:
        for server in self._servers:
            await server.start_serving()

    async def serve_forever(self) -> None:
        if self._serving_forever is not None:
            raise RuntimeError(f"server {self!r} is already being awaited on serve_forever()")
        if not self.sockets:
            raise RuntimeError(f"server {self!r} is closed")
        self._serving_forever = asyncio.ensure_future(
            asyncio.gather(*(server.serve_forever() for server in self._servers))
        )
        try:
            await self._serving_forever
        finally:
            # Cancelling serve_forever closes the server, as the stdlib's does.
            self.close()
            await self.wait_closed()
            self._serving_forever = None

    async def __aenter__(self) -> MultiServer:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        self.close()
        await self.wait_closed()
