"""The process-wide guard (`aioexclusive.guard`): the ``socket.bind`` audit hook.

Audit hooks cannot be removed, so every test that turns the guard on does it in
a child interpreter (this module, re-imported there: `_child_main`); the pytest
process itself is never guarded. The child forks its attacker *before* it
installs the guard, so the attacker binds unguarded, as a real one would.
"""

from __future__ import annotations

import importlib.util
import json
import os
import select
import socket
import struct
import subprocess
import sys
import textwrap
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
WINDOWS = sys.platform == "win32"
posix_only = pytest.mark.skipif(WINDOWS, reason="POSIX socket options and a forked attacker")
windows_only = pytest.mark.skipif(not WINDOWS, reason="SO_EXCLUSIVEADDRUSE exists on Windows only (run under .ci/wine)")
TRAFFIC = 20
MULTICAST_GROUP = "239.255.77.12"  # administratively scoped; nothing is ever sent to it


# --------------------------------------------------------------------------- child side


def _options(sock: socket.socket) -> dict[str, int]:
    names = ("SO_REUSEADDR", "SO_REUSEPORT", "SO_EXCLUSIVEADDRUSE")
    return {name: sock.getsockopt(socket.SOL_SOCKET, getattr(socket, name)) for name in names if hasattr(socket, name)}


def _scenario_create_server(port: int) -> socket.socket:
    if WINDOWS:
        # Windows has no SO_REUSEPORT (create_server refuses reuse_port there);
        # a plain create_server socket is already shareable: no SO_EXCLUSIVEADDRUSE.
        return socket.create_server(("127.0.0.1", port))
    return socket.create_server(("127.0.0.1", port), reuse_port=True)


def _scenario_hypercorn(port: int) -> socket.socket:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.workers = 2  # hypercorn adds SO_REUSEPORT to its pre-bound sockets with workers > 1
    (sock,) = config.create_sockets().insecure_sockets
    sock.listen(config.backlog)  # what each hypercorn worker does with the inherited socket
    return sock


def _scenario_multicast(port: int) -> socket.socket:
    from aioexclusive._plan import Role
    from aioexclusive.lowlevel import make_plan

    # Shaped as the plan says a receiver of this platform is: the options it
    # sets, bound to the group (or to the wildcard where the plan says so).
    plan = make_plan(Role.UDP_MULTICAST)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for name, value in plan.set:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
    sock.bind(("0.0.0.0" if plan.bind_to == "wildcard" else MULTICAST_GROUP, port))
    return sock


async def _reuse_port_listener(port: int) -> socket.socket:
    """A copy of the socket the running loop's create_server(reuse_port=True) bound (the server itself closed)."""
    import asyncio

    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
    sock = server.sockets[0]
    dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
    server.close()
    await server.wait_closed()
    return dup


def _scenario_loop_reuse_port(port: int) -> socket.socket:
    """The exclusive loop's own reuse_port socket, an explicit allow_reuse_port=True."""
    import aioexclusive

    return aioexclusive.run(_reuse_port_listener(port), allow_reuse_port=True)


def _scenario_plain_loop_reuse_port(port: int) -> socket.socket:
    """asyncio's own create_server binds through socket.bind too."""
    import asyncio

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(_reuse_port_listener(port))
    finally:
        loop.close()


