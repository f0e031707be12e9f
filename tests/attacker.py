"""A real attacker: a separate process that tries to co-bind a port and counts what it steals.

Forked (not exec'd: the interpreter may live under a home only root can read)
and, for the cross-user cases, dropped to uid/gid 65534 before it does anything.
It obeys JSON lines over a socketpair, so one attacker serves a whole test run.
"""

from __future__ import annotations

import errno
import json
import os
import select
import socket
import sys
import time
from dataclasses import dataclass
from typing import Any

NOBODY = 65534
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
                    if _sockets_on_port(cmd["proto"], cmd["port"]) > 1:
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
                        if kind == "tcp":
                            peer, _ = held.accept()
                            peer.close()
                        else:
                            held.recvfrom(65536)
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


def _sockets_on_port(proto: str, port: int) -> int:
    """How many IPv4 sockets /proc/net lists on 127.0.0.1:*port* or 0.0.0.0:*port* (what conflicts with ours)."""
    wanted = {"0100007F:%04X" % port, "00000000:%04X" % port}
    if sys.byteorder == "big":  # /proc prints the address as a host-order word
        wanted = {"7F000001:%04X" % port, "00000000:%04X" % port}
    try:
        with open(f"/proc/net/{proto}") as f:
            next(f)
            # Distinct inodes: the kernel prints the table in chunks, and a
            # socket added or removed between two chunks can make another
            # appear twice.
            return len({fields[9] for fields in map(str.split, f) if fields[1] in wanted})
    except OSError:
        return 0


class Attacker:
    """A forked process, optionally running as another user, that tries to steal a port."""

    def __init__(self, uid: int | None = None) -> None:
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                parent.close()
                if uid is not None:
                    os.setgroups([])
                    os.setgid(uid)
                    os.setuid(uid)
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
            op="two_step", port=port, prime_family=prime_family, prime_host=prime_host,
            prime_v6only=prime_v6only, family=family, host=host, prime_reuseaddr=prime_reuseaddr,
        )
        return BindResult(r["ok"], r.get("errno"), r.get("stage")), str(r.get("prime"))

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
        cmd = dict(op="race", proto=proto, family=family, host=host, port=port, options=list(options),
                   duration=duration, hold=hold, pause=pause)
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
