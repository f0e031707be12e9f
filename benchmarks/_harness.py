"""Shared machinery: the loops compared, the A B B A schedule, statistics, the table.

A *trial* runs one workload once on a fresh loop and returns the elapsed
seconds of its timed part, as CPU time of this process and as wall-clock time.
A *pair* is one plain trial and one exclusive trial run back to back; pairs
alternate which side goes first (A B, B A, A B, ...), so a slow drift in
machine load (other processes on the same CPUs) adds to both sides of a ratio
instead of to one.

The metric is computed from CPU time: server and clients share one loop in one
process, so the process is busy for the whole timed part, and CPU time counts
that work while leaving out the time spent waiting for a CPU that another
process holds, which on a shared machine is most of the noise. The wall-clock
figures are kept beside it (table column and JSON) for comparison.
"""

from __future__ import annotations

import asyncio
import gc
import statistics
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aioexclusive

PLAIN = "plain"
EXCLUSIVE = "exclusive"

# What the exclusive loop is compared with. The stdlib side uses the Selector
# loop on both sides (not "the default loop") so the comparison is the same
# class with and without the mixin on every platform.
BASES = ("asyncio", "uvloop")


def available_bases(wanted: tuple[str, ...] = BASES) -> tuple[list[str], list[str]]:
    """The bases that can run here, and a note for each one that cannot."""
    found, notes = [], []
    for base in wanted:
        if base == "uvloop":
            try:
                import uvloop  # noqa: F401
            except ImportError:
                notes.append("uvloop is not installed: the uvloop base was skipped (pip install uvloop)")
                continue
        found.append(base)
    return found, notes


def loop_factory(base: str, side: str) -> Callable[[], asyncio.AbstractEventLoop]:
    """A function making a new loop of *base*, plain or exclusive."""
    if base == "asyncio":
        if side == PLAIN:
            return asyncio.SelectorEventLoop
        return lambda: aioexclusive.new_event_loop(base="selector")
    if base == "uvloop":
        import uvloop

        if side == PLAIN:
            return uvloop.new_event_loop
        return lambda: aioexclusive.new_event_loop(base="uvloop")
    raise ValueError(f"unknown base {base!r}")


class Stopwatch:
    """CPU and wall-clock seconds between `start` and `stop`."""

    def __init__(self) -> None:
        self._wall = self._cpu = 0.0
        self.seconds = 0.0  # wall clock
        self.cpu = 0.0  # this process, all threads, user + system

    def start(self) -> None:
        self._cpu = time.process_time()
        self._wall = time.perf_counter()

    def stop(self) -> Stopwatch:
        self.seconds = time.perf_counter() - self._wall
        self.cpu = time.process_time() - self._cpu
        return self


Workload = Callable[[asyncio.AbstractEventLoop], Awaitable[Stopwatch]]


def run_trial(base: str, side: str, workload: Workload) -> Stopwatch:
    """Run *workload* on a new loop; return the times it measured."""
    loop = loop_factory(base, side)()
    gc.collect()
    # The collector would run at moments that depend on what the previous
    # trial left behind; keeping it out of the timed part removes that noise
    # from both sides alike.
    gc.disable()
    try:
        return loop.run_until_complete(workload(loop))
    finally:
        gc.enable()
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            loop.close()


def schedule(pairs: int) -> list[tuple[str, str]]:
    """A B, B A, A B, ...: the order of the two sides in each pair."""
    return [(PLAIN, EXCLUSIVE) if i % 2 == 0 else (EXCLUSIVE, PLAIN) for i in range(pairs)]


@dataclass
class Result:
    """Raw figures of one benchmark case on one base, and how to read them.

    ``plain[i]`` and ``exclusive[i]`` are the metric of pair *i*; the metric is
    ``work / seconds`` when *higher_is_better*, else ``seconds / work * scale``.
    """

    bench: str
    case: str
    base: str
    metric: str
    higher_is_better: bool
    target: float | None
    plain: list[float] = field(default_factory=list)
    exclusive: list[float] = field(default_factory=list)
    plain_wall: list[float] = field(default_factory=list)
    exclusive_wall: list[float] = field(default_factory=list)
    order: list[str] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratios(self) -> list[float]:
        return [e / p for p, e in zip(self.plain, self.exclusive) if p]

    @property
    def wall_ratios(self) -> list[float]:
        return [e / p for p, e in zip(self.plain_wall, self.exclusive_wall) if p]

    def meets_target(self) -> bool | None:
        if self.target is None or not self.ratios:
            return None
        ratio = statistics.median(self.ratios)
        return ratio >= self.target if self.higher_is_better else ratio <= self.target

    def to_json(self) -> dict[str, Any]:
        return {
            "bench": self.bench,
            "case": self.case,
            "base": self.base,
            "metric": self.metric,
            "higher_is_better": self.higher_is_better,
            "target": self.target,
            "order": self.order,
            "clock": "process CPU time",
            "plain": self.plain,
            "exclusive": self.exclusive,
            "ratios": self.ratios,
            "plain_wall_clock": self.plain_wall,
            "exclusive_wall_clock": self.exclusive_wall,
            "wall_clock_ratios": self.wall_ratios,
            "summary": {
                "plain": spread(self.plain),
                "exclusive": spread(self.exclusive),
                "ratio": spread(self.ratios),
                "wall_clock_ratio": spread(self.wall_ratios),
            },
            "meets_target": self.meets_target(),
            **({"extra": self.extra} if self.extra else {}),
        }