class _Index:
    """A port given as an object with ``__index__``: bind takes it like an int."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value


@contextmanager
def _closed_on_failure(sock: socket.socket) -> Iterator[socket.socket]:
    """*sock*, closed if the block raises (a scenario that fails leaves no socket behind)."""
    try:
        yield sock
    except BaseException:
        sock.close()
        raise


def _udp(host: Any, port: Any, *, late: bool = False) -> socket.socket:
    """A UDP socket with SO_REUSEADDR, set before bind (or, *late*, after it)."""
    with _closed_on_failure(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        if not late:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        if late:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def _tcp_late(port: int, value: Any) -> socket.socket:
    """A listener bound without SO_REUSEPORT that turns it on between bind and listen."""
    with _closed_on_failure(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as create_server does on POSIX
        sock.bind(("127.0.0.1", port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, value)
        sock.listen(64)
    return sock


def _scenario_tcp_port0(port: int) -> socket.socket:
    return socket.create_server(("127.0.0.1", 0), reuse_port=True)


def _udp_autobind(port: int, how: str) -> socket.socket:
    """A UDP client with SO_REUSEADDR that never binds: its first send (or connect) autobinds it (red team D)."""
    with _closed_on_failure(socket.socket(socket.AF_INET, socket.SOCK_DGRAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if how == "sendto":
            sock.sendto(b"query", ("127.0.0.1", port))
        elif how == "sendmsg":
            sock.sendmsg([b"query"], [], 0, ("127.0.0.1", port))
        else:
            sock.connect(("127.0.0.1", port))
    return sock


def _tcp_autobind_listen(port: int) -> socket.socket:
    """A TCP socket with SO_REUSEPORT that listens without a bind: listen() autobinds it."""
    with _closed_on_failure(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.listen(64)
    return sock


SCENARIOS = {
    # Port 0: the port the system picks is public once bound (issue 12.7).
    "udp_port0": lambda port: _udp("127.0.0.1", 0),
    "tcp_port0": _scenario_tcp_port0,
    # Implicit binds: no socket.bind event (red team D).
    "udp_autobind_sendto": lambda port: _udp_autobind(port, "sendto"),
    "udp_autobind_sendmsg": lambda port: _udp_autobind(port, "sendmsg"),
    "udp_autobind_connect": lambda port: _udp_autobind(port, "connect"),
    "tcp_autobind_listen": _tcp_autobind_listen,
    # Host and port in the other spellings bind() takes (issue 12.8).
    "udp_bytes_host": lambda port: _udp(b"127.0.0.1", port),
    "udp_bytearray_host": lambda port: _udp(bytearray(b"127.0.0.1"), port),
    "udp_index_port": lambda port: _udp("127.0.0.1", _Index(port)),
    # Linux: the wildcard multicast-receiver shape is Windows' only (issue 12.8).
    "udp_wildcard": lambda port: _udp("0.0.0.0", port),
    "udp_wildcard_empty_host": lambda port: _udp("", port),
    # Sharing turned on after the bind: no audit event, seen by the setsockopt wrapper.
    "udp_late": lambda port: _udp("127.0.0.1", port, late=True),
    "tcp_late": lambda port: _tcp_late(port, 1),
    "tcp_late_packed": lambda port: _tcp_late(port, struct.pack("i", 1)),
    "create_server": _scenario_create_server,
    "udp_reuseaddr": lambda port: _udp("127.0.0.1", port),
    "hypercorn": _scenario_hypercorn,
    "multicast": _scenario_multicast,
    "loop_reuse_port": _scenario_loop_reuse_port,
    "plain_loop_reuse_port": _scenario_plain_loop_reuse_port,
}


def _drain(sock: socket.socket, expected: int) -> int:
    """Connections accepted or datagrams read on *sock*, until *expected* or a quiet second."""
    from attacker import receive_one

    sock.setblocking(False)
    count = 0
    while count < expected and select.select([sock], [], [], 1.0)[0]:
        try:
            receive_one(sock)
        except BlockingIOError:
            continue
        count += 1
    return count


def _attack(attacker: Any, sock: socket.socket, port: int, options: list[str]) -> dict[str, Any]:
    from attacker import send_traffic

    proto = "tcp" if sock.type == socket.SOCK_STREAM else "udp"
    result = attacker.try_bind(proto, 4, "127.0.0.1", port, tuple(options))
    # Whether or not the attacker got in, every connection or datagram must reach the server.
    send_traffic(proto, 4, "127.0.0.1", port, TRAFFIC)
    received = _drain(sock, TRAFFIC)
    stolen = attacker.collect()
    return {"bound": result.ok, "result": str(result), "received": received, "stolen": stolen}


def _child_main(spec: dict[str, Any]) -> dict[str, Any]:
    attacker = None
    if spec.get("attack"):
        from attacker import NOBODY, Attacker

        # Forked before the guard exists: the attacker binds as an unguarded
        # process would (a guarded one would have its own options "fixed").
        attacker = Attacker(uid=NOBODY if spec.get("other_user") else None)
    try:
        import aioexclusive
        from aioexclusive import _guard

        # JSON has no tuples: two-item lists are (host, port) entries.
        allow = [tuple(entry) if isinstance(entry, list) else entry for entry in spec.get("allow", ())]
        previous = None
        for mode in spec["modes"]:
            previous = aioexclusive.guard(mode, allow=allow)
        result: dict[str, Any] = {"previous": previous, "mode": _guard.current_mode()}
        port = spec["port"]
        sock = None
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter(spec.get("warnings", "always"))
            try:
                sock = SCENARIOS[spec["scenario"]](port)
            except Exception as exc:  # noqa: BLE001 - reported to the parent, which asserts on it
                result["error"] = {"type": type(exc).__name__, "module": type(exc).__module__, "message": str(exc)}
        result["warnings"] = [
            {"category": w.category.__name__, "message": str(w.message), "filename": w.filename, "lineno": w.lineno}
            for w in caught
            if issubclass(w.category, aioexclusive.ExclusivityWarning)
        ]
        if sock is None:
            # Was the port touched? A refused bind must not have happened.
            # (The probe is a plain socket: the guard, off now, must not judge it.)
            aioexclusive.guard("off")
            probe = socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM if spec["scenario"].startswith("udp") else socket.SOCK_STREAM
            )
            try:
                probe.bind(("127.0.0.1", port))
                result["port_free"] = True
            except OSError:
                result["port_free"] = False
            finally:
                probe.close()
        else:
            try:
                result["options"] = _options(sock)
                result["address"] = list(sock.getsockname())
                if attacker is not None:
                    # The bound port: the system's pick for the port-0 scenarios.
                    result["attack"] = _attack(attacker, sock, sock.getsockname()[1], spec["attack"])
            finally:
                sock.close()
        return result
    finally:
        if attacker is not None:
            attacker.close()


def _child_entry() -> None:
    """``python -c 'import test_guard; test_guard._child_entry()' SPEC``: one JSON line on stdout."""
    print(json.dumps(_child_main(json.loads(sys.argv[1]))))


# --------------------------------------------------------------------------- parent side


def _clean_env(**extra: str) -> dict[str, str]:
    """The environment without the guard's variables (the .pth must stay inert unless a test sets them)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_GUARD") and k != "PYTHONPATH"}
    env.update(extra)
    return env


