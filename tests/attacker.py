"""A real attacker: a separate process that tries to co-bind a port and counts what it steals.

Forked (not exec'd: the interpreter may live under a home only root can read)
and, for the cross-user cases, dropped to uid/gid 65534 before it does anything.
It obeys JSON lines over a socketpair, so one attacker serves a whole test run.
"""

from __future__ import annotations

import codecs
import errno
import gc
import json
import os
import select
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, TextIO

# Observing only (how many sockets the kernel lists on a port), never attacking:
# the attacks below are written out here, independent of the code under test.
from aioexclusive._procnet import read_sockets

# read_sockets opens /proc/net with encoding="ascii": import the codec before the fork, since
# the attacker may be uid 65534 under an interpreter whose home only root can read.
codecs.lookup("ascii")

NOBODY = 65534
SO_INCOMING_CPU = getattr(socket, "SO_INCOMING_CPU", 49)
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
LOOPBACK = {4: "127.0.0.1", 6: "::1"}
# The two-step SO_REUSEPORT takeover of a one-family wildcard listener, by the victim's family: the attacker
# primes the *other* family's wildcard with SO_REUSEPORT, closes it, and binds a dual-stack [::]:P with
# SO_REUSEPORT + SO_INCOMING_CPU (docs/limits.md explains the kernel side).
TWO_STEP: dict[int, dict[str, Any]] = {
    6: dict(prime_family=4, prime_host="0.0.0.0", prime_v6only=False, family=6, host="::"),
    4: dict(prime_family=6, prime_host="::", prime_v6only=True, family=6, host="::"),
}
OPTION_SETS = {
    "none": (),
    "SO_REUSEADDR": ("SO_REUSEADDR",),
    "SO_REUSEPORT": ("SO_REUSEPORT",),
    "both": ("SO_REUSEADDR", "SO_REUSEPORT"),
}


@dataclass(frozen=True)
class BindResult:
    ok: bool
    errno: int | None = None
    stage: str | None = None

    def __str__(self) -> str:
        if self.ok:
            return "bound"
        return f"{self.stage} failed: {errno.errorcode.get(self.errno or 0, self.errno)}"


def _family(family: int) -> int:
    return socket.AF_INET6 if family == 6 else socket.AF_INET


def drop_to(uid: int | None) -> None:
    """Become *uid* (and its gid, no supplementary groups); ``None``: stay who we are."""
    if uid is not None:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)


def close_inherited(*keep: int) -> None:
    """In a forked child: close every descriptor but stdio and *keep*.

    A stranger holds nothing of its parent's. A copy of the victim's listener
    would make the child one of its holders (the audit names its oldest holder,
    and judges "the same process" by holders), and would keep the parent's
    sockets alive past their close. The garbage collector is switched off first:
    a parent's socket object collected here would close whatever new socket
    reused its number.
    """
    gc.disable()
    low = 3
    for fd in sorted(k for k in keep if k >= low):
        os.closerange(low, fd)
        low = fd + 1
    os.closerange(low, os.sysconf("SC_OPEN_MAX"))


def become_stranger(uid: int | None, *keep: int) -> None:
    """In a forked child: `close_inherited` (but *keep*), then `drop_to` *uid*."""
    close_inherited(*keep)
    drop_to(uid)


def accept_waiting(listener: socket.socket) -> int:
    """Accept (and close) every connection already waiting on non-blocking *listener*; how many there were."""
    count = 0
    while True:
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            return count
        conn.close()
        count += 1


def receive_one(sock: socket.socket) -> None:
    """Accept one connection (closed at once) or read one datagram from *sock*; BlockingIOError if none waits."""
    if sock.type == socket.SOCK_STREAM:
        peer, _ = sock.accept()
        peer.close()
    else:
        sock.recvfrom(65536)


