"""Shared helpers for the test modules (imported as ``harness``).

Kept out of conftest.py: several conftest.py files exist in this tree, and a
test module importing "conftest" would get whichever was imported last.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Coroutine, Iterable
from typing import Any, TypeVar

import pytest

IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0
ON_LINUX = sys.platform.startswith("linux")

try:
    import uvloop  # noqa: F401

    HAVE_UVLOOP = True
except ImportError:
    HAVE_UVLOOP = False

BASES = [
    pytest.param("asyncio", id="asyncio"),
    pytest.param("uvloop", id="uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")),
]


def open_fds() -> set[int]:
    return {int(fd) for fd in os.listdir("/proc/self/fd")}


def ipv6_available() -> bool:
    import socket

    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


HAVE_IPV6 = ipv6_available()
needs_ipv6 = pytest.mark.skipif(not HAVE_IPV6, reason="IPv6 loopback (::1) is not available here")


def port_free_on_both_families() -> int:
    """A TCP port with no socket of either family on it, TIME_WAIT included, as the kernel picks it.

    For a one-family listener the kernel may pick a port number that carries
    TIME_WAIT connections earlier tests left on the *other* family's side (they
    last 60 s). A bind of that family's wildcard without ``SO_REUSEADDR`` fails
    on them: an attacker's prime (a control it must win would lose) and a plain
    hold alike. A dual-stack ``[::]`` bind without options conflicts with every
    socket of both families, so the port the kernel picks for it has none.
    """
    import socket

    with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.bind(("::", 0))
        return int(probe.getsockname()[1])


T = TypeVar("T")


def run(coro: Coroutine[Any, Any, T], base: str = "asyncio", **options: Any) -> T:
    """Run *coro* on a fresh exclusive loop of *base*."""
    import aioexclusive

    return aioexclusive.run(coro, base=base, **options)


def run_plain(coro: Coroutine[Any, Any, T], base: str = "asyncio") -> T:
    """Run *coro* on a plain (non-exclusive) loop of *base*, for control cases."""
    loop: asyncio.AbstractEventLoop
    if base == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


_warmed = False


def warm_up_loops() -> None:
    """Open and close one loop of each base, once per process.

    uvloop's first loop opens process-wide descriptors (libuv's signal pipe)
    that live as long as the process: not a leak, but a descriptor count taken
    before that first loop would report one.
    """
    global _warmed
    if _warmed:
        return
    _warmed = True
    for base in ("asyncio", "uvloop") if HAVE_UVLOOP else ("asyncio",):
        run(asyncio.sleep(0), base)


# -- a network namespace of the test's own ---------------------------------------------------------

# The namespace the suite runs in, handed to a re-run inside a new one: it refuses to touch interfaces
# unless it is somewhere else.
HOST_NETNS_VAR = "AIOEXCLUSIVE_TEST_HOST_NETNS"
_TESTS = os.path.dirname(os.path.abspath(__file__))


def run_in_own_netns(script: str, *args: str, timeout: float = 120) -> Any:
    """Run the test file *script* as a script with *args* under ``unshare --net``; its last line, as JSON.

    For what needs interfaces, routes or sysctls of its own (multicast, veth
    pairs, a port range): never the host's. Skips where that cannot be done
    (not root, no ``unshare``/``ip``, namespaces not permitted).
    """
    import json
    import shutil
    import subprocess

    if not ON_LINUX:
        pytest.skip("network namespaces are Linux's")
    if not IS_ROOT:
        pytest.skip("needs root to create a network namespace")
    for tool in ("unshare", "ip"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    if subprocess.run(["unshare", "--net", "true"], check=False, capture_output=True).returncode != 0:
        pytest.skip("unshare --net is not permitted here")
    path = os.pathsep.join(p for p in (_TESTS, os.path.dirname(_TESTS), os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": path, HOST_NETNS_VAR: os.readlink("/proc/self/ns/net")}
    proc = subprocess.run(
        ["unshare", "--net", sys.executable, os.path.abspath(script), *args],
        check=False,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


# Kernel-picked ports (clients' too) stay at and above this in a namespace of the test's own, so the
# fixed ports its scenarios use below it never meet a client's port in TIME_WAIT.
OWN_NETNS_EPHEMERAL = (50000, 60999)


def require_own_netns() -> None:
    """In the re-run of `run_in_own_netns`: stop unless this is a namespace the test made; then keep
    kernel-picked ports at `OWN_NETNS_EPHEMERAL`."""
    if os.environ.get(HOST_NETNS_VAR) in (None, os.readlink("/proc/self/ns/net")):
        raise SystemExit("refusing to run: not inside a network namespace of the test's own making")
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(" ".join(map(str, OWN_NETNS_EPHEMERAL)))


def end_processes(procs: Iterable[Any]) -> None:
    """Kill what still runs of *procs* (``subprocess.Popen``), wait for each, and close its pipes: also for one
    that exited by itself (a victim that failed to start), whose open pipes would fail a later test with a
    ResourceWarning."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        for pipe in (proc.stdin, proc.stdout, proc.stderr):
            if pipe is not None:
                pipe.close()