def _child_env(**extra: str) -> dict[str, str]:
    """A child imports the very aioexclusive this process tests (a checkout or an installed copy)."""
    import aioexclusive

    return _clean_env(PYTHONPATH=str(Path(aioexclusive.__file__).resolve().parent.parent), **extra)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """A port free for both TCP and UDP on 127.0.0.1 (bound here, unguarded, then released)."""
    for _ in range(50):
        with socket.socket(socket.AF_INET, kind) as first:
            first.bind(("127.0.0.1", 0))
            port = int(first.getsockname()[1])
            other = socket.socket(
                socket.AF_INET, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM
            )
            try:
                other.bind(("127.0.0.1", port))
            except OSError:
                continue
            finally:
                other.close()
        return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def run_child(scenario: str, modes: list[str], **spec: Any) -> dict[str, Any]:
    """Run one scenario in a fresh interpreter under *modes* (guard() called with each in turn)."""
    spec.update(scenario=scenario, modes=modes)
    spec.setdefault("port", free_port())
    code = f"import sys; sys.path.insert(0, {str(TESTS)!r}); import test_guard; test_guard._child_entry()"
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked
        [sys.executable, "-c", code, json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_child_env(),
        cwd=str(TESTS),
    )
    assert proc.returncode == 0, f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
    lines = proc.stdout.strip().splitlines()
    assert lines, f"child printed nothing:\n{proc.stderr}"
    result: dict[str, Any] = json.loads(lines[-1])
    result["port"] = spec["port"]
    result["stderr"] = proc.stderr
    return result


def hypercorn_available() -> bool:
    try:
        import hypercorn.config  # noqa: F401
    except ImportError:
        return False
    return True


needs_hypercorn = pytest.mark.skipif(not hypercorn_available(), reason="hypercorn is not installed")

SHAREABLE = [
    pytest.param("create_server", "SO_REUSEPORT", id="create_server-reuse_port"),
    pytest.param("udp_reuseaddr", "SO_REUSEADDR", id="udp-SO_REUSEADDR"),
    pytest.param("hypercorn", "SO_REUSEPORT", id="hypercorn-workers2", marks=needs_hypercorn),
]
ATTACKS = {"create_server": ["SO_REUSEPORT"], "udp_reuseaddr": ["SO_REUSEADDR"], "hypercorn": ["SO_REUSEPORT"]}


@posix_only
@pytest.mark.parametrize("scenario, option", SHAREABLE)
def test_warn_names_address_and_caller(scenario: str, option: str) -> None:
    result = run_child(scenario, ["warn"])
    assert "error" not in result
    (warning,) = result["warnings"]
    message = warning["message"]
    assert f"127.0.0.1:{result['port']}" in message and option in message
    # Nothing is changed in warn mode.
    assert result["options"][option] == 1
    # Attributed to the code that asked for the socket, not to the hook or the stdlib.
    expected_file = {"create_server": "test_guard.py", "udp_reuseaddr": "test_guard.py", "hypercorn": "config.py"}[
        scenario
    ]
    assert warning["filename"].endswith(expected_file), warning
    if scenario == "create_server":
        assert "socket.py" in message and "in create_server" in message and "called from" in message
    if scenario == "hypercorn":
        assert "hypercorn" in message and "_create_sockets" in message


@posix_only
@pytest.mark.parametrize("scenario, option", SHAREABLE)
def test_raise_refuses_before_bind(scenario: str, option: str) -> None:
    result = run_child(scenario, ["raise"])
    error = result["error"]
    assert (error["module"], error["type"]) == ("aioexclusive._errors", "ExclusivityError")
    assert f"127.0.0.1:{result['port']}" in error["message"] and option in error["message"]
    assert result["port_free"], "the refused socket was bound anyway"
    assert result["warnings"] == []


@posix_only
@pytest.mark.parametrize("scenario, option", SHAREABLE)
def test_enforce_fixes_the_socket_and_the_attacker_fails(scenario: str, option: str) -> None:
    other_user = scenario == "udp_reuseaddr" and IS_ROOT  # UDP SO_REUSEADDR is open to any user on Linux
    result = run_child(scenario, ["enforce"], attack=ATTACKS[scenario], other_user=other_user)
    assert "error" not in result and result["warnings"] == []
    assert result["options"][option] == 0
    if scenario != "udp_reuseaddr":
        # SO_REUSEADDR on a TCP listener is safe on POSIX (restarts only): left as the code set it.
        assert result["options"]["SO_REUSEADDR"] == 1
    attack = result["attack"]
    assert not attack["bound"], attack
    assert attack["received"] == TRAFFIC and attack["stolen"] == 0, attack


@posix_only
@pytest.mark.parametrize("modes", [pytest.param([], id="no-guard"), pytest.param(["enforce", "off"], id="off")])
@pytest.mark.parametrize("scenario, option", SHAREABLE)
def test_control_without_guard_the_attacker_wins(scenario: str, option: str, modes: list[str]) -> None:
    """The harness can see a hijack: the same sockets, unguarded (or guard "off"), are shared."""
    other_user = scenario == "udp_reuseaddr" and IS_ROOT
    result = run_child(scenario, modes, attack=ATTACKS[scenario], other_user=other_user)
    assert "error" not in result and result["warnings"] == []
    assert result["options"][option] == 1
    attack = result["attack"]
    assert attack["bound"], attack
    assert attack["stolen"] > 0, attack
    if modes:
        assert result["mode"] == "off" and result["previous"] == "enforce"


@posix_only
@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
def test_multicast_receiver_untouched(mode: str) -> None:
    result = run_child("multicast", [mode])
    assert "error" not in result and result["warnings"] == []
    from aioexclusive._plan import Role
    from aioexclusive.lowlevel import make_plan

    for name, value in make_plan(Role.UDP_MULTICAST).set:
        assert result["options"][name] == value, result


