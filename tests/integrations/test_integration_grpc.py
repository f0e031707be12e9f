"""grpcio: aioexclusive.contrib.grpc drop-ins, and AIOEXCLUSIVE_GUARD's post-import hook for unmodified programs.

grpcio binds in C with SO_REUSEPORT on by default: neither the loops nor the
guard's audit hook see that bind. Every case starts a real grpc server, attacks
it with a same-user socket (SO_REUSEADDR + SO_REUSEPORT, the only way into a
Linux TCP listener), and makes a real call afterwards.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="grpc's SO_REUSEPORT default and the forked attacker are Linux's"
)
grpc = pytest.importorskip("grpc")

from aioexclusive import AddressInUseError, ExclusivityError  # noqa: E402
from ix_support import (  # noqa: E402
    HERE,
    LOOPBACK_HOSTS,
    PY,
    ServerProcess,
    assert_attacker_cannot_listen,
    attacker_steals,
    free_port,
)

SERVER = os.path.join(HERE, "ix_grpc_server.py")


def target(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def call(host: str, port: int) -> bytes:
    """One real unary gRPC call; the server answers with its pid."""
    with grpc.insecure_channel(target(host, port)) as channel:
        return channel.unary_unary("/ix.Echo/Echo")(b"x", timeout=30)  # type: ignore[no-any-return]


def echo(request: bytes, context: Any) -> bytes:
    return b"pid %d" % os.getpid()


HANDLER = grpc.method_handlers_generic_handler("ix.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(echo)})


@pytest.fixture
def guard_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    """The servers started in the test inherit whatever AIOEXCLUSIVE_GUARD* the test sets."""
    monkeypatch.delenv("AIOEXCLUSIVE_GUARD", raising=False)
    monkeypatch.delenv("AIOEXCLUSIVE_GUARD_ALLOW", raising=False)
    yield monkeypatch


def start(kind: str, host: str, *extra: str) -> ServerProcess:
    return ServerProcess([PY, SERVER, kind, host, *extra], cwd=HERE)


# --- unmodified programs -------------------------------------------------------------------------------


def test_control_plain_grpc_server_is_joined(guard_env: pytest.MonkeyPatch, same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    # Without the guard, grpc's default SO_REUSEPORT lets the attacker in: the harness sees a hijack.
    with start("sync", "127.0.0.1") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        stolen = attacker_steals(same_user_attacker, "127.0.0.1", port)
        assert stolen > 0, "the control must show grpc's default port being shared"


@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
@pytest.mark.parametrize("kind", ["sync", "aio"])
def test_guard_gives_unmodified_grpc_servers_an_exclusive_port(  # type: ignore[no-untyped-def]
    guard_env: pytest.MonkeyPatch, same_user_attacker, mode: str, kind: str
) -> None:
    guard_env.setenv("AIOEXCLUSIVE_GUARD", mode)
    with start(kind, "127.0.0.1") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert call("127.0.0.1", port).startswith(b"pid ")
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


def test_guard_honours_an_allowed_so_reuseport(guard_env: pytest.MonkeyPatch, same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    # grpc's multiprocessing pattern, allowed explicitly: the sharing the user asked for is there.
    guard_env.setenv("AIOEXCLUSIVE_GUARD", "raise")
    guard_env.setenv("AIOEXCLUSIVE_GUARD_ALLOW", "127.0.0.1:*")
    with start("sync", "127.0.0.1", "share") as server:
        port = int(server.wait_for(r"PORT (\d+)").group(1))
        assert call("127.0.0.1", port).startswith(b"pid ")
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0


# --- aioexclusive.contrib.grpc ----------------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACK_HOSTS)
def test_contrib_server_is_exclusive_and_serves(host: str, same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    from aioexclusive.contrib.grpc import server

    srv = server(futures.ThreadPoolExecutor(2), handlers=[HANDLER])
    port = srv.add_insecure_port(target(host, 0))
    srv.start()
    try:
        assert isinstance(srv, grpc.Server)
        assert call(host, port) == b"pid %d" % os.getpid()
        assert_attacker_cannot_listen(same_user_attacker, host, port)
        assert call(host, port) == b"pid %d" % os.getpid()
    finally:
        srv.stop(None)


def test_contrib_aio_server_is_exclusive_and_serves(same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    from aioexclusive.contrib.grpc import aio_server

    async def main() -> None:
        srv = aio_server(handlers=[HANDLER])
        port = srv.add_insecure_port("127.0.0.1:0")
        await srv.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                assert await channel.unary_unary("/ix.Echo/Echo")(b"x", timeout=30) == b"pid %d" % os.getpid()
                await asyncio.get_running_loop().run_in_executor(
                    None, assert_attacker_cannot_listen, same_user_attacker, "127.0.0.1", port
                )
                assert await channel.unary_unary("/ix.Echo/Echo")(b"x", timeout=30) == b"pid %d" % os.getpid()
        finally:
            await srv.stop(None)

    asyncio.run(main())


def test_contrib_taken_port_is_address_in_use() -> None:
    from aioexclusive.contrib.grpc import aio_server, server

    holder = server(futures.ThreadPoolExecutor(1))
    port = holder.add_insecure_port("127.0.0.1:0")
    holder.start()
    try:
        with pytest.raises(AddressInUseError) as info:
            server(futures.ThreadPoolExecutor(1)).add_insecure_port(f"127.0.0.1:{port}")
        assert info.value.port == port and info.value.protocol == "TCP"

        async def aio_add() -> None:  # grpc.aio servers are made inside a running loop
            with pytest.raises(AddressInUseError):
                aio_server().add_insecure_port(f"127.0.0.1:{port}")

        asyncio.run(aio_add())
    finally:
        holder.stop(None)


def test_contrib_other_bind_failures_stay_grpcs() -> None:
    # Not "in use": an address nobody here can bind keeps grpc's own report.
    from aioexclusive.contrib.grpc import server

    srv = server(futures.ThreadPoolExecutor(1))
    with pytest.raises(RuntimeError) as info:
        srv.add_insecure_port("192.0.2.1:%d" % free_port())
    assert not isinstance(info.value, OSError)


def test_contrib_refuses_so_reuseport_unless_allowed(same_user_attacker) -> None:  # type: ignore[no-untyped-def]
    from aioexclusive.contrib.grpc import aio_server, server

    with pytest.raises(ExclusivityError, match="allow_reuse_port=True"):
        server(None, options=[("grpc.so_reuseport", 1)])
    with pytest.raises(ExclusivityError, match="allow_reuse_port=True"):
        aio_server(options=(("grpc.so_reuseport", True),))
    # The explicit opt-in is honoured: that is the sharing the caller asked for.
    srv = server(futures.ThreadPoolExecutor(1), handlers=[HANDLER], options=[("grpc.so_reuseport", 1)], allow_reuse_port=True)
    port = srv.add_insecure_port("127.0.0.1:0")
    srv.start()
    try:
        assert attacker_steals(same_user_attacker, "127.0.0.1", port) > 0
    finally:
        srv.stop(None)


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
