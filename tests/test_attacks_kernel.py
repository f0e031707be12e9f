"""Attacks that a single bind per attacker misses (docs/limits.md).

Each was found against an earlier version and took connections or datagrams
from an exclusive socket, or left one shareable. Every test runs the real
attack from a separate process (uid 65534 where it says so) and has a control
the attacker must win, so the harness proves it can see the hijack.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import warnings
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest
from attacker import Attacker, BindResult, send_traffic, sockets_on_port
from harness import HAVE_UVLOOP, needs_ipv6, port_free_on_both_families, run, run_plain
from services import LOOPBACK, WILDCARD, Service, open_service

import aioexclusive

if TYPE_CHECKING:
    import multiprocessing.queues

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel behaviour")

TRAFFIC = 20

# -- 1. the two-step SO_REUSEPORT takeover of a one-family wildcard listener ---------------------
#
# The victim family's wildcard listener against `Attacker.two_step_attack` (attacker.TWO_STEP): the prime
# on the other family's wildcard must fail on the hold, and no connection may reach the attacker.


def _two_step(
    attacker: Attacker, family: int, open_listener: Callable[[], Awaitable[Service]], plain: bool, base: str
) -> tuple[BindResult, str, int, int]:
    async def scenario() -> tuple[BindResult, str, int, int]:
        service = await open_listener()
        try:
            result, prime, stolen = attacker.two_step_attack(family, service.port, TRAFFIC)
            received = await service.counter.wait_for(TRAFFIC - stolen, timeout=2.0)
        finally:
            await service.close()
        return result, prime, stolen, received

    return (run_plain if plain else run)(scenario(), base)


@needs_ipv6
@pytest.mark.parametrize("family", [4, 6])
def test_two_step_takeover_of_a_wildcard_listener_fails(other_user_attacker: Attacker, base: str, family: int) -> None:
    result, prime, stolen, received = _two_step(
        other_user_attacker, family, lambda: open_service("tcp", WILDCARD[family]), False, base
    )
    assert prime == "EADDRINUSE", "the other family's wildcard must be held, so the prime fails"
    assert not result.ok, f"the two-step attacker co-bound our {WILDCARD[family]} listener: {result}"
    assert (stolen, received) == (0, TRAFFIC)


@needs_ipv6
@pytest.mark.parametrize("family", [4, 6])
def test_two_step_takeover_of_bind_socket_fails(other_user_attacker: Attacker, family: int) -> None:
    async def listener() -> Service:
        from services import adopt_service

        sock = aioexclusive.bind_socket((WILDCARD[family], 0), family=socket.AF_INET6 if family == 6 else 0)
        return await adopt_service("tcp", sock)

    result, prime, stolen, received = _two_step(other_user_attacker, family, listener, False, "asyncio")
    assert prime == "EADDRINUSE"
    assert not result.ok
    assert (stolen, received) == (0, TRAFFIC)


@needs_ipv6
def test_two_step_fails_when_the_same_call_listens_on_a_specific_other_family_address(
    other_user_attacker: Attacker, base: str
) -> None:
    """["127.0.0.1", "::"]: no hold on 0.0.0.0 (it would collide with our own 127.0.0.1), yet no prime lands."""

    async def listener() -> Service:
        from services import Counter, Service, _TCPCounting

        counter = Counter()
        server = await asyncio.get_running_loop().create_server(lambda: _TCPCounting(counter), ["127.0.0.1", "::"], 0)
        ports = {s.getsockname()[1] for s in server.sockets}
        assert len(ports) == 1, "each family gets the same port"
        return Service(server, ports.pop(), counter, list(server.sockets))

    result, prime, stolen, received = _two_step(other_user_attacker, 6, listener, False, base)
    assert prime == "EADDRINUSE"
    assert not result.ok
    assert (stolen, received) == (0, TRAFFIC)


@needs_ipv6
def test_control_two_step_takes_over_a_plain_ipv6_wildcard_listener(other_user_attacker: Attacker, base: str) -> None:
    """The attack itself, against the plain loop: it must win, or the tests above prove nothing."""
    # On a port with nothing on 0.0.0.0 either: a TIME_WAIT there could fail even a SO_REUSEADDR prime.
    result, prime, stolen, received = _two_step(
        other_user_attacker, 6, lambda: open_service("tcp", "::", port_free_on_both_families()), True, base
    )
    assert prime == "bound"
    assert result.ok, f"control: the two-step attacker should co-bind a plain [::] listener, got {result}"
    assert stolen > 0, "control: co-bound but stole nothing"
    assert stolen + received == TRAFFIC


@needs_ipv6
def test_control_two_step_co_binds_a_plain_ipv4_wildcard_listener(other_user_attacker: Attacker, base: str) -> None:
    result, prime, _stolen, _received = _two_step(
        other_user_attacker, 4, lambda: open_service("tcp", "0.0.0.0", port_free_on_both_families()), True, base
    )
    assert prime == "bound"
    assert result.ok, f"control: the mirror attacker should co-bind a plain 0.0.0.0 listener, got {result}"


@needs_ipv6
def test_port_zero_gives_every_family_the_same_port(base: str) -> None:
    async def scenario() -> list[int]:
        service = await open_service("tcp", None)  # type: ignore[arg-type]
        try:
            return [s.getsockname()[1] for s in service.sockets]
        finally:
            await service.close()

    ports = run(scenario(), base)
    assert len(ports) == 2 and ports[0] == ports[1], ports


@needs_ipv6
def test_hold_is_promoted_and_released_with_its_listeners(base: str) -> None:
    """Two servers on one port, one per family: no window, and nothing held once both are closed."""

    def bind_result(family: int, port: int) -> bool:
        sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, socket.SOCK_STREAM)
        try:
            if family == 6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind((WILDCARD[family], port))
            return True
        except OSError:
            return False
        finally:
            sock.close()

    async def scenario() -> list[bool]:
        loop = asyncio.get_running_loop()
        v6 = await loop.create_server(asyncio.Protocol, "::", 0)
        port = v6.sockets[0].getsockname()[1]
        seen = [bind_result(4, port)]  # held
        v4 = await loop.create_server(asyncio.Protocol, "0.0.0.0", port)  # promotes the hold
        v4.close()
        await v4.wait_closed()
        await asyncio.sleep(0.05)
        seen.append(bind_result(4, port))  # held again for the remaining [::] listener
        v6.close()
        await v6.wait_closed()
        await asyncio.sleep(0.05)
        seen += [bind_result(4, port), bind_result(6, port)]  # all released
        return seen

    assert run(scenario(), base) == [False, False, True, True]


@needs_ipv6
@pytest.mark.parametrize("leftover", ["connection", "none"])
def test_closing_one_of_two_servers_never_frees_its_side(
    other_user_attacker: Attacker, base: str, leftover: str
) -> None:
    """[::]:P and 0.0.0.0:P, then [::]:P closes: its side must stay held for 0.0.0.0:P.

    Binding a fresh hold after the close failed while a connection the closed
    listener accepted was still open (and left a window otherwise): the
    closing listener itself must become the hold.
    """

    async def scenario() -> tuple[BindResult, str, int, int]:
        loop = asyncio.get_running_loop()
        v4 = await open_service("tcp", "0.0.0.0")
        port = v4.port
        v6 = await loop.create_server(asyncio.Protocol, "::", port)  # takes the hold over
        client = None
        if leftover == "connection":
            client = socket.create_connection(("::1", port))
            await asyncio.sleep(0.05)  # accepted, and left open by the protocol
        v6.close()  # not wait_closed: from 3.12 on it would wait for that connection
        await asyncio.sleep(0.05)
        try:
            with pytest.raises(ConnectionRefusedError):  # the closed listener holds its side but no longer listens
                socket.create_connection(("::1", port), timeout=2).close()
            result, prime, stolen = other_user_attacker.two_step_attack(4, port, TRAFFIC)
            received = await v4.counter.wait_for(TRAFFIC - stolen, timeout=2.0)
        finally:
            if client is not None:
                client.close()
            await v4.close()
            v6.close_clients() if hasattr(v6, "close_clients") else None
            await asyncio.sleep(0.05)
        return result, prime, stolen, received

    with warnings.catch_warnings():
        warnings.simplefilter("error", aioexclusive.ExclusivityWarning)
        result, prime, stolen, received = run(scenario(), base)
    assert prime == "EADDRINUSE", "the closed listener's side must stay held"
    assert not result.ok
    assert (stolen, received) == (0, TRAFFIC)


@needs_ipv6
def test_other_family_already_taken_by_someone_else_is_refused_loudly(same_user_attacker: Attacker, base: str) -> None:
    """A fixed port whose other family's wildcard another socket holds cannot be protected: AddressInUseError."""
    # Nothing on [::] either, TIME_WAIT included, or the attacker's bind there could fail.
    port = port_free_on_both_families()
    taken = same_user_attacker.try_bind("tcp", 6, "::", port, ("SO_REUSEPORT",))
    assert taken.ok

    async def scenario() -> None:
        await open_service("tcp", "0.0.0.0", port)

    try:
        with pytest.raises(aioexclusive.AddressInUseError):
            run(scenario(), base)
    finally:
        same_user_attacker.collect(wait=0)