@posix_only
@pytest.mark.parametrize(
    "allow",
    [
        pytest.param(["127.0.0.1:{port}"], id="exact"),
        pytest.param(["*:{port}"], id="any-host"),
        pytest.param(["127.0.0.0/8:*"], id="network"),
        pytest.param([["127.0.0.1", "{port}"]], id="tuple"),
        pytest.param(["10.0.0.1:1", "127.0.0.1:{low}-{high}"], id="range"),
    ],
)
def test_allow_entries_are_left_alone(allow: list[Any]) -> None:
    port = free_port()
    fill = {"port": port, "low": port - 1, "high": port + 1}

    def fmt(item: Any) -> Any:
        return [fmt(x) for x in item] if isinstance(item, list) else item.format(**fill)

    # JSON has no tuples: the child turns two-item lists back into (host, port).
    entries = [fmt(item) for item in allow]
    for mode in ("raise", "enforce"):
        result = run_child("create_server", [mode], port=port, allow=entries)
        assert "error" not in result, result
        assert result["options"]["SO_REUSEPORT"] == 1


@posix_only
def test_allow_does_not_cover_other_ports() -> None:
    port = free_port()
    result = run_child("create_server", ["raise"], port=port, allow=[f"127.0.0.1:{port + 1}", "10.0.0.0/8:*"])
    assert result["error"]["type"] == "ExclusivityError"


@posix_only
def test_exclusive_loop_reuse_port_opt_in_is_trusted() -> None:
    """aioexclusive's own binds were planned already; allow_reuse_port=True is the caller's explicit choice."""
    result = run_child("loop_reuse_port", ["raise"])
    assert "error" not in result, result
    assert result["options"]["SO_REUSEPORT"] == 1


@posix_only
def test_plain_asyncio_loop_is_guarded_too() -> None:
    result = run_child("plain_loop_reuse_port", ["raise"])
    assert result["error"]["type"] == "ExclusivityError"
    assert "asyncio" in result["error"]["message"] or "base_events" in result["error"]["message"]
    assert result["port_free"]


@posix_only
def test_warnings_as_errors_become_exclusivity_error() -> None:
    """-W error turns warn into raise; still nothing but ExclusivityError leaves the hook."""
    result = run_child("udp_reuseaddr", ["warn"], warnings="error")
    assert result["error"]["type"] == "ExclusivityError"
    assert result["port_free"]


# --------------------------------------------------------------------------- port 0, other spellings, late options

# scenario: (protocol, option, what the message names, attack from another user?)
MORE = {
    "udp_port0": ("udp", "SO_REUSEADDR", "127.0.0.1:0 (a port the system picks)", True),
    "tcp_port0": ("tcp", "SO_REUSEPORT", "127.0.0.1:0 (a port the system picks)", False),
    # The attacker (uid 65534 for UDP) reads the autobound port and binds it with SO_REUSEADDR.
    "udp_autobind_sendto": ("udp", "SO_REUSEADDR", "bound implicitly by sendto() to 0.0.0.0:0", True),
    "udp_autobind_sendmsg": ("udp", "SO_REUSEADDR", "bound implicitly by sendmsg() to 0.0.0.0:0", True),
    "tcp_autobind_listen": ("tcp", "SO_REUSEPORT", "bound implicitly by listen() to 0.0.0.0:0", False),
    "udp_bytes_host": ("udp", "SO_REUSEADDR", "127.0.0.1:{port}", True),
    "udp_bytearray_host": ("udp", "SO_REUSEADDR", "127.0.0.1:{port}", True),
    "udp_index_port": ("udp", "SO_REUSEADDR", "127.0.0.1:{port}", True),
    "udp_wildcard": ("udp", "SO_REUSEADDR", "0.0.0.0:{port}", True),
    "udp_wildcard_empty_host": ("udp", "SO_REUSEADDR", "0.0.0.0:{port}", True),
    "udp_late": (
        "udp",
        "SO_REUSEADDR",
        "setsockopt(SO_REUSEADDR, 1) after the bind of the UDP socket on 127.0.0.1:{port}",
        True,
    ),
    "tcp_late": (
        "tcp",
        "SO_REUSEPORT",
        "setsockopt(SO_REUSEPORT, 1) after the bind of the TCP socket on 127.0.0.1:{port}",
        False,
    ),
    "tcp_late_packed": ("tcp", "SO_REUSEPORT", "setsockopt(SO_REUSEPORT, 1) after the bind", False),
}
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="Linux's sharing rules (UDP SO_REUSEADDR across users)"
)


def _more(scenario: str, modes: list[str]) -> dict[str, Any]:
    proto, option, _, cross_user = MORE[scenario]
    return run_child(scenario, modes, attack=[option], other_user=cross_user and IS_ROOT)


@linux_only
@pytest.mark.parametrize("scenario", list(MORE))
def test_more_control_without_guard_the_attacker_wins(scenario: str) -> None:
    """Each of these sockets is really shareable: unguarded, the attacker binds and steals."""
    result = _more(scenario, [])
    option = MORE[scenario][1]
    assert "error" not in result and result["options"][option] == 1, result
    attack = result["attack"]
    assert attack["bound"] and attack["stolen"] > 0, attack


@linux_only
@pytest.mark.parametrize("scenario", list(MORE))
def test_more_raise_refuses(scenario: str) -> None:
    result = run_child(scenario, ["raise"])
    error = result.get("error")
    assert error is not None, f"{scenario} passed the guard in raise mode: {result}"
    assert (error["module"], error["type"]) == ("aioexclusive._errors", "ExclusivityError"), error
    _, option, names, _ = MORE[scenario]
    assert option in error["message"] and names.format(port=result["port"]) in error["message"], error
    assert result["port_free"], "a refused socket was left bound"


@linux_only
@pytest.mark.parametrize("scenario", list(MORE))
def test_more_enforce_keeps_the_attacker_out(scenario: str) -> None:
    result = _more(scenario, ["enforce"])
    option = MORE[scenario][1]
    assert "error" not in result and result["warnings"] == [], result
    assert result["options"][option] == 0, result
    attack = result["attack"]
    assert not attack["bound"] and attack["stolen"] == 0 and attack["received"] == TRAFFIC, attack


