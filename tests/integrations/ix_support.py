"""Helpers for the integration tests: real servers as subprocesses, real requests, real attackers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
from typing import Any

import pytest
from attacker import Attacker, send_traffic

# Re-exported: the integration tests take these from here.
from harness import HAVE_IPV6 as HAVE_IPV6
from harness import HAVE_UVLOOP as HAVE_UVLOOP

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
EXAMPLES = os.path.join(ROOT, "examples")
PY = sys.executable
# Start-up is never a timed assertion: this only stops a hung server from
# hanging the suite, and reports what it printed.
START_TIMEOUT = 60.0

BOTH = ("SO_REUSEADDR", "SO_REUSEPORT")
ATTACKS = (BOTH, ("SO_REUSEPORT",), ("SO_REUSEADDR",))


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    # The examples import aioexclusive from this checkout even when it is not installed.
    env["PYTHONPATH"] = os.pathsep.join(p for p in (ROOT, env.get("PYTHONPATH")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    return env


class ServerProcess:
    """A server started as a subprocess; its merged output is collected line by line."""

    def __init__(self, args: list[str], *, cwd: str | None = None) -> None:
        self.args = args
        self.lines: list[str] = []
        self._eof = False  # the output ended (the process is exiting)
        self._changed = threading.Condition()
        self.proc = subprocess.Popen(
            args,
            cwd=cwd or EXAMPLES,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self._eof = True
            self._changed.notify_all()

    @property
    def output(self) -> str:
        with self._changed:
            return "\n".join(self.lines)

    def wait_for(self, pattern: str, count: int = 1) -> re.Match[str]:
        """The *count*-th match of *pattern* in the output; fails if the process ends first."""
        regex = re.compile(pattern)
        with self._changed:
            while True:
                found = [m for m in map(regex.search, self.lines) if m]
                if len(found) >= count:
                    return found[count - 1]
                if self._eof:
                    # The output ended without a match. Not "poll() and the reader gone": at the
                    # reader's last notification neither is true yet, and the next wake-up came only
                    # with the timeout (a refused start waited 60 s, then was reported as silent).
                    try:
                        self.proc.wait(START_TIMEOUT)
                    except subprocess.TimeoutExpired:
                        pass
                    raise AssertionError(
                        f"{self.args} exited ({self.proc.returncode}) before {pattern!r}:\n{self.output_unlocked()}"
                    )
                if not self._changed.wait(START_TIMEOUT):
                    raise AssertionError(f"{self.args} printed no {pattern!r}:\n{self.output_unlocked()}")

    def output_unlocked(self) -> str:
        return "\n".join(self.lines)

    def wait_exit(self) -> int:
        code = self.proc.wait(START_TIMEOUT)
        self._reader.join(10)
        return code

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self._reader.join(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        return self.proc.returncode

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()


def family_of(host: str) -> int:
    return 6 if ":" in host else 4


def _recv_all(sock: socket.socket) -> bytes:
    chunks: list[bytes] = []
    while True:
        data = sock.recv(65536)
        if not data:
            return b"".join(chunks)
        chunks.append(data)


def _http(sock: socket.socket, path: str) -> tuple[int, Any]:
    sock.settimeout(30)
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n".encode())
    raw = _recv_all(sock)
    head, _, body = raw.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    if b"transfer-encoding: chunked" in head.lower():
        body = _unchunk(body)
    return status, json.loads(body)


def _unchunk(body: bytes) -> bytes:
    out = b""
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2 :]
    return out


def http_get(host: str, port: int, path: str = "/") -> tuple[int, Any]:
    """One real HTTP request over TCP; returns (status, decoded JSON body)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect((host, port))
        return _http(sock, path)


def http_get_unix(path: str, url: str = "/") -> tuple[int, Any]:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(30)
        sock.connect(path)
        return _http(sock, url)


def assert_exclusive_answer(body: Any) -> None:
    """The app ran on an exclusive loop: its class and its refused reuse_port say so."""
    assert body["loop"].startswith("Exclusive"), body
    assert body["reuse_port"] == "refused", body


def assert_attacker_cannot_listen(attacker: Attacker, host: str, port: int) -> None:
    """No option combination lets the attacker listen on the port (same or wildcard address)."""
    family = family_of(host)
    wildcard = "::" if family == 6 else "0.0.0.0"
    for address in (host, wildcard):
        for options in ATTACKS:
            result = attacker.try_bind("tcp", family, address, port, options)
            attacker.collect(wait=0)
            assert not result.ok, f"attacker listened on [{address}]:{port} with {options}"


def assert_serves_exclusively(attacker: Attacker, host: str, port: int) -> None:
    """A real request is answered by an exclusive loop; *attacker* cannot listen on the port; the server still answers."""
    status, body = http_get(host, port)
    assert status == 200
    assert_exclusive_answer(body)
    assert_attacker_cannot_listen(attacker, host, port)
    assert http_get(host, port)[0] == 200


def assert_attacker_cannot_bind_udp(attacker: Attacker, host: str, port: int) -> None:
    family = family_of(host)
    for options in ATTACKS:
        result = attacker.try_bind("udp", family, host, port, options)
        attacker.collect(wait=0)
        assert not result.ok, f"attacker bound UDP [{host}]:{port} with {options}"


def attacker_steals(attacker: Attacker, host: str, port: int, connections: int = 24) -> int:
    """Control: co-listen with both options, connect *connections* times, count what the attacker got."""
    result = attacker.try_bind("tcp", family_of(host), host, port, BOTH)
    if not result.ok:
        attacker.collect(wait=0)
        return -1
    send_traffic("tcp", family_of(host), host, port, connections)
    return attacker.collect(wait=0.5)


def free_port(host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sharing_options(sock: socket.socket) -> tuple[int, int]:
    """(SO_REUSEADDR, SO_REUSEPORT) as set on *sock*."""
    reuseport = getattr(socket, "SO_REUSEPORT", None)
    return (
        sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR),
        sock.getsockopt(socket.SOL_SOCKET, reuseport) if reuseport is not None else 0,
    )


# The loopback addresses every server test runs on.
LOOPBACK_HOSTS = [
    pytest.param("127.0.0.1", id="ipv4"),
    pytest.param("::1", id="ipv6", marks=pytest.mark.skipif(not HAVE_IPV6, reason="no IPv6 loopback here")),
]


class LiveUnixServer:
    """A live AF_UNIX server in another process (stream: accepts and says "live"; or datagram)."""

    CODE = (
        "import socket, sys\n"
        "kind = socket.SOCK_STREAM if sys.argv[2] == 'stream' else socket.SOCK_DGRAM\n"
        "s = socket.socket(socket.AF_UNIX, kind); s.bind(sys.argv[1])\n"
        "if kind == socket.SOCK_STREAM: s.listen(16)\n"
        "print('ready', flush=True)\n"
        "while kind == socket.SOCK_STREAM:\n"
        "    c, _ = s.accept(); c.sendall(b'live'); c.close()\n"
        "sys.stdin.read()\n"
    )

    def __init__(self, path: str, kind: str = "stream") -> None:
        self.path = path
        self.proc = subprocess.Popen(
            [PY, "-c", self.CODE, path, kind], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None and self.proc.stdout.readline().strip() == "ready"
        self.inode = os.lstat(path).st_ino

    def answers(self) -> bool:
        """Does a client connecting to the path reach this very server?"""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(10)
            try:
                client.connect(self.path)
                return client.recv(8) == b"live"
            except OSError:
                return False

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.close()
        self.proc.stdout.close()

    def __enter__(self) -> LiveUnixServer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
