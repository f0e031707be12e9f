"""gunicorn -w 2 --reuse-port under AIOEXCLUSIVE_GUARD: every worker still serves, nobody else can join.

With --reuse-port, gunicorn (22+) binds one SO_REUSEPORT socket in each
worker. enforce would strip the option and leave one worker serving (the
others fail to bind); the guard's post-import hook switches gunicorn to its
default mode instead: the arbiter binds one exclusive socket that every
worker inherits.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="gunicorn is POSIX-only")
gunicorn_config = pytest.importorskip("gunicorn.config")

from ix_support import (  # noqa: E402
    HERE,
    PY,
    ServerProcess,
    assert_attacker_cannot_listen,
    attacker_steals,
    free_port,
    http_get,
)

WORKERS = 2
NOTICE = "gunicorn's --reuse-port"


def gunicorn(port: int) -> ServerProcess:
    args = [PY, "-m", "gunicorn", "-w", str(WORKERS), "--reuse-port", "-b", f"127.0.0.1:{port}"]
    if any(getattr(setting, "name", None) == "no_control_socket" for setting in gunicorn_config.KNOWN_SETTINGS):
        args.append("--no-control-socket")  # gunicorn 24+: one control socket path per user otherwise
    return ServerProcess([*args, "ix_wsgi_app:app"], cwd=HERE)


def every_worker_answers(server: ServerProcess, port: int) -> None:
    pids = {int(server.wait_for(r"Booting worker with pid: (\d+)", count=n).group(1)) for n in range(1, WORKERS + 1)}
    seen: set[int] = set()
    for _ in range(400):  # which worker accepts is the kernel's choice: ask until each has answered
        try:
            status, body = http_get("127.0.0.1", port)
        except ConnectionRefusedError:
            # "Booting worker" is printed before the worker's own --reuse-port socket listens
            # (refused once in a CI rehearsal under load): ask again.
            time.sleep(0.05)
            continue
        assert status == 200
        seen.add(body["pid"])
        if seen == pids:
            return
    raise AssertionError(f"answered by {seen}, workers {pids}:\n{server.output}")


def end(server: ServerProcess) -> None:
    try:
        os.killpg(server.proc.pid, signal.SIGKILL)  # the arbiter's session: the arbiter and every worker
    except ProcessLookupError:
        pass
    server.stop()


@pytest.mark.parametrize("mode", ["enforce", "raise"])
def test_guard_serves_reuse_port_workers_from_one_exclusive_socket(
    guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker, mode: str
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    port = free_port()
    server = gunicorn(port)
    try:
        every_worker_answers(server, port)
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        every_worker_answers(server, port)
        assert server.output.count(NOTICE) == 1, server.output
    finally:
        end(server)


def test_guard_keeps_reuse_port_when_allowed(guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "enforce")
    port = free_port()
    guard_env.setenv("AIOEXCLUSIVE_GUARD_ALLOW", f"127.0.0.1:{port}")
    server = gunicorn(port)
    try:
        every_worker_answers(server, port)
        assert NOTICE not in server.output
    finally:
        end(server)


def test_control_reuse_port_unguarded_is_joined(guard_env: pytest.MonkeyPatch, same_user_attacker: Attacker) -> None:
    port = free_port()
    server = gunicorn(port)
    try:
        every_worker_answers(server, port)
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0
    finally:
        end(server)
