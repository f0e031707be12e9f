"""Multicast: the plan's multicast rows, the request encodings, and real groups in a private network namespace.

Three layers:

* pure: the bind plan's ``Role.UDP_MULTICAST`` rows and the membership/sender
  encodings, for every platform, on every platform;
* refusals that happen before any socket exists (safe in the host's network
  namespace: nothing is bound, joined or sent);
* real multicast, only inside a network namespace each test creates: this file
  re-runs itself under ``unshare --net`` (as root), sets up ``lo`` (IPv4) and a
  veth pair (IPv6) there, and reports what it saw as JSON. The child refuses to
  run in the host's namespace, so no membership or datagram can leave through
  a real interface.
"""

from __future__ import annotations

import asyncio
import collections
import errno
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from typing import Any, cast

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from harness import BASES

import aioexclusive
from aioexclusive import ExclusivityError, Multicast
from aioexclusive._multicast_plan import (
    FACTS,
    Interface,
    is_multicast,
    membership_request,
    receiver_options,
    sender_options,
)
from aioexclusive._plan import PLATFORMS
from aioexclusive.lowlevel import Role, make_plan

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HOST_NETNS_VAR = "AIOEXCLUSIVE_TEST_HOST_NETNS"
N = 20  # datagrams per burst


def _exclusive_loop() -> Any:
    """The running (exclusive) loop, untyped: its create_datagram_endpoint takes multicast=, which
    asyncio's signature lacks, and the mixin's own signature does not say the protocol's type."""
    return asyncio.get_running_loop()


def _run(coro: Any, base: str) -> Any:
    return aioexclusive.run(coro, base=base)


# -- the plan's multicast rows, every platform ----------------------------------------

EXPECTED_ROWS = {
    # platform: (options set, options that must stay off, where to bind)
    "windows": ((("SO_REUSEADDR", 1),), ("SO_EXCLUSIVEADDRUSE",), "wildcard"),
    "linux": ((("SO_REUSEADDR", 1),), (), "address"),
    "bsd": ((("SO_REUSEPORT", 1),), (), "address"),
}


@pytest.mark.parametrize("platform", PLATFORMS)
def test_plan_multicast_row(platform: str) -> None:
    plan = make_plan(Role.UDP_MULTICAST, platform, address=("239.1.2.3", 5000))  # type: ignore[arg-type]
    sets, never, bind_to = EXPECTED_ROWS[platform]
    assert plan.set == sets
    assert plan.never == never
    assert plan.bind_to == bind_to
    assert plan.shared, "a multicast receiver shares its port by design"
    assert plan.role.protocol == "UDP"
    if platform == "windows":
        # Microsoft: SO_REUSEADDR is for multicast only, and never with SO_EXCLUSIVEADDRUSE (WSAEINVAL).
        assert "SO_EXCLUSIVEADDRUSE" not in dict(plan.set)
    assert set(plan.audited()) == {name for name, _ in sets} | set(never)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_plan_multicast_differs_from_unicast(platform: str) -> None:
    unicast = make_plan(Role.UDP_UNICAST, platform)  # type: ignore[arg-type]
    multicast = make_plan(Role.UDP_MULTICAST, platform)  # type: ignore[arg-type]
    # The sharing option the multicast row sets is one the unicast row forbids
    # (Windows: unicast is exclusive, multicast must not be).
    shared_option = multicast.set[0][0]
    assert shared_option in unicast.never or platform == "windows"
    if platform == "windows":
        assert unicast.set == (("SO_EXCLUSIVEADDRUSE", 1),)
        assert "SO_EXCLUSIVEADDRUSE" in multicast.never


@pytest.mark.parametrize("platform", ["linux", "bsd"])
def test_plan_multicast_reuse_port_still_needs_the_opt_in(platform: str) -> None:
    with pytest.raises(ExclusivityError, match="allow_reuse_port=True"):
        make_plan(Role.UDP_MULTICAST, platform, reuse_port=True, address=("239.1.2.3", 5000))  # type: ignore[arg-type]
    plan = make_plan(Role.UDP_MULTICAST, platform, reuse_port=True, allow_reuse_port=True)  # type: ignore[arg-type]
    assert ("SO_REUSEPORT", 1) in plan.set


def test_plan_multicast_reuse_port_refused_on_windows() -> None:
    with pytest.raises(ExclusivityError, match="Windows has no SO_REUSEPORT"):
        make_plan(Role.UDP_MULTICAST, "windows", reuse_port=True, allow_reuse_port=True)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_plan_multicast_reuse_address_is_not_an_error(platform: str) -> None:
    # reuse_address=True is what a multicast receiver gets anyway (on Windows and
    # Linux); it must not trip the unicast refusal.
    plan = make_plan(Role.UDP_MULTICAST, platform, reuse_address=True)  # type: ignore[arg-type]
    assert plan.set == EXPECTED_ROWS[platform][0]


# -- request encodings, every platform --------------------------------------------------

G4 = ipaddress.IPv4Address("239.1.2.3")
G6 = ipaddress.IPv6Address("ff02::1234")
S4 = ipaddress.IPv4Address("192.0.2.7")
S6 = ipaddress.IPv6Address("fe80::7")


