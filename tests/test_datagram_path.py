"""The one datagram path: unicast, multicast, AF_UNIX and sock= endpoints share one adoption.

Behaviour tests (real sockets, real attackers) live in test_loops, test_multicast,
test_attacks_kernel and test_differential; these pin what the single path promises
that those do not name: one address check with the base loop's own errors for
every kind of endpoint, one place that knows what each base loop does, and
nothing left behind when adoption fails or is cancelled.
"""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
from attacker import OPTION_SETS, Attacker, BindResult

import aioexclusive
from aioexclusive import _bases

try:
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - the test extra installs it on POSIX
    HAVE_UVLOOP = False

BASES = ["asyncio"] + (["uvloop"] if HAVE_UVLOOP else [])


def _plain_loop(base: str) -> asyncio.AbstractEventLoop:
    if base == "uvloop":
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def _run(coro_fn: Callable[[], Coroutine[Any, Any, Any]], loop: asyncio.AbstractEventLoop) -> Any:
    try:
        return loop.run_until_complete(coro_fn())
    finally:
        loop.close()


def _outcome(loop: asyncio.AbstractEventLoop, **kwargs: Any) -> tuple[str, str]:
    async def attempt() -> tuple[str, str]:
        try:
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
        except (TypeError, ValueError, AssertionError, OSError) as exc:
            return type(exc).__name__, str(exc)
        transport.close()
        return "ok", ""

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        result: tuple[str, str] = _run(attempt, loop)
    return result


