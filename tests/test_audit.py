"""``python -m aioexclusive audit``: verdicts on real sockets of real processes, checked against real attacks.

Victims are separate processes (this file run as a script: ``victim``, ``loop``,
``many``), some as uid 65534. Each verdict the audit gives is checked against
what an attacker process actually achieves (`tests/attacker.py`, and the
two-step bind fast-path attack for wildcard listeners). Traffic sent while the
audit runs must all reach its owner. The multicast receiver lives in a network
namespace the test creates; the non-root audit runs as uid 65534.
"""

from __future__ import annotations

import collections
import importlib.util
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from attacker import NOBODY, FastPathAttacker, become_stranger, drop_to, on_cpu_0, receive_one  # noqa: E402
from harness import HAVE_IPV6, IS_ROOT, port_free_on_both_families  # noqa: E402

ON_LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not ON_LINUX, reason="the audit reads /proc (Linux only)")
HOST_NETNS_VAR = "AIOEXCLUSIVE_TEST_HOST_NETNS"


# ---------------------------------------------------------------------------
# Victim processes (this file run as a script)
# ---------------------------------------------------------------------------


def _make(spec: dict[str, Any]) -> socket.socket:
    family = socket.AF_INET6 if spec["family"] == 6 else socket.AF_INET
    kind = socket.SOCK_STREAM if spec["proto"] == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    for name in spec.get("options", ()):
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
    if spec.get("v6only") is not None:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, spec["v6only"])
    sock.bind((spec["host"], spec.get("port", 0)))
    if kind == socket.SOCK_STREAM and spec.get("listen", True):
        sock.listen(512)
    sock.setblocking(False)
    return sock


def _victim(config: dict[str, Any]) -> None:
    """Open the sockets of *config*, print their ports, count what each receives; ``count`` on stdin reports."""
    import selectors

    drop_to(config.get("uid"))
    socks = []
    for spec in config["sockets"]:
        sock = _make(spec)
        socks.append(sock)
        if spec.get("hold_other"):
            # An exclusive loop's holder: the other family's wildcard, bound
            # without options, never listening.
            other = {**spec, "family": 4 if spec["family"] == 6 else 6, "options": [], "listen": False}
            other["host"] = "0.0.0.0" if spec["family"] == 6 else "::"
            other["v6only"] = 1 if other["family"] == 6 else None
            other["port"] = sock.getsockname()[1]
            socks.append(_make(other))
    counts = [0] * len(socks)
    selector = selectors.DefaultSelector()
    for index, sock in enumerate(socks):
        # A bound TCP socket that never listens polls as "hung up": nothing to accept.
        if sock.type == socket.SOCK_DGRAM or sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            selector.register(sock, selectors.EVENT_READ, index)
    selector.register(sys.stdin, selectors.EVENT_READ, -1)
    print(json.dumps({"pid": os.getpid(), "ports": [s.getsockname()[1] for s in socks]}), flush=True)
    while True:
        for key, _ in selector.select():
            index = key.data
            if index == -1:
                line = sys.stdin.readline()
                if not line or line.strip() == "exit":
                    return
                print(json.dumps(counts), flush=True)
                continue
            try:
                receive_one(socks[index])
            except BlockingIOError:
                continue
            counts[index] += 1


def _loop_victim(host: str) -> None:
    """An exclusive-loop TCP server on *host* (port 0) that counts connections."""
    import asyncio

    import aioexclusive

    async def main() -> None:
        loop = asyncio.get_running_loop()
        count = [0]

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            count[0] += 1
            writer.close()

        server = await asyncio.start_server(handle, host, 0)
        ports = sorted({s.getsockname()[1] for s in server.sockets})
        print(json.dumps({"pid": os.getpid(), "ports": ports}), flush=True)
        done = loop.create_future()

        def command() -> None:
            line = sys.stdin.readline()
            if not line or line.strip() == "exit":
                if not done.done():
                    done.set_result(None)
                return
            print(json.dumps([count[0]]), flush=True)

        loop.add_reader(sys.stdin.fileno(), command)
        await done
        server.close()

    aioexclusive.run(main())


def _grpc_victim() -> None:
    """A plain grpc server on 127.0.0.1 (grpc's C core binds it, with SO_REUSEPORT by default)."""
    from concurrent.futures import ThreadPoolExecutor

    import grpc

    server = grpc.server(ThreadPoolExecutor(max_workers=1))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(json.dumps({"pid": os.getpid(), "ports": [port]}), flush=True)
    sys.stdin.readline()
    server.stop(None)


def _many(count: int) -> None:
    """*count* sockets on 127.0.0.1: TCP listeners and UDP sockets, every other one shareable."""
    socks = []
    kinds = []
    for index in range(count):
        proto = "tcp" if index % 2 == 0 else "udp"
        shareable = index % 4 < 2
        option = "SO_REUSEPORT" if proto == "tcp" else "SO_REUSEADDR"
        socks.append(
            _make({"proto": proto, "family": 4, "host": "127.0.0.1", "options": [option] if shareable else []})
        )
        kinds.append([proto, socks[-1].getsockname()[1], shareable])
    print(json.dumps({"pid": os.getpid(), "sockets": kinds}), flush=True)
    sys.stdin.readline()