@pytest.mark.parametrize("platform", PLATFORMS)
def test_ipv4_join_default_and_by_address(platform: str) -> None:
    default = membership_request(platform, G4, Interface())  # type: ignore[arg-type]
    assert (default.level, default.join, default.leave) == ("IPPROTO_IP", "IP_ADD_MEMBERSHIP", "IP_DROP_MEMBERSHIP")
    assert default.payload == G4.packed + b"\0\0\0\0"  # struct ip_mreq, INADDR_ANY
    by_address = membership_request(platform, G4, Interface(address="192.0.2.10"))  # type: ignore[arg-type]
    assert by_address.payload == G4.packed + bytes([192, 0, 2, 10])


def test_ipv4_join_by_index_per_platform() -> None:
    iface = Interface(index=7, label="interface 'x0'")
    linux = membership_request("linux", G4, iface)
    # struct ip_mreqn: group, address (any), int index in host order.
    assert linux.payload == G4.packed + b"\0\0\0\0" + struct.pack("@i", 7)
    windows = membership_request("windows", G4, iface)
    # Windows reads an interface "address" in 0.0.0.0/8 as an index, network order.
    assert windows.payload == G4.packed + bytes([0, 0, 0, 7])
    with pytest.raises(ValueError, match="by address only"):
        membership_request("bsd", G4, iface)


def test_ipv4_source_specific_layouts() -> None:
    addr = Interface(address="192.0.2.10")
    linux = membership_request("linux", G4, addr, S4)
    assert (linux.join, linux.leave) == ("IP_ADD_SOURCE_MEMBERSHIP", "IP_DROP_SOURCE_MEMBERSHIP")
    # Linux: group, interface, source.
    assert linux.payload == G4.packed + bytes([192, 0, 2, 10]) + S4.packed
    for platform in ("windows", "bsd"):
        other = membership_request(platform, G4, addr, S4)
        # Windows and the BSDs: group, source, interface.
        assert other.payload == G4.packed + S4.packed + bytes([192, 0, 2, 10])
    # An index on Linux goes through the protocol-independent request.
    by_index = membership_request("linux", G4, Interface(index=3), S4)
    assert by_index.join == "MCAST_JOIN_SOURCE_GROUP"
    offset = struct.calcsize("@IL") - struct.calcsize("@L")
    assert struct.unpack_from("@I", by_index.payload)[0] == 3
    assert by_index.payload[offset + 4 : offset + 8] == G4.packed
    assert by_index.payload[offset + 128 + 4 : offset + 128 + 8] == S4.packed
    assert len(by_index.payload) == offset + 256


@pytest.mark.parametrize("platform", PLATFORMS)
def test_ipv6_join(platform: str) -> None:
    request = membership_request(platform, G6, Interface(index=5))  # type: ignore[arg-type]
    assert (request.level, request.join, request.leave) == ("IPPROTO_IPV6", "IPV6_JOIN_GROUP", "IPV6_LEAVE_GROUP")
    assert request.payload == G6.packed + struct.pack("@I", 5)  # struct ipv6_mreq
    scoped = membership_request(platform, ipaddress.IPv6Address("ff02::1234%5"), Interface(index=5))  # type: ignore[arg-type]
    assert scoped.payload == request.payload


def test_ipv6_source_specific() -> None:
    linux = membership_request("linux", G6, Interface(index=5), S6)
    assert (linux.level, linux.join) == ("IPPROTO_IPV6", "MCAST_JOIN_SOURCE_GROUP")
    offset = struct.calcsize("@IL") - struct.calcsize("@L")
    group_storage = linux.payload[offset : offset + 128]
    assert struct.unpack_from("=H", group_storage)[0] == socket.AF_INET6
    assert group_storage[8:24] == G6.packed
    assert linux.payload[offset + 128 + 8 : offset + 128 + 24] == S6.packed
    for platform in ("windows", "bsd"):
        with pytest.raises(ValueError, match="only supported on Linux"):
            membership_request(platform, G6, Interface(index=5), S6)
    with pytest.raises(ValueError, match="is IPv4"):
        membership_request("linux", G6, Interface(index=5), S4)


def test_sender_options_per_platform() -> None:
    options = Multicast(ttl=4, loopback=False)
    linux = sender_options("linux", socket.AF_INET, options, Interface(index=2))
    assert [(o.name, o.value) for o in linux] == [
        ("IP_MULTICAST_IF", b"\0" * 8 + struct.pack("@i", 2)),
        ("IP_MULTICAST_TTL", 4),
        ("IP_MULTICAST_LOOP", 0),
    ]
    windows = sender_options("windows", socket.AF_INET, options, Interface(index=2))
    assert windows[0].value == bytes([0, 0, 0, 2])
    bsd = sender_options("bsd", socket.AF_INET, options, Interface(address="192.0.2.10"))
    # BSD documents these as u_char.
    assert [(o.name, o.value) for o in bsd] == [
        ("IP_MULTICAST_IF", bytes([192, 0, 2, 10])),
        ("IP_MULTICAST_TTL", b"\x04"),
        ("IP_MULTICAST_LOOP", b"\x00"),
    ]
    with pytest.raises(ValueError, match="by address only"):
        sender_options("bsd", socket.AF_INET, options, Interface(index=2))
    for platform in PLATFORMS:
        v6 = sender_options(platform, socket.AF_INET6, options, Interface(index=2))
        assert [(o.level, o.name, o.value) for o in v6] == [
            ("IPPROTO_IPV6", "IPV6_MULTICAST_IF", 2),
            ("IPPROTO_IPV6", "IPV6_MULTICAST_HOPS", 4),
            ("IPPROTO_IPV6", "IPV6_MULTICAST_LOOP", 0),
        ]
        assert sender_options(platform, socket.AF_INET, Multicast(), Interface()) == []