def _serve(conn: socket.socket) -> None:
    rfile = conn.makefile("rb")
    held: socket.socket | None = None
    kind = "tcp"
    for line in rfile:
        cmd: dict[str, Any] = json.loads(line)
        op = cmd["op"]
        if op == "bind":
            if held is not None:
                held.close()
                held = None
            kind = cmd["proto"]
            sock = socket.socket(_family(cmd["family"]), socket.SOCK_STREAM if kind == "tcp" else socket.SOCK_DGRAM)
            reply: dict[str, Any] = {"ok": True}
            try:
                for name in cmd["options"]:
                    sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
                if cmd["family"] == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                stage = "bind"
                sock.bind((cmd["host"], cmd["port"]))
                if kind == "tcp":
                    stage = "listen"
                    sock.listen(64)
            except OSError as exc:
                reply = {"ok": False, "errno": exc.errno, "stage": stage}
                sock.close()
            else:
                sock.setblocking(False)
                held = sock
        elif op == "two_step":
            # The kernel fast-path takeover (docs/limits.md): a SO_REUSEPORT bind
            # of one family's wildcard, closed at once, leaves the port's bind
            # bucket remembering this uid; a later SO_REUSEPORT bind that
            # "matches" it skips the conflict check.
            if held is not None:
                held.close()
                held = None
            kind = "tcp"
            reply = {"ok": False}
            prime = socket.socket(_family(cmd["prime_family"]), socket.SOCK_STREAM)
            try:
                prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if cmd.get("prime_reuseaddr"):
                    # Gets past connections (or TIME_WAIT) a closed listener left on the port.
                    prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if cmd["prime_family"] == 6:
                    prime.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(cmd["prime_v6only"]))
                prime.bind((cmd["prime_host"], cmd["port"]))
                reply["prime"] = "bound"
            except OSError as exc:
                reply["prime"] = errno.errorcode.get(exc.errno or 0, str(exc.errno))
            finally:
                prime.close()
            sock = socket.socket(_family(cmd["family"]), socket.SOCK_STREAM)
            stage = "bind"
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                # SO_INCOMING_CPU (49 on Linux) makes the co-bound socket win lookups.
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, "SO_INCOMING_CPU", 49), 0)
                if cmd["family"] == 6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                sock.bind((cmd["host"], cmd["port"]))
                stage = "listen"
                sock.listen(64)
            except OSError as exc:
                reply.update(errno=exc.errno, stage=stage)
                sock.close()
            else:
                reply["ok"] = True
                sock.setblocking(False)
                held = sock
        elif op == "race":
            # A process looping on bind: lands in any window, however short, in
            # which the port is shareable. Each success is held for *hold* s.
            landed = tries = shared = 0
            deadline = time.monotonic() + cmd["duration"]
            fam = _family(cmd["family"])
            kind_ = socket.SOCK_STREAM if cmd["proto"] == "tcp" else socket.SOCK_DGRAM
            while time.monotonic() < deadline:
                tries += 1
                racer = socket.socket(fam, kind_)
                try:
                    for name in cmd["options"]:
                        racer.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
                    racer.bind((cmd["host"], cmd["port"]))
                except OSError:
                    pass
                else:
                    landed += 1
                    # Alone on the port (it was free), or next to the victim?
                    # The kernel's table says; a co-bind is what we are after.
                    if sockets_on_port(cmd["proto"], cmd["port"]) > 1:
                        shared += 1
                    time.sleep(cmd["hold"])
                finally:
                    racer.close()
                if cmd.get("pause"):
                    time.sleep(cmd["pause"])
            reply = {"landed": landed, "tries": tries, "shared": shared}
        elif op == "collect":
            count = 0
            if held is not None:
                deadline = time.monotonic() + cmd.get("wait", 0.3)
                while True:
                    left = deadline - time.monotonic()
                    if left <= 0 or not select.select([held], [], [], left)[0]:
                        break
                    try:
                        receive_one(held)
                        count += 1
                    except BlockingIOError:
                        continue
                held.close()
                held = None
            reply = {"stolen": count}
        elif op == "whoami":
            reply = {"uid": os.getuid(), "pid": os.getpid()}
        else:
            break
        conn.sendall(json.dumps(reply).encode() + b"\n")