def _two_step(port: int, victim_family: int) -> None:
    """The kernel bind fast-path attack (DESIGN section 7) as uid 65534; prints whether it co-bound."""
    drop_to(NOBODY)
    prime_family, prime_host = (socket.AF_INET, "0.0.0.0") if victim_family == 6 else (socket.AF_INET6, "::")
    result: dict[str, Any] = {"taken": False}
    try:
        prime = socket.socket(prime_family, socket.SOCK_STREAM)
        if prime_family == socket.AF_INET6:
            prime.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        prime.bind((prime_host, port))
        prime.close()
        taker = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        taker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        taker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        taker.bind(("::", port))
        taker.listen(8)
        taker.close()
        result["taken"] = True
    except OSError as exc:
        result["error"] = exc.strerror
    print(json.dumps(result), flush=True)


def _nonroot(root_ports: list[int], root_pid: int) -> None:
    """As uid 65534: audit this user's own child and the root victims; print what was seen."""
    import ctypes

    from aioexclusive._cli.audit import AuditError, audit

    # The interpreter's home may be readable by root only: import everything
    # the audit needs (codecs included) before becoming uid 65534.
    audit(ports="1")
    drop_to(NOBODY)
    # setuid() made this process non-dumpable: its /proc entries would belong
    # to root and pidfd_getfd on its own child would be refused.
    ctypes.CDLL(None, use_errno=True).prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE
    ready_r, ready_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.close(ready_r)
            os.close(hold_w)
            a = _make({"proto": "tcp", "family": 4, "host": "127.0.0.1", "options": ["SO_REUSEPORT"]})
            b = _make({"proto": "udp", "family": 4, "host": "127.0.0.1"})
            os.write(ready_w, json.dumps([a.getsockname()[1], b.getsockname()[1]]).encode())
            os.close(ready_w)
            os.read(hold_r, 1)
        finally:
            os._exit(0)
    os.close(ready_w)
    os.close(hold_r)
    own_ports = json.loads(os.read(ready_r, 1000))
    report = audit()
    try:
        audit(pid=root_pid)
        refused = ""
    except AuditError as exc:
        refused = str(exc)
    os.close(hold_w)
    os.waitpid(pid, 0)
    rows = [r for r in report["sockets"] if r["port"] in own_ports + root_ports]
    print(
        json.dumps(
            {
                "child": pid,
                "own_ports": own_ports,
                "rows": rows,
                "notes": report["notes"],
                "exit": report["exit"],
                "refused": refused,
            },
            default=str,
        ),
        flush=True,
    )


def _multicast_scenario() -> None:
    """Inside a fresh network namespace: a group receiver, audited, attacked, and fed during the audit."""
    from aioexclusive._cli.audit import audit

    if os.environ.get(HOST_NETNS_VAR) in (None, os.readlink("/proc/self/ns/net")):
        raise SystemExit("refusing to run: not inside a network namespace of the test's own making")
    for args in (
        ["link", "set", "lo", "up"],
        ["link", "set", "lo", "multicast", "on"],
        ["route", "add", "224.0.0.0/4", "dev", "lo"],
    ):
        subprocess.run(["ip", *args], check=True)
    group, port = "239.1.2.3", 5007
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    receiver.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    receiver.bind((group, port))
    mreq = socket.inet_aton(group) + socket.inet_aton("127.0.0.1")
    receiver.setsockopt(socket.IPPROTO_IP, socket.IP_ADD_MEMBERSHIP, mreq)
    # A real attacker, another user: can it bind the group's port too?
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child
        try:
            # Another user, holding nothing of ours (not the receiver either).
            become_stranger(NOBODY, write_end)
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            other.bind((group, port))
            os.write(write_end, b"1")
        except OSError:
            os.write(write_end, b"0")
        finally:
            os._exit(0)
    os.waitpid(child, 0)
    co_bound = os.read(read_end, 1) == b"1"
    sent = _send_during(lambda: audit(ports=str(port)), [("udp", 4, group, port)], multicast=True)
    report = sent.pop("result")
    receiver.setblocking(False)
    got = 0
    deadline = time.monotonic() + 10
    while got < sent[port] and time.monotonic() < deadline:
        try:
            receiver.recv(100)
            got += 1
        except BlockingIOError:
            time.sleep(0.01)
    print(
        json.dumps(
            {
                "rows": report["sockets"],
                "co_bound": co_bound,
                "sent": sent[port],
                "received": got,
                "netns_differs": os.environ[HOST_NETNS_VAR] != os.readlink("/proc/self/ns/net"),
            },
            default=str,
        ),
        flush=True,
    )


# ---------------------------------------------------------------------------
# Test helpers
# ---------------------------------------------------------------------------