def test_receiver_options() -> None:
    # Linux delivers a group to every matching socket while *any* socket on the
    # host is a member, unless IP_MULTICAST_ALL is off: with it on, leaving
    # would not stop delivery.
    assert [(o.name, o.value) for o in receiver_options("linux", socket.AF_INET)] == [("IP_MULTICAST_ALL", 0)]
    assert [(o.name, o.value) for o in receiver_options("linux", socket.AF_INET6)] == [("IPV6_MULTICAST_ALL", 0)]
    assert receiver_options("windows", socket.AF_INET) == receiver_options("bsd", socket.AF_INET6) == []
    assert FACTS["linux"].constants["IP_MULTICAST_ALL"] == 49


def test_multicast_options_validation() -> None:
    assert Multicast() == Multicast(interface=None, ttl=None, loopback=None, source=None)
    cases: list[tuple[dict[str, Any], type[Exception], str]] = [
        ({"ttl": 256}, ValueError, "ttl"),
        ({"ttl": True}, TypeError, "ttl"),
        ({"ttl": "1"}, TypeError, "ttl"),
        ({"interface": 0}, ValueError, "interface"),
        ({"interface": True}, TypeError, "interface"),
        ({"interface": ""}, ValueError, "interface"),
        ({"interface": 1.5}, TypeError, "interface"),
        ({"loopback": 1}, TypeError, "loopback"),
        ({"source": "example.org"}, ValueError, "source"),
        ({"source": "239.1.1.1"}, ValueError, "source"),
        ({"source": 7}, TypeError, "source"),
    ]
    for bad, exc, match in cases:
        with pytest.raises(exc, match=match):
            Multicast(**bad)


def test_is_multicast() -> None:
    assert is_multicast("224.0.0.1") and is_multicast("239.255.255.255") and is_multicast("ff02::1%lo")
    assert not is_multicast("223.255.255.255") and not is_multicast("::1") and not is_multicast("localhost")


# -- refusals before any socket exists (host namespace: nothing is bound or joined) ----------


class Sink(asyncio.DatagramProtocol):
    pass


@pytest.fixture
def warm(base: str) -> str:
    """Run the base loop once first: uvloop's first loop opens a process-wide pipe that is not a leak."""
    _run(asyncio.sleep(0), base)
    return base


@pytest.fixture
def no_leak(warm: str, request: pytest.FixtureRequest) -> None:
    """conftest's no_fd_leak, where /proc/self/fd is this process's (under Wine it is Wine's own)."""
    if sys.platform != "win32":
        request.getfixturevalue("no_fd_leak")


async def _endpoint(**kwargs: Any) -> None:
    loop = _exclusive_loop()
    transport, _ = await loop.create_datagram_endpoint(Sink, **kwargs)
    transport.close()  # pragma: no cover - every caller expects a refusal


@pytest.mark.parametrize("base", BASES)
def test_not_multicast_is_refused(base: str, no_leak: None) -> None:
    with pytest.raises(ExclusivityError, match=r"127\.0\.0\.1 is not a multicast address"):
        _run(_endpoint(local_addr=("127.0.0.1", 0), multicast=True), base)
    with pytest.raises(ExclusivityError, match=r"::1 is not a multicast address"):
        _run(_endpoint(local_addr=("::1", 0), multicast=Multicast(ttl=1)), base)
    with pytest.raises(ExclusivityError, match=r"remote_addr \('127\.0\.0\.2', 9\)"):
        _run(_endpoint(remote_addr=("127.0.0.2", 9), multicast=True), base)


@pytest.mark.parametrize("base", BASES)
def test_missing_interface_fails_before_any_socket(base: str, no_leak: None) -> None:
    missing_index = max(index for index, _ in socket.if_nameindex()) + 1000
    cases: list[tuple[str | int, str]] = [("nosuch0", "'nosuch0'"), (missing_index, f"index {missing_index}")]
    for spec, shown in cases:
        with pytest.raises(OSError, match=f"multicast interface {shown} does not exist") as info:
            _run(_endpoint(local_addr=("239.1.2.3", 0), multicast=Multicast(interface=spec)), base)
        assert info.value.errno == errno.ENODEV
        assert "interfaces here:" in str(info.value)