@linux_only
@pytest.mark.parametrize("scenario", list(MORE))
def test_more_warn_warns_and_changes_nothing(scenario: str) -> None:
    """Port 0 included: warn is the dry run of raise/enforce, so it names every bind they would act on."""
    result = run_child(scenario, ["warn"])
    _, option, names, _ = MORE[scenario]
    assert "error" not in result and result["options"][option] == 1, result
    (warning,) = result["warnings"]
    assert option in warning["message"] and names.format(port=result["port"]) in warning["message"], warning
    assert warning["filename"].endswith("test_guard.py"), warning


@pytest.mark.parametrize(
    "entry, port, covered",
    [
        ("127.0.0.1:8000-8010", 8000, True),
        ("127.0.0.1:8000-8010", 8010, True),
        ("127.0.0.1:8000-8010", 8011, False),  # above the upper bound
        ("127.0.0.1:8000-8010", 65535, False),
        ("127.0.0.1:8000-8010", 7999, False),
        ("*:8000", 8001, False),
        (("127.0.0.1", "8000-8010"), 8011, False),
        ("127.0.0.1:0", 0, True),  # 0: binds that let the system pick
        ("127.0.0.1:0", 1, False),
        ("127.0.0.1:*", 0, True),
        ("127.0.0.1:1-65535", 0, False),
    ],
)
def test_allow_port_ranges_are_inclusive_and_bounded(entry: Any, port: int, covered: bool) -> None:
    # Parsing only: nothing is installed in the pytest process.
    from aioexclusive import _guard

    (pattern,) = _guard._parse_allow([entry])
    assert pattern.matches("127.0.0.1", port) is covered


@posix_only
def test_allow_range_does_not_cover_ports_above_it() -> None:
    """End to end: a range just below the bound port does not let a shareable bind through."""
    port = free_port()
    for entry in (f"127.0.0.1:{port - 3}-{port - 1}", f"*:1-{port - 1}"):
        result = run_child("udp_reuseaddr", ["raise"], port=port, allow=[entry])
        assert result.get("error", {}).get("type") == "ExclusivityError", (entry, result)
    # Control: the range that includes the port lets it through.
    result = run_child("udp_reuseaddr", ["raise"], port=port, allow=[f"127.0.0.1:{port - 1}-{port}"])
    assert "error" not in result and result["options"]["SO_REUSEADDR"] == 1, result


@linux_only
def test_ipv6_spellings_and_port_0_are_judged_too() -> None:
    """IPv6 addresses take the same paths: bytes hosts, __index__ ports, port 0, 4-tuples, late options."""
    proc = _run_code(
        """
        import socket
        import aioexclusive
        from aioexclusive import ExclusivityError
        class Index:
            def __index__(self):
                return 0
        aioexclusive.guard("raise")
        out = []
        for address in [(b"::1", 0), (bytearray(b"::1"), Index()), ("::1", 0, 0, 0), ("", 0)]:
            s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
                out.append("bound")
            except ExclusivityError as exc:
                out.append("refused" if "SO_REUSEADDR" in str(exc) else str(exc))
            finally:
                s.close()
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.bind(("::1", 0))
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            out.append("late: set")
        except ExclusivityError as exc:
            out.append("late: refused" if "[::1]:" in str(exc) else str(exc))
        s.close()
        print(out)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n")[-2] == str(["refused"] * 4 + ["late: refused"]), proc.stdout


@posix_only
def test_late_options_that_do_not_share_pass_and_exempt_passes_everything() -> None:
    """The setsockopt wrapper judges only sharing options turned on for a bound socket; exempt() skips it."""
    proc = _run_code(
        """
        import socket, sys
        import aioexclusive
        from aioexclusive import ExclusivityError, _guard
        aioexclusive.guard("raise")
        out = []
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # not bound yet: the bind will judge
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)   # not a sharing option
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)   # turning it off
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            out.append("late: set")
        except ExclusivityError:
            out.append("late: refused")
        out.append(("after", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)))
        with _guard.exempt():
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            t.bind(("127.0.0.1", s.getsockname()[1]))
        out.append(("exempt", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), t.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)))
        t.close()
        # Bad calls keep their own errors.
        for args in [(socket.SOL_SOCKET, socket.SO_REUSEADDR), (socket.SOL_SOCKET, socket.SO_REUSEADDR, "x")]:
            try:
                s.setsockopt(*args)
            except TypeError as exc:
                out.append("TypeError")
        s.close()
        print(out)
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = eval(proc.stdout.strip().splitlines()[-1])  # a repr of a list of str/int tuples, from our own child
    assert out == ["late: refused", ("after", 0), ("exempt", 1, 1), "TypeError", "TypeError"], out
    assert proc.stderr == ""


@linux_only
@pytest.mark.parametrize("mode", ["raise", "enforce", "warn"])
def test_udp_connect_autobind_is_judged(mode: str) -> None:
    """connect() autobinds a UDP socket too (the MORE harness cannot send to a connected socket from elsewhere)."""
    result = run_child("udp_autobind_connect", [mode])
    if mode == "raise":
        assert result["error"]["type"] == "ExclusivityError", result
        assert "bound implicitly by connect() to 0.0.0.0:0" in result["error"]["message"], result
    else:
        assert "error" not in result, result
        assert result["options"]["SO_REUSEADDR"] == (1 if mode == "warn" else 0), result
        assert len(result["warnings"]) == (1 if mode == "warn" else 0), result
        assert result["address"][1] != 0  # the connect went ahead and bound it


