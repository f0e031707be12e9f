"""``python -m aioexclusive plan | demo | probe``, run as the user runs them: in a subprocess."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from harness import IS_ROOT, ON_LINUX

import aioexclusive
from aioexclusive._plan import RULES, Role, current_platform

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the CLI tests fork attackers and use POSIX sockets")

try:
    import rich  # noqa: F401

    HAVE_RICH = True
except ImportError:
    HAVE_RICH = False


def cli(*args: str, timeout: float = 120, pre: str = "") -> subprocess.CompletedProcess[str]:
    """``python -m aioexclusive ARGS``; *pre* is Python run first (to hide optional packages)."""
    if pre:
        command = [
            sys.executable,
            "-c",
            f"{pre}\nimport sys\nfrom aioexclusive._cli import main\nsys.exit(main({list(args)!r}))",
        ]
    else:
        command = [sys.executable, "-m", "aioexclusive", *args]
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env)


# -- plan ----------------------------------------------------------------------------


def test_plan_lists_every_rule_with_its_reason_and_marks_this_platform() -> None:
    result = cli("plan")
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for name in ("SO_EXCLUSIVEADDRUSE", "SO_REUSEADDR", "SO_REUSEPORT"):
        assert name in out
    for rule in RULES.values():
        assert rule.why in out
    for role in Role:
        assert role.value in out
    names = {"windows": "Windows", "linux": "Linux", "bsd": "macOS/BSD"}
    here = names[current_platform()]
    marked = [line for line in out.splitlines() if line.lstrip().startswith("* ")]
    # One marked row per kind of socket the current platform has, all of them this platform.
    assert len(marked) == sum(1 for (plat, _) in RULES if plat == current_platform())
    assert all(line.split("*", 1)[1].split()[0] == here.split()[0] for line in marked)
    assert f"This machine: {here}" in out
    # The other platforms are in the table too, unmarked.
    others = [n for p, n in names.items() if p != current_platform()]
    for other in others:
        assert any(line.lstrip().startswith(other) for line in out.splitlines())


def test_plan_json_is_the_rules_table() -> None:
    result = cli("plan", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert len(rows) == len(Role) * 3
    for row in rows:
        assert row["current"] == (row["platform"] == current_platform())
        rule = RULES.get((row["platform"], Role(row["role"])))
        if rule is None:
            assert row["set"] is None
        else:
            assert [tuple(x) for x in row["set"]] == list(rule.set)
            assert row["never"] == list(rule.never)
            assert row["why"] == rule.why


@pytest.mark.skipif(not HAVE_RICH, reason="rich is not installed")
def test_plan_in_colour_with_rich() -> None:
    for args in (("plan", "--color", "always"), ("--color", "always", "plan")):
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        assert "\x1b[" in result.stdout
        assert "SO_EXCLUSIVEADDRUSE" in result.stdout
    assert "\x1b[" not in cli("plan", "--color", "never").stdout


@pytest.mark.parametrize("command", [[], ["plan"], ["demo"], ["probe"]])
def test_help_for_every_command(command: list[str]) -> None:
    result = cli(*command, "--help")
    assert result.returncode == 0, result.stderr
    assert "usage: python -m aioexclusive" in result.stdout


def test_no_command_is_a_usage_error() -> None:
    result = cli()
    assert result.returncode == 2
    assert "usage:" in result.stderr


# -- demo ----------------------------------------------------------------------------


def _check_demo(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "hijacked" in out and "refused" in out
    # Both services: hijacked on the plain loop, refused on the exclusive one.
    assert out.count("hijacked:") == 2, out
    assert out.count("refused:") == 2, out
    assert "the service got 20 of 20 connections" in out
    assert "the service got 20 of 20 datagrams" in out
    if IS_ROOT:
        assert "uid 65534: another user" in out


@pytest.mark.skipif(not ON_LINUX, reason="the demo's cases are Linux's (SO_REUSEPORT TCP, cross-user SO_REUSEADDR UDP)")
def test_demo_shows_the_hijack_and_the_refusal() -> None:
    _check_demo(cli("demo"))


@pytest.mark.skipif(not ON_LINUX, reason="the demo's cases are Linux's")
def test_demo_needs_no_optional_package() -> None:
    # What `pip install . && python -m aioexclusive demo` gets: no uvloop, psutil or rich.
    hide = "import sys\nfor name in ('uvloop', 'psutil', 'rich'):\n    sys.modules[name] = None"
    result = cli("demo", pre=hide)
    _check_demo(result)
    assert "loop: asyncio" in result.stdout
    assert "plain asyncio loop" in result.stdout


# -- probe ---------------------------------------------------------------------------


def _udp(options: tuple[str, ...]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for name in options:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
    sock.bind(("127.0.0.1", 0))
    return sock


def _probe_json(*args: str) -> tuple[int, dict]:  # type: ignore[type-arg]
    result = cli("probe", *args, "--json")
    return result.returncode, json.loads(result.stdout)


def test_probe_finds_a_shareable_udp_port() -> None:
    with _udp(("SO_REUSEADDR",)) as service:
        port = service.getsockname()[1]
        result = cli("probe", "127.0.0.1", str(port), "--udp")
        assert result.returncode == 1, result.stdout + result.stderr
        assert "shareable" in result.stdout
        assert "CO-BOUND" in result.stdout
        code, report = _probe_json("127.0.0.1", str(port), "--udp")
    assert code == 1
    assert report["shareable"] is True
    co_bound = [a for a in report["attempts"] if a["co_bound"]]
    assert any(a["options"] == ["SO_REUSEADDR"] and a["address"] == "127.0.0.1" for a in co_bound)
    # Without SO_REUSEADDR on the newcomer, the bind is refused.
    assert not any(a["options"] == [] for a in co_bound)
    if IS_ROOT and ON_LINUX:
        # Linux lets *any* user join a UDP SO_REUSEADDR socket: the probe shows it.
        assert any(a["uid"] == 65534 and a["options"] == ["SO_REUSEADDR"] for a in co_bound)


def test_probe_passes_an_exclusive_udp_port() -> None:
    with aioexclusive.bind_socket(("127.0.0.1", 0), type=socket.SOCK_DGRAM) as service:
        port = service.getsockname()[1]
        result = cli("probe", "127.0.0.1", str(port), "--udp")
        assert result.returncode == 0, result.stdout + result.stderr
        assert "exclusive: none of the" in result.stdout
        code, report = _probe_json("127.0.0.1", str(port), "--udp")
    assert code == 0
    assert report["shareable"] is False
    options_tried = {tuple(a["options"]) for a in report["attempts"]}
    assert ("SO_REUSEADDR",) in options_tried and ("SO_REUSEPORT",) in options_tried
    if IS_ROOT:
        assert any(a["uid"] == 65534 for a in report["attempts"])


def test_probe_passes_an_exclusive_tcp_listener() -> None:
    with aioexclusive.bind_socket(("127.0.0.1", 0)) as service:
        code, report = _probe_json("127.0.0.1", str(service.getsockname()[1]))
    assert code == 0, report
    assert report["protocol"] == "TCP"


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="needs SO_REUSEPORT")
def test_probe_finds_a_reuse_port_listener_without_stealing_a_connection() -> None:
    service = socket.socket()
    service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    service.bind(("127.0.0.1", 0))
    service.listen(128)
    port = service.getsockname()[1]
    stop = threading.Event()
    outcome = {"ok": 0, "failed": 0}

    def serve() -> None:
        service.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = service.accept()
            except TimeoutError:
                continue
            with conn:
                conn.recv(16)
                conn.sendall(b"ok")

    def clients() -> None:
        # Connections keep arriving while the probe runs: had it listened with
        # SO_REUSEPORT, the kernel would hand some of them to its socket, and
        # closing that socket would reset them.
        while not stop.is_set():
            with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
                try:
                    conn.sendall(b"hello")
                    reply = conn.recv(2)
                except OSError:
                    reply = b""
            outcome["ok" if reply == b"ok" else "failed"] += 1
            time.sleep(0.002)  # steady traffic, without starving the probe of CPU

    threads = [threading.Thread(target=serve), threading.Thread(target=clients)]
    for thread in threads:
        thread.start()
    try:
        code, report = _probe_json("127.0.0.1", str(port))
    finally:
        stop.set()
        for thread in threads:
            thread.join()
        service.close()
    assert code == 1, report
    co_bound = [a for a in report["attempts"] if a["co_bound"]]
    assert co_bound and all("SO_REUSEPORT" in a["options"] for a in co_bound)
    # SO_REUSEPORT attempts bind and never listen.
    assert all(a["listened"] is None for a in report["attempts"] if "SO_REUSEPORT" in a["options"])
    if IS_ROOT:
        # SO_REUSEPORT shares only within one user: nobody is refused.
        assert not any(a["uid"] == 65534 for a in co_bound)
    assert outcome["failed"] == 0 and outcome["ok"] > 0, outcome


def test_probe_bad_input_exits_2() -> None:
    # A malformed address is rejected without any DNS query.
    result = cli("probe", "999.1.2.3", "80")
    assert result.returncode == 2
    assert "bad host '999.1.2.3'" in result.stderr
    result = cli("probe", "127.0.0.1", "70000")
    assert result.returncode == 2
    assert "PORT must be 1-65535" in result.stderr
    result = cli("probe", "127.0.0.1", "http")
    assert result.returncode == 2
    code, report = _probe_json("999.1.2.3", "80", "--udp")
    assert code == 2 and "bad host" in report["error"]


def test_probe_of_a_free_port_says_there_is_nothing_to_audit() -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    result = cli("probe", "127.0.0.1", str(port))
    assert result.returncode == 2
    assert "nothing is bound" in result.stderr or "nothing is listening" in result.stderr


@pytest.mark.skipif(not IS_ROOT, reason="--user switches user, which needs root")
def test_probe_unknown_user_exits_2() -> None:
    with _udp(()) as service:
        result = cli("probe", "127.0.0.1", str(service.getsockname()[1]), "--udp", "--user", "no-such-user-xyz")
    assert result.returncode == 2
    assert "unknown user 'no-such-user-xyz'" in result.stderr


@pytest.mark.skipif(IS_ROOT, reason="checks the non-root message")
def test_probe_user_needs_root() -> None:  # pragma: no cover - CI runs as root
    with _udp(()) as service:
        result = cli("probe", "127.0.0.1", str(service.getsockname()[1]), "--udp", "--user", "nobody")
    assert result.returncode == 2
    assert "--user needs root" in result.stderr