@pytest.mark.parametrize("base", BASES)
def test_bad_requests(base: str, no_leak: None) -> None:
    with pytest.raises(TypeError, match="multicast must be True"):
        _run(_endpoint(local_addr=("239.1.2.3", 0), multicast="yes"), base)
    with pytest.raises(ValueError, match="can not have a remote_addr"):
        _run(_endpoint(local_addr=("239.1.2.3", 0), remote_addr=("239.1.2.3", 9), multicast=True), base)
    with pytest.raises(ValueError, match="link-scope group"):
        _run(_endpoint(local_addr=("ff02::1234", 0), multicast=True), base)
    with pytest.raises(ValueError, match="IPv4 address but the group is IPv6"):
        _run(_endpoint(local_addr=("ff02::1234", 0), multicast=Multicast(interface="127.0.0.1")), base)
    with pytest.raises(ExclusivityError, match="allow_reuse_port=True|Windows has no SO_REUSEPORT"):
        _run(_endpoint(local_addr=("239.1.2.3", 0), multicast=True, reuse_port=True), base)
    with pytest.raises(ValueError, match="pass family="):
        _run(_endpoint(multicast=True), base)
    with pytest.raises((TypeError, AssertionError), match="2-tuple is expected|must be a tuple of"):
        _run(_endpoint(local_addr="239.1.2.3", multicast=True), base)
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock,
        pytest.raises(ValueError, match="multicast= and sock= can not be combined"),
    ):
        _run(_endpoint(sock=sock, multicast=True), base)


@pytest.mark.parametrize("base", BASES[:1])
def test_sender_transport_knows_its_group(base: str, no_leak: None) -> None:
    """A connected sender is built with its peer, as asyncio's own remote_addr path builds it.

    Without that the Proactor loop (Windows' default) reads (data, addr) tuples
    and dies on its first sendto(data). Nothing is sent here: connecting a UDP
    socket sends no packet, and sendto to another address is refused before any
    system call, which is what this checks.
    """

    async def main() -> tuple[Any, str]:
        loop = _exclusive_loop()
        transport, _ = await loop.create_datagram_endpoint(
            Sink, remote_addr=("239.1.2.3", 9), multicast=Multicast(interface="127.0.0.1", loopback=False)
        )
        try:
            with pytest.raises(ValueError, match="Invalid address") as info:
                transport.sendto(b"never sent", ("127.0.0.1", 9))
            return transport.get_extra_info("peername"), str(info.value)
        finally:
            transport.close()
            await asyncio.sleep(0)

    peer, message = _run(main(), base)
    assert peer[:2] == ("239.1.2.3", 9)
    assert "239.1.2.3" in message


@pytest.mark.parametrize("base", BASES[:1])
def test_multicast_false_is_the_ordinary_endpoint(base: str, no_leak: None) -> None:
    async def main() -> tuple[str, int]:
        loop = _exclusive_loop()
        transport, _ = await loop.create_datagram_endpoint(Sink, local_addr=("127.0.0.1", 0), multicast=False)
        try:
            sock = transport.get_extra_info("socket")
            return type(transport).__name__, sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
        finally:
            transport.close()
            await asyncio.sleep(0)

    name, reuse = _run(main(), "asyncio")
    assert name != "MulticastTransport" and reuse == 0


# -- real groups, inside a private network namespace -----------------------------------------


def _netns_id() -> str:
    return os.readlink("/proc/self/ns/net")


def _namespace_unavailable() -> str | None:
    if not sys.platform.startswith("linux"):
        return "network namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating a network namespace needs root"
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], check=False, capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net is not permitted here: {probe.stderr.strip()}"
    return None


_UNAVAILABLE: list[str | None] = []


