"""uvicorn on exclusive sockets and loops, workers and reload included.

A single process needs nothing from this module::

    uvicorn app:app --loop aioexclusive:new_event_loop

(uvicorn >= 0.36 takes ``module:attr`` as a loop factory), because uvicorn then
binds through ``loop.create_server``. With ``--uds PATH`` the loop refuses a
PATH where a live server answers, and uvicorn's own clean-up on the way out
(``os.remove(PATH)``) is then refused too (a ``PermissionError`` traceback
after the start-up error), so the live server keeps its file; `run` here
reports the same refusal without a traceback. With ``--workers`` or ``--reload``,
though, uvicorn binds once in the supervisor, in ``Config.bind_socket``, with
``SO_REUSEADDR`` on every platform; on Windows that is the option that lets
any later socket take the port over (and opens it to other users). This
module's `Config` binds there by the bind plan instead, and `run` is
``uvicorn.run`` with that `Config`::

    from aioexclusive.contrib.uvicorn import run
    run("app:app", workers=4)
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import os
import socket
import sys
from collections.abc import Callable
from typing import Any, cast

import uvicorn

from .._binding import audit_socket, bind_socket
from .._entry import new_event_loop
from .._errors import ExclusivityError
from .._loops import ExclusiveLoopMixin, exclusive_loop_class
from .._plan import Role, make_plan
from .._unix import bind_unix_path, remove_own_path
from . import _v6_default_is_dualstack

__all__ = ["Config", "run"]

logger = logging.getLogger("uvicorn.error")

# uvicorn's exit status for a failed start (uvicorn.main.STARTUP_FAILURE up to
# 0.3x, uvicorn.config.STARTUP_FAILURE later; the value has stayed 3).
STARTUP_FAILURE = 3

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


def _exclusive_factory(factory: Callable[[], Any]) -> LoopFactory:
    """A factory making the exclusive variant of whatever *factory* makes."""
    if isinstance(factory, type) and issubclass(factory, asyncio.AbstractEventLoop):
        return functools.partial(new_event_loop, exclusive_loop_class(factory))

    def make() -> asyncio.AbstractEventLoop:
        loop: Any = factory()
        if isinstance(loop, ExclusiveLoopMixin):
            return cast(asyncio.AbstractEventLoop, loop)
        # A plain loop from a custom factory (uvloop.new_event_loop, say):
        # same class, exclusive. Loop classes take no required arguments.
        base = type(loop)
        loop.close()
        return new_event_loop(base)

    return make


class Config(uvicorn.Config):
    """`uvicorn.Config` whose sockets and loops are exclusive.

    * ``bind_socket`` (the supervisor's bind for ``workers``/``reload``) binds
      by the bind plan: ``SO_EXCLUSIVEADDRUSE`` on Windows, no
      ``SO_REUSEPORT`` anywhere; a port in use raises `AddressInUseError`.
    * ``uds=``: refuses a path where a live server answers
      (`AddressInUseError` naming it), replaces a stale socket file.
    * ``fd=``: an inherited TCP socket that is shareable raises
      `ExclusivityError`.
    * ``get_loop_factory`` returns the exclusive variant of the loop uvicorn
      would pick for ``loop=`` (``"auto"``, ``"asyncio"``, ``"uvloop"`` or a
      ``module:attr`` factory), so workers serve on exclusive loops too.

    Takes exactly `uvicorn.Config`'s arguments.
    """

    def get_loop_factory(self) -> LoopFactory | None:
        factory = super().get_loop_factory()
        if factory is None:
            return new_event_loop
        return _exclusive_factory(factory)

    def bind_socket(self) -> socket.socket:
        if self.uds is not None:
            # Listening at once: until then a second instance would see a stale file.
            sock = bind_unix_path(self.uds, backlog=self.backlog)
            try:
                # uvicorn's own bind makes the socket connectable for everyone.
                os.chmod(self.uds, 0o666)
            except BaseException:
                remove_own_path(sock, self.uds)  # leave no file of ours behind
                raise
            logger.info("Uvicorn running on unix socket %s (Press CTRL+C to quit)", self.uds)
        elif self.fd is not None:
            sock = super().bind_socket()
            try:
                name = sock.getsockname()
                if isinstance(name, tuple):
                    # An inherited socket (systemd, a supervisor) bound with
                    # SO_REUSEPORT is shared with whoever else sets it.
                    audit_socket(sock, make_plan(Role.TCP_LISTENER))
            except BaseException:
                sock.close()
                raise
        else:
            family = socket.AF_INET6 if self.host and ":" in self.host else socket.AF_INET
            # uvicorn leaves IPV6_V6ONLY at the system default here, so "::" is
            # dual-stack on Linux: keep that (one socket, exclusive for both
            # families), or IPv4 clients would be refused and whoever listens on
            # 0.0.0.0:port would get them.
            dualstack = family == socket.AF_INET6 and _v6_default_is_dualstack()
            # Listening at once (unlike uvicorn, which listens in each worker)
            # closes the Linux window where two SO_REUSEADDR sockets are both bound.
            # A wildcard listener is a _wildcard.HeldListener, which pickles for
            # uvicorn's spawned workers as a plain socket does (copyreg, _wildcard).
            sock = bind_socket((self.host, self.port), family=family, backlog=self.backlog, dualstack_ipv6=dualstack)
            fmt = "%s://[%s]:%d" if family == socket.AF_INET6 else "%s://%s:%d"
            logger.info(
                f"Uvicorn running on {fmt} (Press CTRL+C to quit)",
                "https" if self.is_ssl else "http",
                self.host,
                sock.getsockname()[1],
            )
        sock.set_inheritable(True)
        return sock


def run(app: Any, **kwargs: Any) -> None:
    """`uvicorn.run` with the exclusive `Config`; same keyword arguments.

    Differences from uvicorn.run, all about not harming another server:

    * a unix socket path where a live server answers is refused (logged, exit
      status 3 like any uvicorn start-up failure) instead of being unlinked;
    * on exit the socket file is removed only if no socket is bound to it any
      more: never the live server's file that a failed start found in place,
      nor a newer server's file that reuses the inode number of ours.
    """
    from uvicorn.server import Server
    from uvicorn.supervisors import ChangeReload, Multiprocess

    app_dir = kwargs.pop("app_dir", None)
    if app_dir is not None:
        sys.path.insert(0, app_dir)
    config = Config(app, **kwargs)
    if (config.reload or config.workers > 1) and not isinstance(app, str):
        logger.warning("You must pass the application as an import string to enable 'reload' or 'workers'.")
        sys.exit(STARTUP_FAILURE)
    if not (config.reload or config.workers > 1) and hasattr(config, "load_app"):
        # Recent uvicorn loads here, so import errors show before binding;
        # 0.36 has no load_app and loads in Server.serve.
        config.load_app()
    server = Server(config=config)

    sock: socket.socket | None = None
    try:
        try:
            if config.should_reload or config.workers > 1 or config.uds is not None:
                # A unix socket is bound here even for one process: the loop's
                # create_unix_server would unlink a live server's path.
                sock = config.bind_socket()
        except (OSError, ExclusivityError) as exc:
            logger.error(exc)
            sys.exit(STARTUP_FAILURE)
        if config.should_reload:
            assert sock is not None
            ChangeReload(config, target=server.run, sockets=[sock]).run()
        elif config.workers > 1:
            assert sock is not None
            if "target" in inspect.signature(Multiprocess).parameters:
                # uvicorn 0.36 passed the server's run explicitly; later ones do not.
                Multiprocess(config, target=server.run, sockets=[sock]).run()  # type: ignore[call-arg,unused-ignore]
            else:
                Multiprocess(config, sockets=[sock]).run()
        else:
            server.run(sockets=[sock] if sock is not None else None)
    except KeyboardInterrupt:
        pass
    finally:
        if sock is not None:
            if config.uds:
                # Closed first, then removed only if nothing is bound to the
                # file any more (the same rename-and-check as a replacement).
                remove_own_path(sock, config.uds)
            else:
                sock.close()

    if not server.started and not config.should_reload and config.workers == 1:
        sys.exit(STARTUP_FAILURE)