@posix_only
def test_implicit_bind_checks_pass_what_they_should() -> None:
    """Only an unbound socket with a sharing option is judged; a bound one's datagrams and TCP clients pass."""
    proc = _run_code(
        """
        import socket, warnings
        import aioexclusive
        from aioexclusive import _guard
        warnings.simplefilter("always")
        aioexclusive.guard("raise", allow=["127.0.0.1:0"])
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        target = sink.getsockname()
        out = []
        plain = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)   # no options: autobinds freely
        plain.sendto(b"a", target)
        out.append(plain.getsockname()[1] != 0)
        shared = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # allowed at its explicit bind
        shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        shared.bind(("127.0.0.1", 0))
        out.append(len(_guard._pending))  # its option was set while unbound: noted
        for _ in range(3):
            shared.sendto(b"b", target)  # bound already: not an implicit bind
        out.append("bound-sends-pass")
        out.append(len(_guard._pending))  # found bound: no longer noted
        with _guard.exempt():
            free = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            free.sendto(b"c", target)
        out.append(("exempt", free.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)))
        server = socket.create_server(("127.0.0.1", 0))
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)  # TCP connect: not judged
        client.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        client.connect(server.getsockname())
        out.append("tcp-connect-passes")
        unix = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            unix.sendto(b"d", "/nonexistent/aioexclusive-test")
        except OSError:
            out.append("unix-own-error")
        for sock in (sink, plain, shared, free, server, client, unix):
            sock.close()
        print(out)
        """
    )
    assert proc.returncode == 0, proc.stderr
    out = eval(proc.stdout.strip().splitlines()[-1])  # a repr of a list from our own child
    assert out == [True, 1, "bound-sends-pass", 0, ("exempt", 1), "tcp-connect-passes", "unix-own-error"], out
    assert proc.stderr == ""