def spread(values: list[float]) -> dict[str, float]:
    """Median, quartiles and extremes of *values* (quartiles need two values)."""
    if not values:
        return {}
    ordered = sorted(values)
    if len(ordered) >= 2:
        q1, _, q3 = statistics.quantiles(ordered, n=4, method="inclusive")
    else:
        q1 = q3 = ordered[0]
    return {
        "n": len(ordered),
        "median": statistics.median(ordered),
        "q1": q1,
        "q3": q3,
        "min": ordered[0],
        "max": ordered[-1],
    }


def compare(
    result: Result,
    pairs: int,
    workload: Workload,
    work: float,
    *,
    scale: float = 1.0,
    warmup: bool = True,
    control: bool = False,
) -> Result:
    """Fill *result* with *pairs* alternating plain/exclusive trials of *workload*.

    *work* is the amount the workload does (bytes, requests, operations); the
    metric stored is ``work / seconds`` (higher is better) or
    ``seconds * scale / work`` (lower is better), from CPU seconds, and from
    wall-clock seconds beside it.

    With *control*, both sides run the plain loop (an A/A test): the spread of
    its ratios is the noise floor, what a comparison shows when nothing differs.
    Its row is labelled as such and has no target.
    """
    if control:
        result.case += ", A/A control: plain vs plain"
        result.target = None

    def metric(seconds: float) -> float:
        seconds = max(seconds, 1e-9)
        return work / seconds if result.higher_is_better else seconds * scale / work

    if warmup:
        # First use pays for imports, caches and lazily built classes; keep
        # that out of the first pair.
        for side in (PLAIN, EXCLUSIVE):
            run_trial(result.base, PLAIN if control else side, workload)
    for order in schedule(pairs):
        got: dict[str, Stopwatch] = {}
        for side in order:
            got[side] = run_trial(result.base, PLAIN if control else side, workload)
        result.plain.append(metric(got[PLAIN].cpu))
        result.exclusive.append(metric(got[EXCLUSIVE].cpu))
        result.plain_wall.append(metric(got[PLAIN].seconds))
        result.exclusive_wall.append(metric(got[EXCLUSIVE].seconds))
        result.order.append("AB" if order[0] == PLAIN else "BA")
    return result


# -- the table ---------------------------------------------------------------------


def _fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def table(results: list[Result]) -> str:
    """A Markdown table: one row per benchmark case and base."""
    header = (
        "| benchmark | base | plain (median) | exclusive (median) | ratio excl/plain: median | IQR | min-max "
        "| pairs | target | wall-clock ratio: median (IQR) |"
    )
    lines = [header, "|---|---|---:|---:|---:|---|---|---:|---|---|"]
    for r in results:
        ratio = spread(r.ratios)
        wall = spread(r.wall_ratios)
        if not ratio:
            continue
        sign = ">=" if r.higher_is_better else "<="
        target = "" if r.target is None else f"{sign} {r.target:.2f}"
        met = r.meets_target()
        if met is False:
            target += " (missed)"
        name = f"{r.bench} {r.case}".strip()
        lines.append(
            f"| {name} | {r.base} | {_fmt(statistics.median(r.plain))} {r.metric} "
            f"| {_fmt(statistics.median(r.exclusive))} {r.metric} | {ratio['median']:.3f} "
            f"| {ratio['q1']:.3f}-{ratio['q3']:.3f} | {ratio['min']:.3f}-{ratio['max']:.3f} | {ratio['n']} | {target} "
            f"| {wall['median']:.3f} ({wall['q1']:.3f}-{wall['q3']:.3f}) |"
        )
    return "\n".join(lines)