def in_namespace(*args: str, timeout: float = 60) -> dict[str, Any]:
    """Run this file's scenario *args* in a fresh network namespace; its JSON report."""
    if not _UNAVAILABLE:
        _UNAVAILABLE.append(_namespace_unavailable())
    if _UNAVAILABLE[0]:
        pytest.skip(_UNAVAILABLE[0])
    env = dict(os.environ)
    env[HOST_NETNS_VAR] = _netns_id()
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, os.path.abspath(__file__), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    if proc.returncode != 0:
        pytest.fail(f"namespace scenario {args} failed (rc {proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


FAMILIES = [pytest.param(4, id="ipv4"), pytest.param(6, id="ipv6")]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("base", BASES)
def test_receivers_share_a_group(base: str, family: int) -> None:
    r = in_namespace("share", base, str(family))
    assert r["netns_differs"]
    # The finished sockets carry exactly the plan's options (uvloop's
    # uv_udp_open sets SO_REUSEADDR on Linux: the plan's own option here).
    for name in ("A", "B", "C"):
        assert r["options"][name] == {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, (name, r["options"])
        assert r["bound"][name] == r["group"], "Linux receivers bind the group, so unicast stays out"
    assert r["transport_type"] == "MulticastTransport"
    # Two receivers in this process and one in another all joined and all got every datagram.
    assert r["members_after_join"] == 3
    assert r["first_burst"] == {"A": N, "B": N, "C": N}
    # Leaving stops delivery to that socket only; joining again restores it.
    assert r["members_after_leave"] == 2
    assert r["after_leave"] == {"A": 0, "B": N, "C": N}
    assert r["after_rejoin"] == {"A": N, "B": N}
    # get_protocol/set_protocol see the application's protocol through the wrapper.
    assert r["protocol_swap"] == {"get_protocol_is_app": True, "old": 0, "new": N, "after_set": True}
    # Closing leaves explicitly: a dup of the socket (an inherited fd) keeps the
    # socket alive, yet its membership is gone and it receives nothing.
    assert r["connection_lost_called"]
    assert r["members_after_close_with_dup"] == 2
    assert r["dup_received"] == 0
    # Unicast endpoints opened meanwhile stay exclusive: every attacker bind failed...
    holes = [a for a in r["attacks"] if a["bound"]]
    assert not holes, holes
    assert len(r["attacks"]) == 2 * len(("none", "SO_REUSEADDR", "SO_REUSEPORT", "both")) * 2
    # ...and every datagram reached the exclusive endpoint.
    assert r["unicast_received"] == 10
    # The control: the same attacker does take a plain SO_REUSEADDR UDP port.
    assert r["control_hijacked"]
    assert r["old_protocol_not_told"]
    assert r["fds_leaked"] == []
    assert r["members_at_end"] == 0


@pytest.mark.parametrize("base", BASES)
def test_source_specific_and_errors(base: str) -> None:
    r = in_namespace("ssm", base)
    # Only the chosen sender gets through, by interface name (MCAST_JOIN_SOURCE_GROUP)
    # and by address (IP_ADD_SOURCE_MEMBERSHIP); the witness without a source gets both.
    assert r["ssm_v4"] == {
        "by_name": {"127.0.0.2": N, "127.0.0.3": 0},
        "by_address": {"127.0.0.2": N, "127.0.0.3": 0},
        "witness": {"127.0.0.2": N, "127.0.0.3": N},
    }
    assert r["ssm_v6"] == {"filtered": {"v1": N, "v0": 0}, "witness": {"v1": N, "v0": N}}
    assert r["witness_index_is_v0"]
    errors = r["errors"]
    # Linux: EADDRNOTAVAIL for an interface address no interface has.
    assert errors["address_not_here"]["errno"] in (errno.EADDRNOTAVAIL, errno.ENODEV)
    assert (
        "could not join multicast group 239.1.2.9 on the interface with address 192.0.2.77"
        in (errors["address_not_here"]["message"])
    )
    assert errors["group_port_held_by_unicast"]["type"] == "AddressInUseError"
    assert errors["unicast_after_multicast"]["type"] == "AddressInUseError"
    assert errors["no_route_default_interface"]["errno"] == errno.ENODEV
    assert r["fds_leaked"] == []


def test_example_announces_to_listeners() -> None:
    r = in_namespace("example")
    # Two listeners share the group's port; each hears both announcements.
    assert len(r["listeners"]) == 2
    for lines in r["listeners"]:
        assert len(lines) == 2 and all(
            line.startswith("printer at ") and line.endswith(" port 631") for line in lines
        ), r


# ============================================================================================
# The namespace side: everything below runs only in the child started by in_namespace().
# ============================================================================================


def _sh(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


def _setup_namespace(ipv6: bool) -> None:
    if os.environ.get(HOST_NETNS_VAR) in (None, _netns_id()):
        # Never touch (let alone join or send on) the host's interfaces.
        raise SystemExit("refusing to run: not inside a network namespace of the test's own making")
    _sh("ip", "link", "set", "lo", "up")
    _sh("ip", "link", "set", "lo", "multicast", "on")
    if ipv6:
        # No duplicate address detection: the link-local addresses are usable at once.
        for scope in ("all", "default"):
            with open(f"/proc/sys/net/ipv6/conf/{scope}/accept_dad", "w") as f:
                f.write("0")
        _sh("ip", "link", "add", "v0", "type", "veth", "peer", "name", "v1")
        _sh("ip", "link", "set", "v0", "up")
        _sh("ip", "link", "set", "v1", "up")
        deadline = time.monotonic() + 10
        while any(_link_local(dev) is None for dev in ("v0", "v1")):
            if time.monotonic() > deadline:
                raise RuntimeError("the veth pair got no usable link-local addresses")
            time.sleep(0.05)


def _link_local(dev: str) -> str | None:
    out = subprocess.run(
        ["ip", "-6", "-o", "addr", "show", "dev", dev, "scope", "link"], check=False, capture_output=True, text=True
    )
    for line in out.stdout.splitlines():
        if "tentative" not in line and " inet6 " in line:
            return line.split(" inet6 ")[1].split("/")[0]
    return None


def _members(group: str) -> int:
    """How many sockets on this host are members of *group*, from the kernel's own table."""
    address = ipaddress.ip_address(group.split("%")[0])
    total = 0
    if address.version == 4:
        # The kernel prints the raw __be32 with %08X, so the bytes read reversed on little-endian hosts.
        wanted = (address.packed[::-1] if sys.byteorder == "little" else address.packed).hex().upper()
        with open("/proc/net/igmp") as table:
            for line in table:
                fields = line.split()
                if line.startswith("\t") and fields and fields[0] == wanted:
                    total += int(fields[1])
    else:
        with open("/proc/net/igmp6") as table:
            for line in table:
                fields = line.split()
                if len(fields) >= 4 and fields[2] == address.packed.hex():
                    total += int(fields[3])
    return total


def _fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


class Rx(asyncio.DatagramProtocol):
    """Counts datagrams by their tag (``b"tag:n"``) and sender; ``tag:end`` marks a burst's end."""

    def __init__(self) -> None:
        self.counts: collections.Counter[str] = collections.Counter()
        self.by_sender: collections.Counter[tuple[str, Any]] = collections.Counter()
        self.ends: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.lost = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: Any) -> None:
        tag, _, n = data.decode().partition(":")
        if n == "end":
            self.ends[tag].set()
        else:
            self.counts[tag] += 1
            self.by_sender[(tag, addr[0])] += 1

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.lost.done():
            self.lost.set_result(exc)

    async def wait(self, tag: str) -> None:
        await asyncio.wait_for(self.ends[tag].wait(), 10)


def _options(transport: Any) -> dict[str, int]:
    sock = transport.get_extra_info("socket")
    return {
        name: sock.getsockopt(socket.SOL_SOCKET, getattr(socket, name)) for name in ("SO_REUSEADDR", "SO_REUSEPORT")
    }


async def _settle() -> None:
    # A copy for a socket that should not get it would be queued in the same
    # kernel pass as the witness's; a few loop turns read it if it exists.
    for _ in range(5):
        await asyncio.sleep(0.02)


def _burst(sender: Any, tag: str, count: int = N) -> None:
    for i in range(count):
        sender.sendto(f"{tag}:{i}".encode())
    sender.sendto(f"{tag}:end".encode())


# -- scenario "share": receivers in two processes, leave, close, attackers ---------------------


def _scenario_share(base: str, family: int) -> dict[str, Any]:
    from attacker import NOBODY, OPTION_SETS, Attacker, send_traffic

    _setup_namespace(ipv6=family == 6)
    if family == 4:
        group, port = "239.1.2.3", 5353
        recv_a: Any = True  # the OS's choice: the namespace routes 224/4 to lo
        recv_b: Any = Multicast(interface=socket.if_nametoindex("lo"))
        send_opts = Multicast(interface="lo", loopback=True, ttl=1)
        local_b = (group, port)
        unicast_host, wildcard = "127.0.0.1", "0.0.0.0"
        _sh("ip", "route", "add", "224.0.0.0/4", "dev", "lo")
    else:
        group, port = "ff02::1234", 5353
        recv_a = Multicast(interface="v0")
        recv_b = True
        local_b = (f"{group}%v0", port)
        # Sent from the peer end, so the datagrams really cross the veth link.
        send_opts = Multicast(interface="v1", ttl=1)
        unicast_host, wildcard = "::1", "::"
    attackers = [Attacker(), Attacker(uid=NOBODY)]
    _run(asyncio.sleep(0), base)  # uvloop's first loop opens a process-wide pipe: not a leak
    fds_before = _fds()
    report: dict[str, Any] = {"netns_differs": _netns_id() != os.environ[HOST_NETNS_VAR], "group": group}

    async def main() -> None:
        loop = _exclusive_loop()
        ta, pa = await loop.create_datagram_endpoint(Rx, local_addr=(group, port), multicast=recv_a)
        tb, pb = await loop.create_datagram_endpoint(Rx, local_addr=local_b, multicast=recv_b)
        report["transport_type"] = type(ta).__name__
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            os.path.abspath(__file__),
            "receiver",
            base,
            str(family),
            group,
            str(port),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdout is not None and child.stdin is not None

        async def child_line() -> Any:
            line = await asyncio.wait_for(child.stdout.readline(), 20)  # type: ignore[union-attr]
            if not line:
                raise RuntimeError("the second receiver process died")
            return json.loads(line)

        ready = await child_line()
        report["options"] = {"A": _options(ta), "B": _options(tb), "C": ready["options"]}
        report["bound"] = {
            "A": ta.get_extra_info("sockname")[0],
            "B": tb.get_extra_info("sockname")[0],
            "C": ready["bound"],
        }
        report["members_after_join"] = _members(group)
        sender, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(group, port), multicast=send_opts
        )

        _burst(sender, "d")
        await pa.wait("d")
        await pb.wait("d")
        report["first_burst"] = {"A": pa.counts["d"], "B": pb.counts["d"], "C": (await child_line())["count"]}

        cast(aioexclusive.MulticastTransport, ta).leave_group()
        report["members_after_leave"] = _members(group)
        _burst(sender, "e")
        await pb.wait("e")
        c_count = (await child_line())["count"]
        await _settle()
        report["after_leave"] = {"A": pa.counts["e"], "B": pb.counts["e"], "C": c_count}

        cast(aioexclusive.MulticastTransport, ta).join_group()
        _burst(sender, "f")
        await pa.wait("f")
        await pb.wait("f")
        await child_line()
        report["after_rejoin"] = {"A": pa.counts["f"], "B": pb.counts["f"]}

        # set_protocol through the wrapper
        pb2 = Rx()
        get_is_app = tb.get_protocol() is pb
        tb.set_protocol(pb2)
        _burst(sender, "g")
        await pb2.wait("g")
        await child_line()
        report["protocol_swap"] = {
            "get_protocol_is_app": get_is_app,
            "old": pb.counts["g"],
            "new": pb2.counts["g"],
            "after_set": tb.get_protocol() is pb2,
        }

        # Close A while a dup of its socket lives on (as an inherited fd would).
        dup = socket.socket(fileno=os.dup(ta.get_extra_info("socket").fileno()))
        dup.setblocking(False)
        ta.close()
        await asyncio.wait_for(pa.lost, 10)
        report["connection_lost_called"] = True
        report["members_after_close_with_dup"] = _members(group)
        _burst(sender, "h")
        await pb2.wait("h")
        await child_line()
        await _settle()
        received = 0
        while True:
            try:
                dup.recv(2048)
                received += 1
            except BlockingIOError:
                break
        dup.close()
        report["dup_received"] = received

        # Unicast endpoints opened meanwhile stay exclusive.
        rx_u, p_u = await loop.create_datagram_endpoint(Rx, local_addr=(unicast_host, 0))
        uport = rx_u.get_extra_info("sockname")[1]
        attacks = []
        for attacker in attackers:
            for host in (unicast_host, wildcard):
                for name, options in OPTION_SETS.items():
                    result = attacker.try_bind("udp", family, host, uport, options)
                    if result.ok:
                        attacker.collect(wait=0)
                    attacks.append({"uid": attacker.uid, "host": host, "options": name, "bound": result.ok})
        report["attacks"] = attacks
        await loop.run_in_executor(None, send_traffic, "udp", family, unicast_host, uport, 10)
        deadline = loop.time() + 10
        while sum(p_u.counts.values()) < 10 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        report["unicast_received"] = sum(p_u.counts.values())
        rx_u.close()
        # Control: a plain SO_REUSEADDR UDP socket is taken by the same attacker.
        plain = socket.socket(socket.AF_INET if family == 4 else socket.AF_INET6, socket.SOCK_DGRAM)
        plain.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        plain.bind((unicast_host, 0))
        hijack = attackers[1].try_bind("udp", family, unicast_host, plain.getsockname()[1], ("SO_REUSEADDR",))
        if hijack.ok:
            attackers[1].collect(wait=0)
        plain.close()
        report["control_hijacked"] = hijack.ok

        child.stdin.close()
        await child.wait()
        tb.close()
        sender.close()
        await asyncio.wait_for(pb2.lost, 10)  # the protocol set last is the one told
        report["old_protocol_not_told"] = not pb.lost.done()
        await asyncio.sleep(0)
        report["members_at_end"] = _members(group)

    _run(main(), base)
    for attacker in attackers:
        attacker.close()
    report["fds_leaked"] = sorted(_fds() - fds_before)
    return report


def _receiver_process(base: str, family: int, group: str, port: int) -> None:
    """The second process: one receiver; reports its options, then a count per finished burst."""

    def emit(**data: Any) -> None:
        sys.stdout.write(json.dumps(data) + "\n")
        sys.stdout.flush()

    async def main() -> None:
        loop = _exclusive_loop()
        options: Any = True if family == 4 else Multicast(interface="v0")
        transport, rx = await loop.create_datagram_endpoint(Rx, local_addr=(group, port), multicast=options)
        emit(options=_options(transport), bound=transport.get_extra_info("sockname")[0])
        stop = loop.create_future()

        def on_stdin() -> None:
            # EOF on stdin (the parent closed it) stops the receiver.
            if not stop.done() and not os.read(sys.stdin.fileno(), 1024):
                stop.set_result(None)

        loop.add_reader(sys.stdin.fileno(), on_stdin)

        async def report(tag: str) -> None:
            await rx.ends[tag].wait()
            emit(tag=tag, count=rx.counts[tag])

        reporters = [asyncio.ensure_future(report(tag)) for tag in "defgh"]
        await stop
        loop.remove_reader(sys.stdin.fileno())
        for task in reporters:
            task.cancel()
        transport.close()
        await rx.lost

    _run(main(), base)


# -- scenario "ssm": source-specific joins and the errors -----------------------------------------


def _scenario_ssm(base: str) -> dict[str, Any]:
    _setup_namespace(ipv6=True)
    report: dict[str, Any] = {}
    _run(asyncio.sleep(0), base)  # uvloop's first loop opens a process-wide pipe: not a leak
    fds_before = _fds()

    async def main() -> None:
        loop = _exclusive_loop()
        # IPv4 SSM on lo, senders told apart by their bound source address.
        group, port = "232.1.1.1", 6000
        receivers = {
            "by_name": Multicast(interface="lo", source="127.0.0.2"),
            "by_address": Multicast(interface="127.0.0.1", source="127.0.0.2"),
            "witness": Multicast(interface="lo"),
        }
        opened = {
            key: await loop.create_datagram_endpoint(Rx, local_addr=(group, port), multicast=opts)
            for key, opts in receivers.items()
        }
        senders = {}
        for source in ("127.0.0.3", "127.0.0.2"):  # the accepted sender last: its end marker closes the burst
            senders[source], _ = await loop.create_datagram_endpoint(
                asyncio.DatagramProtocol,
                local_addr=(source, 0),
                remote_addr=(group, port),
                multicast=Multicast(interface="lo"),
            )
        for sender in senders.values():
            for i in range(N):
                sender.sendto(f"s:{i}".encode())
        senders["127.0.0.2"].sendto(b"s:end")
        for _, rx in opened.values():
            await rx.wait("s")
        await _settle()
        report["ssm_v4"] = {
            key: {source: rx.by_sender[("s", source)] for source in senders} for key, (_, rx) in opened.items()
        }
        for transport, _ in opened.values():
            transport.close()
        for sender in senders.values():
            sender.close()

        # IPv6 SSM over the veth pair: accept only the peer end's address.
        group6 = "ff02::5353"
        v1_addr, v0_addr = _link_local("v1"), _link_local("v0")
        t_f, r_f = await loop.create_datagram_endpoint(
            Rx, local_addr=(group6, port), multicast=Multicast(interface="v0", source=v1_addr)
        )
        # The witness names v0 by its link-local address (no scope): found in the kernel's address table.
        t_w, r_w = await loop.create_datagram_endpoint(
            Rx, local_addr=(group6, port), multicast=Multicast(interface=v0_addr)
        )
        report["witness_index_is_v0"] = t_w.get_extra_info("sockname")[3] == socket.if_nametoindex("v0")
        from_v0, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(group6, port), multicast=Multicast(interface="v0", loopback=True)
        )
        from_v1, _ = await loop.create_datagram_endpoint(
            asyncio.DatagramProtocol, remote_addr=(group6, port), multicast=Multicast(interface="v1")
        )
        for i in range(N):
            from_v0.sendto(f"s:{i}".encode())
        for i in range(N):
            from_v1.sendto(f"s:{i}".encode())
        from_v1.sendto(b"s:end")
        await r_f.wait("s")
        await r_w.wait("s")
        await _settle()
        names = {v1_addr: "v1", v0_addr: "v0"}
        report["ssm_v6"] = {
            key: {names[addr]: rx.by_sender[("s", addr)] for addr in names}
            for key, rx in (("filtered", r_f), ("witness", r_w))
        }
        for t in (t_f, t_w, from_v0, from_v1):
            t.close()

        errors: dict[str, Any] = {}

        async def expect(key: str, **kwargs: Any) -> None:
            try:
                transport, _ = await loop.create_datagram_endpoint(Rx, **kwargs)
            except OSError as exc:
                errors[key] = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
            else:
                transport.close()
                errors[key] = {"type": None}

        await expect("address_not_here", local_addr=("239.1.2.9", port), multicast=Multicast(interface="192.0.2.77"))
        # No route for 224/4 in this namespace: the OS cannot choose an interface.
        await expect("no_route_default_interface", local_addr=("239.1.2.9", port), multicast=True)
        held, _ = await loop.create_datagram_endpoint(Rx, local_addr=("239.1.2.9", port))  # exclusive, no multicast
        await expect("group_port_held_by_unicast", local_addr=("239.1.2.9", port), multicast=Multicast(interface="lo"))
        held.close()
        await asyncio.sleep(0)
        shared, _ = await loop.create_datagram_endpoint(
            Rx, local_addr=("239.1.2.9", port), multicast=Multicast(interface="lo")
        )
        await expect("unicast_after_multicast", local_addr=("239.1.2.9", port))
        shared.close()
        await asyncio.sleep(0.05)
        report["errors"] = errors

    _run(main(), base)
    report["fds_leaked"] = sorted(_fds() - fds_before)
    return report


