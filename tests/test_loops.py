"""The exclusive loops through every entry point: options set, refusals, errors, cleanup."""

from __future__ import annotations

import asyncio
import errno
import socket
import sys
import warnings
from typing import Any

import pytest
from harness import HAVE_IPV6, HAVE_UVLOOP, needs_ipv6, run, run_plain
from services import open_service

import aioexclusive
from aioexclusive import AddressInUseError, ExclusivityError
from aioexclusive._errors import InvalidPortError

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX option values; Windows: tests/test_windows.py")

SOL = socket.SOL_SOCKET


def opts(sock: Any) -> tuple[int, int]:
    return sock.getsockopt(SOL, socket.SO_REUSEADDR), sock.getsockopt(SOL, socket.SO_REUSEPORT)


async def _echo_once(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"ping")
    await writer.drain()
    data = await reader.read(4)
    writer.close()
    await writer.wait_closed()
    return data


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.write(await reader.read(4))
    await writer.drain()
    writer.close()


# -- entry points ------------------------------------------------------------------------------


async def _probe_loop() -> str:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, aioexclusive.ExclusiveLoopMixin)
    server = await asyncio.start_server(_echo, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        assert opts(server.sockets[0]) == (1, 0)
        assert await _echo_once("127.0.0.1", port) == b"ping"
        with pytest.raises(ExclusivityError):
            await asyncio.start_server(_echo, "127.0.0.1", 0, reuse_port=True)
    return type(loop).__name__


def test_run(base: str) -> None:
    assert run(_probe_loop(), base).startswith("Exclusive")


def test_new_event_loop_without_arguments_is_a_loop_factory() -> None:
    loop = aioexclusive.new_event_loop()
    try:
        assert isinstance(loop, asyncio.SelectorEventLoop)
        assert loop.run_until_complete(_probe_loop()) == "ExclusiveUnixSelectorEventLoop"
    finally:
        loop.close()


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.Runner is new in 3.11")
def test_runner_with_loop_factory() -> None:
    with asyncio.Runner(loop_factory=aioexclusive.new_event_loop) as runner:  # type: ignore[attr-defined]
        runner.run(_probe_loop())


@pytest.mark.skipif(sys.version_info < (3, 12), reason="asyncio.run(loop_factory=) is new in 3.12")
def test_asyncio_run_with_loop_factory() -> None:
    asyncio.run(_probe_loop(), loop_factory=aioexclusive.new_event_loop)  # type: ignore[call-arg]


def test_policy(base: str) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # 3.14 deprecates policies
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(aioexclusive.ExclusiveEventLoopPolicy(base))
        try:
            assert asyncio.run(_probe_loop()).startswith("Exclusive")
        finally:
            asyncio.set_event_loop_policy(old)


def test_policy_passes_options() -> None:
    async def main() -> bool:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0, reuse_port=True)
        server.close()
        return bool(opts(server.sockets[0])[1]) if server.sockets else True

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = asyncio.get_event_loop_policy()
        asyncio.set_event_loop_policy(aioexclusive.ExclusiveEventLoopPolicy(allow_reuse_port=True))
        try:
            assert asyncio.run(main())
        finally:
            asyncio.set_event_loop_policy(old)


def test_run_310_path_works_everywhere() -> None:
    # aioexclusive.run on 3.10 has its own runner; exercise it on every version.
    from aioexclusive._entry import _run_310

    assert _run_310(_probe_loop(), aioexclusive.new_event_loop, debug=True).startswith("Exclusive")
    with pytest.raises(ValueError, match="coroutine was expected"):
        _run_310(42, aioexclusive.new_event_loop, None)  # type: ignore[arg-type]