def _send_during(action: Any, targets: list[tuple[str, int, str, int]], multicast: bool = False) -> dict[Any, Any]:
    """Run *action* while another thread sends connections/datagrams to *targets*; the counts sent per port."""
    sent: dict[Any, Any] = {port: 0 for _, _, _, port in targets}
    done = threading.Event()
    rounds = [0]
    errors: list[BaseException] = []

    def sender() -> None:
        try:
            send()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test's thread
            errors.append(exc)

    def send() -> None:
        while not done.is_set() or rounds[0] < 2:
            for proto, family, host, port in targets:
                fam = socket.AF_INET6 if family == 6 else socket.AF_INET
                with socket.socket(fam, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as s:
                    if proto == "tcp":
                        s.settimeout(10)
                        s.connect((host, port))
                    else:
                        if multicast:
                            s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton("127.0.0.1"))
                        s.sendto(b"x", (host, port))
                sent[port] += 1
            rounds[0] += 1
            time.sleep(0.002)

    thread = threading.Thread(target=sender)
    thread.start()
    try:
        sent["result"] = action()
    finally:
        done.set()
        thread.join()
    if errors:
        raise errors[0]
    return sent


class Victim:
    """A victim process started from this file; counts what each of its sockets received."""

    def __init__(self, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), *args],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=_child_env(),
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            # Its pipes closed here, or a later test fails on their ResourceWarning.
            for pipe in (self.proc.stdin, self.proc.stdout):
                if pipe is not None:
                    pipe.close()
            raise RuntimeError(f"victim {args} failed to start")
        self.info: dict[str, Any] = json.loads(line)
        self.pid: int = self.info["pid"]

    def counts(self) -> list[int]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("count\n")
        self.proc.stdin.flush()
        return list(json.loads(self.proc.stdout.readline()))

    def wait_counts(self, expected: list[int]) -> list[int]:
        deadline = time.monotonic() + 20
        got = self.counts()
        while got != expected and time.monotonic() < deadline:
            time.sleep(0.02)
            got = self.counts()
        return got

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            try:
                self.proc.stdin.write("exit\n")
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@pytest.fixture
def victims() -> Iterator[list[Victim]]:
    started: list[Victim] = []
    yield started
    for victim in started:
        victim.close()


def _child_env() -> dict[str, str]:
    # Victims must open shareable sockets on purpose: an inherited guard would
    # refuse or fix them (AIOEXCLUSIVE_GUARD is read at interpreter start-up).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_GUARD")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p)
    return env


def _script(*args: str, timeout: float = 60) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, os.path.abspath(__file__), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_child_env(),
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _row(report: dict[str, Any], proto: str, port: int, address: str | None = None) -> dict[str, Any]:
    rows: list[dict[str, Any]] = [
        r
        for r in report["sockets"]
        if r["proto"] == proto and r["port"] == port and (address is None or r["address"] == address)
    ]
    assert len(rows) == 1, (proto, port, address, rows)
    return rows[0]


def _attack_shares(attacker: Any, proto: str, family: int, host: str, port: int) -> bool:
    """True when *attacker* can co-bind (and for TCP listen on) the port with some option set."""
    from attacker import OPTION_SETS

    for options in OPTION_SETS.values():
        result = attacker.try_bind(proto, family, host, port, options)
        attacker.collect(wait=0)
        if result.ok:
            return True
    return False


# ---------------------------------------------------------------------------
# Pure parts
# ---------------------------------------------------------------------------


def test_procnet_decodes_host_order_words_and_mapped_addresses() -> None:
    from aioexclusive._procnet import decode_address, parse_table

    little = sys.byteorder == "little"
    loopback = "0100007F" if little else "7F000001"
    assert decode_address(loopback) == "127.0.0.1"
    mapped = ("0000000000000000FFFF0000" + loopback) if little else ("00000000000000000000FFFF" + loopback)
    assert decode_address(mapped) == "::ffff:127.0.0.1"
    one = "00000000000000000000000001000000" if little else "00000000000000000000000000000001"
    assert decode_address(one) == "::1"
    with pytest.raises(ValueError):
        decode_address("123")
    header = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    line = f"   0: {loopback}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 4242 1\n"
    (sock,) = parse_table(header + line + "garbage line\n", "tcp", socket.AF_INET)
    assert (sock.address, sock.port, sock.state, sock.uid, sock.inode) == ("127.0.0.1", 8080, "LISTEN", 1000, 4242)
    assert sock.is_listening and not sock.is_wildcard and sock.ipv4 == "127.0.0.1"


def test_procnet_reads_real_sockets_and_their_owner() -> None:
    from aioexclusive._procnet import read_sockets, socket_owners

    with socket.socket() as tcp, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        tcp.bind(("127.0.0.1", 0))
        tcp.listen()
        udp.bind(("127.0.0.1", 0))
        ports = {tcp.getsockname()[1], udp.getsockname()[1]}
        # Other processes (tests running in parallel) may use the same port numbers.
        found = read_sockets(ports=ports)
        owners = socket_owners({s.inode for s in found}).owners
        mine = {
            fd: (s.proto, s.port, s.state, s.uid)
            for s in found
            for pid, fd in owners.get(s.inode, ())
            if pid == os.getpid()
        }
        assert mine == {
            tcp.fileno(): ("tcp", tcp.getsockname()[1], "LISTEN", os.getuid()),
            udp.fileno(): ("udp", udp.getsockname()[1], "CLOSE", os.getuid()),
        }


