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
            transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, **kwargs
            )
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

        async def main() -> int:
            loop = asyncio.get_running_loop()
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
            return cancelled

        before = _open_fds()
        loop = aioexclusive.new_event_loop(base=base)
        cancelled = _run(main, loop)
        gc.collect()
        assert cancelled >= 1
        assert _open_fds() - before == set()


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