def test_run_refuses_nesting() -> None:
    async def nested() -> None:
        coro = _probe_loop()
        try:
            aioexclusive.run(coro)
        finally:
            coro.close()

    with pytest.raises(RuntimeError, match="running event loop"):
        aioexclusive.run(nested())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"base": "tornado"}, ValueError, "base must be one of"),
        ({"base": 42}, TypeError, "base must be a loop class"),
        ({"base": dict}, TypeError, "base must be a loop class"),
        ({"allow_reuseport": True}, TypeError, "unexpected keyword argument 'allow_reuseport'"),
        ({"strict": "yes"}, TypeError, "must be True or False"),
    ],
)
def test_new_event_loop_bad_arguments(kwargs: dict[str, Any], error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        aioexclusive.new_event_loop(**kwargs)


def test_base_class_and_names() -> None:
    for base in ("asyncio", "selector", asyncio.SelectorEventLoop):
        loop = aioexclusive.new_event_loop(base)
        assert isinstance(loop, asyncio.SelectorEventLoop)
        loop.close()
    with pytest.raises(ValueError, match="does not exist"):
        aioexclusive.new_event_loop("proactor")
    # Same class every time: isinstance checks and pickling stay stable.
    cls = aioexclusive.lowlevel.exclusive_loop_class(asyncio.SelectorEventLoop)
    assert aioexclusive.lowlevel.exclusive_loop_class(asyncio.SelectorEventLoop) is cls
    assert aioexclusive.lowlevel.exclusive_loop_class(cls) is cls


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_base() -> None:
    import uvloop

    loop = aioexclusive.new_event_loop("uvloop")
    try:
        assert isinstance(loop, uvloop.Loop)
    finally:
        loop.close()


# -- the options on the sockets ----------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6), None])
def test_server_socket_options(base: str, host: str | None) -> None:
    async def main() -> list[tuple[int, int, int]]:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, host, 0)
        async with server:
            found = []
            for sock in server.sockets:
                v6only = (
                    sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) if sock.family == socket.AF_INET6 else 1
                )
                found.append((*opts(sock), v6only))
            return found

    found = run(main(), base)
    assert found and all(f == (1, 0, 1) for f in found), found
    if host is None and HAVE_IPV6:
        assert len(found) == 2  # 0.0.0.0 and ::, one socket each, as asyncio does


def test_reuse_address_false_is_honoured(base: str) -> None:
    async def main() -> tuple[int, int]:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_address=False)
        async with server:
            return opts(server.sockets[0])

    assert run(main(), base) == (0, 0)


@pytest.mark.parametrize("local", [("127.0.0.1", 0), pytest.param(("::1", 0), marks=needs_ipv6)])
def test_datagram_socket_options(base: str, local: tuple[str, int]) -> None:
    async def main() -> tuple[int, int]:
        service = await open_service("udp", local[0])
        try:
            return opts(service.sockets[0])
        finally:
            await service.close()

    assert run(main(), base) == (0, 0)


def test_datagram_remote_only_and_connected(base: str) -> None:
    async def main() -> tuple[tuple[int, int], tuple[int, int], bytes]:
        loop = asyncio.get_running_loop()
        received: asyncio.Future[bytes] = loop.create_future()

        class Sink(asyncio.DatagramProtocol):
            def datagram_received(self, data: bytes, addr: Any) -> None:
                received.set_result(data)

        server, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        client, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, remote_addr=("127.0.0.1", port))
        client.sendto(b"hello")
        data = await asyncio.wait_for(received, 5)
        result = opts(server.get_extra_info("socket")), opts(client.get_extra_info("socket")), data
        client.close()
        server.close()
        await asyncio.sleep(0)
        return result

    assert run(main(), base) == ((0, 0), (0, 0), b"hello")


def test_fixed_port_client(base: str) -> None:
    async def main() -> tuple[int, bytes]:
        server = await asyncio.start_server(_echo, "127.0.0.1", 0)
        async with server:
            port = server.sockets[0].getsockname()[1]
            probe = socket.socket()
            probe.bind(("127.0.0.1", 0))
            local_port = probe.getsockname()[1]
            probe.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", local_port))
            sock = writer.get_extra_info("socket")
            reuseport = sock.getsockopt(SOL, socket.SO_REUSEPORT)
            assert writer.get_extra_info("sockname")[1] == local_port
            writer.write(b"ping")
            data = await reader.read(4)
            writer.close()
            await writer.wait_closed()
            return reuseport, data

    assert run(main(), base) == (0, b"ping")


# -- several addresses -------------------------------------------------------------------------


@needs_ipv6
def test_several_hosts_give_one_server_over_several_sockets(base: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: _EchoProtocol(), ["127.0.0.1", "::1"], 0, start_serving=False)
        assert isinstance(server, asyncio.AbstractServer)
        assert [s.family for s in server.sockets] == [socket.AF_INET, socket.AF_INET6]
        assert not server.is_serving()
        await server.start_serving()
        assert server.is_serving()
        assert server.get_loop() is loop
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            assert await _echo_once(host, port) == b"ping"
        task = asyncio.ensure_future(server.serve_forever())
        await asyncio.sleep(0.05)
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        await server.wait_closed()

    run(main(), base)


class _EchoProtocol(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)
        self.transport.close()


