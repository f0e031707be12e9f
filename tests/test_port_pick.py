"""Port 0 on one family's wildcard when the other family's side of most ports is busy (Linux).

A listener on ``0.0.0.0`` (or an IPv6-only ``::``) gets the other family's
wildcard held on its port (docs/limits.md). The hold has no ``SO_REUSEADDR``,
so connections in TIME_WAIT on that side of a port refuse it, while the
kernel, asked for a free port by the listener's family, sees nothing wrong
with that port. On a host with many such connections a port-0
``create_server`` the base loop serves failed after its retries. The exclusive
loop now asks the kernel for a port free on the hold's side.

The test re-runs itself in a network namespace it creates, with a narrow
ephemeral port range whose other-family side is bound everywhere but on one
port; the plain base loop serves the same call (the differential control).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from typing import Any

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
if __name__ == "__main__":  # the re-run inside the namespace: helpers as pytest's pythonpath gives them
    sys.path.insert(0, HERE)

from harness import require_own_netns, run_in_own_netns  # noqa: E402

import aioexclusive  # noqa: E402

LOW, HIGH, FREE = 40000, 40999, 40500


def _bases() -> list[str]:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return ["asyncio"]
    return ["asyncio", "uvloop"]


def _new_loop(base: str, exclusive: bool) -> asyncio.AbstractEventLoop:
    if base == "uvloop":
        import uvloop

        return aioexclusive.new_event_loop(base=uvloop.Loop) if exclusive else uvloop.new_event_loop()
    return aioexclusive.new_event_loop() if exclusive else asyncio.new_event_loop()


def _serve(base: str, exclusive: bool, host: str) -> dict[str, Any]:
    loop = _new_loop(base, exclusive)
    try:
        server = loop.run_until_complete(loop.create_server(asyncio.Protocol, host, 0))
    except OSError as exc:
        loop.close()
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        port = server.sockets[0].getsockname()[1]
        other = socket.AF_INET6 if host == "0.0.0.0" else socket.AF_INET
        # Is the other family's side held? A plain bind there must fail.
        with socket.socket(other, socket.SOCK_STREAM) as probe:
            if other == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                probe.bind(("::" if other == socket.AF_INET6 else "0.0.0.0", port))
                held = False
            except OSError:
                held = True
        return {"port": port, "held": held}
    finally:
        server.close()
        loop.run_until_complete(server.wait_closed())
        loop.close()


def _scenarios() -> dict[str, Any]:
    require_own_netns()
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    with open("/proc/sys/net/ipv4/ip_local_port_range", "w") as f:
        f.write(f"{LOW} {HIGH}")
    out: dict[str, Any] = {}
    for host, busy_family in (("0.0.0.0", socket.AF_INET6), ("::", socket.AF_INET)):
        # The other family's side of every port in the range but one is busy.
        busy = []
        for port in range(LOW, HIGH + 1):
            if port == FREE:
                continue
            sock = socket.socket(busy_family, socket.SOCK_STREAM)
            if busy_family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(("::" if busy_family == socket.AF_INET6 else "0.0.0.0", port))
            busy.append(sock)
        try:
            for base in _bases():
                out[f"{base}-{host}-plain"] = _serve(base, False, host)
                out[f"{base}-{host}-exclusive"] = _serve(base, True, host)
        finally:
            for sock in busy:
                sock.close()
    return out


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    result: dict[str, Any] = run_in_own_netns(__file__, "scenarios")
    return result


@pytest.mark.parametrize("host", ["0.0.0.0", "::"])
@pytest.mark.parametrize("base", _bases())
def test_port_zero_finds_a_port_the_hold_fits(results: dict[str, Any], base: str, host: str) -> None:
    # The base loop serves it (any free port of its family will do)...
    assert "port" in results[f"{base}-{host}-plain"], results[f"{base}-{host}-plain"]
    # ...and so does the exclusive loop, on the one port where the other family's side can be held.
    exclusive = results[f"{base}-{host}-exclusive"]
    assert exclusive == {"port": FREE, "held": True}, exclusive


if __name__ == "__main__":
    if sys.argv[1:] == ["scenarios"]:
        print(json.dumps(_scenarios()))
