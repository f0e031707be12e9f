"""A ``sock=`` whose ``SO_REUSEPORT`` was set, then cleared: it reads 0, but the port is still open.

The Linux kernel records in the port's bind bucket that a ``SO_REUSEPORT``
socket of this user joined it, and keeps the record after the option is
cleared: another ``SO_REUSEPORT`` socket of the same user binds next to the
listener and takes a share of its connections (red team 4, F3b). The options
audit cannot see it; the exclusive loop asks the kernel with a trial bind and
refuses the socket. The control shows the plain base loop serving it and the
attacker binding.
"""

from __future__ import annotations

import asyncio
import socket
import sys

import pytest
from attacker import Attacker, send_traffic
from harness import BASES, run

import aioexclusive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the bind bucket record is Linux's")


def _cleared_listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, 0))
    sock.listen(64)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) == 0
    return sock


def _clean_listener(host: str = "127.0.0.1") -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    sock.listen(64)
    return sock


def test_control_the_cleared_option_still_lets_the_same_user_in(same_user_attacker: Attacker) -> None:
    # Proves the attack: the plain loop serves the socket and the same user's SO_REUSEPORT socket
    # binds next to it and takes connections.
    given = _cleared_listener()
    port = given.getsockname()[1]

    async def scenario() -> tuple[bool, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, sock=given)
        try:
            bound = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEPORT",)).ok
            send_traffic("tcp", 4, "127.0.0.1", port, 40)
            return bound, same_user_attacker.collect()
        finally:
            server.close()
            await server.wait_closed()

    bound, stolen = asyncio.run(scenario())
    assert bound and stolen > 0, (bound, stolen)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_exclusive_loop_refuses_a_socket_whose_reuseport_was_cleared(base: str, host: str) -> None:
    if host == "::1" and not socket.has_ipv6:
        pytest.skip("no IPv6")
    given = _cleared_listener(host)

    async def scenario() -> str:
        loop = asyncio.get_running_loop()
        try:
            server = await loop.create_server(asyncio.Protocol, sock=given)
        except aioexclusive.ExclusivityError as exc:
            return str(exc)
        # A regression adopted it: close what it made, then fail.
        server.close()
        await server.wait_closed()
        return "served"

    try:
        message = run(scenario(), base)
        assert "SO_REUSEPORT sockets after it is cleared" in message, message
        # Refused, the socket stays the caller's, open and listening.
        assert given.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
    finally:
        given.close()


@pytest.mark.parametrize("base", BASES)
def test_a_clean_sock_is_still_served(base: str, same_user_attacker: Attacker) -> None:
    # No false alarm: a listener that never had SO_REUSEPORT is adopted, and the trial bind
    # leaves the port as closed to the same user as it was.
    given = _clean_listener()
    port = given.getsockname()[1]

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, sock=given)
        try:
            return same_user_attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEPORT",)).ok
        finally:
            server.close()
            await server.wait_closed()

    assert not run(scenario(), base)