@needs_ipv6
def test_a_name_with_several_addresses_binds_each(base: str) -> None:
    """A host name resolving to IPv4 and IPv6 gives a socket per address (resolver patched: no DNS here)."""

    async def main() -> list[str]:
        loop = asyncio.get_running_loop()
        real = loop.getaddrinfo

        async def fake_getaddrinfo(host: Any, port: Any, **kw: Any) -> Any:
            assert host == "service.test"
            four = await real("127.0.0.1", port, **kw)
            six = await real("::1", port, **kw)
            return four + six

        loop.getaddrinfo = fake_getaddrinfo  # type: ignore[method-assign]
        server = await loop.create_server(asyncio.Protocol, "service.test", 0)
        async with server:
            return sorted(s.getsockname()[0] for s in server.sockets)

    assert run(main(), base) == ["127.0.0.1", "::1"]


@needs_ipv6
def test_partial_failure_closes_everything(base: str, no_fd_leak: None) -> None:
    """The second address is taken: AddressInUseError, and the first socket is closed too."""
    blocker = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(AddressInUseError) as info:
            await loop.create_server(asyncio.Protocol, ["::1", "127.0.0.1"], port)
        assert info.value.errno == errno.EADDRINUSE
        # ::1 was bound first and must be free again.
        server = await loop.create_server(asyncio.Protocol, "::1", port)
        server.close()
        await server.wait_closed()

    try:
        run(main(), base)
    finally:
        blocker.close()


# -- refusals and errors -----------------------------------------------------------------------


def test_reuse_port_refused_and_allowed(base: str) -> None:
    async def refused() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ExclusivityError, match="allow_reuse_port=True"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        with pytest.raises(ExclusivityError, match="allow_reuse_port=True"):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0), reuse_port=True)

    async def allowed() -> tuple[tuple[int, int], tuple[int, int]]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0), reuse_port=True)
        result = opts(server.sockets[0]), opts(transport.get_extra_info("socket"))
        transport.close()
        server.close()
        await server.wait_closed()
        return result

    run(refused(), base)
    assert run(allowed(), base, allow_reuse_port=True) == ((1, 1), (0, 1))


def test_datagram_reuse_address(base: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # asyncio dropped the argument in 3.11 (a TypeError, as there); uvloop still takes it.
        if base == "asyncio" and sys.version_info >= (3, 11):
            with pytest.raises(TypeError, match="reuse_address"):
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0), reuse_address=True)
        else:
            with pytest.raises(ExclusivityError, match="multicast=True"):
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0), reuse_address=True)

    run(main(), base)


@pytest.mark.parametrize(
    ("kind", "option"),
    [
        # getattr: this module is collected (then skipped) on Windows, which has no SO_REUSEPORT.
        (socket.SOCK_STREAM, getattr(socket, "SO_REUSEPORT", -1)),
        (socket.SOCK_DGRAM, getattr(socket, "SO_REUSEPORT", -1)),
        (socket.SOCK_DGRAM, socket.SO_REUSEADDR),
    ],
)
def test_shareable_sock_is_refused(base: str, kind: int, option: int, no_fd_leak: None) -> None:
    sock = socket.socket(socket.AF_INET, kind)
    sock.setsockopt(SOL, option, 1)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ExclusivityError, match="bind_socket") as info:
            if kind == socket.SOCK_STREAM:
                await loop.create_server(asyncio.Protocol, sock=sock)
            else:
                await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
        assert "sock=" in str(info.value)

    try:
        run(main(), base)
        assert sock.fileno() != -1  # still the caller's to close
    finally:
        sock.close()


def test_clean_sock_is_accepted(base: str) -> None:
    async def main() -> tuple[int, int]:
        if base == "uvloop":
            # A bound one is refused there (uv_udp_open would share it); an
            # unbound one is adopted, and the option libuv set is off again.
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        else:
            sock = aioexclusive.bind_socket(("127.0.0.1", 0), type=socket.SOCK_DGRAM)
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
        result = opts(transport.get_extra_info("socket"))
        transport.close()
        await asyncio.sleep(0)
        return result

    assert run(main(), base) == (0, 0)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_address_in_use(base: str, proto: str) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    holder = socket.socket(socket.AF_INET, kind)
    holder.bind(("127.0.0.1", 0))
    if proto == "tcp":
        holder.listen()
    port = holder.getsockname()[1]

    async def main() -> None:
        with pytest.raises(AddressInUseError) as info:
            await open_service(proto, "127.0.0.1", port)
        err = info.value
        assert isinstance(err, OSError)
        assert err.errno == errno.EADDRINUSE
        assert isinstance(err.__cause__, OSError)
        assert (err.protocol, err.address, err.port) == (proto.upper(), "127.0.0.1", port)
        assert f"{proto.upper()} address 127.0.0.1 port {port} is already in use" in str(err)

    try:
        run(main(), base)
    finally:
        holder.close()


