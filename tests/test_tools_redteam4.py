"""Red team 4 against the operations tools (audit, probe, plan, demo): each verdict checked against the real attack.

Every "shareable" the tools now give is matched by an attacker process that
takes the connections (`tests/attacker.py`, or a forked child here that calls
`become_stranger`), and every "exclusive" by the same attacker refused. The
cases with a listener bound to one network interface run in a network
namespace the test makes (this file re-executed under ``unshare --net``),
with a veth pair as the other interface the attacker primes on.
"""

from __future__ import annotations

import array
import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from attacker import (  # noqa: E402
    NOBODY,
    SO_BINDTODEVICE,
    SO_INCOMING_CPU,
    FastPathAttacker,
    accept_waiting,
    become_stranger,
    connections_reaching,
    fork_stranger,
)
from harness import IS_ROOT, needs_ipv6, port_free_on_both_families, require_own_netns, run_in_own_netns  # noqa: E402

ON_LINUX = sys.platform.startswith("linux")
pytestmark = pytest.mark.skipif(not ON_LINUX, reason="the kernel rules attacked here are Linux's")
STRANGER = NOBODY if IS_ROOT else None
"""Another user when the tests run as root (as CI does), else a process of the same user."""


def _audit_rows(port: int) -> list[dict[str, Any]]:
    from aioexclusive._cli.audit import audit

    return [row for row in audit(ports=str(port))["sockets"] if row["port"] == port]


