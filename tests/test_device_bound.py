"""TCP listeners bound to one network interface (Linux): refused, because nothing can protect them.

A socket bound to one interface (``SO_BINDTODEVICE``, or an IPv6 link-local
address, whose scope id binds it to its interface) is not in conflict with a
socket bound to *another* interface. Another user binds a ``SO_REUSEPORT``
prime on the wildcard of another interface, which sets the port's bind fast
path for that user, closes it, and then binds the listener's own address and
interface with ``SO_REUSEPORT`` and ``SO_INCOMING_CPU``: the fast path skips
the conflict check and the newcomer wins the listener's connections (red team
4, F6/F7). No hold socket of ours can conflict with the prime without
conflicting with the listener, so the exclusive loop refuses such a listener
with ``ExclusivityError`` (docs/limits.md).

The attacks need interfaces besides ``lo``: this file re-runs itself inside a
network namespace it creates (``unshare --net``), with two veth pairs.
The controls show the plain base loop losing connections to the same attack.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # the re-run inside the namespace: helpers as pytest's pythonpath gives them
    sys.path.insert(0, HERE)

from attacker import take_from_another_interface  # noqa: E402
from harness import require_own_netns, run_in_own_netns  # noqa: E402

import aioexclusive  # noqa: E402

SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
LINK_LOCAL = "fe80::1"
CLIENTS = 20


# ---------------------------------------------------------------------------
# Inside the namespace
# ---------------------------------------------------------------------------


def _setup_namespace() -> None:
    require_own_netns()
    # No duplicate address detection: the address is usable at once (not "tentative").
    with open("/proc/sys/net/ipv6/conf/default/accept_dad", "w") as f:
        f.write("0")
    for args in (
        ["link", "set", "lo", "up"],
        # veth pairs: this kernel may have no dummy driver; each pair is two interfaces of its own.
        ["link", "add", "victim0", "type", "veth", "peer", "name", "victim1"],
        ["link", "add", "other0", "type", "veth", "peer", "name", "other1"],
        *(["link", "set", name, "up"] for name in ("victim0", "victim1", "other0", "other1")),
        ["-6", "addr", "add", f"{LINK_LOCAL}/64", "dev", "victim0", "nodad"],
    ):
        subprocess.run(["ip", *args], check=True)


def _two_step_from_another_interface(
    port: int, prime_host: str, thief: tuple[Any, ...], device: bytes | None
) -> tuple[str, int]:
    return take_from_another_interface(port, prime_host, thief, device, prime_device=b"other0", clients=CLIENTS)


def _free_after(sockaddr: tuple[Any, ...]) -> bool:
    """Nothing of ours was left on the address: a plain socket binds it."""
    family = socket.AF_INET6 if len(sockaddr) == 4 else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind(sockaddr)
        except OSError:
            return False
    return True


def _device_bound_socket(port: int) -> socket.socket:
    """A plain TCP listener on 127.0.0.1:*port* bound to lo with SO_BINDTODEVICE (root may)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")
    sock.bind(("127.0.0.1", port))
    sock.listen(64)
    return sock