def test_listen_follows_bind_at_once(base: str) -> None:
    """Two SO_REUSEADDR sockets can both be bound until one listens: ours listens first."""
    rival = socket.socket()
    rival.setsockopt(SOL, socket.SO_REUSEADDR, 1)
    rival.bind(("127.0.0.1", 0))
    port = rival.getsockname()[1]

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            asyncio.Protocol, "127.0.0.1", port, start_serving=False
        )
        try:
            with pytest.raises(OSError) as info:
                rival.listen()
            assert info.value.errno == errno.EADDRINUSE
        finally:
            server.close()
            await server.wait_closed()

    try:
        run(main(), base)
    finally:
        rival.close()


def test_closed_loop(base: str, no_fd_leak: None) -> None:
    loop = aioexclusive.new_event_loop(base)
    loop.close()

    async def main() -> None:
        with pytest.raises(RuntimeError, match="closed"):
            await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        with pytest.raises(RuntimeError, match="closed"):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0))

    asyncio.run(main())


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"host": "127.0.0.1", "port": 70000}, InvalidPortError, "port must be 0-65535"),
        ({"host": "127.0.0.1", "port": -1}, OverflowError, "port must be 0-65535"),
        # What the base loop itself does with these (issue 13): compared with a plain loop.
        ({"host": "127.0.0.1", "port": 1.5}, None, "same as the base loop"),
        ({"host": 5, "port": 0}, None, "same as the base loop"),
        ({"host": b"127.0.0.1", "port": 0}, None, "same as the base loop"),
        ({"host": ["127.0.0.1", 5], "port": 0}, None, "same as the base loop"),
        ({"host": [], "port": 0}, None, "same as the base loop"),
        ({"host": "127.0.0.1", "port": 0, "sock": "x"}, ValueError, "host/port and sock"),
        ({"host": "127.0.0.1", "port": 0, "ssl": True}, TypeError, "SSLContext"),
        ({"host": "127.0.0.1", "port": 0, "ssl_handshake_timeout": 1}, ValueError, "only meaningful with ssl"),
        ({"host": "999.1.1.1", "port": 0}, OSError, None),  # not numeric: the (patched-out) resolver says no
    ],
)
def test_create_server_bad_arguments(base: str, kwargs: dict[str, Any], error: type | None, match: str | None) -> None:
    async def no_dns(*args: Any, **kw: Any) -> Any:
        raise socket.gaierror(socket.EAI_NONAME, "no DNS in tests")

    async def main() -> None:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = no_dns  # type: ignore[method-assign]
        with pytest.raises(error, match=match):  # type: ignore[arg-type]
            await loop.create_server(asyncio.Protocol, **kwargs)

    async def outcome() -> Any:
        loop = asyncio.get_running_loop()
        loop.getaddrinfo = no_dns  # type: ignore[method-assign]
        try:
            server = await loop.create_server(asyncio.Protocol, **kwargs)
        except Exception as exc:
            return type(exc), str(exc)
        kinds = sorted((s.family, s.getsockname()[0]) for s in server.sockets)
        server.close()
        await server.wait_closed()
        return kinds

    if error is None:
        assert run(outcome(), base) == run_plain(outcome(), base)
    else:
        run(main(), base)


def test_version_specific_keywords_mirror_the_running_python(base: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        # Untyped: asyncio's signature has these from a later Python on (mypy checks as 3.10).
        keep_alive: Any = {"keep_alive": True}
        ssl_shutdown_timeout: Any = {"ssl_shutdown_timeout": 1}
        if sys.version_info < (3, 13):
            with pytest.raises(TypeError, match="keep_alive"):
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, **keep_alive)
        else:
            server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, **keep_alive)
            assert server.sockets[0].getsockopt(SOL, socket.SO_KEEPALIVE)
            server.close()
            await server.wait_closed()
        if sys.version_info < (3, 11):
            with pytest.raises(TypeError, match="ssl_shutdown_timeout"):
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, **ssl_shutdown_timeout)
        else:
            with pytest.raises(ValueError, match="only meaningful with ssl"):
                await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, **ssl_shutdown_timeout)

    run(main(), base)


