"""``import aioexclusive`` time, in fresh interpreters.

Three commands run in rotating order so drift spreads over all of them:
``python -c pass``, ``python -c "import asyncio"`` and
``python -c "import aioexclusive"``. Each process is timed by the CPU time it
used (user + system, from ``getrusage(RUSAGE_CHILDREN)``; on a shared machine
wall-clock time mostly measures waiting for a CPU) and by wall-clock time.
The differences are what importing costs:

* over ``pass``: everything ``import aioexclusive`` brings in, asyncio included;
* over ``import asyncio``: what an asyncio program pays on top of asyncio.

``-X importtime`` gives a second, per-module view of the latter, and it is
the figure held against the target (< 15 ms): aioexclusive cannot be used
without asyncio, so what adopting it adds to a program is its cost on top of
asyncio, and ``-X importtime`` measures that inside one process, free of the
noise of comparing whole processes. The figure over ``pass`` is reported too;
on a slow or busy machine asyncio alone exceeds 15 ms there.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from typing import Any

from ._harness import spread

COMMANDS = {
    "pass": "pass",
    "asyncio": "import asyncio",
    "aioexclusive": "import aioexclusive",
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # Users import from compiled bytecode; a CI setting that forbids writing
    # it would make every run compile the package from source.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def _children_cpu() -> float:
    try:
        import resource
    except ImportError:  # Windows: fall back to wall-clock time
        return time.perf_counter()
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _run(code: str, env: dict[str, str]) -> tuple[float, float]:
    """CPU and wall-clock seconds of one fresh interpreter running *code*."""
    cpu, wall = _children_cpu(), time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return _children_cpu() - cpu, time.perf_counter() - wall


def _importtime(env: dict[str, str]) -> dict[str, int]:
    """Cumulative microseconds of aioexclusive's modules when asyncio is already imported."""
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "import asyncio; import aioexclusive"],
        env=env,
        check=True,
        capture_output=True,
        text=True,
    )
    cumulative: dict[str, int] = {}
    for line in proc.stderr.splitlines():
        # "import time:       self [us] |  cumulative | imported package"
        parts = line.split("|")
        if len(parts) != 3 or not parts[0].startswith("import time:"):
            continue
        name = parts[2].strip()
        if name.startswith("aioexclusive") or name == "asyncio":
            try:
                cumulative[name] = int(parts[1].strip())
            except ValueError:
                continue
    return cumulative


def import_time(rounds: int) -> dict[str, Any]:
    """Run the three commands *rounds* times each; return the raw figures and their differences (ms)."""
    env = _env()
    names = list(COMMANDS)
    for name in names:  # warm-up: caches, bytecode
        _run(COMMANDS[name], env)
    times: dict[str, list[float]] = {name: [] for name in names}
    wall: dict[str, list[float]] = {name: [] for name in names}
    over_pass, over_asyncio, wall_over_pass, wall_over_asyncio = [], [], [], []
    for i in range(rounds):
        # Rotate the order each round: pass, asyncio, aioexclusive; then
        # asyncio, aioexclusive, pass; ...
        order = names[i % 3 :] + names[: i % 3]
        got = {name: _run(COMMANDS[name], env) for name in order}
        for name in names:
            times[name].append(got[name][0] * 1e3)
            wall[name].append(got[name][1] * 1e3)
        over_pass.append((got["aioexclusive"][0] - got["pass"][0]) * 1e3)
        over_asyncio.append((got["aioexclusive"][0] - got["asyncio"][0]) * 1e3)
        wall_over_pass.append((got["aioexclusive"][1] - got["pass"][1]) * 1e3)
        wall_over_asyncio.append((got["aioexclusive"][1] - got["asyncio"][1]) * 1e3)
    runs = [_importtime(env) for _ in range(max(3, rounds // 3))]
    cumulative = [run["aioexclusive"] / 1e3 for run in runs if "aioexclusive" in run]
    # The same figure as a share of asyncio's own import in the same process:
    # it carries over to other machines better than milliseconds do (a slow or
    # busy machine slows both alike).
    share = [run["aioexclusive"] / run["asyncio"] for run in runs if run.get("asyncio") and "aioexclusive" in run]
    return {
        "rounds": rounds,
        "clock": "child process CPU time (user + system); wall-clock figures beside",
        "process_cpu_ms": times,
        "process_wall_ms": wall,
        "extra_over_pass_ms": over_pass,
        "extra_over_asyncio_ms": over_asyncio,
        "wall_extra_over_pass_ms": wall_over_pass,
        "wall_extra_over_asyncio_ms": wall_over_asyncio,
        "importtime_cumulative_after_asyncio_ms": cumulative,
        "importtime_share_of_asyncio": share,
        "summary": {
            "process_cpu_ms": {name: spread(values) for name, values in times.items()},
            "extra_over_pass_ms": spread(over_pass),
            "extra_over_asyncio_ms": spread(over_asyncio),
            "wall_extra_over_pass_ms": spread(wall_over_pass),
            "wall_extra_over_asyncio_ms": spread(wall_over_asyncio),
            "importtime_cumulative_after_asyncio_ms": spread(cumulative),
            "importtime_share_of_asyncio": spread(share),
        },
        "target_ms": 15.0,
        "target_on": "importtime_cumulative_after_asyncio_ms",
        "meets_target": statistics.median(cumulative) < 15.0 if cumulative else None,
    }


def describe(figures: dict[str, Any]) -> str:
    s = figures["summary"]

    def line(key: str, label: str) -> str:
        d = s[key]
        if not d:
            return f"  {label}: not measured (no -X importtime line for aioexclusive)"
        return f"  {label}: median {d['median']:.1f} ms (IQR {d['q1']:.1f}-{d['q3']:.1f}, min-max {d['min']:.1f}-{d['max']:.1f})"

    verdict = {True: "meets", False: "MISSES", None: "not measured"}[figures["meets_target"]]
    return "\n".join(
        [
            f"import aioexclusive ({figures['rounds']} rounds of fresh processes; "
            f"target < 15 ms on top of asyncio, by -X importtime: {verdict})",
            line("extra_over_pass_ms", "CPU, extra over `python -c pass` (asyncio included)"),
            line("extra_over_asyncio_ms", "CPU, extra over `python -c 'import asyncio'`"),
            line("wall_extra_over_pass_ms", "wall clock, extra over `python -c pass`"),
            line("wall_extra_over_asyncio_ms", "wall clock, extra over `python -c 'import asyncio'`"),
            line("importtime_cumulative_after_asyncio_ms", "-X importtime, aioexclusive cumulative after asyncio"),
            (
                f"  that is {s['importtime_share_of_asyncio']['median']:.0%} of what `import asyncio` costs in the same "
                "processes (-X importtime); the share should hold roughly on other machines"
                if s["importtime_share_of_asyncio"]
                else "  (no -X importtime figure for asyncio)"
            ),
            "  (`python -c pass` itself: CPU median "
            f"{s['process_cpu_ms']['pass']['median']:.1f} ms; `import asyncio` alone adds "
            f"{s['process_cpu_ms']['asyncio']['median'] - s['process_cpu_ms']['pass']['median']:.1f} ms)",
        ]
    )
