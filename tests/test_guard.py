"""The process-wide guard (`aioexclusive.guard`): the ``socket.bind`` audit hook.

Audit hooks cannot be removed, so every test that turns the guard on does it in
a child interpreter (this module, re-imported there: `_child_main`); the pytest
process itself is never guarded. The child forks its attacker *before* it
installs the guard, so the attacker binds unguarded, as a real one would.
"""

from __future__ import annotations

import json
import os
import select
import socket
import subprocess
import sys
import textwrap
import warnings
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


def _scenario_udp_reuseaddr(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
    except BaseException:
        sock.close()
        raise
    return sock


def _scenario_hypercorn(port: int) -> socket.socket:
    from hypercorn.config import Config

    config = Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.workers = 2  # hypercorn adds SO_REUSEPORT to its pre-bound sockets with workers > 1
    (sock,) = config.create_sockets().insecure_sockets
    sock.listen(config.backlog)  # what each hypercorn worker does with the inherited socket
    return sock


def _scenario_multicast(port: int) -> socket.socket:
    from aioexclusive import make_plan
    from aioexclusive._plan import Role

    # Shaped as the plan says a receiver of this platform is: the options it
    # sets, bound to the group (or to the wildcard where the plan says so).
    plan = make_plan(Role.UDP_MULTICAST)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for name, value in plan.set:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
    sock.bind(("0.0.0.0" if plan.bind_to == "wildcard" else MULTICAST_GROUP, port))
    return sock


def _scenario_loop_reuse_port(port: int) -> socket.socket:
    """The exclusive loop's own reuse_port socket, an explicit allow_reuse_port=True."""
    import asyncio

    import aioexclusive

    async def main() -> socket.socket:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        sock = server.sockets[0]
        dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
        server.close()
        await server.wait_closed()
        return dup

    return aioexclusive.run(main(), allow_reuse_port=True)  # type: ignore[no-any-return]


def _scenario_plain_loop_reuse_port(port: int) -> socket.socket:
    """asyncio's own create_server binds through socket.bind too."""
    import asyncio

    async def main() -> socket.socket:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port, reuse_port=True)
        sock = server.sockets[0]
        dup = socket.socket(sock.family, sock.type, fileno=os.dup(sock.fileno()))
        server.close()
        await server.wait_closed()
        return dup

    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        loop.close()


SCENARIOS = {
    "create_server": _scenario_create_server,
    "udp_reuseaddr": _scenario_udp_reuseaddr,
    "hypercorn": _scenario_hypercorn,
    "multicast": _scenario_multicast,
    "loop_reuse_port": _scenario_loop_reuse_port,
    "plain_loop_reuse_port": _scenario_plain_loop_reuse_port,
}


def _drain(sock: socket.socket, expected: int) -> int:
    """Connections accepted or datagrams read on *sock*, until *expected* or a quiet second."""
    sock.setblocking(False)
    count = 0
    while count < expected and select.select([sock], [], [], 1.0)[0]:
        try:
            if sock.type == socket.SOCK_STREAM:
                peer, _ = sock.accept()
                peer.close()
            else:
                sock.recvfrom(65536)
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
            probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM if spec["scenario"] != "udp_reuseaddr" else socket.SOCK_DGRAM)
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
                    result["attack"] = _attack(attacker, sock, port, spec["attack"])
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
            other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if kind == socket.SOCK_STREAM else socket.SOCK_STREAM)
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
    expected_file = {"create_server": "test_guard.py", "udp_reuseaddr": "test_guard.py", "hypercorn": "config.py"}[scenario]
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
    from aioexclusive import make_plan
    from aioexclusive._plan import Role

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
        # AF_UNIX and port 0 are out of scope.
        if hasattr(socket, "AF_UNIX"):
            import tempfile
            path = os.path.join(tempfile.mkdtemp(), "s")
            u = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
            u.bind(path); u.close(); os.unlink(path); os.rmdir(os.path.dirname(path))
            out.append(("unix", "bound"))
        z = socket.create_server(("127.0.0.1", 0), reuse_port=True)
        out.append(("port0", z.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)))
        z.close()
        print(out)
        """.replace("int(sys.argv[1])", str(free_port())),
    )
    assert proc.returncode == 0, proc.stderr
    out = eval(proc.stdout.strip().splitlines()[-1])  # a repr of a list of str/int tuples, from our own child
    assert ("closed", "OSError") in out
    assert [item for item in out if item[0] == "bound?"] == []
    assert len([item for item in out if item[0] == "bad-address"]) == 4
    assert ("odd", "refused") in out
    assert ("port0", 1) in out
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
        ({"mode": "warn", "allow": ["127.0.0.1:99999"]}, ValueError, "1-65535"),
        ({"mode": "warn", "allow": ["127.0.0.1:http"]}, ValueError, "port must be a number"),
        ({"mode": "warn", "allow": ["10.0.0.300/8:1"]}, ValueError, "not a valid network"),
        ({"mode": "warn", "allow": [("127.0.0.1", 1.5)]}, TypeError, "allow tuples"),
        ({"mode": "warn", "allow": [b"127.0.0.1:80"]}, TypeError, "allow entries"),
        ({"mode": "warn", "allow": [True]}, TypeError, "allow entries"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_installed(kwargs: dict[str, Any], error: type, words: str) -> None:
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
    try:
        import hatchling  # noqa: F401

        command.insert(4, "--no-build-isolation")
    except ImportError:
        pass  # pip fetches hatchling into an isolated build environment
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
        [str(python), *flags, "-c", code], capture_output=True, text=True, timeout=120, env=_clean_env(**env), cwd=str(python.parent)
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
    allowed = _pth_run(guarded_venv, [], AIOEXCLUSIVE_GUARD="raise", AIOEXCLUSIVE_GUARD_ALLOW="10.0.0.0/8:*, 127.0.0.1:*")
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

