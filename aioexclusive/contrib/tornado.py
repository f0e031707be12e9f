"""tornado servers on exclusive sockets.

tornado binds its own sockets, in ``tornado.netutil.bind_sockets``
(``HTTPServer.listen``/``bind`` call it), with ``SO_REUSEADDR`` and, given
``reuse_port=True``, ``SO_REUSEPORT``; the loop only ever sees the bound
result. `bind_sockets` here is the same function by the bind plan: every
address the host resolves to gets one exclusive, listening socket, and
``reuse_port=True`` raises `ExclusivityError` unless ``allow_reuse_port=True``::

    from aioexclusive.contrib.tornado import bind_sockets
    sockets = bind_sockets(8888, "127.0.0.1")
    tornado.process.fork_processes(0)        # optional: workers share the sockets bound above
    server = HTTPServer(app)
    server.add_sockets(sockets)

Bind-then-fork, as above, is tornado's own multi-process recipe and needs no
``SO_REUSEPORT``: every worker accepts on the one exclusive socket it
inherited. The other recipe, fork first and bind with ``reuse_port=True`` in
each worker, is exactly what an attacker of the same user does too.

Under ``AIOEXCLUSIVE_GUARD=raise``/``enforce`` (see `aioexclusive._import_hooks`),
``tornado.netutil.bind_sockets(reuse_port=True)`` in a worker of
``fork_processes`` is refused with `ExclusivityError` saying this, unless the
allow list names the port: stripping the option there (what ``enforce`` does
to other sockets) would leave one worker serving and the rest crash-looping on
"address in use".
"""

from __future__ import annotations

import errno
import functools
import socket
import sys
from types import ModuleType
from typing import Any

from .._binding import open_bound_sockets
from .._errors import ExclusivityError
from .._import_hooks import ORIGINAL, guard_allows, guard_mode
from .._plan import Role, make_plan

__all__ = ["bind_sockets"]

_DEFAULT_BACKLOG = 128  # tornado.netutil._DEFAULT_BACKLOG


def bind_sockets(
    port: int,
    address: str | None = None,
    family: socket.AddressFamily = socket.AF_UNSPEC,
    backlog: int = _DEFAULT_BACKLOG,
    flags: int | None = None,
    reuse_port: bool = False,
    *,
    allow_reuse_port: bool = False,
    strict: bool = False,
) -> list[socket.socket]:
    """``tornado.netutil.bind_sockets`` by the bind plan: exclusive, listening sockets.

    Same arguments and result as tornado's (one non-blocking socket per
    address; ``port=0`` gives every address the same port), plus
    ``allow_reuse_port`` (honour ``reuse_port=True``) and ``strict`` (Windows:
    refuse when ``SO_EXCLUSIVEADDRUSE`` cannot be set). A taken port raises
    `AddressInUseError`; on failure no socket stays open.
    """
    plan = make_plan(
        Role.TCP_LISTENER, reuse_port=reuse_port, allow_reuse_port=allow_reuse_port, address=(address, port)
    )
    if address == "":
        address = None
    if not socket.has_ipv6 and family == socket.AF_UNSPEC:
        family = socket.AF_INET  # same as tornado: a Python built without IPv6 (bpo-16208)
    if flags is None:
        flags = socket.AI_PASSIVE
    infos: list[Any] = []
    for info in sorted(socket.getaddrinfo(address, port, family, socket.SOCK_STREAM, 0, flags), key=lambda x: x[0]):
        if info in infos:
            continue
        af, _, _, _, sockaddr = info
        if sys.platform == "darwin" and address == "localhost" and af == socket.AF_INET6 and sockaddr[3] != 0:
            continue  # macOS's fe80::1%lo0 for localhost, which tornado skips too
        infos.append(info)
    sockets: list[socket.socket] = []
    bound_port: int | None = None
    try:
        for af, socktype, proto, canonname, sockaddr in infos:
            if sockaddr[1] == 0 and bound_port is not None:
                # tornado: an automatic port is the same on every address.
                sockaddr = (sockaddr[0], bound_port, *sockaddr[2:])
            try:
                # Bound and listening at once (the plan's SO_REUSEADDR alone
                # lets two sockets be bound on Linux until one listens).
                new = open_bound_sockets(
                    [(af, socktype, proto, canonname, sockaddr)], plan, backlog=backlog, strict=strict
                )
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:
                    continue  # tornado skips a family the host cannot make
                raise
            sockets.extend(new)
            if bound_port is None and new:
                bound_port = new[0].getsockname()[1]
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    return sockets


# --- AIOEXCLUSIVE_GUARD: the post-import hook for unmodified programs -----------------------------


def _forked_worker() -> int | None:
    """tornado.process.task_id() when this process is a worker of fork_processes, else None."""
    process = sys.modules.get("tornado.process")
    task_id = getattr(process, "task_id", None)
    return task_id() if callable(task_id) else None


def _patch_netutil(module: ModuleType) -> None:
    original = getattr(module, "bind_sockets", None)
    if original is None or hasattr(original, ORIGINAL):
        return

    @functools.wraps(original)
    def guarded_bind_sockets(port: int, address: str | None = None, *args: Any, **kwargs: Any) -> Any:
        reuse_port = kwargs.get("reuse_port", args[3] if len(args) > 3 else False)
        mode = guard_mode()
        if reuse_port and mode in ("raise", "enforce") and port and not guard_allows(address or "0.0.0.0", port):
            worker = _forked_worker()
            if worker is not None:
                raise ExclusivityError(
                    f"AIOEXCLUSIVE_GUARD={mode} refused tornado's bind_sockets({port}, reuse_port=True) in worker "
                    f"{worker} of fork_processes: SO_REUSEPORT lets any process of the same user bind the port and "
                    f"take a share of its connections, and without it only one worker could bind. Bind before "
                    f"forking instead (sockets = tornado.netutil.bind_sockets({port}); "
                    f"tornado.process.fork_processes(n); server.add_sockets(sockets)), which every worker shares "
                    f"exclusively, or allow the port: AIOEXCLUSIVE_GUARD_ALLOW='*:{port}'"
                )
        return original(port, address, *args, **kwargs)

    setattr(guarded_bind_sockets, ORIGINAL, original)
    setattr(module, "bind_sockets", guarded_bind_sockets)
