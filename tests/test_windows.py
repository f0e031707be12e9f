"""Windows: SO_EXCLUSIVEADDRUSE on the Proactor, Selector and winloop loops.

Most tests here need Windows CPython (``socket.SO_EXCLUSIVEADDRUSE``, WinError
codes) and skip elsewhere. CI runs them under Wine (``bash .ci/wine``), whose
option plumbing is real but whose bind *rules* are Linux-like: it refuses the
takeovers a real Windows kernel allows. So, under Wine:

- the plumbing is asserted for every loop (the option is 1 before bind and
  ``SO_REUSEADDR`` is 0 on every socket the loop made, and they still serve);
- the conflicts Wine and Windows agree on are asserted with their WinError
  codes (10013 WSAEACCES, 10048 WSAEADDRINUSE), and that the loops surface them
  as `AddressInUseError`;
- the takeovers only a real Windows kernel allows (the control cases: a plain
  or ``SO_REUSEADDR`` listener taken over by a later ``SO_REUSEADDR`` bind) are
  ``xfail(strict=True)``: they must fail under Wine and pass on Windows.

The tests at the end (``*_anywhere``) exercise the Windows-only code paths of
`_binding` and `_errors` with stand-ins, so they run on every platform. The
Windows rules themselves (the bind plan) are unit-tested in test_plan.py.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import os
import pickle
import socket
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from harness import HAVE_IPV6, needs_ipv6, run

import aioexclusive
from aioexclusive import AddressInUseError, ExclusivityError, ExclusivityWarning
from aioexclusive._binding import apply_plan, translate_bind_error
from aioexclusive._errors import is_address_in_use
from aioexclusive._plan import Role
from aioexclusive.lowlevel import make_plan

WINDOWS = sys.platform == "win32"
if sys.platform == "win32":
    PROACTOR: type[asyncio.AbstractEventLoop] = asyncio.ProactorEventLoop
else:  # named only by the Windows tests (mypy checks this module as Linux's)
    PROACTOR = asyncio.SelectorEventLoop
WSAEACCES = 10013
WSAEADDRINUSE = 10048


def wine_version() -> str | None:
    """Wine's version when this Windows process runs under Wine, else None (real Windows or not Windows)."""
    if not WINDOWS:
        return None
    # Wine's ntdll exports wine_get_version; Microsoft's does not.
    func = getattr(ctypes.WinDLL("ntdll"), "wine_get_version", None)  # type: ignore[attr-defined]
    if func is None:
        return None
    func.restype = ctypes.c_char_p
    return func().decode()  # type: ignore[no-any-return]


UNDER_WINE = wine_version() is not None

windows_only = pytest.mark.skipif(
    not WINDOWS, reason="needs Windows CPython (SO_EXCLUSIVEADDRUSE, WinError codes); CI runs it under Wine: .ci/wine"
)
needs_windows_kernel = pytest.mark.xfail(
    UNDER_WINE,
    strict=True,
    reason="Wine's bind rules are Linux-like: it refuses the SO_REUSEADDR takeover a real Windows kernel allows",
)

try:
    import winloop  # noqa: F401

    HAVE_WINLOOP = True
except ImportError:
    HAVE_WINLOOP = False

# "asyncio" is the stdlib default, the Proactor loop, on Windows.
BASES = [
    pytest.param("asyncio", id="proactor"),
    pytest.param("selector", id="selector"),
    pytest.param(
        "winloop", id="winloop", marks=pytest.mark.skipif(not HAVE_WINLOOP, reason="winloop is not installed")
    ),
]

REUSE = socket.SO_REUSEADDR
# Windows defines SO_EXCLUSIVEADDRUSE as ~SO_REUSEADDR; the stand-in keeps
# this module importable (and its portable tests runnable) elsewhere.
EXCL: int = getattr(socket, "SO_EXCLUSIVEADDRUSE", ~REUSE)
LOOPBACK = {socket.AF_INET: "127.0.0.1", socket.AF_INET6: "::1"}


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


def sharing(sock: Any) -> tuple[int, int]:
    """(SO_EXCLUSIVEADDRUSE, SO_REUSEADDR) as the socket has them now."""
    return sock.getsockopt(socket.SOL_SOCKET, EXCL), sock.getsockopt(socket.SOL_SOCKET, REUSE)


