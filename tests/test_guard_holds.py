"""The guard holds the other family's wildcard for one-family wildcard listeners (Linux, raise/enforce).

Every victim runs in a child interpreter with ``AIOEXCLUSIVE_GUARD`` set (the
``.pth`` activates the guard before the script runs, as for any program); the
attacker is the real uid-65534 two-step attacker of tests/attacker.py: prime
the other family's wildcard with ``SO_REUSEPORT``, close it, listen on a
dual-stack ``[::]`` with ``SO_REUSEPORT`` + ``SO_INCOMING_CPU``.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from attacker import LOOPBACK, Attacker, BindResult
from harness import end_processes

pytestmark = [
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux kernel behaviour: bind buckets"),
    pytest.mark.skipif(not socket.has_ipv6, reason="needs IPv6"),
]

TRAFFIC = 20
V4, V6 = 4, 6

# The victims: print the port, serve until a line on stdin, close, print "closed",
# wait for another line. Each is what a plain program does, nothing aioexclusive.
VICTIM = r"""
import asyncio, socket, socketserver, sys, threading, warnings
warnings.simplefilter("always")
KIND, PORT = sys.argv[1], int(sys.argv[2])

def report(exc):
    print("ERROR", type(exc).__name__, str(exc).replace("\n", " "), flush=True)
    sys.exit(0)

if KIND == "socketserver":
    class H(socketserver.BaseRequestHandler):
        def handle(self): self.request.recv(1)
    class S(socketserver.TCPServer):
        allow_reuse_address = True
    try:
        server = S(("0.0.0.0", PORT), H)
    except Exception as exc:
        report(exc)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    print(server.server_address[1], flush=True)
    sys.stdin.readline()
    server.shutdown(); server.server_close()
    print("closed", flush=True)
    sys.stdin.readline()
    sys.exit(0)

async def handle(reader, writer):
    # The client closes first: no TIME_WAIT on the server's side of the port,
    # which would keep a hold from being bound again after one server closes.
    await reader.read()
    writer.close()

