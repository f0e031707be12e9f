"""uvicorn: `--loop aioexclusive:new_event_loop`, and aioexclusive.contrib.uvicorn for workers and unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers signalled with SIGINT; forked attacker")
uvicorn = pytest.importorskip("uvicorn")

from ix_support import (  # noqa: E402
    HAVE_IPV6,
    HAVE_UVLOOP,
    LOOPBACK_HOSTS,
    PY,
    LiveUnixServer,
    ServerProcess,
    assert_attacker_cannot_listen,
    assert_exclusive_answer,
    assert_serves_exclusively,
    http_get,
    http_get_unix,
    sharing_options,
)

import aioexclusive  # noqa: E402
from aioexclusive import AddressInUseError, ExclusiveLoopMixin  # noqa: E402

RUNNING = r"Uvicorn running on http://\[?([0-9a-f.:]+?)\]?:(\d+) "


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_cli_loop_factory_serves_exclusively(host: str, same_user_attacker: Attacker) -> None:
    args = [PY, "-m", "uvicorn", "uvicorn_app:app", "--loop", "aioexclusive:new_event_loop"]
    with ServerProcess([*args, "--host", host, "--port", "0"]) as server:
        port = int(server.wait_for(RUNNING).group(2))
        assert_serves_exclusively(same_user_attacker, host, port)


def test_contrib_run_with_workers(same_user_attacker: Attacker) -> None:
    with ServerProcess([PY, "uvicorn_app.py", "--workers", "2", "--port", "0"]) as server:
        port = int(server.wait_for(RUNNING).group(2))
        server.wait_for("Application startup complete", count=2)
        answers = [http_get("127.0.0.1", port) for _ in range(6)]
        for status, body in answers:
            assert status == 200
            assert_exclusive_answer(body)
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        assert http_get("127.0.0.1", port)[0] == 200
    assert server.proc.returncode == 0, server.output


def test_config_bind_socket_is_exclusive_and_listening(same_user_attacker: Attacker) -> None:
    from aioexclusive.contrib.uvicorn import Config

    sock = Config("x:app", host="127.0.0.1", port=0, log_config=None).bind_socket()
    with sock:
        port = sock.getsockname()[1]
        assert sharing_options(sock)[1] == 0  # never SO_REUSEPORT
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        with pytest.raises(AddressInUseError) as info:
            Config("x:app", host="127.0.0.1", port=port, log_config=None).bind_socket()
        assert str(port) in str(info.value)


def test_plain_config_bind_socket_leaves_the_port_to_whoever_listens_first(same_user_attacker: Attacker) -> None:
    # Control: uvicorn binds with SO_REUSEADDR and listens only in the workers;
    # on Linux another SO_REUSEADDR socket can bind too and listen first.
    if not sys.platform.startswith("linux"):
        pytest.skip("the bind-then-listen window is measured on Linux")
    sock = uvicorn.Config("x:app", host="127.0.0.1", port=0, log_config=None).bind_socket()
    with sock:
        port = sock.getsockname()[1]
        result = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEADDR",))
        same_user_attacker.collect(wait=0)
        assert result.ok, "the control must show the attacker listening before uvicorn's workers"


def test_uds_live_server_is_refused_and_keeps_serving(sock_path: str) -> None:
    from aioexclusive.contrib.uvicorn import Config

    with ServerProcess([PY, "uvicorn_app.py", "--uds", sock_path]) as first:
        first.wait_for("Application startup complete")
        assert http_get_unix(sock_path)[0] == 200
        with pytest.raises(AddressInUseError) as info:
            Config("x:app", uds=sock_path, log_config=None).bind_socket()
        assert sock_path in str(info.value)

        second = ServerProcess([PY, "uvicorn_app.py", "--uds", sock_path])
        assert second.wait_exit() == 3, second.output
        assert sock_path in second.output and "already in use" in second.output
        # The first server's socket file survived the failed start and still answers.
        status, body = http_get_unix(sock_path)
        assert status == 200
        assert_exclusive_answer(body)
        second.stop()
    assert first.proc.returncode == 0, first.output
    assert not os.path.exists(sock_path)  # the server removed its own socket on exit


def test_uds_stale_socket_is_replaced(sock_path: str) -> None:
    from aioexclusive.contrib.uvicorn import Config

    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(sock_path)  # closed without unlinking: a crashed server's leftover
    sock = Config("x:app", uds=sock_path, log_config=None).bind_socket()
    with sock, socket.socket(socket.AF_UNIX) as client:
        sock.listen(1)
        client.connect(sock_path)
        peer, _ = sock.accept()
        peer.close()


LOOPS = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("auto", id="auto"),
    pytest.param("uvloop", id="uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")),
    pytest.param("aioexclusive:new_event_loop", id="factory"),
    pytest.param("asyncio:new_event_loop", id="plain-factory"),
]


@pytest.mark.parametrize("loop", LOOPS)
def test_config_loop_factory_is_exclusive(loop: str) -> None:
    from aioexclusive.contrib.uvicorn import Config

    factory = Config("x:app", loop=loop, log_config=None).get_loop_factory()
    assert factory is not None
    made = factory()
    try:
        assert isinstance(made, ExclusiveLoopMixin)
        if loop == "uvloop":
            import uvloop

            assert isinstance(made, uvloop.Loop)

        async def refused() -> None:
            with pytest.raises(aioexclusive.ExclusivityError):
                await made.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)

        made.run_until_complete(refused())
    finally:
        made.close()


# -- uvicorn's CLI with --uds (issue 12.9) -----------------------------------------


def test_cli_uds_refusal_keeps_the_live_servers_file(sock_path: str) -> None:
    """uvicorn's CLI removes --uds PATH on its way out, after our loop refused PATH.

    The live server (another process) must keep its file: the next start, a
    process manager restarting the "failed" service, would otherwise take the
    path and every new client.
    """
    args = [PY, "-m", "uvicorn", "uvicorn_app:app", "--loop", "aioexclusive:new_event_loop", "--uds", sock_path]
    with LiveUnixServer(sock_path) as live:
        with ServerProcess(args) as refused:
            assert refused.wait_exit() != 0, refused.output
        assert "already in use" in refused.output and sock_path in refused.output, refused.output
        assert os.path.exists(sock_path), "uvicorn removed the live server's socket file"
        assert os.lstat(sock_path).st_ino == live.inode
        assert live.answers()
        # And the restart a process manager would do now is refused again.
        with ServerProcess(args) as again:
            assert again.wait_exit() != 0, again.output
        assert live.answers()


def test_control_cli_uds_without_aioexclusive_takes_the_path(sock_path: str) -> None:
    with LiveUnixServer(sock_path) as live:
        with ServerProcess([PY, "-m", "uvicorn", "uvicorn_app:app", "--uds", sock_path]) as thief:
            thief.wait_for("Uvicorn running on unix socket")
            assert os.lstat(sock_path).st_ino != live.inode
            assert not live.answers()
            assert http_get_unix(sock_path)[0] == 200  # the newcomer got the path


# -- "::" stays dual-stack, exclusively (issue 12.10) ---------------------------------


def _v4_client_reaches(sock: socket.socket, port: int) -> bool:
    with socket.create_connection(("127.0.0.1", port), timeout=10):
        sock.settimeout(10)
        conn, peer = sock.accept()
        conn.close()
        return peer[0] in ("::ffff:127.0.0.1", "127.0.0.1")


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 here")
def test_config_wildcard_v6_is_dual_stack_and_exclusive(other_user_attacker: Attacker) -> None:
    from aioexclusive.contrib.uvicorn import Config

    plain = uvicorn.Config("x:app", host="::", port=0, log_config=None).bind_socket()
    with plain:
        # What uvicorn itself does on this system (dual-stack on Linux by default).
        expected = plain.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    sock = Config("x:app", host="::", port=0, log_config=None).bind_socket()
    with sock:
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == expected
        if expected == 0:
            assert _v4_client_reaches(sock, port)
        # Another user on the IPv4 side of the port gets nothing: it cannot bind it.
        assert_attacker_cannot_listen(other_user_attacker, "127.0.0.1", port)
        assert_attacker_cannot_listen(other_user_attacker, "::1", port)
        if expected == 0:
            assert _v4_client_reaches(sock, port)


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 here")
def test_run_workers_on_wildcard_v6_serve_ipv4_clients(other_user_attacker: Attacker) -> None:
    with ServerProcess([PY, "uvicorn_app.py", "--workers", "2", "--host", "::", "--port", "0"]) as server:
        port = int(server.wait_for(RUNNING).group(2))
        server.wait_for("Application startup complete", count=2)
        assert_attacker_cannot_listen(other_user_attacker, "127.0.0.1", port)
        status, body = http_get("127.0.0.1", port, "/secret?token=abc")
        assert status == 200
        assert_exclusive_answer(body)
        assert http_get("::1", port)[0] == 200
