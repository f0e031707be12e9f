"""``import aioexclusive`` time, in fresh interpreters.

Three commands run in rotating order so drift spreads over all of them:
``python -c pass``, ``python -c "import asyncio"`` and
``python -c "import aioexclusive"``. The figures are wall-clock medians of
whole processes; the differences are what importing costs:

* over ``pass``: everything ``import aioexclusive`` brings in, asyncio included;
* over ``import asyncio``: what an asyncio program pays on top of asyncio.

``-X importtime`` gives a second, per-module view of the latter.
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


def _run(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


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
        if name.lstrip().startswith("aioexclusive"):
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
    over_pass, over_asyncio = [], []
    for i in range(rounds):
        # Rotate the order each round: pass, asyncio, aioexclusive; then
        # asyncio, aioexclusive, pass; ...
        order = names[i % 3 :] + names[: i % 3]
        got = {name: _run(COMMANDS[name], env) for name in order}
        for name in names:
            times[name].append(got[name] * 1e3)
        over_pass.append((got["aioexclusive"] - got["pass"]) * 1e3)
        over_asyncio.append((got["aioexclusive"] - got["asyncio"]) * 1e3)
    cumulative = [_importtime(env).get("aioexclusive", 0) / 1e3 for _ in range(max(3, rounds // 3))]
    return {
        "rounds": rounds,
        "process_ms": times,
        "extra_over_pass_ms": over_pass,
        "extra_over_asyncio_ms": over_asyncio,
        "importtime_cumulative_after_asyncio_ms": cumulative,
        "summary": {
            "extra_over_pass_ms": spread(over_pass),
            "extra_over_asyncio_ms": spread(over_asyncio),
            "importtime_cumulative_after_asyncio_ms": spread(cumulative),
        },
        "target_ms": 15.0,
        "meets_target": statistics.median(over_pass) < 15.0,
    }


def describe(figures: dict[str, Any]) -> str:
    s = figures["summary"]

    def line(key: str, label: str) -> str:
        d = s[key]
        return f"  {label}: median {d['median']:.1f} ms (IQR {d['q1']:.1f}-{d['q3']:.1f}, min-max {d['min']:.1f}-{d['max']:.1f})"

    verdict = "meets" if figures["meets_target"] else "MISSES"
    return "\n".join(
        [
            f"import aioexclusive ({figures['rounds']} rounds of fresh processes; target < 15 ms extra: {verdict})",
            line("extra_over_pass_ms", "extra over `python -c pass` (asyncio included)"),
            line("extra_over_asyncio_ms", "extra over `python -c 'import asyncio'`"),
            line("importtime_cumulative_after_asyncio_ms", "-X importtime, aioexclusive cumulative after asyncio"),
        ]
    )
