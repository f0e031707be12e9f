"""The shortcuts the benchmarks asked for must not change any result.

`numeric_addrinfo` answers for IP literals without calling ``getaddrinfo``;
it must give exactly what ``getaddrinfo(..., AI_NUMERICHOST)`` gives, or step
aside. The loop's plan cache must give exactly what `make_plan` gives.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

import aioexclusive
from aioexclusive import ExclusivityError
from aioexclusive._binding import numeric_addrinfo
from aioexclusive.lowlevel import Role, make_plan

HAS_IPV6 = socket.has_ipv6

LITERALS = ["127.0.0.1", "0.0.0.0", "10.1.2.3", "255.255.255.255"]
if HAS_IPV6:
    LITERALS += ["::1", "::", "::0001", "fe80::1", "::ffff:127.0.0.1", "2001:db8::abcd:0:1"]


@pytest.mark.parametrize("host", LITERALS)
@pytest.mark.parametrize("kind", [socket.SOCK_STREAM, socket.SOCK_DGRAM])
@pytest.mark.parametrize("family", [0, socket.AF_INET, socket.AF_INET6])
@pytest.mark.parametrize("port", [0, 53, 65535])
def test_literal_matches_getaddrinfo(host: str, kind: int, family: int, port: int) -> None:
    try:
        expected = socket.getaddrinfo(host, port, family, kind, 0, socket.AI_PASSIVE | socket.AI_NUMERICHOST)
    except socket.gaierror:
        # Wrong family for this literal: the shortcut must step aside so that
        # getaddrinfo raises its own error.
        assert numeric_addrinfo(host, port, family=family, type=kind, flags=socket.AI_PASSIVE) is None
        return
    got = numeric_addrinfo(host, port, family=family, type=kind, flags=socket.AI_PASSIVE)
    native = socket.AF_INET6 if ":" in host else socket.AF_INET
    if got is None:
        # Stepping aside is always safe; it is only allowed where getaddrinfo
        # does something clever (glibc answers an IPv4-mapped IPv6 literal
        # asked for as AF_INET with the IPv4 address).
        assert family not in (0, native)
        return
    assert got == expected
    # Same types too: callers pass these on to socket.socket() and to the base loop.
    assert [tuple(type(x) for x in info[:3]) for info in got] == [tuple(type(x) for x in info[:3]) for info in expected]


@pytest.mark.parametrize(
    ("host", "port", "kwargs"),
    [
        ("localhost", 0, {}),  # a name: DNS is getaddrinfo's business
        ("127.1", 0, {}),  # inet_aton shorthand, which getaddrinfo accepts and inet_pton does not
        ("fe80::1%lo", 0, {}),  # scoped
        ("127.0.0.1", "http", {}),  # service name
        ("127.0.0.1", True, {}),
        ("127.0.0.1", 65536, {}),
        ("127.0.0.1", -1, {}),
        (None, 0, {}),  # the wildcard, which depends on AI_PASSIVE
        (b"127.0.0.1", 0, {}),
        ("127.0.0.1", 0, {"type": socket.SOCK_RAW}),
        ("127.0.0.1", 0, {"type": socket.SOCK_STREAM, "proto": socket.IPPROTO_UDP}),
        ("127.0.0.1", 0, {"flags": socket.AI_CANONNAME}),
    ],
)
def test_anything_else_goes_to_getaddrinfo(host: object, port: object, kwargs: dict[str, int]) -> None:
    assert numeric_addrinfo(host, port, **kwargs) is None


def test_explicit_proto_is_kept() -> None:
    got = numeric_addrinfo("127.0.0.1", 1, type=socket.SOCK_DGRAM, proto=socket.IPPROTO_UDP)
    assert got == socket.getaddrinfo("127.0.0.1", 1, 0, socket.SOCK_DGRAM, socket.IPPROTO_UDP, socket.AI_NUMERICHOST)


@pytest.mark.parametrize("allow", [False, True])
@pytest.mark.parametrize("role", [Role.TCP_LISTENER, Role.UDP_UNICAST, Role.FIXED_PORT_CLIENT])
@pytest.mark.parametrize("reuse_address", [None, False, True, 0, 1])
@pytest.mark.parametrize("reuse_port", [None, False, True, 0])
def test_loop_plan_is_make_plan(allow: bool, role: Role, reuse_address: Any, reuse_port: Any) -> None:
    loop = aioexclusive.new_event_loop(allow_reuse_port=allow)
    try:
        for _ in range(2):  # the second call may come from the cache
            try:
                expected = make_plan(
                    role,
                    reuse_address=reuse_address,
                    reuse_port=reuse_port,
                    allow_reuse_port=allow,
                    address=("127.0.0.1", 1),
                )
            except ExclusivityError as exc:
                with pytest.raises(ExclusivityError) as info:
                    loop._plan(role, reuse_address=reuse_address, reuse_port=reuse_port, address=("127.0.0.1", 1))  # type: ignore[attr-defined]
                assert str(info.value) == str(exc)
                continue
            got = loop._plan(role, reuse_address=reuse_address, reuse_port=reuse_port, address=("127.0.0.1", 1))  # type: ignore[attr-defined]
            assert got == expected
    finally:
        loop.close()


def test_false_and_zero_are_different_requests() -> None:
    # make_plan drops SO_REUSEADDR from a TCP listener only for an explicit
    # reuse_address=False; 0 == False as a dict key, so the cache must not mix them.
    loop = aioexclusive.new_event_loop()
    try:
        first = loop._plan(Role.TCP_LISTENER, reuse_address=False)  # type: ignore[attr-defined]
        second = loop._plan(Role.TCP_LISTENER, reuse_address=0)  # type: ignore[attr-defined]
    finally:
        loop.close()
    assert first == make_plan(Role.TCP_LISTENER, reuse_address=False)
    assert second == make_plan(Role.TCP_LISTENER, reuse_address=0)  # type: ignore[arg-type]
