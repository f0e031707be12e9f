"""Bind attempts, made in this process or in a separate one (optionally as another user).

Shared by ``python -m aioexclusive demo`` (an attacker that holds a port and
counts what it steals) and ``probe`` (attempts that are closed at once).

The separate process is forked on POSIX rather than started from the
interpreter binary: after ``setuid(65534)`` a child could not even execute a
Python that lives under ``/root`` (pyenv), and a fork needs nothing from the
filesystem. It must be forked before the parent starts threads or an event
loop. On Windows, which cannot fork, it is ``python -m aioexclusive._cli.attack``.
Parent and child speak JSON lines.
"""

from __future__ import annotations

import errno as _errno
import gc
import json
import os
import select
import socket
import subprocess
import sys
import time
from typing import IO, Any

from .._guard import exempt

__all__ = ["OPTION_SETS", "Agent", "attempt", "option_sets", "resolve_user"]

NOBODY = 65534
SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)

# Every combination an attacker would try, by the names the OS uses.
OPTION_SETS: tuple[tuple[str, ...], ...] = (
    (),
    ("SO_REUSEADDR",),
    ("SO_REUSEPORT",),
    ("SO_REUSEADDR", "SO_REUSEPORT"),
)


def option_sets() -> list[tuple[str, ...]]:
    """The combinations this platform can express (Windows has no SO_REUSEPORT)."""
    return [combo for combo in OPTION_SETS if all(hasattr(socket, name) for name in combo)]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _sockaddr(host: str, port: int) -> tuple[Any, ...]:
    """The bind address; an IPv6 link-local ``fe80::1%eth0`` keeps its scope id (bind fails with EINVAL without it)."""
    if "%" not in host:
        return (host, port)
    # getaddrinfo turns the zone (interface name or number) into the scope id.
    info = socket.getaddrinfo(host, port, socket.AF_INET6, socket.SOCK_STREAM, 0, socket.AI_NUMERICHOST)
    return tuple(info[0][4])


def _is_mapped(host: str) -> bool:
    """An IPv4-mapped IPv6 address (``::ffff:a.b.c.d``), which only an IPV6_V6ONLY=0 socket can bind."""
    try:
        return socket.inet_pton(socket.AF_INET6, host.partition("%")[0])[:12] == bytes(10) + b"\xff\xff"
    except (OSError, ValueError):
        return False


def _open(
    proto: str,
    host: str,
    port: int,
    options: list[str] | tuple[str, ...],
    v6only: bool = True,
    device: str | None = None,
) -> tuple[socket.socket, str]:
    sock = socket.socket(_family(host), socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM)
    try:
        # The attacker's sockets are shareable on purpose: the process-wide
        # guard (AIOEXCLUSIVE_GUARD inherited by the CLI) must not fix or
        # refuse them, or the tools would report what the guard did to
        # themselves instead of what an attacker can do.
        with exempt():
            for name in options:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
            if ":" in host:
                # v6only=False: a dual-stack socket, which overlaps the IPv4
                # side too (the second step of the fast-path attack). An
                # IPv4-mapped address (::ffff:0.0.0.0) binds only that way:
                # the kernel refuses it on an IPv6-only socket (EINVAL).
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1 if v6only and not _is_mapped(host) else 0)
            if device:
                # Bound to one interface: it conflicts only with sockets of no
                # interface or of this one (the device-bound takeover).
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
            sock.bind(_sockaddr(host, port))
    except BaseException:
        sock.close()
        raise
    return sock, "bind"