def _obs(proto: str, family: int, address: str, options: dict[str, int] | None) -> Any:
    from aioexclusive._cli.audit import Observed
    from aioexclusive._procnet import ProcSocket

    sock = ProcSocket(proto, family, address, 4000, "LISTEN" if proto == "tcp" else "CLOSE", 1000, 1)  # type: ignore[arg-type]
    return Observed(sock, [(1, 3)], options, "" if options is not None else "unknown (no permission): test")


@pytest.mark.parametrize(
    ("proto", "family", "address", "options", "other", "expected", "who"),
    [
        ("tcp", 4, "127.0.0.1", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, False, "exclusive", "nobody"),
        ("tcp", 4, "127.0.0.1", {"SO_REUSEADDR": 0, "SO_REUSEPORT": 1}, False, "shareable", "same"),
        ("udp", 4, "127.0.0.1", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, False, "shareable", "any user"),
        ("udp", 4, "127.0.0.1", {"SO_REUSEADDR": 0, "SO_REUSEPORT": 1}, False, "shareable", "same"),
        ("udp", 4, "127.0.0.1", {"SO_REUSEADDR": 0, "SO_REUSEPORT": 0}, False, "exclusive", "nobody"),
        ("udp", 4, "239.1.1.1", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, False, "shared by design", "every receiver"),
        ("tcp", 6, "::", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0, "IPV6_V6ONLY": 1}, False, "shareable", "fast path"),
        ("tcp", 6, "::", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0, "IPV6_V6ONLY": 1}, True, "exclusive", "nobody"),
        ("tcp", 6, "::", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0, "IPV6_V6ONLY": 0}, False, "exclusive", "nobody"),
        ("tcp", 4, "0.0.0.0", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, False, "shareable", "fast path"),
        ("tcp", 4, "0.0.0.0", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}, True, "exclusive", "nobody"),
        ("tcp", 4, "127.0.0.1", None, False, "unknown", ""),
    ],
)
def test_verdict_rules(
    proto: str, family: int, address: str, options: dict[str, int] | None, other: bool, expected: str, who: str
) -> None:
    from aioexclusive._cli.audit import PortMap, verdict

    fam = socket.AF_INET6 if family == 6 else socket.AF_INET
    ports = PortMap()
    ports.add(fam, address, 4000)
    if other:
        # The listener's own process holds the other family, without options.
        ports.add(
            socket.AF_INET if family == 6 else socket.AF_INET6,
            "0.0.0.0" if family == 6 else "::",
            4000,
            1,
            uid=1000,
            pids={1},
            options={"SO_REUSEADDR": 0, "SO_REUSEPORT": 0},
        )
    found = verdict(_obs(proto, fam, address, options), ports, user="alice")
    assert found.verdict == expected
    if who == "same":
        assert "user alice" in found.who
    else:
        assert who in found.who
    if expected == "unknown":
        assert "no permission" in found.why


@pytest.mark.parametrize(
    ("uid", "pids", "reuseaddr", "reuseport", "listening", "address", "expected"),
    [
        (1000, {1}, 0, 0, False, "::", "exclusive"),  # the exclusive loop's hold
        (1000, {2}, 0, 0, False, "::", "exclusive"),  # another process of the same user
        (1000, {1}, 1, 0, True, "::", "exclusive"),  # a listener conflicts with every bind
        (1000, {1}, 1, 0, False, "::", "shareable"),  # a SO_REUSEADDR prime gets past it
        (1000, {1}, 0, 1, False, "::", "shareable"),  # SO_REUSEPORT: not a hold
        (65534, {9}, 0, 1, False, "::", "shareable"),  # the attacker's own prime (red team C)
        (65534, {9}, 0, 0, False, "::", "shareable"),  # another user's socket: not the service's hold
        (1000, {1}, 0, 0, False, "::1", "shareable"),  # not the wildcard
    ],
)
def test_other_family_hold_must_be_the_services_own(
    uid: int, pids: set[int], reuseaddr: int, reuseport: int, listening: bool, address: str, expected: str
) -> None:
    from aioexclusive._cli.audit import PortMap, verdict

    ports = PortMap()
    ports.add(
        socket.AF_INET,
        "0.0.0.0",
        4000,
        uid=1000,
        pids={1},
        options={"SO_REUSEADDR": 1, "SO_REUSEPORT": 0},
        listening=True,
        inode=1,
    )
    ports.add(
        socket.AF_INET6,
        address,
        4000,
        1,
        uid=uid,
        pids=pids,
        listening=listening,
        inode=2,
        options={"SO_REUSEADDR": reuseaddr, "SO_REUSEPORT": reuseport, "IPV6_V6ONLY": 1},
    )
    found = verdict(_obs("tcp", socket.AF_INET, "0.0.0.0", {"SO_REUSEADDR": 1, "SO_REUSEPORT": 0}), ports, user="alice")
    assert found.verdict == expected, found
    if expected == "shareable":
        assert found.fast_path and "any user" in found.who