@pytest.mark.parametrize(
    ("args", "kwargs", "error"),
    [
        ((("127.0.0.1", 70000),), {}, OverflowError),
        (("127.0.0.1",), {}, "not a 2-tuple"),
        ((("127.0.0.1", 0, 0),), {}, "not a 2-tuple"),
        ((), {}, ValueError),  # neither address nor family
        ((), {"family": socket.AF_INET, "sock": None}, None),
    ],
)
def test_datagram_bad_arguments(base: str, args: tuple[Any, ...], kwargs: dict[str, Any], error: Any) -> None:
    if error == "not a 2-tuple":
        # What the base loop raises: asyncio asserted before 3.11; uvloop raises TypeError.
        error = AssertionError if base == "asyncio" and sys.version_info < (3, 11) else TypeError

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if error is None:
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, *args, **kwargs)
            transport.close()
            await asyncio.sleep(0)
            return
        with pytest.raises(error):
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, *args, **kwargs)

    run(main(), base)


# -- restart ---------------------------------------------------------------------------------


def test_restart_with_live_connections(base: str) -> None:
    """Close a server whose connections are still open and rebind its port at once, 50 times."""

    async def main() -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_EchoProtocol, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        restarts = 0
        for _ in range(50):
            clients = []
            for _ in range(3):
                _, writer = await asyncio.open_connection("127.0.0.1", port)
                clients.append(writer)
            await asyncio.sleep(0)
            server.close()  # the accepted connections stay open
            server = await loop.create_server(_EchoProtocol, "127.0.0.1", port)
            restarts += 1
            for writer in clients:
                writer.close()
        server.close()
        await server.wait_closed()
        return restarts

    assert run(main(), base) == 50


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_udp_socket_is_never_shareable_while_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    """uv_udp_open sets SO_REUSEADDR on what it adopts; the exclusive loop binds only after clearing it."""
    from aioexclusive import _binding, _datagram

    events: list[tuple[str, Any]] = []
    # The real functions (from _binding); the spies go where _datagram looks them up.
    real_clear, real_bind = _binding.clear_forbidden_options, _binding.bind_now

    def spy_clear(sock: Any, plan: Any) -> list[str]:
        cleared = real_clear(sock, plan)
        events.append(("cleared", (cleared, sock.getsockname()[1])))
        return cleared

    def spy_bind(sock: Any, sockaddr: Any, role: Any, **kw: Any) -> None:
        events.append(("bind with", opts(sock)))
        real_bind(sock, sockaddr, role, **kw)

    monkeypatch.setattr(_datagram, "clear_forbidden_options", spy_clear)
    monkeypatch.setattr(_datagram, "bind_now", spy_bind)

    class Probe(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            events.append(("connection_made", (opts(sock), sock.getsockname()[1] != 0)))

    async def main() -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(Probe, ("127.0.0.1", 0))
        events.append(("finished", opts(transport.get_extra_info("socket"))))
        transport.close()
        await asyncio.sleep(0)

    run(main(), "uvloop")
    assert events == [
        ("cleared", (["SO_REUSEADDR"], 0)),  # uvloop turned it on, on a socket not bound yet (port 0)
        ("bind with", (0, 0)),
        ("connection_made", ((0, 0), True)),
        ("finished", (0, 0)),
    ]


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_callers_udp_sock_is_cleaned_before_its_protocol_exists() -> None:
    seen: list[tuple[int, int]] = []
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # unbound: a bound one is refused on uvloop

    def factory() -> asyncio.DatagramProtocol:
        seen.append(opts(sock))
        return asyncio.DatagramProtocol()

    async def main() -> None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(factory, sock=sock)
        transport.close()
        await asyncio.sleep(0)

    run(main(), "uvloop")
    assert seen == [(0, 0)]


@needs_ipv6
@pytest.mark.parametrize("start_serving", [True, False])
def test_several_addresses_on_asyncio_give_asyncios_own_server(start_serving: bool) -> None:
    """As asyncio's create_server: one Server over every address, serving each, closed as one."""

    async def main() -> tuple[str, int, list[bool], bool]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, ["127.0.0.1", "::1"], 0, start_serving=start_serving)
        ports = {sock.getsockname()[1] for sock in server.sockets}
        if not start_serving:
            await server.start_serving()
        answered = []
        for sock in server.sockets:
            host, port = sock.getsockname()[:2]
            _, writer = await asyncio.open_connection(host, port)
            answered.append(True)
            writer.close()
        server.close()
        await server.wait_closed()
        return type(server).__name__, len(ports), answered, all(sock.fileno() == -1 for sock in server.sockets)

    plain = run_plain(main(), "asyncio")
    exclusive = run(main(), "asyncio")
    assert plain[0] == exclusive[0] == "Server"
    assert exclusive[1] == 1  # port 0: one port for both families (documented)
    assert exclusive[2] == [True, True]