# -- 2. uvloop UDP: libuv's uv_udp_open makes an adopted bound socket shareable -------------------

RACE_SECONDS = 1.5
# The racer sleeps this long between binds, so that our endpoints get the port
# often enough to be tested; it still tries thousands of times per second.
RACE_PAUSE = float(os.environ.get("AIOEXCLUSIVE_RACE_PAUSE", "0.0002"))


def _free_udp_port() -> int:
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = int(probe.getsockname()[1])
    probe.close()
    return port


async def _race(
    attacker: Attacker, port: int, open_endpoint: Callable[[], Awaitable[asyncio.BaseTransport]]
) -> dict[str, int]:
    """Open and close endpoints on *port* while *attacker* loops on bind(SO_REUSEADDR)."""
    loop = asyncio.get_running_loop()
    attacker.start_race("udp", 4, "127.0.0.1", port, ("SO_REUSEADDR",), RACE_SECONDS, hold=0.0, pause=RACE_PAUSE)
    counts = {"opened": 0, "refused": 0, "co_bound": 0}
    deadline = loop.time() + RACE_SECONDS
    try:
        while loop.time() < deadline:
            try:
                transport = await open_endpoint()
            except OSError:
                # The attacker held the free port between two of our endpoints:
                # a loud refusal (AddressInUseError), never a share.
                counts["refused"] += 1
                await asyncio.sleep(0)
                continue
            counts["opened"] += 1
            if sockets_on_port("udp", port) > 1:  # ours and the attacker's
                counts["co_bound"] += 1
            transport.close()
            await asyncio.sleep(0)
    finally:
        counts.update(attacker.finish_race())
    return counts