def test_framework_fixes_are_recognised() -> None:
    from aioexclusive._cli.audit import recognise

    assert "--reuse-port" in (recognise(["/usr/bin/python3", "/venv/bin/gunicorn", "--reuse-port", "app:app"]) or "")
    assert "ExclusiveConfig" in (recognise(["/venv/bin/hypercorn", "--workers", "2", "app:app"]) or "")
    assert "grpc.so_reuseport" in (recognise(["python3", "server.py"], "/x/cygrpc.cpython-311.so") or "")
    assert "loop_factory" in (recognise(["python3", "server.py"]) or "")
    assert recognise(["/usr/sbin/nginx"]) is None


# ---------------------------------------------------------------------------
# Real victims, real attackers
# ---------------------------------------------------------------------------

COMBINATIONS: list[tuple[str, list[str]]] = [
    ("tcp", []),
    ("tcp", ["SO_REUSEADDR"]),
    ("tcp", ["SO_REUSEPORT"]),
    ("tcp", ["SO_REUSEADDR", "SO_REUSEPORT"]),
    ("udp", []),
    ("udp", ["SO_REUSEADDR"]),
    ("udp", ["SO_REUSEPORT"]),
    ("udp", ["SO_REUSEADDR", "SO_REUSEPORT"]),
]


@pytest.mark.skipif(not IS_ROOT, reason="victims of another user and cross-user attacks need root")
@pytest.mark.parametrize("uid", [None, NOBODY], ids=["root-victim", "uid65534-victim"])
def test_option_combinations_match_real_attackers(
    victims: list[Victim], same_user_attacker: Any, other_user_attacker: Any, uid: int | None
) -> None:
    from aioexclusive._cli.audit import audit

    specs: list[dict[str, Any]] = [
        {"proto": proto, "family": 4, "host": "127.0.0.1", "options": options} for proto, options in COMBINATIONS
    ]
    victim = Victim("victim", json.dumps({"uid": uid, "sockets": specs}))
    victims.append(victim)
    ports = victim.info["ports"]
    targets = [(spec["proto"], 4, "127.0.0.1", port) for spec, port in zip(specs, ports)]
    sent = _send_during(lambda: audit(pid=victim.pid), targets)
    report = sent.pop("result")
    # Nothing was disturbed: every connection and datagram sent during the audit reached the victim.
    assert victim.wait_counts([sent[p] for p in ports]) == [sent[p] for p in ports]
    assert min(sent.values()) >= 2
    user = "nobody" if uid == NOBODY else "root"
    for spec, port in zip(specs, ports):
        row = _row(report, spec["proto"], port)
        assert row["pid"] == victim.pid and row["user"] == user
        assert row["options"] == {name: int(name in spec["options"]) for name in ("SO_REUSEADDR", "SO_REUSEPORT")}
        # What real attackers achieve: the owner's own user, and a different one.
        owner_attacker = other_user_attacker if uid == NOBODY else same_user_attacker
        stranger = same_user_attacker if uid == NOBODY else other_user_attacker
        by_owner = _attack_shares(owner_attacker, spec["proto"], 4, "127.0.0.1", port)
        by_stranger = _attack_shares(stranger, spec["proto"], 4, "127.0.0.1", port)
        assert row["verdict"] == ("shareable" if by_owner or by_stranger else "exclusive"), (spec, row)
        if by_stranger:
            assert row["who"].startswith("any user"), row
        elif by_owner:
            assert f"user {user}" in row["who"], row


def _wildcard_case(victims: list[Victim], config: dict[str, Any]) -> tuple[dict[str, Any], Victim]:
    from aioexclusive._cli.audit import audit

    victim = Victim("victim", json.dumps(config))
    victims.append(victim)
    port = victim.info["ports"][0]
    family = config["sockets"][0]["family"]
    host = "::1" if family == 6 else "127.0.0.1"
    sent = _send_during(lambda: audit(pid=victim.pid), [("tcp", family, host, port)])
    report = sent.pop("result")
    counts = victim.wait_counts([sent[port]] + [0] * (len(victim.info["ports"]) - 1))
    assert counts[0] == sent[port]
    address = "::" if family == 6 else "0.0.0.0"
    return _row(report, "tcp", port, address), victim


@pytest.mark.skipif(not (IS_ROOT and HAVE_IPV6), reason="the fast-path attack runs as uid 65534; needs IPv6")
@pytest.mark.parametrize("family", [6, 4], ids=["ipv6-only-wildcard", "ipv4-wildcard"])
@pytest.mark.parametrize("hold_other", [False, True], ids=["alone", "other-family-held"])
def test_wildcard_listener_against_the_fast_path_attack(victims: list[Victim], family: int, hold_other: bool) -> None:
    spec = {
        "proto": "tcp",
        "family": family,
        "host": "::" if family == 6 else "0.0.0.0",
        # Not a kernel pick for this family alone: TIME_WAIT on the other family's side would
        # fail the victim's hold, and the control's prime (no SO_REUSEADDR).
        "port": port_free_on_both_families(),
        "options": ["SO_REUSEADDR"],
        "v6only": 1 if family == 6 else None,
        "hold_other": hold_other,
    }
    row, victim = _wildcard_case(victims, {"sockets": [spec]})
    attack = _script("twostep", str(row["port"]), str(family))
    # The control (alone) must be taken over, or the harness proves nothing.
    assert attack["taken"] is (not hold_other), attack
    assert row["verdict"] == ("shareable" if attack["taken"] else "exclusive"), row
    if attack["taken"]:
        assert "fast path" in row["who"]
        assert row["options"].get("IPV6_V6ONLY", 1) == 1