def _probe(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    """``python -m aioexclusive probe ARGS --json`` in a subprocess (it forks its agents there)."""
    command = [sys.executable, "-m", "aioexclusive", "probe", *args, "--json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, cwd=ROOT, env=env)
    assert result.stdout, result.stderr
    return result.returncode, json.loads(result.stdout)


@contextmanager
def _listening(family: int, host: str, port: int, *, v6only: int | None = None) -> Iterator[socket.socket]:
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        if v6only is not None:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
        sock.bind((host, port))
        sock.listen(64)
        yield sock
    finally:
        sock.close()


# -- F1: the IPv4-mapped wildcard ::ffff:0.0.0.0 is the IPv4 wildcard -------------------------------


@needs_ipv6
@pytest.mark.parametrize("hold", [False, True], ids=["alone", "with [::] held"])
def test_audit_mapped_ipv4_wildcard_is_judged_as_0_0_0_0(hold: bool) -> None:
    port = port_free_on_both_families()
    with _listening(socket.AF_INET6, "::ffff:0.0.0.0", port, v6only=0) as service:
        held = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        try:
            if hold:
                # Its other family's side, as for 0.0.0.0: [::] IPv6-only, no options, never listening.
                held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                held.bind(("::", port))
            (row,) = [r for r in _audit_rows(port) if r["address"] == "::ffff:0.0.0.0"]
            with FastPathAttacker(port, STRANGER, prime_at="::", bindtodevice=True) as thief:
                status = thief.line()
                if status == "ok":
                    got = connections_reaching(service, "127.0.0.1", 20)
                    stolen = thief.count()
        finally:
            held.close()
    if hold:
        assert row["verdict"] == "exclusive", row
        assert status.startswith("refused"), status
    else:
        # Before the fix: "exclusive" ("TCP listener without SO_REUSEPORT") while the attacker took everything.
        assert row["verdict"] == "shareable" and "IPv4 wildcard" in row["why"], row
        assert status == "ok" and stolen > 0 and got + stolen == 20, (status, got, stolen)


@needs_ipv6
def test_probe_binds_the_mapped_ipv4_wildcard_and_finds_the_fast_path() -> None:
    port = port_free_on_both_families()
    with _listening(socket.AF_INET6, "::ffff:0.0.0.0", port, v6only=0) as service:
        # Before the fix: exit 2, "bind failed with EINVAL" (IPV6_V6ONLY=1 set before binding a mapped address).
        code, report = _probe("::ffff:0.0.0.0", str(port))
        assert code == 1, report
        assert report["kernel_fast_path"] and report["addresses"] == ["::ffff:0.0.0.0"], report
        # The probe took nothing.
        assert connections_reaching(service, "127.0.0.1", 5) == 5


# -- F5: a specific address served by a wildcard listener ------------------------------------------

SPECIFIC_OF_WILDCARD = [
    # (service family, service address, v6only, probed address, the attacker's prime, connections to)
    pytest.param(socket.AF_INET, "0.0.0.0", None, "127.0.0.1", "::", "127.0.0.1", id="0.0.0.0 probed as 127.0.0.1"),
    pytest.param(socket.AF_INET, "0.0.0.0", None, "localhost", "::", "127.0.0.1", id="0.0.0.0 probed as localhost"),
    pytest.param(
        socket.AF_INET6, "::ffff:0.0.0.0", 0, "127.0.0.1", "::", "127.0.0.1", id="::ffff:0.0.0.0 probed as 127.0.0.1"
    ),
    pytest.param(socket.AF_INET6, "::", 1, "::1", "0.0.0.0", "::1", id="[::] v6only probed as ::1"),
]


@needs_ipv6
@pytest.mark.parametrize(("family", "host", "v6only", "probed", "prime_at", "victim"), SPECIFIC_OF_WILDCARD)
def test_probe_of_a_specific_address_attacks_the_wildcard_that_serves_it(
    family: int, host: str, v6only: int | None, probed: str, prime_at: str, victim: str
) -> None:
    port = port_free_on_both_families()
    with _listening(family, host, port, v6only=v6only) as service:
        # Before the fix: exit 0, only the specific address's own binds were tried.
        code, report = _probe(probed, str(port))
        assert code == 1, report
        assert report["kernel_fast_path"], report["findings"]
        assert any(host in wildcards for wildcards in report["served_by"].values()), report["served_by"]
        assert connections_reaching(service, victim, 5) == 5
        # The finding is real: the two-step attacker takes the connections sent to the probed address.
        with FastPathAttacker(port, STRANGER, prime_at=prime_at, bindtodevice=victim == "127.0.0.1") as thief:
            assert thief.line() == "ok"
            got = connections_reaching(service, victim, 20)
            stolen = thief.count()
    assert stolen > 0 and got + stolen == 20, (got, stolen)


@needs_ipv6
def test_probe_of_a_specific_address_under_a_held_wildcard_stays_exclusive() -> None:
    port = port_free_on_both_families()
    with _listening(socket.AF_INET, "0.0.0.0", port) as service, socket.socket(socket.AF_INET6) as held:
        held.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        held.bind(("::", port))
        code, report = _probe("127.0.0.1", str(port))
        assert code == 0, report["findings"]
        assert report["served_by"] == {"127.0.0.1": ["0.0.0.0"]}
        with FastPathAttacker(port, STRANGER, prime_at="::", bindtodevice=True) as thief:
            assert thief.line().startswith("refused")
        assert connections_reaching(service, "127.0.0.1", 5) == 5


# -- F6: listeners bound to one interface, in a network namespace of the test's own ----------------


class _DeviceThief:
    """A forked attacker (another user as root): a SO_REUSEPORT prime on a wildcard bound to *prime_device*,
    closed, then a SO_REUSEPORT + SO_INCOMING_CPU=0 listener on *sockaddr* bound to *device*.

    ``status`` is ``"ok"`` or ``"refused STAGE ERRNO"``; `count` how many connections wait for the thief.
    """

    def __init__(
        self, port: int, prime: tuple[str, str], sockaddr: tuple[Any, ...], device: str | None, *, v6only: int = 1
    ) -> None:
        self.pid, self._write_fd, self._reader = fork_stranger(
            STRANGER, lambda rfd, wfd: self._child(rfd, wfd, port, prime, sockaddr, device, v6only)
        )
        self.status = self._reader.readline().strip()

    @staticmethod
    def _child(
        rfd: int,
        wfd: int,
        port: int,
        prime: tuple[str, str],
        sockaddr: tuple[Any, ...],
        device: str | None,
        v6only: int,
    ) -> None:  # pragma: no cover - the child
        stage = "prime"
        try:
            host, prime_device = prime
            first = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            first.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            first.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, prime_device.encode())
            if ":" in host:
                first.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            first.bind((host, port))
            first.close()
            stage = "thief"
            thief = socket.socket(socket.AF_INET6 if ":" in sockaddr[0] else socket.AF_INET, socket.SOCK_STREAM)
            thief.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            thief.setsockopt(socket.SOL_SOCKET, SO_INCOMING_CPU, 0)
            if device:
                thief.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
            if ":" in sockaddr[0]:
                thief.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
            thief.bind(sockaddr)
            thief.listen(64)
        except OSError as exc:
            os.write(wfd, f"refused {stage} {exc.errno}\n".encode())
            return
        os.write(wfd, b"ok\n")
        os.read(rfd, 10)
        thief.setblocking(False)
        os.write(wfd, f"{accept_waiting(thief)}\n".encode())
        os.read(rfd, 10)

    def count(self) -> int:
        os.write(self._write_fd, b"go\n")
        return int(self._reader.readline())

    def close(self) -> None:
        os.close(self._write_fd)
        self._reader.close()
        os.waitpid(self.pid, 0)


def _device_case(
    service: socket.socket, probed: str, prime: tuple[str, str], thief_at: tuple[Any, ...], device: str | None
) -> dict[str, Any]:
    """Audit, probe, then the real attack on *service*; what each said."""
    from aioexclusive._cli.probe import probe

    port = service.getsockname()[1]
    rows = [r for r in _audit_rows(port) if r["address"] == service.getsockname()[0].partition("%")[0]]
    report = probe(probed, port)
    thief = _DeviceThief(
        port, prime, (thief_at[0], port, *thief_at[1:]), device, v6only=0 if thief_at[0] == "::" else 1
    )
    try:
        got = stolen = 0
        if thief.status == "ok":
            victim, scope = thief_at[0], thief_at[2] if len(thief_at) > 2 else 0
            if victim == "::":
                victim = "::1"
            got = connections_reaching(service, victim, 20, scope)
            stolen = thief.count()
    finally:
        thief.close()
    return {
        "audit": [{k: r[k] for k in ("verdict", "device", "why", "who")} for r in rows],
        "probe": {k: report[k] for k in ("exit", "findings", "unknown")},
        "attack": thief.status,
        "got": got,
        "stolen": stolen,
    }


def _device_scenario() -> None:
    """Inside a fresh network namespace: device-bound listeners audited, probed and attacked."""
    require_own_netns()
    out: dict[str, Any] = {}
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    # Only lo: the probe cannot prime on another interface, so it must not say "exclusive".
    with _listening(socket.AF_INET, "127.0.0.1", 0) as service:
        from aioexclusive._cli.probe import probe

        report = probe("127.0.0.1", service.getsockname()[1])
        out["lo_only"] = {k: report[k] for k in ("exit", "findings", "unknown", "notes")}
    # The attacker's other interface (a veth pair: the dummy module is not everywhere).
    for args in (
        ["link", "add", "other0", "type", "veth", "peer", "name", "other1"],
        ["link", "set", "other0", "up"],
        ["link", "set", "other1", "up"],
        ["-6", "addr", "add", "fe80::1/64", "dev", "other0", "nodad"],
    ):
        subprocess.run(["ip", *args], check=True)
    for name, device in (("bound", "lo"), ("control", None)):
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with sock:
            if device:
                sock.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, device.encode())
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            out[f"ipv4_{name}"] = _device_case(sock, "127.0.0.1", ("0.0.0.0", "other0"), ("127.0.0.1",), "lo")
    # A link-local address: its scope id binds the listener to other0, no option needed.
    scope = socket.if_nametoindex("other0")
    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as sock:
        sock.bind(("fe80::1", 0, 0, scope))
        sock.listen(64)
        out["link_local"] = _device_case(sock, "fe80::1%other0", ("::", "lo"), ("fe80::1", 0, scope), None)
    # A [::] IPv6-only listener whose IPv4 side is "held" by a socket bound to lo: no hold at all.
    port = port_free_on_both_families()
    with _listening(socket.AF_INET6, "::", port, v6only=1) as sock, socket.socket() as hold:
        hold.setsockopt(socket.SOL_SOCKET, SO_BINDTODEVICE, b"lo")
        hold.bind(("0.0.0.0", port))
        out["device_hold"] = _device_case(sock, "::", ("0.0.0.0", "other0"), ("::",), "lo")
    print(json.dumps(out), flush=True)


