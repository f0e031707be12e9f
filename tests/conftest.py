from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))

from attacker import NOBODY, Attacker  # noqa: E402

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ON_LINUX = sys.platform.startswith("linux")

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:
    HAVE_UVLOOP = False

BASES = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param(
        "uvloop", id="uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
    ),
]


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


_ATTACKERS: dict[str, Attacker] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    # Fork the attackers before any test can start a thread (an executor of a
    # finished loop, say): forking a multi-threaded process is unsafe, and
    # Python 3.12+ warns about it.
    if hasattr(os, "fork"):
        _ATTACKERS["same_user"] = Attacker()
        if IS_ROOT:
            _ATTACKERS["other_user"] = Attacker(uid=NOBODY)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for attacker in _ATTACKERS.values():
        attacker.close()
    _ATTACKERS.clear()


@pytest.fixture(scope="session")
def same_user_attacker() -> Attacker:
    if "same_user" not in _ATTACKERS:
        pytest.skip("the attacker is a forked process; this platform cannot fork")
    return _ATTACKERS["same_user"]


@pytest.fixture(scope="session")
def other_user_attacker() -> Attacker:
    if "other_user" not in _ATTACKERS:
        pytest.skip("cross-user attacks need root, to fork and drop to uid 65534")
    attacker = _ATTACKERS["other_user"]
    assert attacker.whoami()["uid"] == NOBODY
    return attacker


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fails the test if it leaves a file descriptor open (Linux /proc)."""
    if not os.path.isdir("/proc/self/fd"):
        yield
        return
    before = open_fds()
    yield
    leaked = open_fds() - before
    # The default executor of a closed loop may still be winding down a thread.
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


def ipv6_available() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = ipv6_available()
needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="IPv6 loopback (::1) is not available here")


def run(coro, base: str = "asyncio", **options):  # type: ignore[no-untyped-def]
    """Run *coro* on a fresh exclusive loop of *base*."""
    import aioexclusive

    return aioexclusive.run(coro, base=base, **options)


def run_plain(coro, base: str = "asyncio"):  # type: ignore[no-untyped-def]
    """Run *coro* on a plain (non-exclusive) loop of *base*, for control cases."""
    if base == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