@pytest.mark.skipif(not (IS_ROOT and HAVE_IPV6), reason="the attacker runs as uid 65534; needs IPv6")
def test_attackers_held_prime_is_not_a_hold() -> None:
    # A plain 0.0.0.0 listener; the attacker keeps its [::] SO_REUSEPORT prime
    # open while the audit runs. That socket is the other family's, but the
    # attacker's: the verdict must stay shareable, and the attack is real.
    from aioexclusive._cli.audit import audit

    # A port with nothing on [::] either: the prime (no SO_REUSEADDR) fails on a TIME_WAIT there.
    service = socket.create_server(("0.0.0.0", port_free_on_both_families()))
    port = service.getsockname()[1]
    # Red team C: the [::] IPv6-only SO_REUSEPORT prime stays open while the audit runs;
    # then dual-stack [::] thieves (SO_BINDTODEVICE=lo, SO_INCOMING_CPU=0) bind next to it.
    try:
        with FastPathAttacker(port, NOBODY, prime_at="::", bindtodevice=True, keep_prime=True) as thief:
            assert thief.line() == "primed"
            row = _row(audit(ports=str(port)), "tcp", port, "0.0.0.0")
            assert row["pid"] == os.getpid()
            thief.go()
            assert thief.line() == "ok"
            with on_cpu_0():
                clients = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(20)]
            stolen = thief.count()
            for client in clients:
                client.close()
        assert stolen > 0, "the control: the attacker must take connections, or this proves nothing"
        assert row["verdict"] == "shareable", row
        assert "fast path" in row["who"] and "uid 65534" in row["why"], row
    finally:
        service.close()


