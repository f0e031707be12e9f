"""aiocoap under AIOEXCLUSIVE_GUARD: AIOCOAP_REUSE_PORT=0 applied, so raise/enforce serve without SO_REUSEPORT.

aiocoap's transports ask for SO_REUSEPORT (UDP on a dual-stack socket, TCP
through create_server(reuse_port=True)) unless AIOCOAP_REUSE_PORT says not
to. Under ``raise`` the guard would refuse those binds and the server would not
start; the guard's post-import hook sets the variable's default to 0.
"""

from __future__ import annotations

import os
import socket
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="aiocoap's udp6 transport and the attacker: Linux"
)
pytest.importorskip("aiocoap")

from ix_support import (  # noqa: E402
    BOTH,
    HERE,
    PY,
    ServerProcess,
    assert_attacker_cannot_bind_udp,
    assert_attacker_cannot_listen,
    free_port,
)

SERVER = os.path.join(HERE, "ix_aiocoap_server.py")
# A confirmable CoAP GET for /pid: version 1, CON, no token, code 0.01, message id 0x1234, Uri-Path "pid".
GET_PID = bytes([0x40, 0x01, 0x12, 0x34, 0xB3]) + b"pid"


def coap_get_pid(port: int) -> bytes:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(30)
        sock.sendto(GET_PID, ("127.0.0.1", port))
        reply = sock.recvfrom(2048)[0]
    return reply.partition(b"\xff")[2]


def free_udp_and_tcp_port() -> int:
    while True:
        port = free_port()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port


@pytest.mark.parametrize("mode", ["raise", "enforce"])
def test_guard_serves_aiocoap_exclusively(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker, other_user_attacker: Attacker, mode: str
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    port = free_udp_and_tcp_port()
    with ServerProcess([PY, SERVER, str(port)], cwd=HERE) as server:
        assert server.wait_for(r"READY (\S+)").group(1) == "0"
        assert coap_get_pid(port) == b"pid %d" % server.proc.pid
        for attacker in (same_user_attacker, other_user_attacker):
            assert_attacker_cannot_bind_udp(attacker, "127.0.0.1", port)
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        assert coap_get_pid(port) == b"pid %d" % server.proc.pid


def test_an_explicit_aiocoap_setting_is_the_users(guard_env: pytest.MonkeyPatch) -> None:
    # AIOCOAP_REUSE_PORT=1 asked for sharing: raise refuses it, loudly, instead of serving shared.
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "raise")
    guard_env.setenv("AIOCOAP_REUSE_PORT", "1")
    with ServerProcess([PY, SERVER, str(free_udp_and_tcp_port())], cwd=HERE) as server:
        assert server.wait_exit() != 0
    assert "ExclusivityError" in server.output and "READY" not in server.output, server.output


def test_control_unguarded_aiocoap_is_joined(guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker) -> None:
    port = free_udp_and_tcp_port()
    with ServerProcess([PY, SERVER, str(port)], cwd=HERE) as server:
        server.wait_for("READY")
        result = same_user_attacker.try_bind("udp", 4, "127.0.0.1", port, BOTH)
        same_user_attacker.collect(wait=0)
        assert result.ok, "the control must show aiocoap's SO_REUSEPORT letting the attacker in"
