"""What the exclusive loop must know about its base loop: one place per fact.

The mixin serves through the base loop's own code, so a few behaviours of each
base decide how a socket is handed over. They are asked here, by class, and
nowhere else:

* `is_stdlib`: asyncio's own loops (``asyncio.BaseEventLoop``), whose private
  transport constructors the datagram path uses when asyncio's public path
  would lose the peer address (see ``_datagram.adopt``).
* `is_libuv`: uvloop or winloop. Their ``create_server`` and
  ``create_datagram_endpoint`` resolve with libuv's ``getaddrinfo`` (not the
  public ``loop.getaddrinfo``), and they have a ``Server`` class of their own.
* `libuv_sets_reuse`: libuv on POSIX (uvloop) turns ``SO_REUSEADDR`` on by
  itself: on every UDP socket it adopts (``uv_udp_open``, src/unix/udp.c) and
  on every TCP socket it binds (``uv__tcp_bind``, src/unix/tcp.c). Its Windows
  code (winloop) does neither.
"""

from __future__ import annotations

import asyncio
import sys

__all__ = ["check_open", "is_libuv", "is_stdlib", "libuv_server_class", "libuv_sets_reuse"]

_LIBUV_PACKAGES = ("uvloop", "winloop")


def _package(cls: type) -> str:
    return cls.__module__.partition(".")[0]


def _class_of(loop: object) -> type:
    return loop if isinstance(loop, type) else type(loop)


def check_open(loop: asyncio.AbstractEventLoop) -> None:
    """Every base loop's error for a closed loop, raised before anything is made."""
    if loop.is_closed():
        raise RuntimeError("Event loop is closed")


def is_stdlib(loop: object) -> bool:
    """Is *loop* (an instance or a class) one of asyncio's own loops or a subclass?"""
    return issubclass(_class_of(loop), asyncio.BaseEventLoop)


def is_libuv(loop: object) -> bool:
    """Is *loop* (an instance or a class) uvloop's or winloop's, or built on one?"""
    return any(_package(cls) in _LIBUV_PACKAGES for cls in _class_of(loop).__mro__)


def libuv_sets_reuse(loop: object) -> bool:
    """Does the base turn ``SO_REUSEADDR`` on by itself (libuv on POSIX: uvloop)?"""
    return any(_package(cls) == "uvloop" for cls in _class_of(loop).__mro__)


def libuv_server_class(loop: object) -> type | None:
    """The ``Server`` class of the libuv package *loop* is built on, if any."""
    for cls in _class_of(loop).__mro__:
        if _package(cls) in _LIBUV_PACKAGES:
            server_class = getattr(sys.modules.get(cls.__module__), "Server", None)
            if isinstance(server_class, type):
                return server_class
    return None