BAD_ADDRESSES: list[Any] = [
    "239.1.2.3",
    ("239.1.2.3",),
    ("239.1.2.3", 5000, 0),
    {"host": "239.1.2.3"},
    ["239.1.2.3", 5000, 0],
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("which", ["local_addr", "remote_addr"])
@pytest.mark.parametrize("address", BAD_ADDRESSES, ids=repr)
def test_one_address_check_for_every_endpoint(base: str, which: str, address: Any) -> None:
    """A bad address gets the base loop's own error, unicast or multicast alike."""
    plain = _outcome(_plain_loop(base), **{which: address})
    unicast = _outcome(aioexclusive.new_event_loop(base=base), **{which: address})
    multicast = _outcome(aioexclusive.new_event_loop(base=base), **{which: address}, multicast=True)
    assert plain[0] != "ok"
    assert unicast == plain
    assert multicast == plain


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_takes_a_list_for_multicast_as_for_unicast() -> None:
    # uvloop accepts [host, port]; so does the multicast path on uvloop (one
    # check): the request then fails later, for the reason a tuple would.
    as_list = _outcome(aioexclusive.new_event_loop(base="uvloop"), local_addr=["127.0.0.1", 0], multicast=True)
    as_tuple = _outcome(aioexclusive.new_event_loop(base="uvloop"), local_addr=("127.0.0.1", 0), multicast=True)
    assert as_list[0] == as_tuple[0] == "ExclusivityError"
    assert "127.0.0.1 is not a multicast address" in as_list[1]


def test_base_facts_are_asked_in_one_place() -> None:
    assert _bases.is_stdlib(asyncio.new_event_loop) is False  # a function is not a loop class
    assert _bases.is_stdlib(asyncio.SelectorEventLoop)
    assert not _bases.libuv_sets_reuse(asyncio.SelectorEventLoop)
    assert not _bases.is_libuv(asyncio.SelectorEventLoop)
    assert _bases.libuv_server_class(asyncio.SelectorEventLoop) is None
    if HAVE_UVLOOP:
        assert _bases.is_libuv(uvloop.Loop) and _bases.libuv_sets_reuse(uvloop.Loop)

        class Subclassed(uvloop.Loop):
            pass

        # A program's own subclass of uvloop.Loop is still uvloop underneath.
        assert _bases.libuv_sets_reuse(Subclassed)
        assert _bases.libuv_server_class(Subclassed) is not None
        loop = aioexclusive.new_event_loop(base=Subclassed)
        try:
            assert type(loop)._exclusive_libuv_sets_reuse  # type: ignore[attr-defined]
        finally:
            loop.close()


def _open_fds() -> set[int]:
    return {int(name) for name in os.listdir("/proc/self/fd")}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors through /proc")
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["unicast", "connected", "sender"])
def test_cancelled_adoption_leaves_nothing(base: str, kind: str) -> None:
    """Cancelled at every await of the path: no socket and no transport outlive it."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as peer:
        peer.bind(("127.0.0.1", 0))
        kwargs: dict[str, Any] = {
            "unicast": {"local_addr": ("127.0.0.1", 0)},
            "connected": {"local_addr": ("127.0.0.1", 0), "remote_addr": peer.getsockname()},
            "sender": {"family": socket.AF_INET, "multicast": True},
        }[kind]

        async def main() -> tuple[int, set[int]]:
            loop = asyncio.get_running_loop()
            # Counted inside the running loop: the loop's own descriptors are not ours to judge.
            before = _open_fds()
            cancelled = 0
            for steps in range(8):
                task = loop.create_task(loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs))
                for _ in range(steps):
                    await asyncio.sleep(0)
                task.cancel()
                try:
                    transport, _ = await task
                except asyncio.CancelledError:
                    cancelled += 1
                else:
                    transport.close()
                for _ in range(3):
                    await asyncio.sleep(0)
            gc.collect()
            return cancelled, _open_fds() - before

        cancelled, leaked = _run(main, aioexclusive.new_event_loop(base=base))
        assert cancelled >= 1
        assert leaked == set()


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
@pytest.mark.parametrize("knows_its_base", [True, False], ids=["exclusive", "control-base-not-recognised"])
def test_uvloop_subclass_udp_endpoint_is_not_joinable(
    knows_its_base: bool, other_user_attacker: Attacker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A program's own uvloop.Loop subclass is uvloop underneath: libuv's SO_REUSEADDR is cleaned there too.

    The control is the exclusive loop made to miss that fact (as 0.1.0 did for any
    subclass): the socket is bound, then adopted, uv_udp_open turns SO_REUSEADDR on,
    and another user's SO_REUSEADDR socket joins the port.
    """

    class AppLoop(uvloop.Loop):
        pass

    loop = aioexclusive.new_event_loop(base=AppLoop)
    if not knows_its_base:
        monkeypatch.setattr(type(loop), "_exclusive_libuv_sets_reuse", False)

    async def scenario() -> tuple[BindResult, int]:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0)
        )
        try:
            sock = transport.get_extra_info("socket")
            reuse = sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            port = transport.get_extra_info("sockname")[1]
            result = other_user_attacker.try_bind("udp", 4, "127.0.0.1", port, OPTION_SETS["SO_REUSEADDR"])
        finally:
            transport.close()
            await asyncio.sleep(0)
        return result, reuse

    result, reuse = _run(scenario, loop)
    if knows_its_base:
        assert not reuse
        assert not result.ok, f"another user joined the exclusive endpoint: {result}"
    else:
        assert reuse, "control: uvloop no longer sets SO_REUSEADDR on adopted UDP sockets"
        assert result.ok, f"control: another user should join the uncleaned socket, got {result}"


# -- what the third red team found (each test fails on the code before its fix) ------------------


class _HidesReuseAddr(socket.socket):
    """Says SO_REUSEADDR is off, whatever the kernel says."""

    def getsockopt(self, *args: Any) -> Any:
        if args[:2] == (socket.SOL_SOCKET, socket.SO_REUSEADDR):
            return 0
        return super().getsockopt(*args)