def _in_new_netns(scenario: str) -> dict[str, Any]:
    result: dict[str, Any] = run_in_own_netns(__file__, scenario)
    return result


@pytest.fixture(scope="module")
def device_results() -> dict[str, Any]:
    return _in_new_netns("device")


def test_device_bound_listener_is_shareable_in_audit_and_probe(device_results: dict[str, Any]) -> None:
    r = device_results["ipv4_bound"]
    # The attack the verdict describes: another user took the connections of a listener bound to lo.
    assert r["attack"] == "ok" and r["stolen"] > 0 and r["got"] + r["stolen"] == 20, r
    # Before the fix: both said "exclusive".
    (row,) = r["audit"]
    assert row["verdict"] == "shareable" and row["device"] == "lo" and "interface lo" in row["why"], row
    assert r["probe"]["exit"] == 1 and any("on interface other" in f for f in r["probe"]["findings"]), r["probe"]


def test_listener_of_no_interface_stays_exclusive(device_results: dict[str, Any]) -> None:
    r = device_results["ipv4_control"]
    assert r["attack"].startswith("refused prime"), r
    (row,) = r["audit"]
    assert row["verdict"] == "exclusive" and row["device"] == "", row
    assert r["probe"]["exit"] == 0 and not r["probe"]["unknown"], r["probe"]


