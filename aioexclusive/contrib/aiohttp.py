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

from .._loops import ExclusiveLoopMixin
from ..policy import new_event_loop
from .._unix import bind_unix_path

__all__ = ["run_app"]


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


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
    bound: list[tuple[str, tuple[int, int] | None]] = []
    ours: list[socket.socket] = []
    try:
        paths = kwargs.pop("path", None)
        if paths is not None:
            for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(_paths(paths)):
                name = os.fspath(path)
                ours.append(bind_unix_path(name, backlog=kwargs.get("backlog", 128)))
                bound.append((name, _identity(name)))
            given = kwargs.pop("sock", None)
            if given is not None:
                ours_and_given = [*ours, *([given] if isinstance(given, socket.socket) else given)]
            else:
                ours_and_given = list(ours)
            kwargs["sock"] = ours_and_given
    except BaseException:
        for sock in ours:
            sock.close()
        loop.close()
        raise
    try:
        web.run_app(app, loop=loop, **kwargs)
    finally:
        for sock in ours:
            sock.close()
        for name, identity in bound:
            # Only the file this process bound; never one that replaced it.
            if identity is not None and _identity(name) == identity:
                os.unlink(name)


def _paths(paths: Iterable[Any]) -> Iterable[Any]:
    for path in paths:
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"path must be a str, an os.PathLike or a sequence of them, got {path!r}")
        yield path