@pytest.mark.parametrize("base", BASES)
def test_sock_audit_asks_the_kernel_not_the_objects_getsockopt(base: str, other_user_attacker: Attacker) -> None:
    """A bound SO_REUSEADDR socket whose getsockopt lies is refused; the plain loop adopts it and loses the port."""

    def lying_socket() -> socket.socket:
        sock = _HidesReuseAddr(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", 0))
        return sock

    async def adopt(sock: socket.socket) -> BindResult | None:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
        try:
            port = sock.getsockname()[1]
            return other_user_attacker.try_bind("udp", 4, "127.0.0.1", port, OPTION_SETS["SO_REUSEADDR"])
        finally:
            transport.close()
            await asyncio.sleep(0)

    sock = lying_socket()
    with pytest.raises(aioexclusive.ExclusivityError, match="SO_REUSEADDR"):
        _run(lambda: adopt(sock), aioexclusive.new_event_loop(base=base))
    sock.close()
    control = _run(lambda: adopt(lying_socket()), _plain_loop(base))
    assert control is not None and control.ok, f"control: another user should join the plain loop's socket: {control}"


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_cleans_a_socket_that_claims_to_be_af_unix() -> None:
    """An inet socket whose getsockopt(SO_DOMAIN) says AF_UNIX still gets libuv's SO_REUSEADDR switched off."""

    class SaysUnix(socket.socket):
        def getsockopt(self, *args: Any) -> Any:
            if args[:2] == (socket.SOL_SOCKET, getattr(socket, "SO_DOMAIN", 39)):
                return socket.AF_UNIX
            return super().getsockopt(*args)

    sock = SaysUnix(socket.AF_INET, socket.SOCK_DGRAM)  # unbound: uvloop may take it

    async def main() -> int:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(asyncio.DatagramProtocol, sock=sock)
        try:
            return int(socket.socket.getsockopt(sock, socket.SOL_SOCKET, socket.SO_REUSEADDR))
        finally:
            transport.close()
            await asyncio.sleep(0)

    assert _run(main, aioexclusive.new_event_loop(base="uvloop")) == 0


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_refuses_a_bound_duck_typed_sock_that_says_unbound() -> None:
    class Duck:
        def __init__(self, sock: socket.socket) -> None:
            self._sock = sock
            self.family, self.type = sock.family, sock.type

        def fileno(self) -> int:
            return self._sock.fileno()

        def getsockname(self) -> Any:
            return ("0.0.0.0", 0)

        def __getattr__(self, name: str) -> Any:
            return getattr(self._sock, name)

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))

        async def main() -> str:
            loop = asyncio.get_running_loop()
            try:
                transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, sock=Duck(sock))  # type: ignore[arg-type]  # the point: not a socket
            except aioexclusive.ExclusivityError as exc:
                return str(exc)
            # A regression: close what was adopted, so the test fails instead of hanging.
            transport.close()
            await asyncio.sleep(0)
            return "adopted"

        assert "local_addr" in _run(main, aioexclusive.new_event_loop(base="uvloop"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts descriptors through /proc")
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(
    "kwargs",
    [
        {"local_addr": ("127.0.0.1", 0)},
        {"family": socket.AF_INET},
        {"local_addr": ("127.0.0.1", 0), "remote_addr": ("127.0.0.1", 9)},
    ],
    ids=["local", "family", "connected"],
)
def test_a_failing_protocol_factory_closes_nothing_else(base: str, kwargs: dict[str, Any]) -> None:
    """The caller's factory raises: its exception comes out, no descriptor leaks, and none is closed twice.

    (On uvloop the socket was closed under libuv's half-made transport, which
    later closed the same number again: the program's next socket.)
    """

    def broken() -> asyncio.DatagramProtocol:
        raise ZeroDivisionError("the caller's factory")

    async def main() -> socket.socket:
        with pytest.raises(ZeroDivisionError):
            await asyncio.get_running_loop().create_datagram_endpoint(broken, **kwargs)
        for _ in range(3):
            await asyncio.sleep(0)
        return socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # likely the number just freed

    before = _open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        nxt = _run(main, aioexclusive.new_event_loop(base=base))
        gc.collect()
    try:
        nxt.bind(("127.0.0.1", 0))  # EBADF if something closed it under us
        assert nxt.fileno() in _open_fds()
        assert _open_fds() - before == {nxt.fileno()}
    finally:
        nxt.close()


def test_unix_reuse_port_never_removes_a_live_servers_file(tmp_path: Any) -> None:
    """allow_reuse_port + reuse_port=True hands AF_UNIX to asyncio, which removed a live server's file first."""
    if not hasattr(socket, "AF_UNIX"):
        pytest.skip("no AF_UNIX")
    path = str(tmp_path / "live.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as live:
        live.bind(path)
        inode = os.stat(path).st_ino

        async def main() -> None:
            await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=path, family=socket.AF_UNIX, reuse_port=True
            )

        with pytest.raises(aioexclusive.AddressInUseError):
            _run(main, aioexclusive.new_event_loop(allow_reuse_port=True))
        assert os.stat(path).st_ino == inode


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_uvloop_connected_endpoint_with_allowed_reuse_port_opens_like_plain_uvloop() -> None:
    async def main() -> tuple[Any, int]:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0), remote_addr=("127.0.0.1", 9), reuse_port=True
        )
        try:
            sock = transport.get_extra_info("socket")
            return transport.get_extra_info("peername"), sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
        finally:
            transport.close()
            await asyncio.sleep(0)

    assert _run(main, aioexclusive.new_event_loop(base="uvloop", allow_reuse_port=True)) == (("127.0.0.1", 9), 1)