def test_link_local_listener_is_bound_to_its_interface(device_results: dict[str, Any]) -> None:
    r = device_results["link_local"]
    assert r["attack"] == "ok" and r["stolen"] > 0, r
    (row,) = r["audit"]
    assert row["verdict"] == "shareable" and row["device"] == "other0", row
    assert r["probe"]["exit"] == 1, r["probe"]


def test_a_hold_bound_to_one_interface_is_no_hold(device_results: dict[str, Any]) -> None:
    r = device_results["device_hold"]
    assert r["attack"] == "ok" and r["stolen"] > 0, r
    (row,) = r["audit"]
    assert row["verdict"] == "shareable" and "bound to interface lo" in row["why"], row
    assert r["probe"]["exit"] == 1, r["probe"]


def test_probe_notes_the_takeover_nobody_can_perform_without_another_interface(device_results: dict[str, Any]) -> None:
    r = device_results["lo_only"]
    # With lo alone there is no other interface to prime on, for the probe or for anyone without
    # CAP_NET_ADMIN here: the listener is exclusive now, and the report says what was not tried and why.
    assert r["exit"] == 0 and not r["findings"] and not r["unknown"], r
    assert any("other than lo" in note and "nobody can perform it here" in note for note in r["notes"]), r


# -- F3: a SO_REUSEPORT cleared after listen; the audit cannot see it and says so -----------------


def test_audit_names_the_cleared_reuseport_limit_and_the_probe_finds_it() -> None:
    with socket.socket() as service:
        service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        service.bind(("127.0.0.1", 0))
        service.listen(64)
        service.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 0)
        port = service.getsockname()[1]
        from aioexclusive._cli.audit import audit

        report = audit(ports=str(port))
        (row,) = report["sockets"]
        # Not visible through the options: the note says so and points to the probe...
        assert row["verdict"] == "exclusive" and row["options"]["SO_REUSEPORT"] == 0
        assert any("cleared" in note and "probe" in note for note in report["notes"]), report["notes"]
        code, probed = _probe("127.0.0.1", str(port))
        assert code == 1, probed
        # ...and the limit is real: a process of the same user still joins the port.
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            try:
                become_stranger(None, write_end)
                joiner = socket.socket()
                joiner.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                joiner.bind(("127.0.0.1", port))
                joiner.listen(1)
                os.write(write_end, b"1")
            except OSError:
                os.write(write_end, b"0")
            finally:
                os._exit(0)
        os.close(write_end)
        os.waitpid(pid, 0)
        with os.fdopen(read_end, "rb") as reader:
            assert reader.read() == b"1"


# -- F8: the plan shows the wildcard hold the loops take --------------------------------------------