# -- scenario "example": the example's listeners and announcer -------------------------------------


def _scenario_example() -> dict[str, Any]:
    _setup_namespace(ipv6=False)
    script = os.path.join(ROOT, "examples", "multicast_announce.py")
    listeners = [
        subprocess.Popen(
            [sys.executable, script, "listen", "--interface", "lo", "--count", "2"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for proc in listeners:
        assert proc.stderr is not None
        proc.stderr.readline()  # "listening on ..." once joined
    subprocess.run(
        [
            sys.executable,
            script,
            "announce",
            "--interface",
            "lo",
            "--name",
            "printer",
            "--port",
            "631",
            "--count",
            "2",
            "--interval",
            "0.05",
        ],
        check=True,
        timeout=30,
    )
    out = [proc.communicate(timeout=30)[0].splitlines() for proc in listeners]
    return {"listeners": out}


if __name__ == "__main__":
    command, *rest = sys.argv[1:]
    if command == "receiver":
        _receiver_process(rest[0], int(rest[1]), rest[2], int(rest[3]))
        sys.exit(0)
    if command == "share":
        result = _scenario_share(rest[0], int(rest[1]))
    elif command == "ssm":
        result = _scenario_ssm(rest[0])
    elif command == "example":
        result = _scenario_example()
    else:
        raise SystemExit(f"unknown scenario {command!r}")
    print(json.dumps(result))
