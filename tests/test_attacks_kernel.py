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

import pytest
from attacker import Attacker, send_traffic
from harness import needs_ipv6, run, run_plain
from services import LOOPBACK, WILDCARD, open_service

import aioexclusive

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel behaviour")

TRAFFIC = 20

# -- 1. the two-step SO_REUSEPORT takeover of a one-family wildcard listener ---------------------
#
# The victim family's wildcard listener; the attacker primes the *other*
# family's wildcard with SO_REUSEPORT, closes it, and binds a dual-stack [::]:P
# with SO_REUSEPORT + SO_INCOMING_CPU (docs/limits.md explains the kernel side).
TWO_STEP = {
    6: dict(prime_family=4, prime_host="0.0.0.0", prime_v6only=False, family=6, host="::"),
    4: dict(prime_family=6, prime_host="::", prime_v6only=True, family=6, host="::"),
}


def _send_from_cpu_0(family: int, port: int) -> None:
    # Loopback connections are processed on the sender's CPU; the attacker's
    # SO_INCOMING_CPU is 0, so sending from CPU 0 lets it win every lookup it
    # can, making the controls deterministic.
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        send_traffic("tcp", family, LOOPBACK[family], port, TRAFFIC)
    finally:
        os.sched_setaffinity(0, affinity)


def _two_step(attacker: Attacker, family: int, open_listener, plain: bool, base: str):  # type: ignore[no-untyped-def]
    async def scenario() -> tuple[object, str, int, int]:
        service = await open_listener()
        try:
            result, prime = attacker.two_step(service.port, **TWO_STEP[family])
            _send_from_cpu_0(family, service.port)
            stolen = attacker.collect(wait=0.5)
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
    async def listener():  # type: ignore[no-untyped-def]
        from services import adopt_service

        sock = aioexclusive.bind_socket((WILDCARD[family], 0), family=socket.AF_INET6 if family == 6 else 0)
        return await adopt_service("tcp", sock)

    result, prime, stolen, received = _two_step(other_user_attacker, family, listener, False, "asyncio")
    assert prime == "EADDRINUSE"
    assert not result.ok
    assert (stolen, received) == (0, TRAFFIC)


@needs_ipv6
def test_control_two_step_takes_over_a_plain_ipv6_wildcard_listener(other_user_attacker: Attacker, base: str) -> None:
    """The attack itself, against the plain loop: it must win, or the tests above prove nothing."""
    result, prime, stolen, received = _two_step(
        other_user_attacker, 6, lambda: open_service("tcp", "::"), True, base
    )
    assert prime == "bound"
    assert result.ok, f"control: the two-step attacker should co-bind a plain [::] listener, got {result}"
    assert stolen > 0, "control: co-bound but stole nothing"
    assert stolen + received == TRAFFIC


@needs_ipv6
def test_control_two_step_co_binds_a_plain_ipv4_wildcard_listener(other_user_attacker: Attacker, base: str) -> None:
    result, prime, _stolen, _received = _two_step(
        other_user_attacker, 4, lambda: open_service("tcp", "0.0.0.0"), True, base
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
def test_other_family_already_taken_by_someone_else_is_refused_loudly(same_user_attacker: Attacker, base: str) -> None:
    """A fixed port whose other family's wildcard another socket holds cannot be protected: AddressInUseError."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    taken = same_user_attacker.try_bind("tcp", 6, "::", port, ("SO_REUSEPORT",))
    assert taken.ok

    async def scenario() -> None:
        await open_service("tcp", "0.0.0.0", port)

    try:
        with pytest.raises(aioexclusive.AddressInUseError):
            run(scenario(), base)
    finally:
        same_user_attacker.collect(wait=0)
