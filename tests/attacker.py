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
        self, port: int, *, prime_family: int, prime_host: str, prime_v6only: bool, family: int, host: str
    ) -> tuple[BindResult, str]:
        """Prime the port's bind bucket with SO_REUSEPORT, close, then bind and listen (dual-stack for IPv6)."""
        r = self._ask(
            op="two_step", port=port, prime_family=prime_family, prime_host=prime_host,
            prime_v6only=prime_v6only, family=family, host=host,
        )
        return BindResult(r["ok"], r.get("errno"), r.get("stage")), str(r.get("prime"))

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
