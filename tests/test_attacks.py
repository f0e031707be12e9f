"""The attacker matrix (docs/design.md, "How it is tested"): real sockets, a real second process.

Every case passes only when the attacker's bind or listen fails *and* all our
traffic still reaches our server. The control cases at the end must show a
hijack with the same harness, so a harness that cannot see one fails loudly.
"""

from __future__ import annotations

import socket
import sys

import pytest
from attacker import OPTION_SETS, Attacker, BindResult, send_traffic
from harness import HAVE_UVLOOP, needs_ipv6, run, run_plain
from services import LOOPBACK, WILDCARD, adopt_service, open_service

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the attacker matrix encodes Linux rules")

TRAFFIC = 8
FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6", marks=needs_ipv6)]


def _attacker(request: pytest.FixtureRequest, who: str) -> Attacker:
    return request.getfixturevalue(f"{who}_attacker")  # type: ignore[no-any-return]


def _addresses(family: int, server_at: str, attacker_at: str) -> tuple[str, str]:
    server = WILDCARD[family] if server_at == "wildcard" else LOOPBACK[family]
    if attacker_at == "same":
        return server, server
    # The overlapping address of the other kind: the specific loopback under a
    # wildcard server, the wildcard over a loopback server.
    return server, LOOPBACK[family] if server_at == "wildcard" else WILDCARD[family]


@pytest.mark.parametrize("who", ["same_user", "other_user"])
@pytest.mark.parametrize("options", list(OPTION_SETS))
@pytest.mark.parametrize("attacker_at", ["same", "overlapping"])
@pytest.mark.parametrize("server_at", ["wildcard", "loopback"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_attacker_cannot_co_bind(
    request: pytest.FixtureRequest,
    base: str,
    proto: str,
    family: int,
    server_at: str,
    attacker_at: str,
    options: str,
    who: str,
) -> None:
    attacker = _attacker(request, who)
    server_host, attacker_host = _addresses(family, server_at, attacker_at)

    async def scenario() -> tuple[BindResult, int, int]:
        service = await open_service(proto, server_host)
        try:
            result = attacker.try_bind(proto, family, attacker_host, service.port, OPTION_SETS[options])
            send_traffic(proto, family, LOOPBACK[family], service.port, TRAFFIC)
            stolen = attacker.collect()
            received = await service.counter.wait_for(TRAFFIC - stolen)
        finally:
            await service.close()
        return result, stolen, received

    result, stolen, received = run(scenario(), base)
    assert not result.ok, f"{who} attacker with {options} co-bound {attacker_host} next to our {server_host}"
    assert stolen == 0
    assert received == TRAFFIC


@pytest.mark.parametrize("who", ["same_user", "other_user"])
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_callers_socket_stays_exclusive_after_adoption(
    request: pytest.FixtureRequest, base: str, proto: str, family: int, who: str
) -> None:
    """A clean socket the caller bound (sock=) is still exclusive once the loop adopted it.

    On uvloop this is the case where libuv's uv_udp_open turned SO_REUSEADDR on.
    """
    attacker = _attacker(request, who)
    if base == "uvloop" and proto == "udp":
        # uvloop makes a bound UDP sock= shareable before any code of ours runs
        # again: refused, see test_attacks_kernel.py for the racing attacker.
        pytest.skip(
            "a bound UDP sock= is refused on uvloop (test_uvloop_refuses_a_bound_udp_sock_and_names_local_addr)"
        )

    async def scenario() -> tuple[list[BindResult], int, int]:
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        sock = socket.socket(socket.AF_INET6 if family == 6 else socket.AF_INET, kind)
        sock.bind((LOOPBACK[family], 0))
        if proto == "tcp":
            sock.listen()
        service = await adopt_service(proto, sock)
        try:
            results = [
                attacker.try_bind(proto, family, LOOPBACK[family], service.port, OPTION_SETS[o]) for o in OPTION_SETS
            ]
            send_traffic(proto, family, LOOPBACK[family], service.port, TRAFFIC)
            stolen = attacker.collect()
            received = await service.counter.wait_for(TRAFFIC - stolen)
        finally:
            await service.close()
        return results, stolen, received

    results, stolen, received = run(scenario(), base)
    assert not any(r.ok for r in results), [str(r) for r in results]
    assert (stolen, received) == (0, TRAFFIC)


# -- controls: the same harness must see a hijack ------------------------------------------------

CONTROL_TRAFFIC = 64


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_control_plain_loop_with_reuse_port_is_hijacked(same_user_attacker: Attacker, base: str, proto: str) -> None:
    async def scenario() -> tuple[BindResult, int, int]:
        service = await open_service(proto, "127.0.0.1", reuse_port=True)
        try:
            result = same_user_attacker.try_bind(proto, 4, "127.0.0.1", service.port, OPTION_SETS["SO_REUSEPORT"])
            send_traffic(proto, 4, "127.0.0.1", service.port, CONTROL_TRAFFIC)
            stolen = same_user_attacker.collect(wait=1.0)
            received = await service.counter.wait_for(CONTROL_TRAFFIC - stolen)
        finally:
            await service.close()
        return result, stolen, received

    result, stolen, received = run_plain(scenario(), base)
    assert result.ok, f"control: the attacker should co-bind a reuse_port server, got {result}"
    assert stolen > 0, "control: the attacker co-bound but stole nothing; the harness cannot see a hijack"
    assert stolen + received == CONTROL_TRAFFIC


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_control_plain_uvloop_udp_sock_is_hijacked_by_another_user(other_user_attacker: Attacker) -> None:
    """bpo-37228-style: uv_udp_open sets SO_REUSEADDR on an adopted socket; any user can join."""

    async def scenario() -> tuple[BindResult, int, int, int]:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        service = await adopt_service("udp", sock)
        try:
            reuse = service.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            result = other_user_attacker.try_bind("udp", 4, "127.0.0.1", service.port, OPTION_SETS["SO_REUSEADDR"])
            send_traffic("udp", 4, "127.0.0.1", service.port, CONTROL_TRAFFIC)
            stolen = other_user_attacker.collect(wait=1.0)
            received = await service.counter.wait_for(CONTROL_TRAFFIC - stolen, timeout=1.0)
        finally:
            await service.close()
        return result, stolen, received, reuse

    result, stolen, received, reuse = run_plain(scenario(), "uvloop")
    assert reuse, "control: uvloop no longer sets SO_REUSEADDR on adopted UDP sockets"
    assert result.ok, f"control: another user should co-bind uvloop's UDP socket, got {result}"
    assert stolen > 0
    assert stolen + received == CONTROL_TRAFFIC
