"""``python -m aioexclusive probe``: it must find what an attacker can do (issue 14), without disturbing the service.

Every victim here is built from plain sockets (or a real gRPC server), so the
tests do not depend on how the library itself binds; every finding the probe
reports is checked against a real attacker that takes the connections, and
every "exclusive" against the same attacker failing.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from attacker import NOBODY, FastPathAttacker, become_stranger, connections_reaching
from harness import IS_ROOT, needs_ipv6, port_free_on_both_families

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel rules and /proc")

HIDE_PSUTIL = "import sys\nsys.modules['psutil'] = None"
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root (another user's attacker, namespaces)")


def probe_cli(*args: str, pre: str = "") -> tuple[int, dict]:  # type: ignore[type-arg]
    """``python -m aioexclusive probe ARGS --json`` in a subprocess (*pre*: Python run first)."""
    argv = ["probe", *args, "--json"]
    command = [sys.executable, "-c", f"{pre}\nimport sys\nfrom aioexclusive._cli import main\nsys.exit(main({argv!r}))"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


def _v6only_wildcard_listener(*, hold_ipv4: bool) -> list[socket.socket]:
    """What a plain asyncio ``create_server(host="::")`` makes; *hold_ipv4*: plus the IPv4 side held, as exclusive loops do."""
    service = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    service.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    # Not a kernel pick for [::] alone: an IPv4 TIME_WAIT on it fails the hold and the attacker's prime.
    service.bind(("::", port_free_on_both_families()))
    service.listen(64)
    sockets = [service]
    if hold_ipv4:
        hold = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # no options, never listens
        hold.bind(("0.0.0.0", service.getsockname()[1]))
        sockets.append(hold)
    return sockets


@contextmanager
def attacker(port: int, uid: int | None, **how: Any) -> Iterator[tuple[str, Callable[[], int]]]:
    """The real attack (`FastPathAttacker`) as (its first line, its count)."""
    with FastPathAttacker(port, uid, **how) as thief:
        yield thief.line(), thief.count


# -- 14.1: the IPv6 wildcard and the kernel fast path -------------------------------------


@needs_ipv6
def test_v6only_wildcard_listener_is_found_shareable_by_the_fast_path() -> None:
    sockets = _v6only_wildcard_listener(hold_ipv4=False)
    service = sockets[0]
    port = service.getsockname()[1]
    try:
        code, report = probe_cli("::", str(port))
        assert code == 1, report
        assert report["shareable"] and report["kernel_fast_path"], report["findings"]
        primed = [a for a in report["attempts"] if a["co_bound"] and a["primed_with"]]
        assert primed and all(not a["listened"] for a in primed)
        if IS_ROOT:
            assert any(a["uid"] == NOBODY for a in primed), "another user can do it too"
        # The probe took nothing: every connection still reaches the service.
        assert connections_reaching(service, "::1", 10) == 10
        # ...and its finding is real: the attacker it describes takes connections.
        with attacker(port, NOBODY if IS_ROOT else None) as (status, count):
            assert status == "ok"
            got = connections_reaching(service, "::1", 20)
            stolen = count()
        assert stolen > 0 and got + stolen == 20, (got, stolen)
    finally:
        for sock in sockets:
            sock.close()


@needs_ipv6
def test_v6only_wildcard_with_its_ipv4_side_held_is_exclusive() -> None:
    sockets = _v6only_wildcard_listener(hold_ipv4=True)
    service = sockets[0]
    port = service.getsockname()[1]
    try:
        code, report = probe_cli("::", str(port))
        assert code == 0, report["findings"]
        assert not report["kernel_fast_path"]
        assert any(a["failed_at"] == "prime" for a in report["attempts"])
        with attacker(port, NOBODY if IS_ROOT else None) as (status, _):
            assert status.startswith("refused"), status
        assert connections_reaching(service, "::1", 10) == 10
    finally:
        for sock in sockets:
            sock.close()


# -- red team A/B: the IPv4 wildcard, and a prime that gets past TIME_WAIT ----------------


def _ipv4_wildcard_listener(*, hold_ipv6: bool) -> list[socket.socket]:
    """``socket.create_server(("0.0.0.0", 0))`` (uvicorn, gunicorn, socketserver); *hold_ipv6*: plus [::] held."""
    # Not a kernel pick for 0.0.0.0 alone: an IPv6 TIME_WAIT on it fails the hold and the attacker's prime.
    service = socket.create_server(("0.0.0.0", port_free_on_both_families()))
    sockets = [service]
    if hold_ipv6:
        hold = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)  # no options, never listens
        hold.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        hold.bind(("::", service.getsockname()[1]))
        sockets.append(hold)
    return sockets


@needs_ipv6
@pytest.mark.parametrize("hold_ipv6", [False, True], ids=["alone", "ipv6-side-held"])
def test_ipv4_wildcard_listener_against_the_fast_path(hold_ipv6: bool) -> None:
    # A dual-stack [::] thief bound to lo scores above the 0.0.0.0 listener and
    # takes its IPv4 connections: the probe must try the two steps for 0.0.0.0 too.
    sockets = _ipv4_wildcard_listener(hold_ipv6=hold_ipv6)
    service = sockets[0]
    port = service.getsockname()[1]
    try:
        code, report = probe_cli("0.0.0.0", str(port))
        assert connections_reaching(service, "127.0.0.1", 10) == 10
        with attacker(port, NOBODY if IS_ROOT else None, prime_at="::", bindtodevice=True) as (status, count):
            if hold_ipv6:
                assert status.startswith("refused"), status
            else:
                assert status == "ok", status
                got = connections_reaching(service, "127.0.0.1", 20)
                stolen = count()
                # The control: the attack is real (the thief wins on CPU 0).
                assert stolen > 0 and got + stolen == 20, (got, stolen)
        if hold_ipv6:
            assert code == 0, report["findings"]
        else:
            assert code == 1, report
            assert report["kernel_fast_path"], report["findings"]
            primed = [a for a in report["attempts"] if a["co_bound"] and a["primed_with"] == "::"]
            assert primed and all(not a["listened"] for a in primed)
    finally:
        for sock in sockets:
            sock.close()


def _ipv4_listener_with_time_wait_on_ipv6() -> socket.socket:
    """A 0.0.0.0 listener whose port also has a TIME_WAIT on [::1] (its [::] sibling served one connection, then closed)."""
    service = socket.create_server(("0.0.0.0", 0))
    port = service.getsockname()[1]
    side = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    side.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    side.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    side.bind(("::", port))
    side.listen(8)
    client = socket.create_connection(("::1", port), timeout=5)
    conn, _ = side.accept()
    conn.close()  # the server closes first: its side goes to TIME_WAIT
    assert client.recv(1) == b""
    client.close()
    side.close()
    return service


@needs_ipv6
def test_prime_with_reuseaddr_gets_past_time_wait() -> None:
    # A SO_REUSEPORT-only prime fails on the TIME_WAIT; one with SO_REUSEADDR
    # too passes, and the thief takes the IPv4 connections. Each half on a
    # fresh port: a prime that passes leaves the port's bind bucket in fast
    # reuse state for its uid, which would let a later prime skip the check.
    uid = NOBODY if IS_ROOT else None
    service = _ipv4_listener_with_time_wait_on_ipv6()
    port = service.getsockname()[1]
    try:
        with attacker(port, uid, prime_at="::", bindtodevice=True) as (status, _):
            assert status.startswith("refused"), status  # the control: without SO_REUSEADDR the prime fails
        with attacker(port, uid, prime_at="::", prime_reuseaddr=True, bindtodevice=True) as (status, count):
            assert status == "ok", status
            got = connections_reaching(service, "127.0.0.1", 20)
            stolen = count()
        assert stolen > 0 and got + stolen == 20, (got, stolen)
    finally:
        service.close()
    service = _ipv4_listener_with_time_wait_on_ipv6()
    port = service.getsockname()[1]
    try:
        code, report = probe_cli("0.0.0.0", str(port))
        assert code == 1, report
        assert report["kernel_fast_path"], report["findings"]
        primed = [a for a in report["attempts"] if a["co_bound"] and a["primed_with"]]
        assert primed and all(a["prime_options"] == ["SO_REUSEADDR", "SO_REUSEPORT"] for a in primed), primed
        assert any(a["failed_at"] == "prime" and a["prime_options"] == ["SO_REUSEPORT"] for a in report["attempts"])
        assert connections_reaching(service, "127.0.0.1", 10) == 10
    finally:
        service.close()


# -- 14.3: the service's own uid without psutil --------------------------------------------


@contextmanager
def _reuseport_service_as(uid: int) -> Iterator[int]:
    """A TCP listener with SO_REUSEPORT on 127.0.0.1, held by a process of *uid*; yields its port."""
    r, w = os.pipe()
    done_r, done_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            become_stranger(uid, w, done_r)
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind(("127.0.0.1", 0))
            sock.listen(8)
            os.write(w, f"{sock.getsockname()[1]}\n".encode())
            os.read(done_r, 1)
        finally:
            os._exit(0)
    os.close(w)
    os.close(done_r)
    try:
        with os.fdopen(r) as reader:
            yield int(reader.readline())
    finally:
        os.close(done_w)
        os.waitpid(pid, 0)


@needs_root
def test_without_psutil_the_services_own_uid_is_tried() -> None:
    with _reuseport_service_as(1000) as port:
        code, report = probe_cli("127.0.0.1", str(port), pre=HIDE_PSUTIL)
        assert code == 1, report
        assert any("uid 1000" in user for user in report["users"]), report["users"]
        assert any(a["co_bound"] and a["uid"] == 1000 for a in report["attempts"])
        assert any("uid 1000" in finding for finding in report["findings"])


# -- 14.4: link-local addresses keep their scope id ------------------------------------------

NETNS_SCRIPT = textwrap.dedent(
    """
    import json, socket, subprocess, sys
    sys.path.insert(0, sys.argv[1])
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    subprocess.run(["ip", "-6", "addr", "add", "fe80::1/64", "dev", "lo", "nodad"], check=True)
    # Another interface: the device-bound takeover primes there (without one the probe says "unknown").
    subprocess.run(["ip", "link", "add", "other0", "type", "veth", "peer", "name", "other1"], check=True)
    from aioexclusive._cli.probe import probe
    out = {}
    for name, options in (("reuseport", [socket.SO_REUSEPORT]), ("plain", [])):
        s = socket.socket(socket.AF_INET6)
        for option in options:
            s.setsockopt(socket.SOL_SOCKET, option, 1)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(socket.getaddrinfo("fe80::1%lo", 0, socket.AF_INET6, socket.SOCK_STREAM)[0][4])
        s.listen()
        report = probe("fe80::1%lo", s.getsockname()[1])
        out[name] = {"exit": report["exit"], "addresses": report["addresses"]}
        s.close()
    print(json.dumps(out))
    """
)


def _netns_unavailable() -> str | None:
    if not IS_ROOT:
        return "network namespaces need root"
    for tool in ("unshare", "ip"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode != 0:
            return f"{tool} is not installed"
    probe = subprocess.run(["unshare", "--net", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        return f"unshare --net is not permitted here: {probe.stderr.strip()}"
    return None


def test_link_local_address_keeps_its_scope_id() -> None:
    reason = _netns_unavailable()
    if reason:
        pytest.skip(reason)
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run(
        ["unshare", "--net", sys.executable, "-c", NETNS_SCRIPT, root], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    # Before the fix: "cannot probe ... EINVAL" (the scope id was dropped).
    assert out["reuseport"]["exit"] == 1, out
    # A link-local listener is bound to its interface by the scope id: another user takes it over from another
    # interface (red team 4, F6/F11; tests/test_tools_redteam4.py). Not "exclusive" any more.
    assert out["plain"]["exit"] == 1, out
    assert out["plain"]["addresses"] == ["fe80::1%lo"]


# -- 14.12: the Fix line names what helps for the program holding the port ----------------

GRPC_SERVER = textwrap.dedent(
    """
    import sys
    from concurrent import futures
    import grpc
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    sys.stdin.read()
    server.stop(0)
    """
)


def test_fix_line_for_a_grpc_server_points_to_grpc_options() -> None:
    pytest.importorskip("grpc")
    server = subprocess.Popen(
        [sys.executable, "-c", GRPC_SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        for pre in ("", HIDE_PSUTIL):
            code, report = probe_cli("127.0.0.1", str(port), pre=pre)
            # grpcio binds in C with SO_REUSEPORT on: same-user sharing.
            assert code == 1, report
            assert "grpc.so_reuseport" in report["fix"], report["fix"]
            assert "new_event_loop" not in report["fix"]
            assert any(str(server.pid) in holder for holder in report["holders"]), report["holders"]
    finally:
        assert server.stdin is not None
        server.stdin.close()
        server.wait(timeout=30)
        assert server.stdout is not None
        server.stdout.close()


PLAIN_SERVICE = textwrap.dedent(
    """
    import socket, sys
    service = socket.socket()
    service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    service.bind(("127.0.0.1", 0))
    service.listen()
    print(service.getsockname()[1], flush=True)
    sys.stdin.read()
    """
)


def test_fix_line_for_a_python_service_points_to_the_exclusive_loop() -> None:
    # The service is a process of its own: held by this one, the Fix line went by pytest's command
    # line, which names framework test files when a run selects them (test_integration_hypercorn.py
    # made it "hypercorn").
    server = subprocess.Popen(
        [sys.executable, "-c", PLAIN_SERVICE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert server.stdout is not None
        port = int(server.stdout.readline())
        code, report = probe_cli("127.0.0.1", str(port), pre=HIDE_PSUTIL)
        assert code == 1
        assert "new_event_loop" in report["fix"], report["fix"]
    finally:
        assert server.stdin is not None and server.stdout is not None
        server.stdin.close()
        server.wait(timeout=30)
        server.stdout.close()


@needs_root
def test_the_attacking_agent_holds_nothing_of_the_probing_program() -> None:
    # The probe runs in-process too (`probe()` from a service's own tests): its agent, forked and
    # dropped to another user, must not keep a copy of the program's listener (it would be one more
    # holder of the service's socket, and keep it open after the program closes it).
    from aioexclusive._cli.attack import Agent

    service = socket.create_server(("127.0.0.1", 0))
    inode = os.fstat(service.fileno()).st_ino
    agent = Agent(NOBODY, NOBODY)
    try:
        assert agent.whoami()["uid"] == NOBODY
        held = {os.readlink(f"/proc/{agent.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{agent.pid}/fd")}
        assert f"socket:[{inode}]" not in held, held
        assert len(held) <= 4, held  # stdio and its end of the socketpair
    finally:
        agent.close()
        service.close()