def holder(kind: int, host: str, port: int = 0, option: int | None = None) -> socket.socket:
    """A socket of another program holding host:port (listening, for TCP)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, kind)
    try:
        if option is not None:
            sock.setsockopt(socket.SOL_SOCKET, option, 1)
        sock.bind((host, port))
        if kind == socket.SOCK_STREAM:
            sock.listen()
    except BaseException:
        sock.close()
        raise
    return sock


def attack(kind: int, host: str, port: int, option: str) -> int | None:
    """A second socket tries host:port with *option* ("none" or a SOL_SOCKET option name).

    Returns None when it got the port (bound, and listening for TCP), else the WinError.
    """
    try:
        holder(kind, host, port, None if option == "none" else getattr(socket, option)).close()
    except OSError as exc:
        return getattr(exc, "winerror", None) or exc.errno
    return None


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port nobody holds right now (for tests that must name the port in advance)."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, kind) as sock:
        sock.setsockopt(socket.SOL_SOCKET, EXCL, 1)
        sock.bind((host, 0))
        return sock.getsockname()[1]  # type: ignore[no-any-return]


class Echo(asyncio.Protocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.transport.write(data)


class DatagramEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.transport.sendto(data, addr)


class DatagramClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.replies: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self.replies.put_nowait(data)


def connect_host(sockname: Any) -> str:
    """Where a client reaches a socket bound to *sockname* (the wildcard becomes loopback)."""
    host = str(sockname[0])
    return {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)


async def tcp_echo(host: str, port: int, payload: bytes = b"ping\n") -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(payload)
        # A guard against a hang, not a timing assertion.
        return await asyncio.wait_for(reader.readline(), 10)
    finally:
        writer.close()
        await writer.wait_closed()


async def udp_echo(host: str, port: int, payload: bytes = b"ping") -> bytes:
    loop = asyncio.get_running_loop()
    transport, client = await loop.create_datagram_endpoint(DatagramClient, remote_addr=(host, port))
    try:
        assert isinstance(client, DatagramClient)
        transport.sendto(payload)
        return await asyncio.wait_for(client.replies.get(), 10)
    finally:
        transport.close()


async def serve_tcp(host: Any, port: int = 0) -> asyncio.Server:
    return await asyncio.get_running_loop().create_server(Echo, host, port)


async def closing(server: asyncio.AbstractServer) -> None:
    server.close()
    await server.wait_closed()


# -- the loops are the ones asked for ---------------------------------------------


@windows_only
def test_bases_are_the_windows_loops() -> None:
    expected: dict[str | None, type] = {
        None: PROACTOR,
        "asyncio": PROACTOR,
        "proactor": PROACTOR,
        "selector": asyncio.SelectorEventLoop,
    }
    if HAVE_WINLOOP:
        expected["winloop"] = winloop.Loop
    for name, cls in expected.items():
        loop = aioexclusive.new_event_loop(name)
        try:
            assert isinstance(loop, cls) and isinstance(loop, aioexclusive.ExclusiveLoopMixin), name
        finally:
            loop.close()


@windows_only
def test_asyncio_run_with_loop_factory_on_the_proactor() -> None:
    async def main() -> tuple[int, int]:
        assert isinstance(asyncio.get_running_loop(), PROACTOR)
        server = await serve_tcp("127.0.0.1")
        try:
            return sharing(server.sockets[0])
        finally:
            await closing(server)

    if sys.version_info < (3, 12):
        pytest.skip("asyncio.run(loop_factory=) is 3.12's")
    assert asyncio.run(main(), loop_factory=aioexclusive.new_event_loop) == (1, 0)


# -- plumbing: every socket the loops make is exclusive, and serves ----------------


@windows_only
@pytest.mark.parametrize("host", ["127.0.0.1", None, pytest.param("::1", marks=needs_ipv6)])
def test_tcp_listener_is_exclusive_and_serves(base: str, host: str | None) -> None:
    async def main() -> None:
        server = await serve_tcp(host)
        try:
            assert server.sockets
            if host is None:  # the wildcard: one socket per family, like asyncio
                families = {sock.family for sock in server.sockets}
                assert socket.AF_INET in families and (socket.AF_INET6 in families or not HAVE_IPV6)
            for sock in server.sockets:
                assert sharing(sock) == (1, 0), sock
                name = sock.getsockname()
                assert await tcp_echo(connect_host(name), name[1], b"hello %d\n" % name[1]) == b"hello %d\n" % name[1]
        finally:
            await closing(server)

    run(main(), base)


@windows_only
def test_start_server_is_exclusive(base: str) -> None:
    async def main() -> None:
        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(await reader.readline())
            await writer.drain()
            writer.close()

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        try:
            (sock,) = server.sockets
            assert sharing(sock) == (1, 0)
            assert await tcp_echo("127.0.0.1", sock.getsockname()[1]) == b"ping\n"
        finally:
            await closing(server)

    run(main(), base)


@windows_only
@pytest.mark.parametrize("host", ["127.0.0.1", pytest.param("::1", marks=needs_ipv6)])
def test_udp_endpoint_is_exclusive_and_serves(base: str, host: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=(host, 0))
        try:
            sock = transport.get_extra_info("socket")
            assert sharing(sock) == (1, 0)
            assert await udp_echo(host, sock.getsockname()[1]) == b"ping"
        finally:
            transport.close()

    run(main(), base)


@windows_only
def test_udp_client_sockets_are_exclusive(base: str) -> None:
    # A UDP client receives replies (DNS answers...) on its port: a later
    # SO_REUSEADDR socket on that port would take them, fixed port or not.
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
        port = server.get_extra_info("sockname")[1]
        try:
            for local in (None, ("127.0.0.1", 0), ("127.0.0.1", free_port(socket.SOCK_DGRAM))):
                transport, client = await loop.create_datagram_endpoint(
                    DatagramClient, local_addr=local, remote_addr=("127.0.0.1", port)
                )
                try:
                    sock = transport.get_extra_info("socket")
                    assert sharing(sock) == (1, 0), local
                    if local is not None and local[1]:
                        assert sock.getsockname()[1] == local[1]
                    transport.sendto(b"reply to me")
                    assert isinstance(client, DatagramClient)
                    assert await asyncio.wait_for(client.replies.get(), 10) == b"reply to me"
                finally:
                    transport.close()
        finally:
            server.close()

    run(main(), base)


@windows_only
def test_fixed_port_client_is_exclusive(base: str) -> None:
    async def main() -> None:
        server = await serve_tcp("127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        local_port = free_port()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", local_port))
            try:
                sock = writer.get_extra_info("socket")
                assert sock.getsockname() == ("127.0.0.1", local_port)
                assert sharing(sock) == (1, 0)
                writer.write(b"from a fixed port\n")
                assert await asyncio.wait_for(reader.readline(), 10) == b"from a fixed port\n"
            finally:
                writer.close()
                await writer.wait_closed()
        finally:
            await closing(server)

    run(main(), base)


@windows_only
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_bind_socket_is_exclusive_and_each_loop_serves_it(base: str, kind: int) -> None:
    sock = aioexclusive.bind_socket(("127.0.0.1", 0), type=kind)
    assert sharing(sock) == (1, 0)
    port = sock.getsockname()[1]

    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == socket.SOCK_STREAM:
            server = await loop.create_server(Echo, sock=sock)
            try:
                assert [sharing(s) for s in server.sockets] == [(1, 0)]
                assert await tcp_echo("127.0.0.1", port) == b"ping\n"
            finally:
                await closing(server)
        else:
            transport, _ = await loop.create_datagram_endpoint(DatagramEcho, sock=sock)
            try:
                assert sharing(transport.get_extra_info("socket")) == (1, 0)
                assert await udp_echo("127.0.0.1", port) == b"ping"
            finally:
                transport.close()

    try:
        run(main(), base)
    finally:
        sock.close()


@windows_only
def test_multicast_receiver_follows_the_windows_row(base: str) -> None:
    # Microsoft: SO_REUSEADDR is for multicast receivers, which share a port on
    # purpose; Windows delivers group traffic to a wildcard bind. Joined on the
    # loopback interface and nothing is sent: no datagram leaves the host.
    from aioexclusive import Multicast

    group, port = "239.255.77.78", free_port(socket.SOCK_DGRAM)

    async def main() -> None:
        # The exclusive loop's create_datagram_endpoint takes multicast=.
        loop = cast(aioexclusive.ExclusiveLoopMixin, asyncio.get_running_loop())
        receivers = []
        try:
            for _ in range(2):  # a second receiver of the same group shares the port
                transport, _ = await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=(group, port), multicast=Multicast(interface="127.0.0.1")
                )
                receivers.append(transport)
                sock = transport.get_extra_info("socket")
                assert sock.getsockname() == ("0.0.0.0", port)
                assert sharing(sock) == (0, 1)
                assert transport.joined  # type: ignore[attr-defined]
            # Unicast next to it stays exclusive, and a socket without the
            # sharing option cannot join the port.
            unicast, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
            assert sharing(unicast.get_extra_info("socket")) == (1, 0)
            unicast.close()
            assert attack(socket.SOCK_DGRAM, "127.0.0.1", port, "none") in (WSAEACCES, WSAEADDRINUSE)
            with pytest.raises(ExclusivityError, match="multicast"):
                await loop.create_datagram_endpoint(
                    asyncio.DatagramProtocol, local_addr=("127.0.0.1", port), multicast=True
                )
        finally:
            for transport in receivers:
                transport.close()

    run(main(), base)


# -- requests that would open a hole ---------------------------------------------------


@windows_only
def test_reuse_address_and_reuse_port_are_refused(base: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ExclusivityError, match="SO_EXCLUSIVEADDRUSE"):
            await loop.create_server(Echo, "127.0.0.1", 0, reuse_address=True)
        with pytest.raises(ExclusivityError, match="Windows has no SO_REUSEPORT"):
            await loop.create_server(Echo, "127.0.0.1", 0, reuse_port=True)
        with pytest.raises(ExclusivityError, match="Windows has no SO_REUSEPORT"):
            await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0), reuse_port=True)
        # reuse_address=False is what Windows wants anyway.
        server = await loop.create_server(Echo, "127.0.0.1", 0, reuse_address=False)
        try:
            assert [sharing(s) for s in server.sockets] == [(1, 0)]
        finally:
            await closing(server)

    run(main(), base)
    # Even a loop that allows SO_REUSEPORT elsewhere: Windows has none, and
    # SO_REUSEADDR is no substitute.
    run(main(), base, allow_reuse_port=True)


@windows_only
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
@pytest.mark.parametrize("option", [None, REUSE], ids=["no-options", "SO_REUSEADDR"])
def test_prebound_sock_without_exclusive_is_refused(base: str, kind: int, option: int | None) -> None:
    sock = socket.socket(socket.AF_INET, kind)
    if option is not None:
        sock.setsockopt(socket.SOL_SOCKET, option, 1)
    sock.bind(("127.0.0.1", 0))
    if kind == socket.SOCK_STREAM:
        sock.listen()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.raises(ExclusivityError, match="SO_EXCLUSIVEADDRUSE|SO_REUSEADDR") as info:
            if kind == socket.SOCK_STREAM:
                await loop.create_server(Echo, sock=sock)
            else:
                await loop.create_datagram_endpoint(DatagramEcho, sock=sock)
        # The message tells how to make a good one.
        assert "bind_socket()" in str(info.value)

    try:
        run(main(), base)
        # Refused, not adopted: the caller's socket is left as it was, open.
        assert sock.fileno() != -1
    finally:
        sock.close()


@windows_only
def test_exclusive_sock_is_accepted_by_a_loop_allowing_reuse_port(base: str) -> None:
    # allow_reuse_port changes nothing on Windows (there is no SO_REUSEPORT):
    # a correct exclusive socket must still be taken.
    sock = aioexclusive.bind_socket(("127.0.0.1", 0))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(Echo, sock=sock)
        try:
            assert await tcp_echo("127.0.0.1", sock.getsockname()[1]) == b"ping\n"
        finally:
            await closing(server)

    try:
        run(main(), base, allow_reuse_port=True)
    finally:
        sock.close()


# -- conflicts Wine and Windows agree on ---------------------------------------------

# (where our exclusive listener is, the attacker's option) -> WinError of the
# attacker's bind of 127.0.0.1:P. Microsoft's tables and Wine agree on these.
AGREED_TCP = {
    ("0.0.0.0", "none"): WSAEACCES,  # the wildcard holder covers the specific address
    ("0.0.0.0", "SO_REUSEADDR"): WSAEACCES,
    ("0.0.0.0", "SO_EXCLUSIVEADDRUSE"): WSAEACCES,
    ("127.0.0.1", "none"): WSAEADDRINUSE,
    ("127.0.0.1", "SO_REUSEADDR"): WSAEACCES,  # the takeover attempt, refused
}


@windows_only
@pytest.mark.parametrize(("server_at", "option"), list(AGREED_TCP))
def test_tcp_attacker_is_refused_and_traffic_still_arrives(base: str, server_at: str, option: str) -> None:
    async def main() -> None:
        server = await serve_tcp(server_at)
        port = server.sockets[0].getsockname()[1]
        try:
            assert attack(socket.SOCK_STREAM, "127.0.0.1", port, option) == AGREED_TCP[server_at, option]
            for i in range(4):
                assert await tcp_echo("127.0.0.1", port, b"%d\n" % i) == b"%d\n" % i
        finally:
            await closing(server)

    run(main(), base)


@windows_only
@pytest.mark.parametrize("server_at", ["0.0.0.0", "127.0.0.1"])
@pytest.mark.parametrize("option", ["none", "SO_REUSEADDR", "SO_EXCLUSIVEADDRUSE"])
def test_udp_attacker_is_refused_and_datagrams_still_arrive(base: str, server_at: str, option: str) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=(server_at, 0))
        port = transport.get_extra_info("sockname")[1]
        try:
            # Wine and Windows may pick different codes here; both must refuse.
            assert attack(socket.SOCK_DGRAM, "127.0.0.1", port, option) in (WSAEACCES, WSAEADDRINUSE)
            for i in range(4):
                assert await udp_echo("127.0.0.1", port, b"%d" % i) == b"%d" % i
        finally:
            transport.close()

    run(main(), base)


@windows_only
def test_attacker_in_another_process_is_refused() -> None:
    # The same check with a literal second program, as an attacker would be.
    code = (
        "import socket, sys\n"
        "s = socket.socket()\n"
        "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
        "try:\n"
        "    s.bind(('127.0.0.1', int(sys.argv[1]))); s.listen(); print('bound')\n"
        "except OSError as e:\n"
        "    print(e.winerror)\n"
    )

    async def main() -> None:
        server = await serve_tcp("127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        try:
            result = await asyncio.to_thread(
                subprocess.run, [sys.executable, "-c", code, str(port)], capture_output=True, text=True, timeout=60
            )
            assert result.stdout.strip() == str(WSAEACCES), result
            assert await tcp_echo("127.0.0.1", port) == b"ping\n"
        finally:
            await closing(server)

    run(main())


# -- conflicts surface as AddressInUseError ------------------------------------------


def _check_in_use(err: AddressInUseError, winerror: int, port: int, protocol: str) -> None:
    assert isinstance(err, OSError)
    assert err.winerror == winerror
    # Windows CPython maps the WinError onto errno; that mapping is kept.
    assert err.errno == (errno.EACCES if winerror == WSAEACCES else errno.EADDRINUSE)
    assert ("WSAEACCES" if winerror == WSAEACCES else "WSAEADDRINUSE") in str(err)
    assert f"port {port}" in str(err) and err.port == port and err.protocol == protocol
    # How to find the holder: named by psutil when it can, else the netstat hint.
    assert "held by" in str(err) or "netstat -ano -p " + protocol in str(err)
    assert isinstance(err.__cause__, OSError) and err.__cause__.winerror == winerror  # type: ignore[attr-defined]


@windows_only
@pytest.mark.parametrize(
    ("held_at", "option", "winerror"),
    [
        ("0.0.0.0", EXCL, WSAEACCES),
        ("127.0.0.1", EXCL, WSAEADDRINUSE),
        ("127.0.0.1", None, WSAEADDRINUSE),
    ],
    ids=["exclusive-wildcard", "exclusive-same", "plain-same"],
)
def test_tcp_conflict_is_address_in_use_error(base: str, held_at: str, option: int | None, winerror: int) -> None:
    with holder(socket.SOCK_STREAM, held_at, option=option) as held:
        port = held.getsockname()[1]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with pytest.raises(AddressInUseError) as info:
                await loop.create_server(Echo, "127.0.0.1", port)
            _check_in_use(info.value, winerror, port, "TCP")

        run(main(), base)


@windows_only
def test_udp_conflict_is_address_in_use_error(base: str) -> None:
    with holder(socket.SOCK_DGRAM, "127.0.0.1", option=EXCL) as held:
        port = held.getsockname()[1]

        async def main() -> None:
            loop = asyncio.get_running_loop()
            with pytest.raises(AddressInUseError) as info:
                await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", port))
            _check_in_use(info.value, WSAEADDRINUSE, port, "UDP")

        run(main(), base)


@windows_only
def test_fixed_port_client_conflict_is_address_in_use_error(base: str) -> None:
    async def main() -> None:
        server = await serve_tcp("127.0.0.1")
        port = server.sockets[0].getsockname()[1]
        try:
            with holder(socket.SOCK_STREAM, "0.0.0.0", option=EXCL) as held:
                local_port = held.getsockname()[1]
                with pytest.raises(AddressInUseError) as info:
                    await asyncio.open_connection("127.0.0.1", port, local_addr=("127.0.0.1", local_port))
                _check_in_use(info.value, WSAEACCES, local_port, "TCP")
        finally:
            await closing(server)

    run(main(), base)


@windows_only
@needs_ipv6
def test_partial_conflict_leaves_nothing_bound(base: str) -> None:
    # host=None binds 0.0.0.0:P and [::]:P; only the IPv4 one is taken. The
    # IPv6 socket made before (or after) the failure must not keep [::]:P.
    port = free_port(host="::1")
    with holder(socket.SOCK_STREAM, "0.0.0.0", port, EXCL):

        async def main() -> None:
            with pytest.raises(AddressInUseError):
                await serve_tcp(None, port)

        run(main(), base)
    with holder(socket.SOCK_STREAM, "::", port, EXCL):
        pass


@windows_only
def test_bind_socket_conflict_is_address_in_use_error() -> None:
    with aioexclusive.bind_socket(("0.0.0.0", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(AddressInUseError) as info:
            aioexclusive.bind_socket(("127.0.0.1", port))
        _check_in_use(info.value, WSAEACCES, port, "TCP")


@windows_only
def test_address_in_use_error_pickles_with_its_winerror() -> None:
    # multiprocessing on Windows spawns: errors cross process boundaries pickled.
    with aioexclusive.bind_socket(("127.0.0.1", 0)) as held:
        with pytest.raises(AddressInUseError) as info:
            aioexclusive.bind_socket(held.getsockname())
    copy = pickle.loads(pickle.dumps(info.value))
    assert type(copy) is AddressInUseError
    assert (copy.winerror, copy.errno, str(copy)) == (info.value.winerror, info.value.errno, str(info.value))


# -- takeovers: the plain sockets lose, ours do not --------------------------------------
# Microsoft, "Using SO_REUSEADDR and SO_EXCLUSIVEADDRUSE": a later socket that
# sets SO_REUSEADDR may bind over a socket without SO_EXCLUSIVEADDRUSE (same
# user; any user if the first socket set SO_REUSEADDR itself). These controls
# prove the attack is real where it matters; Wine refuses it (xfail there).


@windows_only
@needs_windows_kernel
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM], ids=["tcp", "udp"])
def test_control_plain_asyncio_socket_is_taken_over(kind: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        if kind == socket.SOCK_STREAM:
            server = await loop.create_server(Echo, "127.0.0.1", 0)  # what asyncio does on Windows
            port = server.sockets[0].getsockname()[1]
            try:
                assert attack(kind, "127.0.0.1", port, "SO_REUSEADDR") is None
            finally:
                await closing(server)
        else:
            transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
            try:
                assert attack(kind, "127.0.0.1", transport.get_extra_info("sockname")[1], "SO_REUSEADDR") is None
            finally:
                transport.close()

    loop = PROACTOR()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


@windows_only
@needs_windows_kernel
@pytest.mark.parametrize("held_at", ["127.0.0.1", "0.0.0.0"])
def test_control_reuseaddr_listener_is_taken_over(held_at: str) -> None:
    # How uvicorn and hypercorn pre-bind their sockets.
    with holder(socket.SOCK_STREAM, held_at, option=REUSE) as held:
        assert attack(socket.SOCK_STREAM, "127.0.0.1", held.getsockname()[1], "SO_REUSEADDR") is None


@windows_only
@needs_windows_kernel
def test_control_plain_wildcard_listener_is_shadowed() -> None:
    # A more specific bind with SO_REUSEADDR under a plain wildcard listener.
    with holder(socket.SOCK_STREAM, "0.0.0.0") as held:
        assert attack(socket.SOCK_STREAM, "127.0.0.1", held.getsockname()[1], "SO_REUSEADDR") is None


@windows_only
@pytest.mark.parametrize("server_at", ["127.0.0.1", "0.0.0.0"])
def test_same_takeover_fails_against_the_exclusive_loop(base: str, server_at: str) -> None:
    # The pair of the controls above: on real Windows too, this one must hold.
    async def main() -> None:
        server = await serve_tcp(server_at)
        port = server.sockets[0].getsockname()[1]
        try:
            assert attack(socket.SOCK_STREAM, "127.0.0.1", port, "SO_REUSEADDR") == WSAEACCES
            assert await tcp_echo("127.0.0.1", port) == b"ping\n"
        finally:
            await closing(server)

    run(main(), base)


@windows_only
@pytest.mark.parametrize("name", ["proactor", "selector", pytest.param("winloop", marks=BASES[2].marks)])
def test_windows_server_example(name: str) -> None:
    example = Path(__file__).resolve().parent.parent / "examples" / "windows_server.py"
    # The example imports the aioexclusive this test runs against (checkout or installed wheel).
    env = dict(os.environ, PYTHONPATH=str(Path(aioexclusive.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, str(example), name], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr
    exclusive = out.stdout.split("plain asyncio loop")[0]
    assert exclusive.count("SO_EXCLUSIVEADDRUSE=1 SO_REUSEADDR=0") == 2
    assert exclusive.count("refused (WinError 10013)") == 2
    assert "TCP echo: hello over TCP" in exclusive and "UDP echo: hello over UDP" in exclusive
    assert "exclusive service held its ports" in out.stdout


# -- when SO_EXCLUSIVEADDRUSE cannot be set ------------------------------------------------


def make_exclusive_option_fail(monkeypatch: pytest.MonkeyPatch) -> None:
    """setsockopt(SO_EXCLUSIVEADDRUSE) fails from now on, as on Windows before Server 2003 SP1 without admin rights."""
    real = socket.socket.setsockopt

    def setsockopt(self: socket.socket, level: int, option: int, *value: Any) -> None:
        if level == socket.SOL_SOCKET and option == EXCL:
            raise OSError(errno.EACCES, "An attempt was made to access a socket in a way forbidden", None, WSAEACCES)
        real(self, level, option, *value)

    monkeypatch.setattr(socket.socket, "setsockopt", setsockopt)


@windows_only
def test_option_failure_warns_and_keeps_serving(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    make_exclusive_option_fail(monkeypatch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with pytest.warns(ExclusivityWarning, match="NOT protected") as record:
            server = await serve_tcp("127.0.0.1")
        assert "SO_EXCLUSIVEADDRUSE" in str(record[0].message)
        try:
            (sock,) = server.sockets
            assert sharing(sock) == (0, 0)  # unprotected, but never SO_REUSEADDR
            assert await tcp_echo("127.0.0.1", sock.getsockname()[1]) == b"ping\n"
        finally:
            await closing(server)
        with pytest.warns(ExclusivityWarning, match="NOT protected"):
            transport, _ = await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", 0))
        transport.close()

    run(main(), base)


@windows_only
def test_option_failure_with_strict_refuses_and_holds_nothing(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    port = free_port()
    make_exclusive_option_fail(monkeypatch)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        with warnings.catch_warnings():
            warnings.simplefilter("error", ExclusivityWarning)  # strict raises instead of warning
            with pytest.raises(ExclusivityError, match="SO_EXCLUSIVEADDRUSE") as info:
                await serve_tcp(None, port)
            assert isinstance(info.value.__cause__, OSError)
            with pytest.raises(ExclusivityError):
                await loop.create_datagram_endpoint(DatagramEcho, local_addr=("127.0.0.1", port))
            with pytest.raises(ExclusivityError):
                await asyncio.open_connection("127.0.0.1", 9, local_addr=("127.0.0.1", port))

    run(main(), base, strict=True)
    # Nothing was left bound on the port.
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        holder(kind, "0.0.0.0", port).close()


# -- the Windows code paths, on every platform -------------------------------------------


class _RefusingSocket:
    """Stands in for a socket whose setsockopt fails."""

    def __init__(self, exc: OSError) -> None:
        self.exc = exc
        self.calls: list[tuple[int, int, int]] = []

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.calls.append((level, option, value))
        raise self.exc


@pytest.fixture
def windows_constants(monkeypatch: pytest.MonkeyPatch) -> Iterator[int]:
    """socket.SO_EXCLUSIVEADDRUSE as on Windows (~SO_REUSEADDR), on any platform."""
    monkeypatch.setattr(socket, "SO_EXCLUSIVEADDRUSE", EXCL, raising=False)
    yield EXCL


def test_apply_plan_warns_when_exclusive_fails_anywhere(windows_constants: int) -> None:
    plan = make_plan(Role.TCP_LISTENER, "windows")
    sock = _RefusingSocket(OSError(errno.EACCES, "forbidden"))
    with pytest.warns(ExclusivityWarning, match=r"127\.0\.0\.1.*NOT protected.*strict=True"):
        apply_plan(sock, plan, address=("127.0.0.1", 8000))  # type: ignore[arg-type]
    assert sock.calls == [(socket.SOL_SOCKET, windows_constants, 1)]


def test_apply_plan_strict_refuses_when_exclusive_fails_anywhere(windows_constants: int) -> None:
    cause = OSError(errno.EACCES, "forbidden")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(ExclusivityError, match="could not set SO_EXCLUSIVEADDRUSE") as info:
            apply_plan(_RefusingSocket(cause), make_plan(Role.UDP_UNICAST, "windows"), strict=True)  # type: ignore[arg-type]
    assert info.value.__cause__ is cause


def test_apply_plan_does_not_excuse_other_options_anywhere(windows_constants: int) -> None:
    # Only the exclusive option has the "serve unprotected" fallback: a failing
    # SO_REUSEADDR for a multicast receiver is an ordinary error.
    cause = OSError(errno.EINVAL, "invalid")
    with pytest.raises(OSError) as info:
        apply_plan(_RefusingSocket(cause), make_plan(Role.UDP_MULTICAST, "windows"))  # type: ignore[arg-type]
    assert info.value is cause


def _winerror(code: int, errno_: int) -> OSError:
    # What Windows CPython raises: errno mapped from the WinError, which is kept too.
    exc = OSError(errno_, "stand-in")
    exc.winerror = code  # type: ignore[attr-defined]
    return exc


@pytest.mark.parametrize(
    ("code", "errno_", "name"),
    [(WSAEACCES, errno.EACCES, "WSAEACCES"), (WSAEADDRINUSE, errno.EADDRINUSE, "WSAEADDRINUSE")],
)
def test_winerror_becomes_address_in_use_error_anywhere(code: int, errno_: int, name: str) -> None:
    exc = _winerror(code, errno_)
    assert is_address_in_use(exc)
    err = translate_bind_error(exc, Role.UDP_UNICAST, ("127.0.0.1", 5353))
    assert isinstance(err, AddressInUseError)
    assert (err.winerror, err.errno, err.port, err.protocol) == (code, errno_, 5353, "UDP")
    assert name in str(err)


def test_other_winerrors_are_not_address_in_use_anywhere() -> None:
    # WSAEINVAL (10022): e.g. SO_REUSEADDR and SO_EXCLUSIVEADDRUSE on one socket.
    exc = _winerror(10022, errno.EINVAL)
    assert not is_address_in_use(exc)
    assert not isinstance(translate_bind_error(exc, Role.TCP_LISTENER, ("127.0.0.1", 80)), AddressInUseError)
    # A POSIX EACCES is a privileged port, not a taken one.
    assert not is_address_in_use(OSError(errno.EACCES, "permission denied"))