@linux_only
def test_autobound_socket_that_disconnects_is_judged_again() -> None:
    """connect(AF_UNSPEC) unbinds an autobound UDP socket: its next send autobinds again, with new options."""
    proc = _run_code(
        """
        import ctypes, socket, struct
        import aioexclusive
        from aioexclusive import ExclusivityError
        aioexclusive.guard("raise")
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sink.bind(("127.0.0.1", 0))
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for _ in range(3):
            s.sendto(b"a", sink.getsockname())   # no options: autobound, then known bound
        unspec = struct.pack("=H14x", socket.AF_UNSPEC)
        assert ctypes.CDLL(None).connect(s.fileno(), unspec, len(unspec)) == 0
        out = [s.getsockname()[1]]
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)   # unbound: the next bind is judged
        try:
            s.sendto(b"b", sink.getsockname())
            out.append("sent")
        except ExclusivityError:
            out.append("refused")
        out.append(s.getsockname()[1])
        print(out)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert eval(proc.stdout.strip().splitlines()[-1]) == [0, "refused", 0]


# The warning must reach stderr however __main__ was loaded (issue 14.8): under
# -c and from stdin, __main__'s loader cannot return source, and warn_explicit
# raised ImportError from its source-line lookup.
_WARN_MAIN = """\
import socket
import aioexclusive
aioexclusive.guard("warn")
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", 0))
s.close()
print("bound")
"""


@posix_only
@pytest.mark.parametrize("how", ["-c", "file", "-m", "stdin", "interactive"])
def test_warn_is_never_silent_whatever_main_is(how: str, tmp_path: Path) -> None:
    (tmp_path / "warnmain.py").write_text(_WARN_MAIN, encoding="utf-8")
    stdin = None
    if how == "-c":
        command = [sys.executable, "-c", _WARN_MAIN]
    elif how == "file":
        command = [sys.executable, str(tmp_path / "warnmain.py")]
    elif how == "-m":
        command = [sys.executable, "-m", "warnmain"]
    elif how == "stdin":
        command, stdin = [sys.executable, "-"], _WARN_MAIN
    else:
        # The REPL reading its lines (prompts go to stderr, -q drops the banner).
        command, stdin = [sys.executable, "-q", "-i"], _WARN_MAIN
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked
        command, input=stdin, capture_output=True, text=True, timeout=120, env=_child_env(), cwd=str(tmp_path)
    )
    assert proc.returncode == 0 and "bound" in proc.stdout, proc
    assert proc.stderr.count("ExclusivityWarning: a shareable UDP bind to 127.0.0.1:0") == 1, proc.stderr


@posix_only
def test_warn_falls_back_to_stderr_when_the_warnings_machinery_fails() -> None:
    proc = _run_code(
        """
        import socket, warnings
        import aioexclusive
        def broken(*args, **kwargs):
            raise RuntimeError("showwarning is broken")
        warnings.showwarning = broken
        aioexclusive.guard("warn")
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", 0))
        s.close()
        print("bound")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "bound", proc
    assert "ExclusivityWarning: a shareable UDP bind to 127.0.0.1:0" in proc.stderr, proc.stderr
    assert "showwarning is broken" in proc.stderr


@windows_only
@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
def test_windows_socketpair_and_loops_work_under_every_mode(mode: str) -> None:
    """Windows emulates socketpair() with a port-0 loopback listener; asyncio needs it for every loop."""
    proc = _run_code(
        f"""
        import asyncio, socket, warnings
        import aioexclusive
        aioexclusive.guard({mode!r})
        warnings.simplefilter("error")
        a, b = socket.socketpair()
        a.sendall(b"x"); assert b.recv(1) == b"x"
        a.close(); b.close()
        asyncio.run(asyncio.sleep(0))
        print("ok")
        """
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc


def _run_code(code: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(  # noqa: PLW1510 - the return code is checked
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        env=_child_env(**env),
        cwd=str(TESTS),
    )


@posix_only
def test_hook_survives_odd_events_and_odd_sockets() -> None:
    """Only ExclusivityError may leave the hook; everything else behaves as without the guard."""
    proc = _run_code(
        """
        import os, socket, sys
        import aioexclusive
        from aioexclusive import ExclusivityError
        aioexclusive.guard("raise")
        out = []
        # Anyone can raise the event, with anything in it.
        sys.audit("socket.bind")
        sys.audit("socket.bind", object(), ("127.0.0.1", 80))
        sys.audit("socket.bind", 1, 2, 3)
        # A closed socket: the guard cannot read it, so the bind fails as it would anyway.
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.close()
        try:
            s.bind(("127.0.0.1", 9))
        except OSError as exc:
            out.append(("closed", type(exc).__name__))
        # Addresses the bind itself rejects keep their own errors.
        for address in [("127.0.0.1",), ("127.0.0.1", "http"), "127.0.0.1", ("127.0.0.1", 70000)]:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(address)
                out.append(("bound?", repr(address)))
            except (TypeError, OverflowError, OSError) as exc:
                out.append(("bad-address", type(exc).__name__))
            finally:
                s.close()
        # A subclass whose getsockopt lies or raises does not fool or break the guard.
        class Odd(socket.socket):
            def getsockopt(self, *args):
                raise RuntimeError("odd")
        s = Odd(socket.AF_INET, socket.SOCK_DGRAM)
        socket.socket.setsockopt(s, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(sys.argv[1])))
            out.append(("odd", "bound"))
        except ExclusivityError:
            out.append(("odd", "refused"))
        finally:
            s.close()
        # AF_UNIX is out of scope.
        if hasattr(socket, "AF_UNIX"):
            import tempfile
            path = os.path.join(tempfile.mkdtemp(), "s")
            u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            u.bind(path); u.close(); os.unlink(path); os.rmdir(os.path.dirname(path))
            out.append(("unix", "bound"))
        # Port 0 is no exception: once bound, the system's pick is as public as any port.
        try:
            z = socket.create_server(("127.0.0.1", 0), reuse_port=True)
            out.append(("port0", "bound"))
            z.close()
        except ExclusivityError:
            out.append(("port0", "refused"))
        print(out)
        """.replace("int(sys.argv[1])", str(free_port())),
    )
    assert proc.returncode == 0, proc.stderr
    out = eval(proc.stdout.strip().splitlines()[-1])  # a repr of a list of str/int tuples, from our own child
    assert ("closed", "OSError") in out
    assert [item for item in out if item[0] == "bound?"] == []
    assert len([item for item in out if item[0] == "bad-address"]) == 4
    assert ("odd", "refused") in out
    assert ("port0", "refused") in out
    assert ("unix", "bound") in out
    assert proc.stderr == ""


@posix_only
def test_later_calls_change_the_mode() -> None:
    proc = _run_code(
        f"""
        import socket
        import aioexclusive
        from aioexclusive import ExclusivityError
        seen = [aioexclusive.guard("raise"), aioexclusive.guard("enforce"), aioexclusive.guard("raise")]
        def attempt():
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", {free_port()}))
                return "bound"
            except ExclusivityError:
                return "refused"
            finally:
                s.close()
        seen.append(attempt())
        seen.append(aioexclusive.guard("off"))
        seen.append(attempt())
        print(seen)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(["off", "raise", "enforce", "refused", "raise", "bound"])


@pytest.mark.parametrize(
    "kwargs, error, words",
    [
        ({"mode": "block"}, ValueError, "mode"),
        ({"mode": "warn", "allow": "127.0.0.1:80"}, TypeError, "allow"),
        ({"mode": "warn", "allow": 80}, TypeError, "allow"),
        ({"mode": "warn", "allow": ["::1:80"]}, ValueError, "[ADDRESS]:PORT"),
        ({"mode": "warn", "allow": ["127.0.0.1:99999"]}, ValueError, "0-65535"),
        ({"mode": "warn", "allow": ["127.0.0.1:10-5"]}, ValueError, "0-65535"),
        ({"mode": "warn", "allow": ["127.0.0.1:http"]}, ValueError, "port must be a number"),
        ({"mode": "warn", "allow": ["10.0.0.300/8:1"]}, ValueError, "not a valid network"),
        ({"mode": "warn", "allow": [("127.0.0.1", 1.5)]}, TypeError, "allow tuples"),
        ({"mode": "warn", "allow": [b"127.0.0.1:80"]}, TypeError, "allow entries"),
        ({"mode": "warn", "allow": [True]}, TypeError, "allow entries"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_installed(
    kwargs: dict[str, Any], error: type, words: str
) -> None:
    # Safe in the pytest process: arguments are checked before the hook could be installed.
    import aioexclusive
    from aioexclusive import _guard

    with pytest.raises(error, match=None) as info:
        aioexclusive.guard(**kwargs)
    assert words in str(info.value)
    assert not _guard._state.installed and _guard.current_mode() == "off"


# --------------------------------------------------------------------------- the .pth activation, end to end


def _build_wheel(dest: Path) -> Path:
    command = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dest), str(ROOT)]
    # Without hatchling here, pip fetches it into an isolated build environment.
    if importlib.util.find_spec("hatchling") is not None:
        command.insert(4, "--no-build-isolation")
    proc = subprocess.run(command, check=False, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"building the wheel failed:\n{proc.stdout}\n{proc.stderr}"
    (wheel,) = dest.glob("aioexclusive-*.whl")
    return wheel


@pytest.fixture(scope="module")
def guarded_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the wheel installed (no dependencies: there are none at run time)."""
    base = tmp_path_factory.mktemp("guard-wheel")
    wheel = _build_wheel(base / "dist")
    venv = base / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / ("Scripts/python.exe" if WINDOWS else "bin/python")
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked
        [str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return python


_PTH_PROBE = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
try:
    s.bind(("127.0.0.1", PORT))
    print("bound", s.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR), "aioexclusive" in sys.modules)
except Exception as exc:
    print("refused", type(exc).__module__ + "." + type(exc).__name__)
finally:
    s.close()
"""


def _pth_run(python: Path, flags: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    code = _PTH_PROBE.replace("PORT", str(free_port(socket.SOCK_DGRAM)))
    # cwd away from the checkout, so the installed copy is what runs.
    return subprocess.run(  # noqa: PLW1510 - the return code is checked
        [str(python), *flags, "-c", code],
        capture_output=True,
        text=True,
        timeout=120,
        env=_clean_env(**env),
        cwd=str(python.parent),
    )


@posix_only
@pytest.mark.slow
def test_wheel_ships_the_pth_and_it_works_under_isolated_mode(guarded_venv: Path) -> None:
    site_packages = [p for p in guarded_venv.parent.parent.glob("lib/python*/site-packages")]
    assert (site_packages[0] / "aioexclusive_guard.pth").is_file()
    for flags in ([], ["-I"]):
        refused = _pth_run(guarded_venv, flags, AIOEXCLUSIVE_GUARD="raise")
        assert refused.stdout.split() == ["refused", "aioexclusive._errors.ExclusivityError"], (flags, refused)
        fixed = _pth_run(guarded_venv, flags, AIOEXCLUSIVE_GUARD="enforce")
        assert fixed.stdout.split() == ["bound", "0", "True"], (flags, fixed)
        # Unset: the .pth line imports nothing and changes nothing.
        plain = _pth_run(guarded_venv, flags)
        assert plain.stdout.split() == ["bound", "1", "False"], (flags, plain)
        assert plain.stderr == ""


@posix_only
@pytest.mark.slow
def test_pth_allow_list_bad_values_and_no_site(guarded_venv: Path) -> None:
    allowed = _pth_run(
        guarded_venv, [], AIOEXCLUSIVE_GUARD="raise", AIOEXCLUSIVE_GUARD_ALLOW="10.0.0.0/8:*, 127.0.0.1:*"
    )
    assert allowed.stdout.split() == ["bound", "1", "True"], allowed
    # A typo must not stop the program, and must not pass silently either.
    typo = _pth_run(guarded_venv, [], AIOEXCLUSIVE_GUARD="rasie")
    assert typo.returncode == 0 and typo.stdout.split()[:2] == ["bound", "1"]
    assert typo.stderr.count("AIOEXCLUSIVE_GUARD='rasie' ignored, the guard is NOT on") == 1, typo.stderr
    bad_allow = _pth_run(guarded_venv, [], AIOEXCLUSIVE_GUARD="raise", AIOEXCLUSIVE_GUARD_ALLOW="::1:80")
    assert bad_allow.returncode == 0 and "NOT on" in bad_allow.stderr
    # -S skips site, and with it every .pth file: documented as the one way to lose the guard.
    no_site = _pth_run(guarded_venv, ["-S"], AIOEXCLUSIVE_GUARD="raise")
    assert no_site.stdout.split()[:2] == ["bound", "1"]


# --------------------------------------------------------------------------- Windows (Wine)


@windows_only
@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
def test_windows_create_server_gets_exclusiveaddruse(mode: str) -> None:
    result = run_child("create_server", [mode])
    if mode == "enforce":
        assert "error" not in result and result["warnings"] == []
        assert result["options"]["SO_EXCLUSIVEADDRUSE"] == 1
        assert result["options"]["SO_REUSEADDR"] == 0
    elif mode == "raise":
        assert result["error"]["type"] == "ExclusivityError"
        assert "SO_EXCLUSIVEADDRUSE" in result["error"]["message"]
        assert result["port_free"]
    else:
        (warning,) = result["warnings"]
        assert "SO_EXCLUSIVEADDRUSE" in warning["message"] and warning["filename"].endswith("test_guard.py")
        assert result["options"]["SO_EXCLUSIVEADDRUSE"] == 0


@windows_only
def test_windows_udp_reuseaddr_is_made_exclusive() -> None:
    result = run_child("udp_reuseaddr", ["enforce"])
    assert "error" not in result, result
    assert result["options"] == {"SO_REUSEADDR": 0, "SO_EXCLUSIVEADDRUSE": 1}


@windows_only
@pytest.mark.parametrize("mode", ["warn", "raise", "enforce"])
def test_windows_multicast_receiver_untouched(mode: str) -> None:
    """Windows receivers bind the wildcard with SO_REUSEADDR and join later: left alone."""
    result = run_child("multicast", [mode])
    assert "error" not in result and result["warnings"] == []
    assert result["options"]["SO_REUSEADDR"] == 1 and result["options"]["SO_EXCLUSIVEADDRUSE"] == 0


def test_pth_line_is_tiny_and_inert() -> None:
    """The shipped .pth: one import line, doing nothing unless AIOEXCLUSIVE_GUARD is set."""
    lines = (ROOT / "aioexclusive_guard.pth").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 and lines[0].startswith("import os;") and "AIOEXCLUSIVE_GUARD" in lines[0]
    namespace: dict[str, Any] = {}
    before = set(sys.modules)
    saved = os.environ.pop("AIOEXCLUSIVE_GUARD", None)
    try:
        exec(lines[0], namespace)  # noqa: S102 - what site.addpackage does with it
    finally:
        if saved is not None:
            os.environ["AIOEXCLUSIVE_GUARD"] = saved
    assert set(sys.modules) - before == set()
