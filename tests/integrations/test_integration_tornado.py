"""tornado: aioexclusive.contrib.tornado.bind_sockets, and its pre-fork recipes under AIOEXCLUSIVE_GUARD.

tornado binds in tornado.netutil.bind_sockets and hands the sockets to the
loop, which never sees the bind. Real tornado servers, real requests, a
same-user attacker with SO_REUSEADDR + SO_REUSEPORT; pre-fork servers must
answer from every worker.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="fork_processes, SIGINT and the forked attacker: POSIX")
pytest.importorskip("tornado")

import tornado.netutil  # noqa: E402
import tornado.web  # noqa: E402
from ix_support import (  # noqa: E402
    HERE,
    LOOPBACK_HOSTS,
    PY,
    ServerProcess,
    assert_attacker_cannot_listen,
    attacker_steals,
    free_port,
    http_get,
    sharing_options,
)
from tornado.httpserver import HTTPServer  # noqa: E402

from aioexclusive import AddressInUseError, ExclusivityError  # noqa: E402

SERVER = os.path.join(HERE, "ix_tornado_server.py")


@contextlib.contextmanager
def prefork(*args: str) -> Iterator[ServerProcess]:
    """The server and all its workers; ended together (a worker outliving its parent would hold the output pipe)."""
    server = ServerProcess([PY, SERVER, *args], cwd=HERE)
    try:
        yield server
    finally:
        try:
            os.killpg(server.proc.pid, signal.SIGKILL)  # its own session: the parent and every worker
        except ProcessLookupError:
            pass
        server.stop()


def answered_by_every_worker(server: ServerProcess, port: int, workers: int) -> set[int]:
    """Requests until each worker has answered one (workers share one accept queue; which wakes is the kernel's choice)."""
    pids = {int(server.wait_for(r"WORKER (\d+)", count=n).group(1)) for n in range(1, workers + 1)}
    seen: set[int] = set()
    for _ in range(400):
        status, body = http_get("127.0.0.1", port)
        assert status == 200
        seen.add(body["pid"])
        if seen == pids:
            break
    assert seen == pids, f"answered by {seen}, workers {pids}:\n{server.output}"
    return seen


# --- contrib.tornado.bind_sockets, in this process ---------------------------------------------------------


class Pid(tornado.web.RequestHandler):
    def get(self) -> None:
        self.write({"pid": os.getpid()})


async def serve_and_check(sockets: list[socket.socket], host: str, attacker: Attacker) -> None:
    server = HTTPServer(tornado.web.Application([(r"/", Pid)]))
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    run = asyncio.get_running_loop().run_in_executor
    try:
        assert await run(None, http_get, host, port) == (200, {"pid": os.getpid()})
        await run(None, assert_attacker_cannot_listen, attacker, host, port)
        assert await run(None, http_get, host, port) == (200, {"pid": os.getpid()})
    finally:
        server.stop()
        await server.close_all_connections()


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_contrib_bind_sockets_serves_exclusively(host: str, same_user_attacker: Attacker) -> None:
    from aioexclusive.contrib.tornado import bind_sockets

    sockets = bind_sockets(0, host)
    try:
        assert len(sockets) == 1 and not sockets[0].getblocking()
        assert sharing_options(sockets[0])[1] == 0
        asyncio.run(serve_and_check(sockets, host, same_user_attacker))
    finally:
        for sock in sockets:
            sock.close()


def test_contrib_bind_sockets_every_address_one_port() -> None:
    from aioexclusive.contrib.tornado import bind_sockets

    sockets = bind_sockets(0, "localhost")
    try:
        assert sockets and len({sock.getsockname()[1] for sock in sockets}) == 1
        assert all(sharing_options(sock)[1] == 0 for sock in sockets)
    finally:
        for sock in sockets:
            sock.close()


def test_contrib_bind_sockets_refusals_and_opt_in(same_user_attacker: Attacker) -> None:
    from aioexclusive.contrib.tornado import bind_sockets

    with pytest.raises(ExclusivityError, match="reuse_port=True"):
        bind_sockets(0, "127.0.0.1", reuse_port=True)
    sockets = bind_sockets(0, "127.0.0.1")
    port = sockets[0].getsockname()[1]
    try:
        with pytest.raises(AddressInUseError):
            bind_sockets(port, "127.0.0.1")
    finally:
        sockets[0].close()
    shared = bind_sockets(0, "127.0.0.1", reuse_port=True, allow_reuse_port=True)
    try:
        assert sharing_options(shared[0])[1] == 1  # the explicit opt-in is honoured
    finally:
        shared[0].close()


def test_control_tornado_reuse_port_is_joined(same_user_attacker: Attacker) -> None:
    sockets = tornado.netutil.bind_sockets(0, "127.0.0.1", reuse_port=True)
    try:
        assert attacker_steals(same_user_attacker, "127.0.0.1", sockets[0].getsockname()[1]) > 0
    finally:
        sockets[0].close()


# --- pre-fork servers -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "mode"),
    [("contrib-bind-then-fork", None), ("bind-then-fork", "enforce"), ("bind-then-fork", "raise")],
)
def test_bind_then_fork_every_worker_answers(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker, pattern: str, mode: str | None
) -> None:
    if mode:
        guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with prefork(pattern, "0", "2") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        answered_by_every_worker(server, port, 2)
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        answered_by_every_worker(server, port, 2)


@pytest.mark.parametrize("mode", ["enforce", "raise"])
def test_guard_refuses_fork_then_reuse_port_loudly(guard_env: pytest.MonkeyPatch, mode: str) -> None:
    # Without the hook, enforce strips SO_REUSEPORT and one of the workers serves while the others crash-loop.
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with prefork("fork-then-reuse-port", str(free_port()), "2") as server:
        assert server.wait_exit() != 0
    assert "WORKER" not in server.output, server.output
    assert "ExclusivityError" in server.output and "Bind before forking" in server.output, server.output


def test_guard_allows_fork_then_reuse_port_when_allowed(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "enforce")
    port = free_port()
    guard_env.setenv("AIOEXCLUSIVE_GUARD_ALLOW", f"127.0.0.1:{port}")
    with prefork("fork-then-reuse-port", str(port), "2") as server:
        answered_by_every_worker(server, port, 2)


def test_control_fork_then_reuse_port_unguarded_is_joined(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker
) -> None:
    port = free_port()
    with prefork("fork-then-reuse-port", str(port), "2") as server:
        answered_by_every_worker(server, port, 2)
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0