# uvloop leaves its own half-made transport to the garbage collector (with a
# ResourceWarning) when its bind fails, which the racer makes happen often in
# the connected case: a loud OSError all the same, never a share.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
@pytest.mark.parametrize("kind", ["local_addr", "local_and_remote_addr", "multicast_sender"])
def test_uvloop_udp_endpoint_never_shareable_under_a_racing_attacker(other_user_attacker: Attacker, kind: str) -> None:
    """The racer co-bound a multicast sender with a fixed port (bound, then adopted) before it took libuv's own path."""
    port = _free_udp_port()

    async def scenario() -> dict[str, int]:
        loop: Any = asyncio.get_running_loop()  # Any: multicast= is the exclusive loop's own keyword
        # A sender to a group on lo: connect() alone, nothing is sent.
        remote = {"local_addr": None, "local_and_remote_addr": ("127.0.0.1", 9)}.get(kind, ("239.1.2.3", 5000))
        extra = {"multicast": aioexclusive.Multicast(interface="lo", ttl=2)} if kind == "multicast_sender" else {}

        async def open_endpoint() -> asyncio.DatagramTransport:
            transport, _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=("127.0.0.1", port), remote_addr=remote, **extra
            )
            return transport  # type: ignore[no-any-return]

        return await _race(other_user_attacker, port, open_endpoint)

    counts = run(scenario(), "uvloop")
    assert counts["opened"] > 20, counts
    assert counts["co_bound"] == 0 and counts["shared"] == 0, f"another user co-bound a uvloop UDP endpoint: {counts}"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_control_racing_attacker_lands_in_the_uv_udp_open_window(other_user_attacker: Attacker) -> None:
    """What the previous version did (adopt a bound socket, switch SO_REUSEADDR off in the factory): the racer wins."""
    port = _free_udp_port()

    async def scenario() -> dict[str, int]:
        loop = asyncio.get_running_loop()

        async def open_endpoint() -> asyncio.DatagramTransport:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                sock.close()
                raise

            def factory() -> asyncio.DatagramProtocol:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
                return asyncio.DatagramProtocol()

            transport, _ = await loop.create_datagram_endpoint(factory, sock=sock)
            return transport

        return await _race(other_user_attacker, port, open_endpoint)

    counts = run_plain(scenario(), "uvloop")
    assert counts["co_bound"] + counts["shared"] > 0, f"control: the racer never landed in the window: {counts}"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_refuses_a_bound_udp_sock_and_names_local_addr() -> None:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))

    async def scenario() -> None:
        await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)

    try:
        with pytest.raises(aioexclusive.ExclusivityError, match="local_addr"):
            run(scenario(), "uvloop")
        assert sock.fileno() != -1, "a refused sock= stays the caller's"
    finally:
        sock.close()