async def main():
    hosts = {"asyncio4": ["0.0.0.0"], "asyncio6": ["::"], "both": ["0.0.0.0", "::"], "both6": ["::", "0.0.0.0"],
             "none": [None], "half": ["0.0.0.0", "::"]}[KIND]
    servers = []
    port = PORT
    try:
        for host in hosts:
            # One server per host, the second on the first one's port (0: the system picks).
            servers.append(await asyncio.start_server(handle, host, port))
            port = servers[0].sockets[0].getsockname()[1]
    except Exception as exc:
        report(exc)
    print(port, flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    for server in servers[:1] if KIND == "half" else servers:
        server.close()
        if KIND == "half":
            # From 3.12 on wait_closed() also waits for the connection the test keeps open.
            await asyncio.sleep(0.05)
        else:
            await server.wait_closed()
    print("closed", flush=True)
    await loop.run_in_executor(None, sys.stdin.readline)

asyncio.run(main())
"""


class Victim:
    """A child interpreter serving one of the VICTIM kinds."""

    def __init__(self, kind: str, mode: str | None, port: int = 0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_")}
        if mode is not None:
            env["AIOEXCLUSIVE_GUARD"] = mode
        self.proc = subprocess.Popen(  # noqa: S603 - our own interpreter and script
            [sys.executable, "-c", VICTIM, kind, str(port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        self.first = self.proc.stdout.readline().strip()
        self.port = int(self.first) if self.first.isdigit() else 0

    def close_servers(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()
        assert self.proc.stdout.readline().strip() == "closed"

    def finish(self) -> str:
        """Ends the child; its stderr (warnings)."""
        try:
            _, err = self.proc.communicate("\n\n", timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            _, err = self.proc.communicate()
        return err


@pytest.fixture
def victims() -> Iterator[list[Victim]]:
    started: list[Victim] = []
    yield started
    # CI: a victim that failed to start, its pipes left open, failed a test in test_holder after it.
    end_processes(victim.proc for victim in started)


def _victim(victims: list[Victim], kind: str, mode: str | None, port: int = 0) -> Victim:
    victim = Victim(kind, mode, port)
    victims.append(victim)
    return victim


def _two_step(
    attacker: Attacker, family: int, port: int, *, prime_reuseaddr: bool = True
) -> tuple[BindResult, str, int]:
    """The attack against *family*'s wildcard listener on *port*: (attacker's listener result, prime, stolen).

    `Attacker.two_step_attack`; prime_reuseaddr by default (a control that lost to a TIME_WAIT left on the
    other family's side failed once in CI; the hold, which has no SO_REUSEADDR, must refuse it all the same).
    """
    return attacker.two_step_attack(family, port, TRAFFIC, prime_reuseaddr=prime_reuseaddr)


def _free_port() -> int:
    # A port free on both families at once, TIME_WAIT included (a dual-stack bind without SO_REUSEADDR
    # conflicts with either). A port the kernel picks for a v6-only listener may still have IPv4
    # TIME_WAIT connections from earlier tests, where no hold can be bound (docs/limits.md).
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


def _bindable(family: int, port: int) -> bool:
    """Can a socket bind *family*'s wildcard on *port* (IPv6-only)?

    With ``SO_REUSEADDR``, to get past connections left in TIME_WAIT: a hold
    (no ``SO_REUSEADDR``) and a listener still refuse it.
    """
    sock = socket.socket(socket.AF_INET6 if family == V6 else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == V6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == V6 else "0.0.0.0", port))
    except OSError:
        return False
    finally:
        sock.close()
    return True


# -- the attack against plain programs under the guard ------------------------------------------


@pytest.mark.parametrize("mode", ["raise", "enforce"])
@pytest.mark.parametrize(("kind", "family"), [("asyncio4", V4), ("asyncio6", V6), ("socketserver", V4)])
def test_two_step_fails_against_a_guarded_plain_listener(
    other_user_attacker: Attacker, victims: list[Victim], mode: str, kind: str, family: int
) -> None:
    victim = _victim(victims, kind, mode, _free_port())  # free on both families: see _free_port
    assert victim.port, f"the victim did not start: {victim.first}"
    result, prime, stolen = _two_step(other_user_attacker, family, victim.port)
    assert prime == "EADDRINUSE", "the other family's wildcard must be held, so the prime fails"
    assert not result.ok, f"the two-step attacker co-bound a guarded {kind} listener: {result}"
    assert stolen == 0
    err = victim.finish()
    assert "ExclusivityWarning" not in err, err


@pytest.mark.parametrize(("kind", "family"), [("asyncio4", V4), ("asyncio6", V6), ("socketserver", V4)])
def test_control_two_step_takes_over_without_the_guard(
    other_user_attacker: Attacker, victims: list[Victim], kind: str, family: int
) -> None:
    """The same attack and victims with no guard: the attacker must get in, or the test above proves nothing."""
    victim = _victim(victims, kind, None, _free_port())  # free on both families: see _free_port
    result, prime, stolen = _two_step(other_user_attacker, family, victim.port)
    assert prime == "bound"
    assert result.ok, f"control: the two-step attacker should co-bind a plain {kind} listener: {result}"
    if family == V6:
        assert stolen > 0, "control: co-bound but stole nothing"


def test_warn_mode_holds_nothing_and_says_so(other_user_attacker: Attacker, victims: list[Victim]) -> None:
    victim = _victim(victims, "asyncio4", "warn", _free_port())  # free on both families: see _free_port
    result, prime, _ = _two_step(other_user_attacker, V4, victim.port)
    err = victim.finish()
    assert prime == "bound" and result.ok, "warn changes nothing: the attack works as without the guard"
    assert "ExclusivityWarning" in err and f"[::]:{victim.port} is not held" in err, err
    assert "two-step" in err


# -- the other family's wildcard already taken by someone else ---------------------------------


@pytest.mark.parametrize("mode", ["raise", "enforce", "warn"])
def test_other_family_taken_by_another_user(other_user_attacker: Attacker, victims: list[Victim], mode: str) -> None:
    port = _free_port()
    # uid 65534 sits on [::]:P (IPv6-only, SO_REUSEPORT): it can take a 0.0.0.0:P listener over.
    taken = other_user_attacker.try_bind("tcp", V6, "::", port, ("SO_REUSEPORT",))
    assert taken.ok, taken
    try:
        victim = _victim(victims, "asyncio4", mode, port)
        err = victim.finish()
    finally:
        other_user_attacker.collect(wait=0)
    if mode == "raise":
        assert victim.first.startswith("ERROR ExclusivityError"), victim.first
        assert f"[::]:{port} is taken by a socket outside this process" in victim.first
        assert "two-step" in victim.first
        assert _bindable(V4, port), "a refused listen leaves nothing bound behind"
    else:
        assert victim.port == port, f"{mode} serves on: {victim.first}"
        assert "ExclusivityWarning" in err and f"[::]:{port}" in err and "two-step" in err, err


# -- programs that bind both families themselves ------------------------------------------------


@pytest.mark.parametrize("mode", ["raise", "enforce"])
@pytest.mark.parametrize("kind", ["both", "both6", "none"])
def test_both_families_on_one_port_keep_working(
    other_user_attacker: Attacker, victims: list[Victim], mode: str, kind: str
) -> None:
    """0.0.0.0:P then [::]:P (the hold steps aside for the program's own bind), the reverse, and host=None."""
    # An explicit port: a first listener bound to port 0 cannot be demoted into
    # the hold when it closes (see the port-0 test below), and a fresh hold
    # fails while the attacker's connections linger, with a warning.
    victim = _victim(victims, kind, mode, _free_port())
    assert victim.port, f"the program could not bind both families: {victim.first}"
    for family in (V4, V6):
        with socket.create_connection((LOOPBACK[family], victim.port), timeout=5):
            pass
    result, prime, stolen = _two_step(other_user_attacker, V6, victim.port)
    assert prime == "EADDRINUSE" and not result.ok and stolen == 0
    victim.close_servers()
    assert _bindable(V4, victim.port) and _bindable(V6, victim.port), "closed: the port must be free"
    err = victim.finish()
    assert "ExclusivityWarning" not in err, err


@pytest.mark.parametrize("mode", ["raise", "enforce"])
def test_closing_one_of_two_listeners_keeps_its_family_held(
    other_user_attacker: Attacker, victims: list[Victim], mode: str
) -> None:
    """0.0.0.0:P and [::]:P; the IPv4 server closes while one of its connections is still open.

    The remaining [::] listener needs 0.0.0.0:P held, and a fresh hold cannot
    be bound next to that connection: the closing listener itself becomes the
    hold. The attacker primes with SO_REUSEADDR too, which gets past the
    connection.
    """
    victim = _victim(victims, "half", mode, _free_port())  # an explicit port: see _demote
    assert victim.port, victim.first
    with socket.create_connection(("127.0.0.1", victim.port), timeout=5):
        victim.close_servers()  # the 0.0.0.0 server only
        assert not _bindable(V4, victim.port), "the closed IPv4 listener's port must stay held"
        with pytest.raises(ConnectionRefusedError):  # held, but no longer listening
            socket.create_connection(("127.0.0.1", victim.port), timeout=5).close()
        result, prime, stolen = _two_step(other_user_attacker, V6, victim.port, prime_reuseaddr=True)
        assert prime == "EADDRINUSE" and not result.ok and stolen == 0, (result, prime, stolen)
    err = victim.finish()
    assert "ExclusivityWarning" not in err, err


def test_closing_a_port_0_listener_of_two_rebinds_the_hold(
    other_user_attacker: Attacker, victims: list[Victim]
) -> None:
    """The IPv4 server was bound to port 0: shut down, it leaves the port's bind bucket; a fresh hold replaces it."""
    for _ in range(5):
        # Port 0 is the point here, so the kernel's pick may carry TIME_WAIT from earlier tests on the
        # IPv6 side, where the second server cannot bind: start again on another pick.
        victim = _victim(victims, "half", "enforce", 0)
        if victim.port or "in use" not in victim.first:
            break
    assert victim.port, victim.first
    victim.close_servers()  # the 0.0.0.0 server only
    assert not _bindable(V4, victim.port), "the closed IPv4 listener's port must be held again"
    result, prime, stolen = _two_step(other_user_attacker, V6, victim.port)
    assert prime == "EADDRINUSE" and not result.ok and stolen == 0, (result, prime, stolen)
    err = victim.finish()
    assert "ExclusivityWarning" not in err, err


@pytest.mark.parametrize(("kind", "held"), [("asyncio4", V6), ("asyncio6", V4), ("socketserver", V6)])
def test_hold_lives_as_long_as_the_listener(victims: list[Victim], kind: str, held: int) -> None:
    victim = _victim(victims, kind, "enforce", _free_port())  # free on both families: see _free_port
    assert not _bindable(held, victim.port), "while the listener lives, the other family's wildcard is held"
    victim.close_servers()
    assert _bindable(held, victim.port), "the listener closed: the hold must be released"
    assert _bindable(V4 if held == V6 else V6, victim.port)
    victim.finish()


# -- the launcher, with a real pre-forking server ------------------------------------------------

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"VICTIM"})
"""


def test_launcher_hypercorn_workers(other_user_attacker: Attacker, tmp_path: Path) -> None:
    hypercorn = Path(sys.executable).with_name("hypercorn")
    if not hypercorn.exists():
        pytest.skip("hypercorn is not installed")
    (tmp_path / "app_holds.py").write_text(APP)
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_")}
    proc = subprocess.Popen(  # noqa: S603 - our own interpreter
        [
            sys.executable,
            "-m",
            "aioexclusive",
            "run",
            "--mode",
            "enforce",
            "--",
            str(hypercorn),
            "app_holds:app",
            "--workers",
            "2",
            "--bind",
            f"0.0.0.0:{port}",
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    lines: list[str] = []
    both_listen = threading.Event()

    def read_stderr() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            if sum("Running on" in seen for seen in lines) == 2:
                both_listen.set()
        both_listen.set()  # exited: the assertion below says so

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    try:
        # Each worker logs "Running on" once its server listens (the first to listen took the hold):
        # with both lines seen, a warning from either listen() is on stderr already. (A fixed sleep
        # here let a slow second worker listen after the test had looked.) The bound on the wait only
        # keeps a hung start from hanging the suite.
        both_listen.wait(60)
        assert proc.poll() is None and sum("Running on" in line for line in lines) >= 2, "".join(lines)
        assert _serves(port)
        result, prime, stolen = _two_step(other_user_attacker, V4, port)
        assert prime == "EADDRINUSE" and not result.ok and stolen == 0, (result, prime, stolen)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        reader.join(10)
        assert proc.stderr is not None
        proc.stderr.close()
    err = "".join(lines)
    assert "ExclusivityWarning: a TCP listener" not in err, err


def _serves(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2) as conn:
            conn.sendall(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
            return b"VICTIM" in conn.recv(4096) + conn.recv(4096)
    except OSError:
        return False
