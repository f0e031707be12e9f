"""aiohttp on an exclusive loop.

aiohttp binds through the loop (``TCPSite`` calls ``loop.create_server``), so
the loop is all it needs::

    web.run_app(app, loop=aioexclusive.new_event_loop())

and inside ``aioexclusive.run(main())``, ``AppRunner``/``TCPSite`` are
exclusive as they are; ``TCPSite(..., reuse_port=True)`` raises
`ExclusivityError`. `run_app` here is that one line, plus unix socket
``path=`` handling that refuses a path where a live server answers (the
loop's ``create_unix_server`` would unlink it).
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Iterable
from typing import Any

from aiohttp import web

from .._entry import new_event_loop
from .._loops import ExclusiveLoopMixin
from .._unix import bind_unix_path, remove_own_path

__all__ = ["run_app"]


def run_app(
    app: Any,
    *,
    base: str | type | None = None,
    loop: asyncio.AbstractEventLoop | None = None,
    **kwargs: Any,
) -> None:
    """`aiohttp.web.run_app` on an exclusive loop; same keyword arguments.

    Args:
        app: the `aiohttp.web.Application` (or a coroutine returning one).
        base: the base loop, as for `aioexclusive.new_event_loop`
            (``"uvloop"``...); or pass an exclusive *loop* you built.
        **kwargs: anything `aiohttp.web.run_app` takes. ``path=`` (one path or
            several) is bound here: a path where a live server answers raises
            `AddressInUseError`, a stale socket file is replaced.
    """
    if loop is None:
        loop = new_event_loop(base)
    elif base is not None:
        raise TypeError("pass either base= or loop=, not both")
    elif not isinstance(loop, ExclusiveLoopMixin):
        raise TypeError(f"loop must be an exclusive loop (aioexclusive.new_event_loop()), got {loop!r}")
    ours: list[tuple[socket.socket, str]] = []
    try:
        paths = kwargs.pop("path", None)
        if paths is not None:
            for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(_paths(paths)):
                name = os.fspath(path)
                ours.append((bind_unix_path(name, backlog=kwargs.get("backlog", 128)), name))
            given = kwargs.pop("sock", None)
            socks = [sock for sock, _ in ours]
            if given is not None:
                socks += [given] if isinstance(given, socket.socket) else list(given)
            kwargs["sock"] = socks
    except BaseException:
        # All or nothing: a later path refused leaves no file of an earlier one.
        for sock, name in ours:
            remove_own_path(sock, name)
        loop.close()
        raise
    try:
        web.run_app(app, loop=loop, **kwargs)
    finally:
        for sock, name in ours:
            # Closed, then removed only if no socket is bound to the file any
            # more: never a newer server's file (even one reusing our inode number).
            remove_own_path(sock, name)


def _paths(paths: Iterable[Any]) -> Iterable[Any]:
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, an os.PathLike or a sequence of them, got {path!r}")
        yield path