@needs_ipv6
@pytest.mark.parametrize("follow_hold", [True, False], ids=["as printed", "control: without the hold"])
def test_a_listener_built_as_the_plan_prints_it_is_not_stolen(follow_hold: bool) -> None:
    from aioexclusive._cli.planview import plan_rows

    (rule,) = [r for r in plan_rows("linux") if r["role"] == "TCP listener" and r["platform"] == "linux"]
    port = port_free_on_both_families()
    service = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    hold = None
    try:
        for name, value in rule["set"]:
            service.setsockopt(socket.SOL_SOCKET, getattr(socket, name), value)
        service.bind(("0.0.0.0", port))
        service.listen(64)
        step = rule["hold"]["bind"]["0.0.0.0"] if follow_hold and rule["hold"] else None
        if step is not None:
            hold = socket.socket(socket.AF_INET6 if ":" in step["address"] else socket.AF_INET, socket.SOCK_STREAM)
            for name, value in step["set"]:
                hold.setsockopt(
                    socket.IPPROTO_IPV6 if name.startswith("IPV6") else socket.SOL_SOCKET, getattr(socket, name), value
                )
            hold.bind((step["address"], port))
            assert not rule["hold"]["listen"]
        with FastPathAttacker(port, STRANGER, prime_at="::", bindtodevice=True) as thief:
            status = thief.line()
            if status == "ok":
                got = connections_reaching(service, "127.0.0.1", 20)
                stolen = thief.count()
    finally:
        service.close()
        if hold is not None:
            hold.close()
    if follow_hold:
        # Before the fix the plan printed no hold: a socket built as printed was taken (the control below).
        assert status.startswith("refused"), status
    else:
        assert status == "ok" and stolen > 0 and got + stolen == 20, (status, got, stolen)


def test_plan_prints_the_hold_from_the_wildcard_module() -> None:
    from aioexclusive import _wildcard
    from aioexclusive._cli.planview import plan_rows

    here = [r for r in plan_rows() if r["current"] and r["role"] == "TCP listener"]
    assert bool(here[0]["hold"]) == _wildcard.HOLDS_WILDCARDS
    result = subprocess.run(
        [sys.executable, "-m", "aioexclusive", "plan", "--color", "never"], capture_output=True, text=True, cwd=ROOT
    )
    assert "+ hold" in result.stdout and "never listening" in result.stdout, result.stdout


# -- demo: an attacker that cannot start, a control that was not hijacked -------------------------


def test_demo_without_uid_65534_exits_2_without_a_traceback() -> None:
    if not IS_ROOT or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare")
    if subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True).returncode != 0:
        pytest.skip("user namespaces are not permitted here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH", "")) if p)}
    # Only uid 0 is mapped in this user namespace: the other-user attacker cannot setuid(65534).
    result = subprocess.run(
        [
            "unshare",
            "--user",
            "--map-root-user",
            "--net",
            sys.executable,
            "-m",
            "aioexclusive",
            "demo",
            "--color",
            "never",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "cannot start the attacker" in result.stdout, result.stderr


DEMO_WITHOUT_OPTIONS = """
import sys
import aioexclusive._cli.demo as demo
demo.option_sets = lambda: [()]  # an attacker that sets nothing cannot take even the plain loop's port
from aioexclusive._cli import main
sys.exit(main(["demo", "--color", "never"]))
"""


def test_demo_fails_when_its_plain_loop_control_was_not_hijacked() -> None:
    result = subprocess.run(
        [sys.executable, "-c", DEMO_WITHOUT_OPTIONS], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    assert "not hijacked" in result.stdout, result.stdout
    # Before the fix: exit 0 and "The exclusive loop refused every attempt", which proved nothing.
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "control was not hijacked" in result.stdout


# -- t11: a socket only held in flight ------------------------------------------------------------


@pytest.mark.skipif(not IS_ROOT, reason="the wording as root")
def test_audit_of_a_socket_in_flight_does_not_blame_permissions() -> None:
    from aioexclusive._cli.audit import audit

    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener = socket.socket()
    try:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        a.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [listener.fileno()]))])
        listener.close()
        report = audit(ports=str(port))
    finally:
        listener.close()
        a.close()
        b.close()
    assert report["exit"] == 2
    assert report["notes"][0].startswith("nothing could be read"), report["notes"]
    assert "to this user" not in report["notes"][0] and "in flight" in report["notes"][0], report["notes"]


if __name__ == "__main__":  # pragma: no cover - the namespace scenarios
    if sys.argv[1:] == ["device"]:
        _device_scenario()
    else:
        raise SystemExit(f"unknown scenario {sys.argv[1:]!r}")