def _bases() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def _loop(base: str, exclusive: bool) -> asyncio.AbstractEventLoop:
    if base == "uvloop":
        import uvloop

        return aioexclusive.new_event_loop(base=uvloop.Loop) if exclusive else uvloop.new_event_loop()
    return aioexclusive.new_event_loop() if exclusive else asyncio.new_event_loop()


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _scenarios() -> dict[str, Any]:
    _setup_namespace()
    index = socket.if_nametoindex("victim0")
    out: dict[str, Any] = {}
    port = 40000
    for base in _bases():
        # The control: the plain base loop's link-local listener is taken.
        port += 1
        plain = _loop(base, exclusive=False)
        try:
            server = plain.run_until_complete(plain.create_server(asyncio.Protocol, f"{LINK_LOCAL}%victim0", port))
            out[f"{base}-link-local-control"] = _two_step_from_another_interface(
                port, "::", (LINK_LOCAL, port, 0, index), None
            )
            server.close()
            plain.run_until_complete(server.wait_closed())
        finally:
            plain.close()
        # The exclusive loop refuses it, names it, and leaves nothing behind.
        port += 1
        before = _fds()
        loop = _loop(base, exclusive=True)
        try:
            loop.run_until_complete(loop.create_server(asyncio.Protocol, f"{LINK_LOCAL}%victim0", port))
            out[f"{base}-link-local"] = "served"
        except aioexclusive.ExclusivityError as exc:
            out[f"{base}-link-local"] = str(exc)
        finally:
            loop.close()
        out[f"{base}-link-local-clean"] = _free_after((LINK_LOCAL, port, 0, index)) and _fds() == before
        # sock= bound to an interface with SO_BINDTODEVICE: the control, then the refusal.
        port += 1
        plain = _loop(base, exclusive=False)
        given = _device_bound_socket(port)
        try:
            server = plain.run_until_complete(plain.create_server(asyncio.Protocol, sock=given))
            out[f"{base}-sock-control"] = _two_step_from_another_interface(port, "0.0.0.0", ("127.0.0.1", port), b"lo")
            server.close()
            plain.run_until_complete(server.wait_closed())
        finally:
            plain.close()
            given.close()
        port += 1
        loop = _loop(base, exclusive=True)
        given = _device_bound_socket(port)
        try:
            loop.run_until_complete(loop.create_server(asyncio.Protocol, sock=given))
            out[f"{base}-sock"] = "served"
        except aioexclusive.ExclusivityError as exc:
            out[f"{base}-sock"] = str(exc)
        finally:
            loop.close()
            # Refused, the caller's socket stays the caller's: still open, still listening.
            out[f"{base}-sock-kept"] = given.fileno() >= 0 and given.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN)
            given.close()
    # The public one-socket API too.
    port += 1
    try:
        aioexclusive.bind_socket((f"{LINK_LOCAL}%victim0", port), backlog=16).close()
        out["bind_socket"] = "served"
    except aioexclusive.ExclusivityError as exc:
        out["bind_socket"] = str(exc)
    # A link-local UDP endpoint is not refused: a UDP socket bound to another
    # interface receives only what arrives there (no fast path for UDP).
    port += 1
    loop = _loop("asyncio", exclusive=True)
    try:
        transport, _ = loop.run_until_complete(
            loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=(f"{LINK_LOCAL}%victim0", port))
        )
        out["udp"] = "served"
        transport.close()
        loop.run_until_complete(asyncio.sleep(0))
    finally:
        loop.close()
    return out


# ---------------------------------------------------------------------------
# The tests
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    result: dict[str, Any] = run_in_own_netns(__file__, "scenarios")
    return result


@pytest.mark.parametrize("base", _bases())
def test_control_a_plain_link_local_listener_is_taken(results: dict[str, Any], base: str) -> None:
    # Proves the harness sees the attack: the base loop's own listener loses connections.
    first, stolen = results[f"{base}-link-local-control"]
    assert first == "ok" and stolen > 0, (first, stolen)


@pytest.mark.parametrize("base", _bases())
def test_link_local_listener_is_refused(results: dict[str, Any], base: str) -> None:
    message = results[f"{base}-link-local"]
    assert message != "served"
    assert "one network interface" in message and "victim0" in message and "docs/limits.md" in message
    assert results[f"{base}-link-local-clean"], "a refused listener left a socket bound or a descriptor open"


@pytest.mark.parametrize("base", _bases())
def test_control_a_device_bound_sock_is_taken(results: dict[str, Any], base: str) -> None:
    first, stolen = results[f"{base}-sock-control"]
    assert first == "ok" and stolen > 0, (first, stolen)


@pytest.mark.parametrize("base", _bases())
def test_device_bound_sock_is_refused_and_left_to_its_owner(results: dict[str, Any], base: str) -> None:
    message = results[f"{base}-sock"]
    assert message != "served"
    assert "one network interface" in message and "on lo" in message, message
    assert results[f"{base}-sock-kept"]


def test_bind_socket_refuses_a_link_local_listener(results: dict[str, Any]) -> None:
    assert results["bind_socket"] != "served" and "one network interface" in results["bind_socket"]


def test_link_local_udp_endpoint_is_served(results: dict[str, Any]) -> None:
    assert results["udp"] == "served"


if __name__ == "__main__":
    if sys.argv[1:] == ["scenarios"]:
        print(json.dumps(_scenarios()))
