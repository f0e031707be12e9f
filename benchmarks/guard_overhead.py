"""What the process-wide guard (`aioexclusive.guard`) costs.

The guard is an audit hook, so it costs something in two places:

* every audit event of the process (imports, ``open``, ``exec``, ``socket.__new__``...),
  where the hook only compares the event name and returns;
* every ``socket.bind``, where it reads the socket's options and checks them
  against the bind plan (and, in ``enforce`` mode, fixes a shareable socket).

Audit hooks cannot be removed, so the two sides run in separate child
interpreters: an unguarded one and one with ``guard("enforce")``, in the order
A B B A A B ... so that drift in machine load hits both alike; each child times
its own loops (interpreter start-up is not part of any figure). Reported per
operation: the median of each side, the overhead in nanoseconds and the ratio
guarded / plain of each adjacent pair. Nothing is asserted.

Standalone: ``python benchmarks/guard_overhead.py [--quick]``; from the runner:
``guard_overhead.run(quick=True)`` returns a JSON-ready dict.
"""

from __future__ import annotations

import json
import os
import socket
import statistics
import subprocess
import sys
from typing import Any

# Timed inside the child. Each case is a loop of one operation; the bind cases
# use a fixed port (a port 0 bind is timed as a case of its own: the guard
# checks it like any other, since the picked port is public once bound) and close the socket each time,
# which without a listen() or a connection leaves nothing in TIME_WAIT.
_CHILD = r"""
import json, socket, sys, time
mode, iterations, port = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
if mode != "plain":
    import aioexclusive
    aioexclusive.guard(mode)
else:
    import aioexclusive  # same imports on both sides

def repick():
    # The machine is shared: another process may take "our" port between two
    # iterations. Move to a fresh one rather than fail (rare; costs one bind).
    global port
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

def bind_plain_tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        repick()
    s.close()

def bind_shareable_udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        s.bind(("127.0.0.1", port))
    except OSError:
        repick()
    s.close()

def bind_port0_tcp():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    s.close()

sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sink.bind(("127.0.0.1", 0))
sink.setblocking(False)
target = sink.getsockname()
def sendto_datagram():
    # socket.sendto raises an audit event for every datagram: the data-path
    # cost of any audit hook for UDP servers (asyncio's transports use it).
    sender.sendto(b"x", target)
    try:
        sink.recv(16)
    except BlockingIOError:
        pass

audit = sys.audit
def other_event():
    audit("benchmark.other.event", 1)

cases = {
    "bind, exclusive TCP socket (checked, nothing to do)": bind_plain_tcp,
    "bind, shareable UDP socket (enforce clears SO_REUSEADDR)": bind_shareable_udp,
    "bind, port 0 (checked like any port)": bind_port0_tcp,
    "UDP sendto + recv on loopback (one audit event)": sendto_datagram,
    "any other audit event (sys.audit)": other_event,
}
out = {}
for name, op in cases.items():
    n = iterations * (20 if name.startswith("any other") else 1)
    for _ in range(min(n, 200)):
        op()  # warm up
    start = time.perf_counter_ns()
    for _ in range(n):
        op()
    out[name] = (time.perf_counter_ns() - start) / n
if mode != "plain":
    # The hook's own work, called directly: no system call of bind() around it,
    # so this figure is not drowned in the noise of a busy machine's syscalls.
    from aioexclusive import _guard
    probe = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    direct = {
        "hook alone, bind of an exclusive TCP socket": lambda: _guard._hook("socket.bind", (probe, ("127.0.0.1", port))),
        "hook alone, any other event": lambda: _guard._hook("open", ("f", "r", 0)),
        # Every datagram a socket sends raises socket.sendto: the guard judges
        # only unbound sockets (implicit binds), which costs one getsockname.
        "hook alone, sendto of a bound UDP socket": lambda: _guard._hook("socket.sendto", (sender, target)),
    }
    for name, op in direct.items():
        n = iterations * 20
        start = time.perf_counter_ns()
        for _ in range(n):
            op()
        out[name] = (time.perf_counter_ns() - start) / n
    probe.close()
sender.close()
sink.close()
print(json.dumps(out))
"""


def _free_port() -> int:
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind(("127.0.0.1", 0))
            port = int(tcp.getsockname()[1])
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind(("127.0.0.1", port))
                except OSError:
                    continue
        return port
    raise RuntimeError("no port free for both TCP and UDP on 127.0.0.1")


def _child(mode: str, iterations: int, port: int) -> dict[str, float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_GUARD")}
    proc = subprocess.run(  # noqa: PLW1510 - the return code is checked
        [sys.executable, "-c", _CHILD, mode, str(iterations), str(port)],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"guard benchmark child ({mode}) failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def run(quick: bool) -> dict[str, Any]:
    """Time the guard against no guard; ``quick`` for CI (a few seconds)."""
    pairs, iterations = (3, 2000) if quick else (9, 20000)
    port = _free_port()
    plain: list[dict[str, float]] = []
    guarded: list[dict[str, float]] = []
    for i in range(pairs):
        order = ("plain", "enforce") if i % 2 == 0 else ("enforce", "plain")
        for mode in order:
            (plain if mode == "plain" else guarded).append(_child(mode, iterations, port))
    cases: dict[str, Any] = {}
    for name in guarded[0]:
        b = [run_[name] for run_ in guarded]
        if name not in plain[0]:
            cases[name] = {"guarded_ns": round(statistics.median(b), 1)}
            continue
        a = [run_[name] for run_ in plain]
        ratios = [g / p for p, g in zip(a, b)]
        cases[name] = {
            "plain_ns": round(statistics.median(a), 1),
            "guarded_ns": round(statistics.median(b), 1),
            "overhead_ns": round(statistics.median(b) - statistics.median(a), 1),
            "ratio_median": round(statistics.median(ratios), 3),
            "ratio_min": round(min(ratios), 3),
            "ratio_max": round(max(ratios), 3),
        }
    return {
        "name": "guard_overhead",
        "what": "ns per operation, unguarded child vs guard('enforce') child, alternating pairs",
        "python": sys.version.split()[0],
        "platform": sys.platform,
        "pairs": pairs,
        "iterations": iterations,
        "cases": cases,
    }


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"guard overhead ({result['python']}, {result['platform']}, {result['pairs']} pairs x {result['iterations']})"
    ]
    lines.append(f"{'case':60} {'plain ns':>9} {'guarded':>9} {'+ns':>7} {'ratio':>6} {'(min-max)':>13}")
    for name, c in result["cases"].items():
        if "plain_ns" not in c:
            lines.append(f"{name:60} {'':9} {c['guarded_ns']:9.0f}")
            continue
        lines.append(
            f"{name:60} {c['plain_ns']:9.0f} {c['guarded_ns']:9.0f} {c['overhead_ns']:7.0f} "
            f"{c['ratio_median']:6.2f} ({c['ratio_min']:.2f}-{c['ratio_max']:.2f})"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    print(format_table(run(quick="--quick" in sys.argv[1:])))
