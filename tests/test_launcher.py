"""python -m aioexclusive run [--mode M] [--allow ...] -- CMD ARGS: any program, guarded; pid, exit status and signals its own."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from attacker import Attacker

from aioexclusive._cli.launcher import launch_environment

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable
posix_only = pytest.mark.skipif(os.name != "posix", reason="exec and signals: POSIX")

# A service as third-party code writes it: a TCP listener with SO_REUSEPORT (shareable), answering its pid.
SERVICE = textwrap.dedent(
    """
    import os, socket, sys
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", int(sys.argv[1])))  # a fixed port: the guard leaves port 0 binds alone
    sock.listen(16)
    import aioexclusive._guard as g
    print("PORT", sock.getsockname()[1], "MODE", g.current_mode(), "PID", os.getpid(), flush=True)
    while True:
        conn, _ = sock.accept()
        conn.sendall(b"pid %d" % os.getpid())
        conn.close()
    """
)


def env_without_guard() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_")}
    env["PYTHONPATH"] = ROOT
    return env


def launcher(*args: str, env: dict[str, str] | None = None, **kwargs: object) -> subprocess.Popen[str]:
    proc: subprocess.Popen[str] = subprocess.Popen(
        [PY, "-m", "aioexclusive", "run", *args],
        env=env or env_without_guard(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kwargs,  # type: ignore[call-overload]
    )
    return proc


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ask(port: int) -> bytes:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        return conn.recv(100)


@posix_only
def test_exit_status_is_the_programs() -> None:
    proc = launcher("--", PY, "-c", "import sys; sys.exit(7)")
    proc.communicate(timeout=60)
    assert proc.returncode == 7


@posix_only
def test_the_program_is_this_process_and_gets_the_signals(same_user_attacker: Attacker) -> None:
    proc = launcher("--mode", "enforce", "--", PY, "-c", SERVICE, str(free_port()))
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        port, mode, pid = int(words[1]), words[3], int(words[5])
        assert pid == proc.pid, "exec: the program runs in the launcher's process"
        assert mode == "enforce"
        assert ask(port) == b"pid %d" % pid
        # The guard stripped the program's SO_REUSEPORT before its bind.
        result = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", port, ("SO_REUSEADDR", "SO_REUSEPORT"))
        same_user_attacker.collect(wait=0)
        assert not result.ok
        assert ask(port) == b"pid %d" % pid
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        assert proc.returncode == -signal.SIGTERM
    finally:
        proc.kill()
        proc.communicate()


@posix_only
def test_control_the_same_program_unlaunched_is_joined(same_user_attacker: Attacker) -> None:
    proc = subprocess.Popen(
        [PY, "-c", SERVICE, str(free_port())], env=env_without_guard(), stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        words = proc.stdout.readline().split()
        assert words[3] == "off"
        result = same_user_attacker.try_bind("tcp", 4, "127.0.0.1", int(words[1]), ("SO_REUSEADDR", "SO_REUSEPORT"))
        same_user_attacker.collect(wait=0)
        assert result.ok, "the control must show the program's SO_REUSEPORT being joined"
    finally:
        proc.kill()
        proc.communicate()


@posix_only
def test_mode_and_allow_reach_every_python_process() -> None:
    code = (
        "import os, subprocess, sys; print(os.environ['AIOEXCLUSIVE_GUARD'], os.environ['AIOEXCLUSIVE_GUARD_ALLOW']);"
        "sys.stdout.flush();"
        "subprocess.run([sys.executable, '-c', 'import aioexclusive._guard as g; print(g.current_mode(), "
        "[p.text for p in g._state.allow])'])"
    )
    proc = launcher(
        "--mode", "raise", "--allow", "*:5353", "--allow", "127.0.0.1:9000-9001,[::1]:7", "--", PY, "-c", code
    )
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert out.splitlines() == [
        "raise *:5353,127.0.0.1:9000-9001,[::1]:7",
        "raise ['*:5353', '127.0.0.1:9000-9001', '[::1]:7']",
    ]


def _python_without_aioexclusive() -> str | None:
    for candidate in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.1[0-9]*/bin/python"))):
        probe = subprocess.run([candidate, "-c", "import aioexclusive"], capture_output=True, cwd="/", env={})
        if probe.returncode != 0:
            return candidate
    return None


@posix_only
def test_an_interpreter_without_aioexclusive_installed_is_guarded_too(tmp_path: Path) -> None:
    other = _python_without_aioexclusive()
    if other is None:
        pytest.skip("no Python here without aioexclusive installed")
    # An existing sitecustomize keeps running after ours.
    (tmp_path / "sitecustomize.py").write_text("import builtins; builtins.SITECUSTOMIZE_RAN = True\n")
    env = env_without_guard()
    env["PYTHONPATH"] = str(tmp_path)  # no checkout on the path: the bootstrap finds the package itself
    code = "import builtins, sys, aioexclusive._guard as g; print(g.current_mode(), getattr(builtins, 'SITECUSTOMIZE_RAN', False), 'aioexclusive' in sys.modules)"
    proc = launcher("--mode", "warn", "--", other, "-c", code, env=env, cwd="/")
    out, err = proc.communicate(timeout=60)
    assert (proc.returncode, out.split()) == (0, ["warn", "True", "True"]), err


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["--", "aioexclusive-no-such-command-x"], 127, "command not found"),
        (["--allow", "nonsense", "--", PY, "-c", "pass"], 2, "allow entry"),
        ([], 2, "no command given"),
        (["--mode", "loud", "--", PY], 2, "invalid choice"),
    ],
)
def test_bad_input(args: list[str], code: int, message: str) -> None:
    proc = launcher(*args)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code and message in err, err


def test_launch_environment() -> None:
    env = launch_environment("enforce", None, {"PYTHONPATH": "/x", "AIOEXCLUSIVE_GUARD_ALLOW": "*:5353"})
    assert env["AIOEXCLUSIVE_GUARD"] == "enforce"
    assert env["AIOEXCLUSIVE_GUARD_ALLOW"] == "*:5353"  # inherited when --allow is not given
    assert env["PYTHONPATH"].split(os.pathsep)[1:] == ["/x"]
    assert env["PYTHONPATH"].split(os.pathsep)[0].endswith("_bootstrap")
    assert (
        launch_environment("warn", ["1:2"], {"AIOEXCLUSIVE_GUARD_ALLOW": "*:5353"})["AIOEXCLUSIVE_GUARD_ALLOW"] == "1:2"
    )
    with pytest.raises(ValueError):
        launch_environment("loud", None, {})
    with pytest.raises(ValueError):
        launch_environment("warn", None, {"AIOEXCLUSIVE_GUARD_ALLOW": "bad"})
