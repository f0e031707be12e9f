"""uvloop under AIOEXCLUSIVE_GUARD: unmodified programs get the exclusive loop over uvloop.Loop.

libuv's uv_udp_open turns SO_REUSEADDR on for every UDP socket uvloop adopts
(local_addr= and sock= alike), after the bind the guard checked: any user on
the machine can then join the port. The guard's post-import hook gives
programs that call uvloop.run / new_event_loop / install / EventLoopPolicy the
exclusive loop, which never leaves the option on.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="libuv's UDP option and the attacker: Linux"
)
pytest.importorskip("uvloop")

from ix_support import HERE, PY, ServerProcess, assert_attacker_cannot_bind_udp  # noqa: E402

SERVER = os.path.join(HERE, "ix_uvloop_server.py")
READY = r"PORT (\d+) LOOP (\w+)"


def ask(port: int) -> bytes:
    """One real datagram to the service; its answer."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(30)
        sock.sendto(b"ping", ("127.0.0.1", port))
        return sock.recvfrom(100)[0]


def test_control_plain_uvloop_sock_path_is_joined_by_another_user(
    guard_env: pytest.MonkeyPatch, other_user_attacker: Attacker
) -> None:
    with ServerProcess([PY, SERVER, "run", "sock"], cwd=HERE) as server:
        port = int(server.wait_for(READY).group(1))
        result = other_user_attacker.try_bind("udp", 4, "127.0.0.1", port, ("SO_REUSEADDR",))
        other_user_attacker.collect(wait=0)
        assert result.ok, "the control must show libuv's SO_REUSEADDR letting another user in"


@pytest.mark.parametrize("mode", ["warn", "enforce"])
@pytest.mark.parametrize("how", ["run", "new_event_loop", "install", "policy"])
def test_guard_gives_uvloop_programs_the_exclusive_loop(
    guard_env: pytest.MonkeyPatch, other_user_attacker: Attacker, same_user_attacker: Attacker, how: str, mode: str
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with ServerProcess([PY, SERVER, how, "local_addr"], cwd=HERE) as server:
        match = server.wait_for(READY)
        port = int(match.group(1))
        assert match.group(2).startswith("Exclusive"), server.output
        assert ask(port) == b"pid %d" % server.proc.pid
        assert_attacker_cannot_bind_udp(other_user_attacker, "127.0.0.1", port)
        assert_attacker_cannot_bind_udp(same_user_attacker, "127.0.0.1", port)
        assert ask(port) == b"pid %d" % server.proc.pid


def test_guard_never_leaves_a_bound_sock_shareable(
    guard_env: pytest.MonkeyPatch, other_user_attacker: Attacker
) -> None:
    # A UDP socket the program bound itself, handed over with sock=: the exclusive loop either serves it
    # exclusively or refuses it loudly (ExclusivityError, naming local_addr= as the way out), depending on
    # whether it can clear libuv's option before anyone could join; never a silently shared port.
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "enforce")
    with ServerProcess([PY, SERVER, "run", "sock"], cwd=HERE) as server:
        match = server.wait_for(READY + r"|(ExclusivityError: .*)")
        if match.group(3):
            assert server.wait_exit() != 0
            assert "local_addr" in match.group(3), server.output
            return
        port = int(match.group(1))
        assert ask(port) == b"pid %d" % server.proc.pid
        assert_attacker_cannot_bind_udp(other_user_attacker, "127.0.0.1", port)


def test_guard_off_leaves_uvloop_alone(guard_env: pytest.MonkeyPatch) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "off")
    with ServerProcess([PY, SERVER, "new_event_loop", "local_addr"], cwd=HERE) as server:
        assert server.wait_for(READY).group(2) == "Loop"
