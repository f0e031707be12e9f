"""grpcio: aioexclusive.contrib.grpc drop-ins, and AIOEXCLUSIVE_GUARD's post-import hook for unmodified programs.

grpcio binds in C with SO_REUSEPORT on by default: neither the loops nor the
guard's audit hook see that bind. Every case starts a real grpc server, attacks
it with a same-user socket (SO_REUSEADDR + SO_REUSEPORT, the only way into a
Linux TCP listener), and makes a real call afterwards.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="grpc's SO_REUSEPORT default and the forked attacker are Linux's"
)
pytest.importorskip("grpc")  # importing starts no gRPC thread; servers and channels would

from ix_support import (  # noqa: E402
    HERE,
    LOOPBACK_HOSTS,
    PY,
    ServerProcess,
    assert_attacker_cannot_listen,
    attacker_steals,
    child_env,
)

SERVER = os.path.join(HERE, "ix_grpc_server.py")
CLIENT = os.path.join(HERE, "ix_grpc_client.py")
CHECKS = os.path.join(HERE, "ix_grpc_checks.py")


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def call(host: str, port: int) -> bytes:
    """One real unary gRPC call, from a client process of its own; the server answers with its pid."""
    result = subprocess.run([PY, CLIENT, host, str(port)], env=child_env(), capture_output=True, timeout=120, cwd=HERE)
    assert result.returncode == 0, result.stderr.decode(errors="replace")
    return result.stdout.strip()


def start(kind: str, host: str, *extra: str) -> ServerProcess:
    return ServerProcess([PY, SERVER, kind, host, *extra], cwd=HERE)


# --- unmodified programs -------------------------------------------------------------------------------


def test_control_plain_grpc_server_is_joined(guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker) -> None:
    # Without the guard, grpc's default SO_REUSEPORT lets the attacker in: the harness sees a hijack.
    with start("sync", "127.0.0.1") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        stolen = attacker_steals(same_user_attacker, "127.0.0.1", port)
        assert stolen > 0, "the control must show grpc's default port being shared"


@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_guard_gives_unmodified_grpc_servers_an_exclusive_port(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker, mode: str, kind: str
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with start(kind, "127.0.0.1") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        assert call("127.0.0.1", port) == b"pid %d" % server.proc.pid
    assert "aioexclusive" not in server.output, server.output


@pytest.mark.parametrize("mode", ["raise", "enforce"])
def test_guard_refuses_an_explicit_so_reuseport_that_is_not_allowed(guard_env: pytest.MonkeyPatch, mode: str) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with start("sync", "127.0.0.1", "share") as server:
        assert server.wait_exit() != 0
    assert "ExclusivityError" in server.output and "AIOEXCLUSIVE_GUARD_ALLOW" in server.output, server.output
    assert "PORT" not in server.output


def test_guard_warns_about_an_explicit_so_reuseport_in_warn_mode(guard_env: pytest.MonkeyPatch) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "warn")
    with start("sync", "127.0.0.1", "share") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert call("127.0.0.1", port).startswith(b"pid ")
    assert "ExclusivityWarning" in server.output, server.output


def test_guard_honours_an_allowed_so_reuseport(guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker) -> None:
    # grpc's multiprocessing pattern, allowed explicitly: the sharing the user asked for is there.
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "raise")
    guard_env.setenv("AIOEXCLUSIVE_GUARD_ALLOW", "127.0.0.1:*")
    with start("sync", "127.0.0.1", "share") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert call("127.0.0.1", port).startswith(b"pid ")
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0


# --- aioexclusive.contrib.grpc ----------------------------------------------------------------------------
# Servers, channels and clients run in processes of their own: gRPC's C core starts threads that would stay
# in the test process (and make it look like a gRPC server to `python -m aioexclusive probe`).


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
@pytest.mark.parametrize("kind", ["contrib-sync", "contrib-aio"])
def test_contrib_server_is_exclusive_and_serves(host: str, kind: str, same_user_attacker: Attacker) -> None:
    with start(kind, host) as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert_attacker_cannot_listen(same_user_attacker, host, port)
        assert call(host, port) == b"pid %d" % server.proc.pid


def test_contrib_honours_an_explicit_opt_in(same_user_attacker: Attacker) -> None:
    # options=[("grpc.so_reuseport", 1)] with allow_reuse_port=True: the sharing the caller asked for.
    with start("contrib-sync", "127.0.0.1", "share") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0


def test_contrib_errors() -> None:
    result = subprocess.run([PY, CHECKS], env=child_env(), capture_output=True, text=True, timeout=120, cwd=HERE)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {
        # a taken port: AddressInUseError (an OSError), whatever grpcio reports
        "sync_taken": ["AddressInUseError", True, "TCP", True],
        "aio_taken": ["AddressInUseError", True],
        # any other failure stays grpc's own
        "other_failure": ["RuntimeError", False],
        # so_reuseport=1 without allow_reuse_port=True
        "sync_share": ["ExclusivityError", True],
        "aio_share": ["ExclusivityError", True],
    }, result.stderr


def test_parse_address() -> None:
    from aioexclusive.contrib.grpc import parse_address

    assert parse_address("127.0.0.1:50051") == ("127.0.0.1", 50051)
    assert parse_address("[::]:0") == ("::", 0)
    assert parse_address("ipv6:[::1]:7") == ("::1", 7)
    assert parse_address("ipv4:10.0.0.1:8") == ("10.0.0.1", 8)
    assert parse_address("localhost:9") == ("localhost", 9)
    assert parse_address("unix:/tmp/x.sock") is None
    assert parse_address("::1") is None
    assert parse_address("host:http") is None