def sockets_on_port(proto: str, port: int) -> int:
    """How many IPv4 sockets /proc/net lists on 127.0.0.1:*port* or 0.0.0.0:*port* (what conflicts with ours)."""
    try:
        listed = read_sockets((proto,), ports=[port])
    except OSError:
        return 0
    # Distinct inodes: the kernel prints the table in chunks and can list a socket twice.
    return len({s.inode for s in listed if s.address in ("127.0.0.1", "0.0.0.0")})


class Attacker:
    """A forked process, optionally running as another user, that tries to steal a port."""

    def __init__(self, uid: int | None = None) -> None:
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                become_stranger(uid, child.fileno())
                _serve(child)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self.uid = uid if uid is not None else os.getuid()
        self._conn = parent
        self._rfile = parent.makefile("rb")

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        self._conn.sendall(json.dumps(cmd).encode() + b"\n")
        line = self._rfile.readline()
        if not line:
            raise RuntimeError("the attacker process died")
        return json.loads(line)  # type: ignore[no-any-return]

    def try_bind(self, proto: str, family: int, host: str, port: int, options: tuple[str, ...]) -> BindResult:
        r = self._ask(op="bind", proto=proto, family=family, host=host, port=port, options=list(options))
        return BindResult(r["ok"], r.get("errno"), r.get("stage"))

    def two_step(
        self,
        port: int,
        *,
        prime_family: int,
        prime_host: str,
        prime_v6only: bool,
        family: int,
        host: str,
        prime_reuseaddr: bool = False,
    ) -> tuple[BindResult, str]:
        """Prime the port's bind bucket with SO_REUSEPORT, close, then bind and listen (dual-stack for IPv6)."""
        r = self._ask(
            op="two_step",
            port=port,
            prime_family=prime_family,
            prime_host=prime_host,
            prime_v6only=prime_v6only,
            family=family,
            host=host,
            prime_reuseaddr=prime_reuseaddr,
        )
        return BindResult(r["ok"], r.get("errno"), r.get("stage")), str(r.get("prime"))

    def two_step_attack(
        self, family: int, port: int, traffic: int, *, prime_reuseaddr: bool = True
    ) -> tuple[BindResult, str, int]:
        """`two_step` against *family*'s wildcard listener on *port*, then *traffic* connections to its loopback.

        The connections are sent from CPU 0 (`on_cpu_0`), where the attacker wins every lookup it can.
        *prime_reuseaddr* by default: the prime then gets past TIME_WAIT connections earlier tests left on
        the other family's side of a reused port number (a control stays deterministic), and it is the
        stronger attack against a hold, which must refuse it all the same.
        Returns (the attacker's listener result, how its prime went, how many connections it stole).
        """
        result, prime = self.two_step(port, **TWO_STEP[family], prime_reuseaddr=prime_reuseaddr)
        with on_cpu_0():
            send_traffic("tcp", family, LOOPBACK[family], port, traffic)
        return result, prime, self.collect(wait=0.5)

    def start_race(
        self,
        proto: str,
        family: int,
        host: str,
        port: int,
        options: tuple[str, ...],
        duration: float,
        hold: float,
        pause: float = 0.0,
    ) -> None:
        """Start binding in a loop for *duration* seconds; `finish_race` returns the counts."""
        cmd = dict(
            op="race",
            proto=proto,
            family=family,
            host=host,
            port=port,
            options=list(options),
            duration=duration,
            hold=hold,
            pause=pause,
        )
        self._conn.sendall(json.dumps(cmd).encode() + b"\n")

    def finish_race(self) -> dict[str, int]:
        line = self._rfile.readline()
        if not line:
            raise RuntimeError("the attacker process died")
        return json.loads(line)  # type: ignore[no-any-return]

    def collect(self, wait: float = 0.3) -> int:
        """How many connections/datagrams the attacker's socket got; closes it."""
        return int(self._ask(op="collect", wait=wait)["stolen"])

    def whoami(self) -> dict[str, int]:
        return self._ask(op="whoami")

    def close(self) -> None:
        try:
            self._conn.sendall(b'{"op": "exit"}\n')
        except OSError:
            pass
        self._rfile.close()
        self._conn.close()
        os.waitpid(self.pid, 0)