# The plain asyncio loop, called on a closed loop with no address, makes a transport
# it cannot start and leaves it to the garbage collector (a ResourceWarning); the
# exclusive loop raises the same error before it makes anything.
@pytest.mark.filterwarnings("ignore::ResourceWarning", "ignore::pytest.PytestUnraisableExceptionWarning")
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"local_addr": (1, 2, 3)},
        {"local_addr": ()},
        {"local_addr": "", "family": socket.AF_INET},
        {"remote_addr": [], "family": socket.AF_INET6},
    ],
    ids=repr,
)
def test_closed_loop_and_empty_addresses_as_the_base_loop(base: str, kwargs: dict[str, Any]) -> None:
    """Argument errors before the closed-loop error, and an empty address is none at all (asyncio)."""
    for closed in (True, False):
        loops = [_plain_loop(base), aioexclusive.new_event_loop(base=base)]
        results = []
        for loop in loops:
            if closed:
                loop.close()

                async def attempt() -> tuple[str, str]:
                    try:
                        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
                    except (TypeError, ValueError, AssertionError, OSError, RuntimeError) as exc:
                        return type(exc).__name__, str(exc)
                    transport.close()
                    return "ok", ""

                coro = attempt()
                try:
                    coro.send(None)
                except StopIteration as stop:
                    results.append(stop.value)
                else:  # pragma: no cover - it awaited something on a closed loop
                    coro.close()
                    results.append(("awaited", ""))
            else:
                results.append(_outcome(loop, **kwargs))
        assert results[0] == results[1], (closed, results)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="sends through Linux's loopback interface 'lo'")
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("local", [None, ("127.0.0.1", 0), ("127.0.0.1", "fixed")], ids=["unbound", "port0", "fixed"])
def test_multicast_sender_options_are_set_before_the_protocol_can_send(base: str, local: Any) -> None:
    """Whichever way the sender's socket is made (ours, or libuv's own path), its TTL is in force at connection_made."""
    if local is not None and local[1] == "fixed":
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            local = ("127.0.0.1", probe.getsockname()[1])
    seen: list[int] = []

    class Sender(asyncio.DatagramProtocol):
        def connection_made(self, transport: Any) -> None:
            sock = transport.get_extra_info("socket")
            seen.append(sock.getsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_TTL))

    async def main() -> tuple[Any, Any]:
        loop: Any = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            Sender,
            local_addr=local,
            remote_addr=("239.1.2.3", 5000),
            multicast=aioexclusive.Multicast(interface="lo", ttl=3),
        )
        try:
            return transport.get_protocol(), protocol
        finally:
            transport.close()
            await asyncio.sleep(0)

    held, returned = _run(main, aioexclusive.new_event_loop(base=base))
    assert seen == [3]
    assert isinstance(returned, Sender) and held is returned  # the caller's protocol, not a stand-in