def attempt(
    proto: str,
    host: str,
    port: int,
    options: list[str] | tuple[str, ...],
    *,
    listen: bool = False,
    v6only: bool = True,
    prime: dict[str, Any] | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Try to bind (and, if *listen*, listen) next to whoever holds the port; always close at once.

    *prime* (``{"host", "options", "v6only"}``) is a first bind, closed at
    once, made before the real one: on Linux a bind that passes with
    ``SO_REUSEPORT`` leaves the port's bind bucket in a "fast reuse" state for
    this uid, and a later bind of the same uid may skip the conflict check
    (the two-step attack, docs/limits.md). A failed prime ends the attempt
    (``stage="prime"``). *device* (and the prime's ``"device"``) binds the
    socket to that interface first (``SO_BINDTODEVICE``).

    Returns ``{"bound", "listened", "stage", "errno", "error"}``: *stage* is
    where it failed (``"prime"``/``"bind"``/``"listen"``/``"setsockopt"``) or ``None``.
    """
    result: dict[str, Any] = {"bound": False, "listened": None, "stage": None, "errno": None, "error": None}
    if prime is not None:
        try:
            first, _ = _open(
                proto, prime["host"], port, prime["options"], prime.get("v6only", True), prime.get("device")
            )
        except OSError as exc:
            result.update(stage="prime", errno=exc.errno, error=_errno.errorcode.get(exc.errno or 0, str(exc)))
            return result
        first.close()  # never listened: it took nothing, it only primed the bucket
    try:
        sock, _ = _open(proto, host, port, options, v6only, device)
    except OSError as exc:
        result.update(stage="bind", errno=exc.errno, error=_errno.errorcode.get(exc.errno or 0, str(exc)))
        return result
    try:
        result["bound"] = True
        if listen:
            try:
                sock.listen(1)
            except OSError as exc:
                result.update(
                    listened=False,
                    stage="listen",
                    errno=exc.errno,
                    error=_errno.errorcode.get(exc.errno or 0, str(exc)),
                )
            else:
                result["listened"] = True
    finally:
        sock.close()
    return result


class _Holder:
    """The child's state for the demo: one socket held, traffic counted."""

    def __init__(self) -> None:
        self.sock: socket.socket | None = None
        self.proto = "tcp"

    def hold(self, proto: str, host: str, port: int, options: list[str]) -> dict[str, Any]:
        self.release()
        try:
            sock, _ = _open(proto, host, port, options)
        except OSError as exc:
            return {"ok": False, "stage": "bind", "errno": exc.errno, "error": _errno.errorcode.get(exc.errno or 0, "")}
        if proto == "tcp":
            try:
                sock.listen(64)
            except OSError as exc:
                sock.close()
                return {
                    "ok": False,
                    "stage": "listen",
                    "errno": exc.errno,
                    "error": _errno.errorcode.get(exc.errno or 0, ""),
                }
        sock.setblocking(False)
        self.sock, self.proto = sock, proto
        return {"ok": True}

    def collect(self, wait: float) -> dict[str, Any]:
        count = 0
        samples: list[str] = []
        sock = self.sock
        if sock is not None:
            deadline = time.monotonic() + wait
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([sock], [], [], left)[0]:
                    break
                try:
                    if self.proto == "tcp":
                        peer, _ = sock.accept()
                        peer.settimeout(0.5)
                        try:
                            data = peer.recv(200)
                        except OSError:
                            data = b""
                        peer.close()
                    else:
                        data, _ = sock.recvfrom(65536)
                except BlockingIOError:
                    continue
                count += 1
                if data and len(samples) < 1:
                    samples.append(data.decode("ascii", "replace").strip())
        self.release()
        return {"stolen": count, "samples": samples}

    def release(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None


def _serve(rfile: IO[bytes], wfile: IO[bytes]) -> None:
    holder = _Holder()
    for line in rfile:
        cmd: dict[str, Any] = json.loads(line)
        op = cmd.pop("op")
        if op == "attempt":
            reply = attempt(
                cmd["proto"],
                cmd["host"],
                cmd["port"],
                cmd["options"],
                listen=cmd["listen"],
                v6only=cmd.get("v6only", True),
                prime=cmd.get("prime"),
                device=cmd.get("device"),
            )
        elif op == "hold":
            reply = holder.hold(cmd["proto"], cmd["host"], cmd["port"], cmd["options"])
        elif op == "collect":
            reply = holder.collect(cmd.get("wait", 0.3))
        elif op == "whoami":
            reply = {"uid": os.getuid() if hasattr(os, "getuid") else None, "pid": os.getpid()}
        else:
            break
        wfile.write(json.dumps(reply).encode() + b"\n")
        wfile.flush()
    holder.release()


def resolve_user(name: str) -> tuple[int, int]:
    """(uid, gid) of a user name or a numeric uid; ``KeyError`` if unknown."""
    import pwd

    if name.isdigit():
        uid = int(name)
        try:
            return uid, pwd.getpwuid(uid).pw_gid
        except KeyError:
            return uid, uid
    entry = pwd.getpwnam(name)
    return entry.pw_uid, entry.pw_gid


def _close_inherited(keep: int) -> None:
    """In the forked agent: close every descriptor but stdio and *keep*.

    The agent is another party, often another user: it must not hold the probing
    program's sockets (a copy of a listener makes the agent one of its holders and
    keeps it open after the program closes it) or anything else the program had
    open. The garbage collector goes off first, so that no parent's socket object
    collected here closes a new socket that reused its number.
    """
    gc.disable()
    os.closerange(3, keep)
    os.closerange(max(keep + 1, 3), os.sysconf("SC_OPEN_MAX"))


class Agent:
    """A separate process that makes bind attempts on request, as *uid* if given (root only)."""

    def __init__(self, uid: int | None = None, gid: int | None = None) -> None:
        self.uid = uid
        self._proc: subprocess.Popen[bytes] | None = None
        self.pid: int
        if not hasattr(os, "fork"):
            if uid is not None:
                raise OSError("running as another user needs fork and setuid (POSIX)")
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "aioexclusive._cli.attack"], stdin=subprocess.PIPE, stdout=subprocess.PIPE
            )
            assert self._proc.stdin is not None and self._proc.stdout is not None
            self._w, self._r = self._proc.stdin, self._proc.stdout
            self.pid = self._proc.pid
            return
        parent, child = socket.socketpair()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            code = 0
            try:
                _close_inherited(child.fileno())
                if uid is not None:
                    os.setgroups([])
                    os.setgid(gid if gid is not None else uid)
                    os.setuid(uid)
                # The whole agent is an attacker: nothing it binds is judged by the guard.
                with exempt(), child.makefile("rb") as rfile, child.makefile("wb") as wfile:
                    _serve(rfile, wfile)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        self.pid = pid
        self._sock = parent
        self._r = parent.makefile("rb")
        self._w = parent.makefile("wb")

    def _ask(self, **cmd: Any) -> dict[str, Any]:
        self._w.write(json.dumps(cmd).encode() + b"\n")
        self._w.flush()
        line = self._r.readline()
        if not line:
            raise OSError("the attacker process exited (could it switch user?)")
        return json.loads(line)  # type: ignore[no-any-return]

    def whoami(self) -> dict[str, Any]:
        return self._ask(op="whoami")

    def attempt(
        self,
        proto: str,
        host: str,
        port: int,
        options: tuple[str, ...],
        *,
        listen: bool,
        v6only: bool = True,
        prime: dict[str, Any] | None = None,
        device: str | None = None,
    ) -> dict[str, Any]:
        return self._ask(
            op="attempt",
            proto=proto,
            host=host,
            port=port,
            options=list(options),
            listen=listen,
            v6only=v6only,
            prime=prime,
            device=device,
        )

    def hold(self, proto: str, host: str, port: int, options: tuple[str, ...]) -> dict[str, Any]:
        return self._ask(op="hold", proto=proto, host=host, port=port, options=list(options))

    def collect(self, wait: float = 0.3) -> dict[str, Any]:
        return self._ask(op="collect", wait=wait)

    def close(self) -> None:
        try:
            self._w.write(b'{"op": "exit"}\n')
            self._w.flush()
        except OSError:
            pass
        for stream in (self._w, self._r):
            try:
                stream.close()
            except OSError:
                pass
        if self._proc is not None:
            self._proc.wait()
        else:
            self._sock.close()
            os.waitpid(self.pid, 0)

    def __enter__(self) -> Agent:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":  # the Windows agent: python -m aioexclusive._cli.attack
    # A new interpreter: the guard may be on again here (the .pth reads the
    # inherited AIOEXCLUSIVE_GUARD); the agent's binds stay exempt.
    with exempt():
        _serve(sys.stdin.buffer, sys.stdout.buffer)
