"""aiohttp: run_app(loop=aioexclusive.new_event_loop()), AppRunner/TCPSite in aioexclusive.run, contrib.run_app."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers signalled with SIGINT; forked attacker")
pytest.importorskip("aiohttp.web")

from aiohttp import web  # noqa: E402
from ix_support import (  # noqa: E402
    EXAMPLES,
    PY,
    LiveUnixServer,
    ServerProcess,
    assert_exclusive_answer,
    assert_serves_exclusively,
    free_port,
    http_get_unix,
)

import aioexclusive  # noqa: E402
from aioexclusive import AddressInUseError, ExclusivityError  # noqa: E402


def test_app_runner_example(same_user_attacker: Attacker) -> None:
    with ServerProcess([PY, "aiohttp_app.py", "--port", "0"]) as server:
        port = int(server.wait_for(r"serving on http://127\.0\.0\.1:(\d+)").group(1))
        # The answer includes TCPSite(reuse_port=True) refused.
        assert_serves_exclusively(same_user_attacker, "127.0.0.1", port)


def test_run_app_with_exclusive_loop(same_user_attacker: Attacker) -> None:
    port = free_port()
    with ServerProcess([PY, "aiohttp_app.py", "--run-app", "--port", str(port)]) as server:
        server.wait_for(r"Running on http://127\.0\.0\.1:")
        assert_serves_exclusively(same_user_attacker, "127.0.0.1", port)


def test_tcpsite_inside_aioexclusive_run() -> None:
    from aiohttp import ClientSession

    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=type(asyncio.get_running_loop()).__name__)

    async def main() -> str:
        app = web.Application()
        app.router.add_get("/", hello)
        runner = web.AppRunner(app)
        await runner.setup()
        try:
            with pytest.raises(ExclusivityError, match="reuse_port"):
                await web.TCPSite(runner, "127.0.0.1", 0, reuse_port=True).start()
            await web.TCPSite(runner, "127.0.0.1", 0).start()
            host, port = runner.addresses[0][:2]
            async with ClientSession() as session, session.get(f"http://{host}:{port}/") as response:
                return await response.text()
        finally:
            await runner.cleanup()

    assert aioexclusive.run(main()).startswith("Exclusive")


def test_contrib_run_app_rejects_a_plain_loop() -> None:
    from aioexclusive.contrib.aiohttp import run_app

    plain = asyncio.new_event_loop()
    try:
        with pytest.raises(TypeError, match="exclusive loop"):
            run_app(web.Application(), loop=plain)
    finally:
        plain.close()
    made = aioexclusive.new_event_loop()
    try:
        with pytest.raises(TypeError, match="not both"):
            run_app(web.Application(), loop=made, base="asyncio")
    finally:
        made.close()


def test_contrib_run_app_refuses_a_live_unix_path(sock_path: str, no_fd_leak: None) -> None:
    from aioexclusive.contrib.aiohttp import run_app

    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock_path)
        live.listen(4)
        with pytest.raises(AddressInUseError) as info:
            run_app(web.Application(), path=sock_path)
        assert sock_path in str(info.value)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(sock_path)


def test_contrib_run_app_serves_a_unix_path(sock_path: str) -> None:
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(sock_path)  # a stale leftover, to be replaced
    code = (
        f"import sys; sys.path.insert(0, {EXAMPLES!r})\n"
        "from aiohttp_app import make_app\n"
        "from aioexclusive.contrib.aiohttp import run_app\n"
        f"run_app(make_app(), path={sock_path!r}, print=lambda m: print(m, flush=True))\n"
    )
    with ServerProcess([PY, "-c", code]) as server:
        server.wait_for("Running on")
        status, body = http_get_unix(sock_path)
        assert status == 200
        assert_exclusive_answer(body)
    assert server.proc.returncode == 0, server.output


def test_contrib_run_app_failed_start_removes_its_own_earlier_path(sock_path: str, no_fd_leak: None) -> None:
    """run_app(path=[a, b]) with a live server (another process) at b: b is refused, and a must not stay behind."""
    from aioexclusive.contrib.aiohttp import run_app

    first = sock_path + ".a"
    with LiveUnixServer(sock_path) as live:
        with pytest.raises(AddressInUseError):
            run_app(web.Application(), path=[first, sock_path])
        assert not os.path.exists(first), "the failed start left its own socket file behind"
        assert live.answers()
