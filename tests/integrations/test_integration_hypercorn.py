"""hypercorn: aioexclusive.contrib.hypercorn.ExclusiveConfig against plain Config, with real attackers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from attacker import Attacker

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX servers signalled with SIGINT; forked attacker")
pytest.importorskip("hypercorn.config")

import hypercorn.config as hypercorn_config  # noqa: E402
from ix_support import (  # noqa: E402
    HAVE_IPV6,
    HAVE_UVLOOP,
    HERE,
    LOOPBACK_HOSTS,
    PY,
    LiveUnixServer,
    ServerProcess,
    assert_attacker_cannot_bind_udp,
    assert_attacker_cannot_listen,
    assert_serves_exclusively,
    attacker_steals,
    http_get,
    sharing_options,
)

from aioexclusive import AddressInUseError, ExclusivityError  # noqa: E402
from aioexclusive.contrib.hypercorn import ExclusiveConfig  # noqa: E402

RUNNING = r"Running on http://\[?([0-9a-f.:]+?)\]?:(\d+) "


def _bind(host: str, port: int = 0) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@pytest.mark.parametrize("host", ["127.0.0.1", "0.0.0.0"])  # 0.0.0.0: a held wildcard listener, pickled for the workers
def test_run_with_two_workers_is_exclusive(same_user_attacker: Attacker, host: str) -> None:
    args = [PY, "hypercorn_app.py", "--bind", f"{host}:0", "--workers", "2"]
    with ServerProcess(args) as server:
        port = int(server.wait_for(RUNNING, count=2).group(2))
        assert http_get("127.0.0.1", port)[0] == 200
        assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        assert http_get("127.0.0.1", port)[0] == 200


def test_control_plain_config_two_workers_is_hijacked(same_user_attacker: Attacker) -> None:
    args = [PY, os.path.join(HERE, "ix_hypercorn_plain.py"), "127.0.0.1:0"]
    with ServerProcess(args) as server:
        port = int(server.wait_for(RUNNING, count=2).group(2))
        assert http_get("127.0.0.1", port)[0] == 200
        stolen = attacker_steals(same_user_attacker, "127.0.0.1", port)
        assert stolen > 0, f"the control must show a hijack (attacker got {stolen})"


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_serve_in_aioexclusive_run(host: str, same_user_attacker: Attacker) -> None:
    with ServerProcess([PY, "hypercorn_app.py", "--bind", _bind(host)]) as server:
        port = int(server.wait_for(RUNNING).group(2))
        assert_serves_exclusively(same_user_attacker, host, port)


def _close(sockets: hypercorn_config.Sockets) -> None:
    for sock in (*sockets.secure_sockets, *sockets.insecure_sockets, *sockets.quic_sockets):
        sock.close()


@pytest.mark.parametrize("exclusive", [True, False], ids=["exclusive", "plain-control"])
def test_workers_tcp_socket_options(exclusive: bool, same_user_attacker: Attacker) -> None:
    config = ExclusiveConfig() if exclusive else hypercorn_config.Config()
    config.bind = ["127.0.0.1:0"]
    config.workers = 2
    sockets = config.create_sockets()
    try:
        (sock,) = sockets.insecure_sockets
        if not exclusive:
            sock.listen(100)  # what each worker does
        assert sharing_options(sock)[1] == (0 if exclusive else 1)
        port = sock.getsockname()[1]
        if exclusive:
            assert_attacker_cannot_listen(same_user_attacker, "127.0.0.1", port)
        else:
            assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0
    finally:
        _close(sockets)


def _quic_config(cls: type[hypercorn_config.Config]) -> hypercorn_config.Config:
    config = cls()
    # ssl_enabled only checks that both are set; create_sockets never reads them.
    config.certfile, config.keyfile = "cert.pem", "key.pem"
    config.bind = ["127.0.0.1:0"]
    config.quic_bind = ["127.0.0.1:0"]
    return config


def test_quic_sockets_are_not_shareable(same_user_attacker: Attacker) -> None:
    sockets = _quic_config(ExclusiveConfig).create_sockets()
    try:
        (quic,) = sockets.quic_sockets
        assert quic.type == socket.SOCK_DGRAM
        assert sharing_options(quic) == (0, 0)
        assert_attacker_cannot_bind_udp(same_user_attacker, "127.0.0.1", quic.getsockname()[1])
    finally:
        _close(sockets)


def test_control_plain_quic_socket_is_joined(same_user_attacker: Attacker) -> None:
    from importlib.metadata import version

    if tuple(int(part) for part in version("hypercorn").split(".")[:2]) < (0, 18):
        pytest.skip("hypercorn < 0.18 sets TCP_NODELAY on UDP sockets, so it cannot make QUIC sockets at all")
    sockets = _quic_config(hypercorn_config.Config).create_sockets()
    try:
        (quic,) = sockets.quic_sockets
        result = same_user_attacker.try_bind("udp", 4, "127.0.0.1", quic.getsockname()[1], ("SO_REUSEADDR",))
        same_user_attacker.collect(wait=0)
        assert result.ok, "plain hypercorn's QUIC socket has SO_REUSEADDR: the control must be joinable"
    finally:
        _close(sockets)


def test_quic_refused_for_plain_uvloop_workers(no_fd_leak: None) -> None:
    config = _quic_config(ExclusiveConfig)
    config.worker_class = "uvloop"
    with pytest.raises(ExclusivityError, match="uvloop"):
        config.create_sockets()


def test_all_or_nothing(no_fd_leak: None) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        config = ExclusiveConfig()
        config.bind = ["127.0.0.1:0", f"127.0.0.1:{taken.getsockname()[1]}"]
        with pytest.raises(AddressInUseError):
            config.create_sockets()


def test_unix_live_server_refused_stale_replaced(sock_path: str) -> None:
    config = ExclusiveConfig()
    config.bind = [f"unix:{sock_path}"]
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock_path)
        live.listen(4)
        with pytest.raises(AddressInUseError) as info:
            config.create_sockets()
        assert sock_path in str(info.value)
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(sock_path)  # still the live server's file
            live.accept()[0].close()
    # `live` is closed now and its file is left behind: stale, so replaced.
    sockets = config.create_sockets()
    try:
        (sock,) = sockets.insecure_sockets
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(sock_path)
    finally:
        _close(sockets)


def test_control_plain_config_unlinks_a_live_server(sock_path: str) -> None:
    config = hypercorn_config.Config()
    config.bind = [f"unix:{sock_path}"]
    with socket.socket(socket.AF_UNIX) as live:
        live.bind(sock_path)
        live.listen(4)
        sockets = config.create_sockets()
        try:
            (taker,) = sockets.insecure_sockets
            taker.listen(4)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(sock_path)
                taker.setblocking(True)
                taker.accept()[0].close()  # the newcomer got the connection
        finally:
            _close(sockets)


def test_fd_socket_is_audited(no_fd_leak: None) -> None:
    shared = socket.socket()
    try:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        shared.bind(("127.0.0.1", 0))
        shared.listen(4)
        config = ExclusiveConfig()
        config.bind = [f"fd://{shared.fileno()}"]
        with pytest.raises(ExclusivityError, match="SO_REUSEPORT"):
            config.create_sockets()
        assert shared.getsockname()[1] > 0  # the caller's socket is still open
    finally:
        shared.close()


# -- a failed start leaves no socket file of its own (issue 14.11) -------------------


def test_failed_unix_start_removes_its_own_earlier_file(sock_path: str, no_fd_leak: None) -> None:
    first = sock_path + ".a"
    with LiveUnixServer(sock_path) as live:
        config = ExclusiveConfig()
        config.bind = [f"unix:{first}", f"unix:{sock_path}"]
        with pytest.raises(AddressInUseError):
            config.create_sockets()
        assert not os.path.exists(first), "the failed start left its own socket file behind"
        assert live.answers()
    assert not [n for n in os.listdir(os.path.dirname(sock_path)) if n.endswith(".stale")]


# -- "[::]:P" stays dual-stack, exclusively (issue 12.10) -------------------------------


@pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 here")
def test_wildcard_v6_keeps_hypercorns_dual_stack(other_user_attacker: Attacker) -> None:
    plain = hypercorn_config.Config()
    plain.bind = ["[::]:0"]
    theirs = plain.create_sockets()
    try:
        (sock,) = theirs.insecure_sockets
        expected = sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
    finally:
        _close(theirs)
    config = ExclusiveConfig()
    config.bind = ["[::]:0"]
    sockets = config.create_sockets()
    try:
        (sock,) = sockets.insecure_sockets
        port = sock.getsockname()[1]
        assert sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == expected
        assert_attacker_cannot_listen(other_user_attacker, "127.0.0.1", port)
        assert_attacker_cannot_listen(other_user_attacker, "::1", port)
        if expected == 0:
            with socket.create_connection(("127.0.0.1", port), timeout=10):
                sock.setblocking(True)
                sock.settimeout(10)
                sock.accept()[0].close()
    finally:
        _close(sockets)


# -- QUIC and an application that calls uvloop.install() (issue 12.11) -------------------

QUIC_APP = """
import uvloop

