"""uvicorn (--workers 2) and hypercorn (--workers 2) under the process-wide guard.

Both servers bind their listening socket themselves, in the parent process,
before any event loop exists, so an exclusive loop never sees that bind; the
guard (an audit hook on ``socket.bind``) does. Turned on with one environment
variable, no code change in the servers:

    AIOEXCLUSIVE_GUARD=enforce uvicorn app:app --workers 2
    AIOEXCLUSIVE_GUARD=enforce hypercorn --workers 2 --bind 127.0.0.1:8000 app:app

This script runs each server on a loopback port and, from this (unguarded)
process, plays the attacker: a second socket with ``SO_REUSEPORT`` on the same
address and port, which is how a same-user process shares (and steals from) a
hypercorn listener on Linux. Expected on Linux:

* hypercorn, no guard: the attacker binds (hypercorn sets SO_REUSEPORT for workers > 1);
* hypercorn, AIOEXCLUSIVE_GUARD=raise: hypercorn refuses to start, ExclusivityError;
* hypercorn, AIOEXCLUSIVE_GUARD=enforce: serves, the attacker's bind fails;
* uvicorn, AIOEXCLUSIVE_GUARD=raise: serves (SO_REUSEADDR on a TCP listener is safe
  on POSIX), the attacker fails. On Windows uvicorn's SO_REUSEADDR listener would be
  refused under "raise" and made exclusive under "enforce".

The environment variable works through ``aioexclusive_guard.pth``, which the
wheel installs into site-packages. If this interpreter does not have it (the
package imported from a checkout, not installed), the servers are started
through a two-line launcher doing what the .pth does; the script says which.

Run: ``python examples/guard_uvicorn_hypercorn.py`` (needs uvicorn and hypercorn). Exit 0 = all as expected.
Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

APP = """
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": b"hello from a guarded server"})
"""

LAUNCHER = (
    "import runpy, sys; from aioexclusive._guard import activate_from_environment; activate_from_environment(); "
    "sys.argv[0] = sys.argv[1]; del sys.argv[1]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)


def pth_active() -> bool:
    """Does AIOEXCLUSIVE_GUARD reach a fresh interpreter through the installed .pth?"""
    probe = "import sys; print('aioexclusive._guard' in sys.modules)"
    env = dict(os.environ, AIOEXCLUSIVE_GUARD="off")
    out = subprocess.run(
        [sys.executable, "-c", probe], check=False, capture_output=True, text=True, env=env, cwd=tempfile.gettempdir()
    )
    return out.stdout.strip() == "True"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def attacker_binds(port: int) -> bool:
    """Can an unguarded process of the same user co-bind the server's port with SO_REUSEPORT?"""
    if not hasattr(socket, "SO_REUSEPORT"):
        return False
    s = socket.socket()
    try:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        s.bind(("127.0.0.1", port))
        s.listen(8)
        return True
    except OSError:
        return False
    finally:
        s.close()


def serves(port: int, proc: subprocess.Popen[str], timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as response:
                return response.status == 200
        except OSError:
            time.sleep(0.3)
    return False


def run_server(server: str, mode: str | None, workdir: Path, use_pth: bool) -> tuple[bool, bool, str]:
    """(served, attacker_bound, output) for one server under one guard mode (None: no guard)."""
    port = free_port()
    if server == "uvicorn":
        args = ["uvicorn", "guard_app:app", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"]
    else:
        args = ["hypercorn", "--workers", "2", "--bind", f"127.0.0.1:{port}", "guard_app:app"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_GUARD")}
    if mode is not None:
        env["AIOEXCLUSIVE_GUARD"] = mode
    command = [sys.executable, "-m", *args] if use_pth else [sys.executable, "-c", LAUNCHER, *args]
    proc = subprocess.Popen(command, cwd=workdir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        served = serves(port, proc)
        stolen = attacker_binds(port) if served else False
    finally:
        proc.terminate()
        try:
            output, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            output, _ = proc.communicate()
    return served, stolen, output


def main() -> int:
    use_pth = pth_active()
    print(
        "AIOEXCLUSIVE_GUARD reaches new interpreters through the installed aioexclusive_guard.pth"
        if use_pth
        else "no aioexclusive_guard.pth in this interpreter's site-packages: starting servers through a launcher "
        "that does what the .pth does"
    )
    linux_like = sys.platform != "win32"
    cases = [
        # server, mode, expect served, expect attacker bound, expect text in output
        ("hypercorn", None, True, linux_like, None),
        ("hypercorn", "raise", False, False, "ExclusivityError"),
        ("hypercorn", "enforce", True, False, None),
        ("uvicorn", "raise" if linux_like else "enforce", True, False, None),
    ]
    ok = True
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        (workdir / "guard_app.py").write_text(APP, encoding="utf-8")
        for server, mode, want_served, want_stolen, want_text in cases:
            served, stolen, output = run_server(server, mode, workdir, use_pth)
            good = served == want_served and stolen == want_stolen and (want_text is None or want_text in output)
            ok &= good
            label = f"{server} --workers 2, AIOEXCLUSIVE_GUARD={mode or '(unset)'}"
            print(f"{'ok ' if good else 'BAD'} {label:45} served={served!s:5} attacker bound={stolen!s:5}")
            if want_text and want_text in output:
                line = [line for line in output.splitlines() if want_text in line][-1]
                print(f"      {line.strip()[:200]}")
            if not good:
                print(output[-3000:])
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
