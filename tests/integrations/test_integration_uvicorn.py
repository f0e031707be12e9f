"""uvicorn: `--loop aioexclusive:new_event_loop`, and aioexclusive.contrib.uvicorn for workers and unix sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers signalled with SIGINT; forked attacker")
uvicorn = pytest.importorskip("uvicorn")

import aioexclusive  # noqa: E402
from aioexclusive import AddressInUseError, ExclusiveLoopMixin  # noqa: E402
from ix_support import (  # noqa: E402
    LOOPBACK_HOSTS,
    HAVE_UVLOOP,
    PY,
    ServerProcess,
    assert_attacker_cannot_listen,
    assert_exclusive_answer,
    http_get,
    http_get_unix,
    sharing_options,
)

RUNNING = r"Uvicorn running on http://\[?([0-9a-f.:]+?)\]?:(\d+) "


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_cli_loop_factory_serves_exclusively(host: str, same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    args = [PY, "-m", "uvicorn", "uvicorn_app:app", "--loop", "aioexclusive:new_event_loop"]
    with ServerProcess([*args, "--host", host, "--port", "0"]) as server:
        port = int(server.wait_for(RUNNING).group(2))
        status, body = http_get(host, port)
        assert status == 200
        assert_exclusive_answer(body)
        assert_attacker_cannot_listen(same_user_attacker, host, port)
        assert http_get(host, port)[0] == 200


def test_contrib_run_with_workers(same_user_attacker) -> None:  # type: ignore[no-untyped-def]
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


def test_config_bind_socket_is_exclusive_and_listening(same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    from aioexclusive.contrib.uvicorn import Config

    sock = Config("x:app", host="127.0.0.1", port=0, log_config=None).bind_socket()
    with sock:
        port = sock.getsockname()[1]
        assert sharing_options(sock)[1] == 0  # never SO_REUSEPORT
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        with pytest.raises(AddressInUseError) as info:
            Config("x:app", host="127.0.0.1", port=port, log_config=None).bind_socket()
        assert str(port) in str(info.value)


def test_plain_config_bind_socket_leaves_the_port_to_whoever_listens_first(same_user_attacker) -> None:  # type: ignore[no-untyped-def]
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