def send_traffic(proto: str, family: int, host: str, port: int, count: int) -> None:
    """*count* connections (each closed at once) or datagrams, from this process."""
    for i in range(count):
        sock = socket.socket(_family(family), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
        try:
            if proto == "tcp":
                sock.settimeout(5)
                sock.connect((host, port))
            else:
                sock.sendto(b"datagram %d" % i, (host, port))
        finally:
            sock.close()


@contextmanager
def on_cpu_0() -> Iterator[None]:
    """Run the block pinned to CPU 0.

    Loopback connections are processed on the sender's CPU, and the attackers
    set SO_INCOMING_CPU=0: connecting from CPU 0 lets an attacker win every
    kernel lookup it can, so that a control is deterministic.
    """
    affinity = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {0})
    try:
        yield
    finally:
        os.sched_setaffinity(0, affinity)


def fork_stranger(uid: int | None, child: Callable[[int, int], None]) -> tuple[int, int, TextIO]:
    """Fork a child that `become_stranger` *uid* and runs ``child(read_fd, write_fd)``, then exits.

    Returns (its pid, the descriptor to write to it, a text reader of what it writes).
    """
    to_child_r, to_child_w = os.pipe()
    from_child_r, from_child_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        code = 0
        try:
            become_stranger(uid, to_child_r, from_child_w)
            child(to_child_r, from_child_w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(to_child_r)
    os.close(from_child_w)
    return pid, to_child_w, os.fdopen(from_child_r, "r")


class FastPathAttacker:
    """The kernel bind fast-path attack (docs/limits.md), step by step, in a forked process (as *uid*).

    The child binds a prime on *prime_at*, the other family's wildcard
    (``"::"`` IPv6-only), with SO_REUSEPORT (and SO_REUSEADDR if
    *prime_reuseaddr*: it gets past TIME_WAIT). It closes the prime at once, or
    with *keep_prime* writes ``primed`` and keeps it open until `go`. Then it
    binds a dual-stack ``[::]`` thief with SO_REUSEPORT and SO_INCOMING_CPU=0
    (and, with *bindtodevice*, SO_BINDTODEVICE=lo: one more point in the
    kernel's lookup score, enough to beat an IPv4 listener for IPv4
    connections), listens, and writes ``ok`` (or ``refused ERRNO`` if a bind
    failed). `count` then asks how many connections wait for the thief.
    """

    def __init__(
        self,
        port: int,
        uid: int | None,
        *,
        prime_at: str = "0.0.0.0",
        prime_reuseaddr: bool = False,
        bindtodevice: bool = False,
        keep_prime: bool = False,
    ) -> None:
        self.pid, self._write_fd, self._reader = fork_stranger(
            uid, lambda rfd, wfd: self._child(rfd, wfd, port, prime_at, prime_reuseaddr, bindtodevice, keep_prime)
        )

    @staticmethod
    def _child(
        rfd: int, wfd: int, port: int, prime_at: str, prime_reuseaddr: bool, bindtodevice: bool, keep_prime: bool
    ) -> None:  # pragma: no cover - the child
        try:
            prime = socket.socket(socket.AF_INET6 if ":" in prime_at else socket.AF_INET, socket.SOCK_STREAM)
            prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if prime_reuseaddr:
                prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if ":" in prime_at:
                prime.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            prime.bind((prime_at, port))
            if keep_prime:
                os.write(wfd, b"primed\n")
                os.read(rfd, 10)
            else:
                prime.close()
            thief = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            thief.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if bindtodevice:
                thief.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")
            # Scores one point above the service for connections handled on
            # CPU 0 (the parent connects pinned to it: `on_cpu_0`).
            thief.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, 0)
            thief.bind(("::", port))
            thief.listen(64)
        except OSError as exc:
            os.write(wfd, f"refused {exc.errno}\n".encode())
            return
        os.write(wfd, b"ok\n")
        os.read(rfd, 10)
        thief.setblocking(False)
        os.write(wfd, f"{accept_waiting(thief)}\n".encode())
        os.read(rfd, 10)

    def line(self) -> str:
        """The child's next line: ``primed``, ``ok`` or ``refused ERRNO`` (empty if it died)."""
        return self._reader.readline().strip()

    def go(self) -> None:
        """Let the child go on from where it waits."""
        os.write(self._write_fd, b"go\n")

    def count(self) -> int:
        """How many connections the listening thief has waiting (it accepts and closes them)."""
        self.go()
        return int(self._reader.readline())

    def close(self) -> None:
        os.close(self._write_fd)
        self._reader.close()
        os.waitpid(self.pid, 0)

    def __enter__(self) -> FastPathAttacker:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()


