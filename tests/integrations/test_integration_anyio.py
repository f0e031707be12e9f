"""anyio: backend_options={"loop_factory": aioexclusive.new_event_loop}; what it covers and what it cannot."""

from __future__ import annotations

import json
import socket
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers signalled with SIGINT; forked attacker")
anyio = pytest.importorskip("anyio")

import anyio.abc  # noqa: E402
from ix_support import (  # noqa: E402
    PY,
    ServerProcess,
    assert_attacker_cannot_bind_udp,
    assert_attacker_cannot_listen,
    assert_exclusive_answer,
    attacker_steals,
    sharing_options,
)

import aioexclusive  # noqa: E402
from aioexclusive import ExclusivityError  # noqa: E402

OPTIONS = {"loop_factory": aioexclusive.new_event_loop}


def test_example_serves_tcp_and_udp_exclusively(same_user_attacker: Attacker) -> None:
    with ServerProcess([PY, "anyio_app.py", "--port", "0"]) as server:
        match = server.wait_for(r"serving tcp port (\d+) udp port (\d+)")
        tcp_port, udp_port = int(match.group(1)), int(match.group(2))
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=30) as conn:
            conn.sendall(b"hello\n")
            assert_exclusive_answer(json.loads(conn.makefile("rb").readline()))
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(30)
            udp.sendto(b"hello", ("127.0.0.1", udp_port))
            assert_exclusive_answer(json.loads(udp.recv(65536)))
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", tcp_port)
        assert_attacker_cannot_bind_udp(same_user_attacker, "127.0.0.1", udp_port)


def test_udp_goes_through_the_loop(same_user_attacker: Attacker) -> None:
    async def main() -> None:
        with pytest.raises(ExclusivityError, match="reuse_port"):
            await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1", reuse_port=True)
        async with await anyio.create_udp_socket(family=socket.AF_INET, local_host="127.0.0.1") as udp:
            raw = udp.extra(anyio.abc.SocketAttribute.raw_socket)
            assert sharing_options(raw) == (0, 0)
            assert_attacker_cannot_bind_udp(
                same_user_attacker, "127.0.0.1", udp.extra(anyio.abc.SocketAttribute.local_port)
            )

    anyio.run(main, backend="asyncio", backend_options=OPTIONS)


def test_tcp_listener_binds_itself_so_reuse_port_is_not_refused(same_user_attacker: Attacker) -> None:
    # The documented boundary: create_tcp_listener never asks the loop, so its
    # reuse_port=True is honoured even on an exclusive loop.
    async def main() -> int:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", reuse_port=True)
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            return attacker_steals(same_user_attacker, "127.0.0.1", port)

    assert anyio.run(main, backend="asyncio", backend_options=OPTIONS) > 0


@pytest.mark.skipif(
    not hasattr(anyio.abc.SocketListener, "from_socket"), reason="this anyio has no SocketListener.from_socket"
)
def test_tcp_listener_from_bind_socket(same_user_attacker: Attacker) -> None:
    async def main() -> None:
        listener = await anyio.abc.SocketListener.from_socket(aioexclusive.bind_socket(("127.0.0.1", 0)))
        async with listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
            async with await anyio.connect_tcp("127.0.0.1", port):
                pass

    anyio.run(main, backend="asyncio", backend_options=OPTIONS)
