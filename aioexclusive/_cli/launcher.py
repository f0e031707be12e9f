"""``python -m aioexclusive run [--mode M] [--allow HOST:PORT] -- CMD ARGS...``: any program, guarded.

The pattern of ``opentelemetry-instrument`` and ``ddtrace-run``: set the
environment, then *become* the program (``exec``), so its pid, exit status and
signals are the program's own, and a supervisor (systemd, Docker, a shell's
Ctrl-C) talks to it directly. What the environment carries:

* ``AIOEXCLUSIVE_GUARD=M`` (default ``enforce``) and, given ``--allow``,
  ``AIOEXCLUSIVE_GUARD_ALLOW``; the installed ``aioexclusive_guard.pth`` turns
  the guard and its post-import hooks (grpc, uvloop, gunicorn, tornado,
  aiocoap; see `aioexclusive._import_hooks`) on in every Python process the
  program starts, workers included;
* ``PYTHONPATH`` starting with ``aioexclusive/_bootstrap``, whose
  ``sitecustomize`` does the same for interpreters that do not have the
  ``.pth`` (aioexclusive from a checkout, another virtual environment).

On Windows, which has no ``exec`` that keeps the process, the program runs as
a child and its exit status is returned; Ctrl-C reaches it through the console.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

from .._guard import ENV_ALLOW, ENV_VAR, MODES, _parse_allow

__all__ = ["BOOTSTRAP_ROOT_VAR", "launch", "launch_environment"]

BOOTSTRAP_ROOT_VAR = "AIOEXCLUSIVE_BOOTSTRAP_ROOT"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_BOOTSTRAP_DIR = os.path.join(_PACKAGE_DIR, "_bootstrap")


def _split_allow(entries: Sequence[str]) -> list[str]:
    return [part for entry in entries for part in entry.replace(",", " ").split()]


def launch_environment(mode: str, allow: Sequence[str] | None, base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment ``run`` gives the program: *base* (default: ours) with the guard's variables.

    *allow* ``None`` keeps an inherited ``AIOEXCLUSIVE_GUARD_ALLOW``; a list
    replaces it. Raises ``ValueError``/``TypeError`` for a mode or an entry the
    guard would not take, so the mistake is reported here and not, one line on
    stderr, in every process the program starts.
    """
    if mode not in MODES:
        raise ValueError(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    env = dict(os.environ if base is None else base)
    env[ENV_VAR] = mode
    if allow is not None:
        entries = _split_allow(allow)
        _parse_allow(entries)
        env[ENV_ALLOW] = ",".join(entries)
    elif env.get(ENV_ALLOW):
        _parse_allow(_split_allow([env[ENV_ALLOW]]))
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != _BOOTSTRAP_DIR]
    env["PYTHONPATH"] = os.pathsep.join([_BOOTSTRAP_DIR, *paths])
    env[BOOTSTRAP_ROOT_VAR] = os.path.dirname(_PACKAGE_DIR)
    return env


def launch(mode: str, allow: Sequence[str] | None, command: Sequence[str]) -> int:
    """Run *command* guarded; on POSIX this returns only if the program cannot be started.

    Returns the exit status: the program's (Windows), 127 when the command is
    not found, 126 when it cannot be executed, 2 for bad options.
    """
    command = list(command)
    if command[:1] == ["--"]:
        command = command[1:]
    if not command:
        sys.stderr.write("python -m aioexclusive run: no command given (usage: ... run [OPTIONS] -- CMD ARGS...)\n")
        return 2
    try:
        env = launch_environment(mode, allow)
    except (ValueError, TypeError) as exc:
        sys.stderr.write(f"python -m aioexclusive run: {exc}\n")
        return 2
    try:
        if os.name == "nt":
            return _run_child(command, env)
        sys.stdout.flush()
        sys.stderr.flush()
        # exec: the program takes this process over (pid, signals, exit status).
        os.execvpe(command[0], command, env)
    except FileNotFoundError:
        sys.stderr.write(f"python -m aioexclusive run: {command[0]}: command not found\n")
        return 127
    except PermissionError as exc:
        sys.stderr.write(f"python -m aioexclusive run: {command[0]}: {exc.strerror or exc}\n")
        return 126
    except OSError as exc:
        sys.stderr.write(f"python -m aioexclusive run: {command[0]}: {exc}\n")
        return 126
    return 0  # pragma: no cover - execvpe does not return


def _run_child(command: list[str], env: dict[str, str]) -> int:  # pragma: no cover - Windows
    proc = subprocess.Popen(command, env=env)
    while True:
        try:
            return proc.wait()
        except KeyboardInterrupt:
            # The console delivered Ctrl-C to the child too; its exit decides.
            continue
