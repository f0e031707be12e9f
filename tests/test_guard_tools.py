"""aioexclusive's own tools under an inherited ``AIOEXCLUSIVE_GUARD`` (issue 14.2).

``python -m aioexclusive probe`` and ``demo`` open deliberately shareable
attacker sockets (and the demo, deliberately shareable plain-loop victims). A
guard inherited through the environment used to fix or refuse them: a false
"exclusive" (exit 0) under ``enforce``, a traceback under ``raise``. Each case
runs the real CLI, in a subprocess, once without the guard and once under each
mode, against a really shareable service, and wants the same verdict.

The guard is turned on in the child exactly as the ``.pth`` file does it
(``activate_from_environment``), so the test does not depend on the ``.pth``
being installed for this interpreter; the child reports the mode it runs
under, so a guard that silently did not come on fails the test too.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="the probe's and the demo's sharing cases are Linux's (forked attackers)",
)

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
MODES = ["warn", "raise", "enforce"]

# What the .pth line does, then `python -m aioexclusive ARGS`.
_LAUNCH = (
    "import sys, runpy\n"
    "import aioexclusive._guard as g\n"
    "g.activate_from_environment()\n"
    "sys.stderr.write('guard mode: %s\\n' % g.current_mode())\n"
    "runpy.run_module('aioexclusive', run_name='__main__', alter_sys=True)\n"
)


def _cli(mode: str | None, *args: str) -> subprocess.CompletedProcess[str]:
    import aioexclusive

    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_GUARD") and k != "PYTHONPATH"}
    env.pop("NO_COLOR", None)
    env["PYTHONPATH"] = str(Path(aioexclusive.__file__).resolve().parent.parent)
    if mode is not None:
        env["AIOEXCLUSIVE_GUARD"] = mode
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked by the callers
        [sys.executable, "-c", _LAUNCH, "--color", "never", *args],
        capture_output=True,
        text=True,
        timeout=180,
        env=env,
    )
    assert f"guard mode: {mode or 'off'}" in proc.stderr, proc.stderr
    return proc


@pytest.fixture
def shareable_service(request: pytest.FixtureRequest) -> Iterator[tuple[str, int]]:
    """A service bound the shareable way, in this (unguarded) process."""
    proto = request.param
    if proto == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)  # joinable by any process of this user
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # joinable by any user on Linux
    try:
        sock.bind(("127.0.0.1", 0))
        if proto == "tcp":
            sock.listen(128)
        yield proto, int(sock.getsockname()[1])
    finally:
        sock.close()


def _verdict(proc: subprocess.CompletedProcess[str]) -> tuple[int, list[tuple[Any, ...]]]:
    assert "Traceback" not in proc.stderr and "ExclusivityWarning" not in proc.stderr, proc.stderr
    report = json.loads(proc.stdout)
    attempts = [(a["uid"], a["address"], tuple(a["options"]), a["co_bound"]) for a in report["attempts"]]
    return proc.returncode, attempts


@pytest.mark.parametrize("shareable_service", ["tcp", "udp"], indirect=True)
def test_probe_gives_the_same_verdict_under_every_guard_mode(shareable_service: tuple[str, int]) -> None:
    proto, port = shareable_service
    args = ["probe", "127.0.0.1", str(port), "--json"] + (["--udp"] if proto == "udp" else [])
    code, attempts = _verdict(_cli(None, *args))
    # Control: the service really is shareable, and the probe says so.
    assert code == 1 and any(co_bound for *_, co_bound in attempts), attempts
    if IS_ROOT and proto == "udp":
        assert any(uid == 65534 and co_bound for uid, _, _, co_bound in attempts), attempts
    for mode in MODES:
        guarded_code, guarded_attempts = _verdict(_cli(mode, *args))
        assert (guarded_code, guarded_attempts) == (code, attempts), f"AIOEXCLUSIVE_GUARD={mode} changed the verdict"


def _demo_outcome(proc: subprocess.CompletedProcess[str]) -> list[str]:
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr and "ExclusivityWarning" not in proc.stderr, proc.stderr
    # One line per service and loop: "plain ... hijacked" / "aioexclusive loop refused".
    return [
        " ".join(line.split(":")[0].split())
        for line in proc.stdout.splitlines()
        if "hijacked" in line or "refused:" in line
    ]


@pytest.mark.parametrize("mode", MODES)
def test_demo_gives_the_same_result_under_the_guard(mode: str) -> None:
    """raise and enforce used to crash or hide the hijack; under any mode the guard's uvloop hook must not
    turn the demo's *plain* uvloop loop into an exclusive one."""
    plain = _demo_outcome(_cli(None, "demo"))
    assert sum("hijacked" in line for line in plain) == 2, plain  # the harness shows the hijack
    assert _demo_outcome(_cli(mode, "demo")) == plain