# -- 3. the sock= audit asks the kernel, not the Python object ----------------------------------


def _liar(real: socket.socket, kind: int) -> socket.socket:
    """What uvicorn's --fd does: an AF_UNIX object around the caller's inet socket."""
    return socket.socket(socket.AF_UNIX, kind, 0, os.dup(real.fileno()))


@pytest.mark.parametrize("family", [4, pytest.param(6, marks=needs_ipv6)])
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_audit_reads_the_kernel_not_the_object(
    same_user_attacker: Attacker, base: str, proto: str, family: int
) -> None:
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    option = socket.SO_REUSEPORT if proto == "tcp" else socket.SO_REUSEADDR
    real = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, kind)
    real.setsockopt(socket.SOL_SOCKET, option, 1)
    real.bind((LOOPBACK[family], 0))
    if proto == "tcp":
        real.listen()
    port = real.getsockname()[1]
    liar = _liar(real, kind) if family == 4 else real  # an IPv6 socket that tells the truth, too
    try:
        # The socket is shareable: a same-user attacker co-binds it.
        shared = same_user_attacker.try_bind(proto, family, LOOPBACK[family], port, ("SO_REUSEADDR", "SO_REUSEPORT"))
        same_user_attacker.collect(wait=0)
        assert shared.ok, f"control: the socket under test should be shareable, got {shared}"

        async def scenario() -> None:
            loop = asyncio.get_running_loop()
            # Closed again at once if it was (wrongly) accepted, so a regression fails instead of hanging.
            if proto == "tcp":
                server = await loop.create_server(asyncio.Protocol, sock=liar)
                server.close()
            else:
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=liar)
                transport.close()
            await asyncio.sleep(0)

        with pytest.raises(aioexclusive.ExclusivityError):
            run(scenario(), base)
    finally:
        if liar is not real:
            liar.close()
        real.close()


# -- 4. a caller's TCP socket bound but not listening is listened on at adoption -----------------


def _bound_not_listening(port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


def _listen_first_attack(attacker: Attacker, plain: bool, base: str) -> tuple[BindResult, int, int]:
    """Adopt a bound, not listening socket with start_serving=False; another user tries to listen first."""
    from services import Counter, _TCPCounting

    async def scenario() -> tuple[BindResult, int, int]:
        sock = _bound_not_listening()
        port = sock.getsockname()[1]
        counter = Counter()
        server = await asyncio.get_running_loop().create_server(
            lambda: _TCPCounting(counter), sock=sock, start_serving=False
        )
        try:
            result = attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEADDR",))
            # Sent before start_serving: ours wait in our backlog, if ours listens.
            send_traffic("tcp", 4, "127.0.0.1", port, TRAFFIC)
            stolen = attacker.collect(wait=0.5)
            try:
                await server.start_serving()
            except OSError:
                pass  # the plain loop's listen fails once the attacker listens first
            received = await counter.wait_for(TRAFFIC - stolen, timeout=2.0)
        finally:
            server.close()
            await server.wait_closed()
        return result, stolen, received

    return (run_plain if plain else run)(scenario(), base)


def test_bound_not_listening_sock_cannot_be_listened_on_first(other_user_attacker: Attacker, base: str) -> None:
    result, stolen, received = _listen_first_attack(other_user_attacker, False, base)
    assert not result.ok, f"another user listened first on our adopted socket's port: {result}"
    assert (stolen, received) == (0, TRAFFIC)


def test_control_bound_not_listening_sock_is_taken_on_the_plain_loop(other_user_attacker: Attacker, base: str) -> None:
    result, stolen, _received = _listen_first_attack(other_user_attacker, True, base)
    assert result.ok, "control: another user should be able to listen first"
    assert stolen == TRAFFIC


# -- 6. uvloop: a client's fixed local port is bound by the plan, not by libuv -------------------


def _fixed_port_client_attack(attacker: Attacker, plain: bool) -> tuple[BindResult, int]:
    port = _free_udp_port()  # any free number; TCP is checked by the bind itself

    async def scenario() -> tuple[BindResult, int]:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        target = server.sockets[0].getsockname()[1]
        try:
            transport, _ = await loop.create_connection(
                asyncio.Protocol, "127.0.0.1", target, local_addr=("127.0.0.1", port)
            )
        except OSError:
            server.close()
            pytest.skip(f"port {port} was taken meanwhile")
        try:
            reuse = transport.get_extra_info("socket").getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            result = attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEADDR",))
            attacker.collect(wait=0)
        finally:
            transport.close()
            server.close()
            await server.wait_closed()
        return result, reuse

    return (run_plain if plain else run)(scenario(), "uvloop")


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_fixed_port_client_cannot_be_listened_on(other_user_attacker: Attacker) -> None:
    result, reuse = _fixed_port_client_attack(other_user_attacker, False)
    assert reuse == 0
    assert not result.ok, f"another user bound and listened on our client's port: {result}"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_control_plain_uvloop_fixed_port_client_is_shareable(other_user_attacker: Attacker) -> None:
    result, reuse = _fixed_port_client_attack(other_user_attacker, True)
    assert reuse == 1, "control: libuv no longer sets SO_REUSEADDR on a bound TCP client"
    assert result.ok


def test_unix_server_sock_that_is_really_tcp_is_audited(same_user_attacker: Attacker, base: str) -> None:
    """create_unix_server(sock=) with an AF_UNIX object around a shareable TCP listener is refused."""
    real = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    real.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    real.bind(("127.0.0.1", 0))
    real.listen()
    liar = _liar(real, socket.SOCK_STREAM)
    try:
        shared = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", real.getsockname()[1], ("SO_REUSEPORT",))
        same_user_attacker.collect(wait=0)
        assert shared.ok, "control: the socket under test should be shareable"

        async def scenario() -> None:
            await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, sock=liar)

        with pytest.raises(aioexclusive.ExclusivityError):
            run(scenario(), base)
    finally:
        liar.close()
        real.close()