def _fork_with_a_lower_pid() -> int:
    """fork(), after asking the kernel for a pid below ours (as after pid wrap-around); 0 in the child.

    Skips when the kernel gave another (a process forked in between took it).
    """
    # Down to pid 2, not 300: after a wrap-around this very process may have a pid near 300 (the kernel
    # starts again there), and a cursor set below 300 hands out the low pids too.
    target = next((n for n in range(os.getpid() // 2, 1, -1) if not os.path.exists(f"/proc/{n}")), None)
    if target is None:
        pytest.skip("no free pid below this process's")
    with open("/proc/sys/kernel/ns_last_pid", "w") as f:
        f.write(str(target - 1))
    pid = os.fork()
    if pid and pid > os.getpid():
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.skip(f"the kernel gave pid {pid}, not one below ours")
    return pid


@pytest.mark.skipif(not IS_ROOT, reason="asking the kernel for a pid writes /proc/sys/kernel/ns_last_pid (root)")
def test_owner_is_the_oldest_holder_when_pids_wrap() -> None:
    # A forked child holds a copy of the listener (prefork servers do this) and, the pids having
    # wrapped, has a lower pid than its parent: the row still names the parent, which made it.
    # CI's pids wrapped once and the audit named the child.
    from aioexclusive._cli.audit import audit

    service = socket.create_server(("127.0.0.1", 0))
    port = service.getsockname()[1]
    hold_r, hold_w = os.pipe()
    try:
        pid = _fork_with_a_lower_pid()
    except BaseException:
        # A skip too: left open, these would fail a later test with a ResourceWarning.
        service.close()
        os.close(hold_r)
        os.close(hold_w)
        raise
    if pid == 0:  # pragma: no cover - the child: holds its copy until the parent is done
        os.close(hold_w)
        os.read(hold_r, 1)
        os._exit(0)
    os.close(hold_r)
    try:
        assert pid < os.getpid()
        report = audit(ports=str(port))
        row = _row(report, "tcp", port, "127.0.0.1")
        assert row["pid"] == os.getpid(), row
        assert sorted(row["_pids"]) == sorted([pid, os.getpid()]), row
    finally:
        os.close(hold_w)
        os.waitpid(pid, 0)
        service.close()


@pytest.mark.skipif(not IS_ROOT, reason="the fast-path attack runs as uid 65534")
@pytest.mark.parametrize("host", ["127.0.0.1", "::"], ids=["loopback", "ipv6-wildcard"])
def test_exclusive_loop_server(
    victims: list[Victim], same_user_attacker: Any, other_user_attacker: Any, host: str
) -> None:
    from aioexclusive._cli.audit import audit

    if host == "::" and not HAVE_IPV6:
        pytest.skip("no IPv6")
    victim = Victim("loop", host)
    victims.append(victim)
    (port,) = victim.info["ports"]
    family = 6 if ":" in host else 4
    client = "::1" if family == 6 else "127.0.0.1"
    sent = _send_during(lambda: audit(pid=victim.pid), [("tcp", family, client, port)])
    report = sent.pop("result")
    assert victim.wait_counts([sent[port]]) == [sent[port]]
    row = _row(report, "tcp", port, host)
    assert row["process"] and row["pid"] == victim.pid
    if host == "127.0.0.1":
        assert row["verdict"] == "exclusive", row
        assert not _attack_shares(same_user_attacker, "tcp", 4, host, port)
        assert not _attack_shares(other_user_attacker, "tcp", 4, host, port)
    else:
        # Whatever the loop does about the other family, the audit must agree with the real attack.
        attack = _script("twostep", str(port), "6")
        assert row["verdict"] == ("shareable" if attack["taken"] else "exclusive"), (row, attack)


@pytest.mark.skipif(not IS_ROOT, reason="needs root to create a network namespace")
def test_multicast_receiver_is_shared_by_design() -> None:
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if subprocess.run(["unshare", "--net", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    env = {**_child_env(), HOST_NETNS_VAR: os.readlink("/proc/self/ns/net")}
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, os.path.abspath(__file__), "multicast"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    assert r["netns_differs"]
    (row,) = [x for x in r["rows"] if x["address"] == "239.1.2.3"]
    assert row["verdict"] == "shared by design" and row["options"]["SO_REUSEADDR"] == 1
    assert r["co_bound"], "another user could not join: 'shared by design' would be wrong"
    assert r["sent"] >= 2 and r["received"] == r["sent"]


@pytest.mark.skipif(not IS_ROOT, reason="starts as root to become uid 65534")
def test_audit_as_another_user_sees_its_own_and_says_what_it_cannot(victims: list[Victim]) -> None:
    victim = Victim(
        "victim",
        json.dumps(
            {
                "sockets": [
                    {"proto": "tcp", "family": 4, "host": "127.0.0.1", "options": ["SO_REUSEPORT"]},
                    {"proto": "udp", "family": 4, "host": "127.0.0.1", "options": ["SO_REUSEADDR"]},
                ]
            }
        ),
    )
    victims.append(victim)
    root_ports = victim.info["ports"]
    r = _script("nonroot", json.dumps(root_ports), str(victim.pid))
    own = {(row["proto"], row["port"]): row for row in r["rows"] if row["port"] in r["own_ports"]}
    tcp_port, udp_port = r["own_ports"]
    assert own[("tcp", tcp_port)]["verdict"] == "shareable" and own[("tcp", tcp_port)]["pid"] == r["child"]
    assert own[("tcp", tcp_port)]["user"] == "nobody"
    assert own[("udp", udp_port)]["verdict"] == "exclusive"
    theirs = [row for row in r["rows"] if row["port"] in root_ports]
    assert len(theirs) == 2
    for row in theirs:
        assert row["verdict"] == "unknown" and row["pid"] is None and row["user"] == "root"
        assert row["why"].startswith("unknown (no permission)")
    assert any("could not read the file descriptors" in note for note in r["notes"])
    assert r["exit"] == 1
    assert "cannot read the file descriptors of pid" in r["refused"]


def test_grpc_server_is_recognised(victims: list[Victim], same_user_attacker: Any) -> None:
    pytest.importorskip("grpc")
    from aioexclusive._cli.audit import audit

    victim = Victim("grpc")
    victims.append(victim)
    (port,) = victim.info["ports"]
    report = audit(pid=victim.pid)
    # grpc binds an AF_INET6 socket to the IPv4-mapped address: listed as such.
    row = _row(report, "tcp", port)
    assert row["address"] in ("127.0.0.1", "::ffff:127.0.0.1")
    user = row["user"]
    assert row["verdict"] == "shareable" and row["options"]["SO_REUSEPORT"] == 1, row
    assert f"user {user}" in row["who"]
    assert "grpc.so_reuseport" in (row["_fix"] or "")
    # The real attack agrees: the same user joins grpc's port.
    result = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEPORT",))
    same_user_attacker.collect(wait=0)
    assert result.ok


def test_thousands_of_sockets(victims: list[Victim]) -> None:
    from aioexclusive._cli.audit import audit

    victim = Victim("many", "3000")
    victims.append(victim)
    started = time.perf_counter()
    report = audit(pid=victim.pid)
    elapsed = time.perf_counter() - started
    print(f"audit of {len(report['sockets'])} sockets took {elapsed:.2f} s")
    # Port-0 binds with SO_REUSEPORT may land on one port together: compare as multisets.
    seen = collections.Counter((row["proto"], row["port"], row["verdict"]) for row in report["sockets"])
    expected = collections.Counter(
        (proto, port, "shareable" if shareable else "exclusive") for proto, port, shareable in victim.info["sockets"]
    )
    assert seen == expected
    assert sum(seen.values()) == 3000


# ---------------------------------------------------------------------------
# The command line
# ---------------------------------------------------------------------------


def _cli(*args: str) -> tuple[int, str, str]:
    from contextlib import redirect_stderr, redirect_stdout

    from aioexclusive._cli import main

    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = main(["audit", *args])
        except SystemExit as exc:
            code = int(exc.code or 0)
    return code, out.getvalue(), err.getvalue()


def test_cli_json_schema_and_exit_status() -> None:
    import pwd

    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as shared, socket.socket() as alone:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.bind(("127.0.0.1", 0))
        alone.bind(("127.0.0.1", 0))
        alone.listen()
        code, out, _ = _cli("--json", "--pid", str(os.getpid()))
        report = json.loads(out)
        rows = {(r["proto"], r["port"]): r for r in report["sockets"]}
        udp = rows[("udp", shared.getsockname()[1])]
        assert set(udp) == {
            *("proto", "address", "port", "pid", "process", "user", "options", "device", "verdict", "who", "why")
        }
        assert udp["verdict"] == "shareable" and udp["pid"] == os.getpid() and udp["address"] == "127.0.0.1"
        assert code == 1
        code, out, _ = _cli("--json", "--tcp", "--port", str(alone.getsockname()[1]), "--pid", str(os.getpid()))
        (row,) = json.loads(out)["sockets"]
        assert row["verdict"] == "exclusive" and code == 0
        code, out, _ = _cli(
            "--udp", "--port", f"{shared.getsockname()[1]}-{shared.getsockname()[1]}", "--color", "never"
        )
        assert code == 1
        assert f"pid {os.getpid()}" in out and "* UDP    127.0.0.1:" in out and "shareable" in out
        assert "\x1b[" not in out
        # The same words in colour (rich, from the test extra) when asked for.
        code, coloured, _ = _cli("--udp", "--port", str(shared.getsockname()[1]), "--color", "always")
        if importlib.util.find_spec("rich") is not None:
            assert "\x1b[" in coloured
        assert code == 1 and "shareable" in coloured and "127.0.0.1:" in coloured
        # --user filters by the socket's owner.
        me = pwd.getpwuid(os.getuid()).pw_name
        code, out, _ = _cli("--json", "--pid", str(os.getpid()), "--user", me)
        assert code == 1 and {r["user"] for r in json.loads(out)["sockets"]} == {me}
        other = "nobody" if os.getuid() != NOBODY else "root"
        code, out, _ = _cli("--json", "--pid", str(os.getpid()), "--user", other)
        assert code == 0 and json.loads(out)["sockets"] == []


@pytest.mark.parametrize(
    "args",
    [
        ["--port", "0"],
        ["--port", "70000"],
        ["--port", "9-3"],
        ["--port", "x"],
        ["--user", "no-such-user-xyz"],
        ["--pid", "999999999"],
        ["--tcp", "--udp"],
    ],
)
def test_cli_bad_input_is_status_2(args: list[str]) -> None:
    code, out, err = _cli(*args)
    assert code == 2
    assert err


def test_probe_fallback_for_unreadable_options(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioexclusive._cli import audit as _audit

    monkeypatch.setattr(_audit.Reader, "options", lambda self, sock, holders: (None, "unknown (no permission): x"))
    with socket.socket() as shared, socket.socket() as alone:
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        for sock in (shared, alone):
            sock.bind(("127.0.0.1", 0))
            sock.listen()
        ports = {shared.getsockname()[1]: "shareable", alone.getsockname()[1]: "exclusive"}
        without = _audit.audit(pid=os.getpid(), proto="tcp")
        assert {r["port"]: r["verdict"] for r in without["sockets"] if r["port"] in ports} == dict.fromkeys(
            ports, "unknown"
        )
        assert without["exit"] == 2
        report = _audit.audit(pid=os.getpid(), proto="tcp", probe=True)
        assert {r["port"]: r["verdict"] for r in report["sockets"] if r["port"] in ports} == ports
        assert report["exit"] == 1


def test_cli_nothing_readable_is_status_2(monkeypatch: pytest.MonkeyPatch) -> None:
    from aioexclusive._cli import audit as _audit

    monkeypatch.setattr(_audit.Reader, "options", lambda self, sock, holders: (None, "unknown (no permission): x"))
    with socket.socket() as alone:
        alone.bind(("127.0.0.1", 0))
        alone.listen()
        code, out, _ = _cli("--json", "--port", str(alone.getsockname()[1]))
    assert code == 2
    assert json.loads(out)["sockets"][0]["verdict"] == "unknown"


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "victim":
        _victim(json.loads(sys.argv[2]))
    elif mode == "loop":
        _loop_victim(sys.argv[2])
    elif mode == "grpc":
        _grpc_victim()
    elif mode == "many":
        _many(int(sys.argv[2]))
    elif mode == "twostep":
        _two_step(int(sys.argv[2]), int(sys.argv[3]))
    elif mode == "nonroot":
        _nonroot(json.loads(sys.argv[2]), int(sys.argv[3]))
    elif mode == "multicast":
        _multicast_scenario()
    else:
        raise SystemExit(f"unknown mode {mode}")