uvloop.install()  # what some applications do at import time


async def app(scope, receive, send):
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
"""

QUIC_RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
from hypercorn.run import run
from aioexclusive.contrib.hypercorn import ExclusiveConfig

config = ExclusiveConfig()
config.application_path = "quic_app:app"
config.bind = ["127.0.0.1:0"]
config.quic_bind = ["127.0.0.1:0"]
config.certfile, config.keyfile = sys.argv[2], sys.argv[3]
config.worker_class = "asyncio"  # the setting says asyncio; the loop will be uvloop
config.workers = 0
config.accesslog = config.errorlog = "-"
run(config)
"""


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    import shutil
    import subprocess

    if shutil.which("openssl") is None:
        pytest.skip("needs the openssl command for a test certificate")
    where = tmp_path_factory.mktemp("tls")
    cert, key = str(where / "cert.pem"), str(where / "key.pem")
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            key,
            "-out",
            cert,
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_quic_refused_when_the_app_installs_uvloop(
    tls_files: tuple[str, str], tmp_path: Path, other_user_attacker: Attacker
) -> None:
    (tmp_path / "quic_app.py").write_text(QUIC_APP)
    (tmp_path / "runner.py").write_text(QUIC_RUNNER)
    with ServerProcess([PY, str(tmp_path / "runner.py"), str(tmp_path), *tls_files]) as server:
        match = None
        try:
            match = server.wait_for(r"Running on https://127\.0\.0\.1:(\d+) \(QUIC\)")
        except AssertionError:
            pass  # exited without serving QUIC: the refusal, checked below
        if match is not None:
            # Serving QUIC on a plain uvloop loop: libuv turned SO_REUSEADDR back on.
            result = other_user_attacker.try_bind("udp", 4, "127.0.0.1", int(match.group(1)), ("SO_REUSEADDR",))
            other_user_attacker.collect(wait=0)
            assert not result.ok, "uid 65534 bound the QUIC port next to hypercorn's socket"
            pytest.fail("QUIC was served on a plain uvloop loop")
        assert server.wait_exit() != 0
    assert "ExclusivityError" in server.output and "uvloop" in server.output, server.output