def _report_listener(sock: socket.socket, queue: multiprocessing.queues.Queue[int]) -> None:
    queue.put(sock.getsockname()[1])
    sock.close()


def test_a_held_listener_can_be_handed_to_spawned_workers() -> None:
    """uvicorn and hypercorn spawn workers with their listener: a HeldListener must pickle for them."""
    import multiprocessing
    import pickle

    listener = aioexclusive.bind_socket(("0.0.0.0", 0))
    try:
        with pytest.raises(TypeError):
            pickle.dumps(listener)  # as with any socket, outside a spawn
        ctx = multiprocessing.get_context("spawn")
        queue = ctx.Queue()
        worker = ctx.Process(target=_report_listener, args=(listener, queue))
        worker.start()
        assert queue.get(timeout=30) == listener.getsockname()[1]
        worker.join(30)
        queue.close()
        queue.join_thread()
    finally:
        listener.close()


@needs_ipv6
@pytest.mark.parametrize("reuse_address", [None, False])
def test_closing_a_port_zero_listener_of_two_still_holds_its_side(base: str, reuse_address: bool | None) -> None:
    """A listener bound to port 0 leaves the bind bucket on shutdown: its side must be held afresh.

    reuse_address=False: no port-picking socket, so the listener itself is
    bound to port 0 and cannot be demoted; a fresh hold replaces it.
    """

    def free_v4(port: int) -> bool:
        probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            probe.bind(("0.0.0.0", port))
            return True
        except OSError:
            return False
        finally:
            probe.close()

    async def scenario() -> bool:
        loop = asyncio.get_running_loop()
        v4 = await loop.create_server(asyncio.Protocol, "0.0.0.0", 0, reuse_address=reuse_address)
        port = v4.sockets[0].getsockname()[1]
        v6 = await loop.create_server(asyncio.Protocol, "::", port)
        v4.close()
        await asyncio.sleep(0.05)
        try:
            return free_v4(port)
        finally:
            v6.close()
            await v6.wait_closed()

    assert run(scenario(), base) is False, "0.0.0.0 was free next to the remaining [::] listener"


@needs_ipv6
def test_a_forked_worker_closing_its_copies_leaves_the_parents_listeners_alone() -> None:
    """A worker that closes the listeners it inherited must not shut the parent's down (shared kernel sockets)."""
    v4 = aioexclusive.bind_socket(("0.0.0.0", 0))
    port = v4.getsockname()[1]
    v6 = aioexclusive.bind_socket(("::", port), family=socket.AF_INET6)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the worker
            code = 0
            try:
                v4.close()  # the first of two: in the parent this would demote it into the hold
                v6.close()
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert v4.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1, "the parent's IPv4 listener was shut down"
        assert v6.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN) == 1
        with socket.create_connection(("127.0.0.1", port), timeout=5):
            pass
    finally:
        v6.close()
        v4.close()