def connections_reaching(service: socket.socket, host: str, n: int, scope: int = 0) -> int:
    """Connect *n* times to *host* (a literal; *scope* for a link-local one) on *service*'s port from CPU 0
    (the attackers' ``SO_INCOMING_CPU``); how many did *service* itself get?"""
    port = service.getsockname()[1]
    with on_cpu_0():
        clients = []
        for _ in range(n):
            client = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            client.settimeout(5)
            client.connect((host, port, 0, scope) if scope else (host, port))
            clients.append(client)
    service.setblocking(False)
    try:
        return accept_waiting(service)
    finally:
        service.setblocking(True)
        for client in clients:
            client.close()


def take_from_another_interface(
    port: int,
    prime_host: str,
    thief: tuple[Any, ...],
    device: bytes | None,
    *,
    prime_device: bytes,
    clients: int = 20,
) -> tuple[str, int]:
    """The interface fast-path takeover (docs/limits.md, "Listeners bound to one interface"), as uid 65534.

    A ``SO_REUSEPORT`` prime on *prime_host* (a wildcard) bound to
    *prime_device*, closed; then a thief at *thief* (``SO_REUSEPORT``,
    ``SO_INCOMING_CPU=0``, ``SO_BINDTODEVICE=`` *device*) that listens; then
    *clients* connections to the thief's address from CPU 0. Returns
    ``("ok", stolen)`` or ``("refused ERRNO", 0)``. Needs root (to become
    uid 65534) and an interface besides the listener's: run it in a network
    namespace of the test's own (``harness.run_in_own_netns``).
    """
    family = socket.AF_INET6 if len(thief) == 4 else socket.AF_INET
    r, w = os.pipe()
    go_r, go_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            become_stranger(NOBODY, w, go_r)
            try:
                prime = socket.socket(_family(6 if ":" in prime_host else 4), socket.SOCK_STREAM)
                prime.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if ":" in prime_host:
                    prime.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                prime.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, prime_device)
                prime.bind((prime_host, port))
                prime.close()
                sock = socket.socket(family, socket.SOCK_STREAM)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                sock.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, 0)
                if device:
                    sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device)
                sock.bind(thief)
                sock.listen(64)
                sock.setblocking(False)
            except OSError as exc:
                os.write(w, f"refused {exc.errno}\n".encode())
                os._exit(0)
            os.write(w, b"ok\n")
            os.read(go_r, 1)  # the parent has connected
            os.write(w, f"{accept_waiting(sock)}\n".encode())
        finally:
            os._exit(0)
    os.close(w)
    os.close(go_r)
    with os.fdopen(r) as answers:
        first = answers.readline().strip()
        stolen = 0
        if first == "ok":
            with on_cpu_0():
                for _ in range(clients):
                    with socket.socket(family, socket.SOCK_STREAM) as client:
                        client.settimeout(5)
                        client.connect(thief)
            os.write(go_w, b"g")
            stolen = int(answers.readline())
    os.close(go_w)
    os.waitpid(pid, 0)
    return first, stolen
