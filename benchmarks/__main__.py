"""``python -m benchmarks [--quick] [--json PATH] [--only NAME ...] [--bases NAME ...]``.

Prints a table of ratios exclusive / plain (median, interquartile range and
extremes over the alternating pairs) and, with ``--json``, writes every raw
figure. It never fails because of a timing: targets are reported, not asserted.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from typing import Any

from . import bind, imports, tcp, udp
from ._harness import EXCLUSIVE, PLAIN, Result, available_bases, table


@dataclass(frozen=True)
class Mode:
    pairs: int  # alternating plain/exclusive pairs per data-path and bind case
    stream_bytes: int
    connections: int
    requests_per_connection: int
    udp_clients: int
    udp_round_trips: int
    server_iterations: int
    endpoint_counts: tuple[int, ...]
    endpoint_pairs: int
    import_rounds: int
    control: bool = False  # add A/A (plain vs plain) rows for request rate and UDP per base


# Quick: every benchmark runs (so CI notices when one breaks) with few pairs;
# about 20 s of CPU, under a minute even on a busy machine.
QUICK = Mode(
    pairs=3,
    stream_bytes=8 << 20,
    connections=32,
    requests_per_connection=40,
    udp_clients=4,
    udp_round_trips=300,
    server_iterations=40,
    endpoint_counts=(1000, 5000, 10000),
    endpoint_pairs=1,
    import_rounds=4,
)
FULL = Mode(
    pairs=32,
    stream_bytes=32 << 20,
    connections=64,
    requests_per_connection=100,
    udp_clients=8,
    udp_round_trips=1000,
    server_iterations=100,
    endpoint_counts=(1000, 5000, 10000),
    endpoint_pairs=4,
    import_rounds=30,
    control=True,
)

BENCHMARKS = ("throughput", "requests", "udp", "create_server", "endpoints", "import", "guard")


def raise_fd_limit(needed: int) -> tuple[str | None, dict[str, Any]]:
    """Raise the soft RLIMIT_NOFILE towards *needed*; a note if that is not possible."""
    try:
        import resource
    except ImportError:  # Windows: no such limit on sockets
        return None, {}
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    info: dict[str, Any] = {"soft_before": soft, "hard": hard}
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            info["error"] = str(exc)
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    info["soft"] = soft
    if soft != resource.RLIM_INFINITY and soft < needed:
        return (
            f"RLIMIT_NOFILE soft limit is {soft} (hard {hard}); {needed} is needed for the largest endpoint "
            "count, so counts that do not fit were skipped"
        ), info
    return None, info


def growth(results: list[Result]) -> list[str]:
    """Per-endpoint cost at the largest count over the smallest, per base and side: 1.0 is linear."""
    lines = []
    by_base: dict[str, list[Result]] = {}
    for r in results:
        if r.bench == "UDP endpoints open":
            by_base.setdefault(r.base, []).append(r)
    for base, rows in by_base.items():
        rows.sort(key=lambda r: r.extra["count"])
        if len(rows) < 2:
            continue
        small, large = rows[0], rows[-1]
        parts = []
        for side in (PLAIN, EXCLUSIVE):
            factor = statistics.median(getattr(large, side)) / statistics.median(getattr(small, side))
            parts.append(f"{side} {factor:.2f}")
            large.extra[f"growth_{side}"] = factor
        lines.append(
            f"  {base}: per-endpoint cost at {large.extra['count']:,} / at {small.extra['count']:,} "
            f"endpoints: {', '.join(parts)} (1.00 = linear)"
        )
        within = large.extra.get("within_run_growth")
        if within:
            lines.append(
                f"  {base}: within each {large.extra['count']:,}-endpoint run, last third / first third of the "
                f"blocks: {', '.join(f'{side} {value:.2f}' for side, value in within.items())} (1.00 = linear)"
            )
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="The plain base loop against the exclusive loop on the same base (stdlib and uvloop), "
        "in alternating pairs: ratios exclusive / plain with their spread. Loopback only; nothing is asserted.",
    )
    parser.add_argument("--quick", action="store_true", help="fewer and shorter repetitions (under a minute)")
    parser.add_argument("--json", metavar="PATH", help="write the raw figures here")
    parser.add_argument("--only", nargs="+", choices=BENCHMARKS, help="run only these benchmarks")
    parser.add_argument("--bases", nargs="+", choices=("asyncio", "uvloop"), default=["asyncio", "uvloop"])
    parser.add_argument("--pairs", type=int, help="alternating pairs per case (overrides the mode)")
    args = parser.parse_args(argv)
    mode = QUICK if args.quick else FULL
    if args.pairs is not None:
        if args.pairs < 1:
            parser.error("--pairs must be at least 1")
        mode = Mode(**{**mode.__dict__, "pairs": args.pairs, "endpoint_pairs": args.pairs})
    selected = args.only or list(BENCHMARKS)

    bases, notes = available_bases(tuple(args.bases))
    started = time.time()
    results: list[Result] = []
    meta: dict[str, Any] = {
        "mode": "quick" if args.quick else "full",
        "python": sys.version,
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "load_average_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "bases": bases,
        "settings": mode.__dict__,
    }
    try:
        import uvloop

        meta["uvloop"] = getattr(uvloop, "__version__", "unknown")
    except ImportError:
        meta["uvloop"] = None

    def step(label: str) -> None:
        print(f"[{time.time() - started:6.1f}s] {label}", file=sys.stderr, flush=True)

    same_transports: dict[str, Any] = {}
    for base in bases:
        if set(selected) - {"import", "guard"}:
            classes = tcp.transport_classes(base)
            same_transports[base] = {"same": classes[PLAIN] == classes[EXCLUSIVE], **classes}
        if "throughput" in selected:
            step(f"{base}: TCP echo throughput")
            results.append(tcp.throughput(base, mode.pairs, total=mode.stream_bytes))
        # With mode.control, each data-path case runs a second time as its A/A control.
        controls = (False, True) if mode.control else (False,)
        if "requests" in selected:
            for control in controls:
                step(f"{base}: TCP request rate" + (", A/A control" if control else ""))
                results.append(
                    tcp.request_rate(
                        base,
                        mode.pairs,
                        connections=mode.connections,
                        per_connection=mode.requests_per_connection,
                        control=control,
                    )
                )
        if "udp" in selected:
            for control in controls:
                step(f"{base}: UDP ping-pong" + (", A/A control" if control else ""))
                results.append(
                    udp.ping_pong(
                        base, mode.pairs, clients=mode.udp_clients, per_client=mode.udp_round_trips, control=control
                    )
                )
        if "create_server" in selected:
            step(f"{base}: create_server + close")
            results.append(
                bind.create_server_latency(
                    base, mode.pairs, host="127.0.0.1", label="(127.0.0.1)", iterations=mode.server_iterations
                )
            )
            if bind.ipv6_loopback():
                host, how = bind.two_address_host()
                meta["two_address_host"] = how
                results.append(
                    bind.create_server_latency(
                        base, mode.pairs, host=host, label="(2 addresses)", iterations=mode.server_iterations
                    )
                )
                results.append(
                    bind.create_server_latency(
                        base,
                        mode.pairs,
                        host=None,
                        label="(host=None: 0.0.0.0 and ::)",
                        iterations=mode.server_iterations,
                        target=None,
                    )
                )
            else:
                note = "no IPv6 loopback here: the two-address create_server case was skipped"
                if note not in notes:
                    notes.append(note)
        if "endpoints" in selected:
            fd_note, meta["rlimit_nofile"] = raise_fd_limit(max(mode.endpoint_counts) + 256)
            if fd_note and fd_note not in notes:
                notes.append(fd_note)
            limit = meta["rlimit_nofile"].get("soft")
            for i, count in enumerate(mode.endpoint_counts):
                if isinstance(limit, int) and limit >= 0 and count + 256 > limit:
                    skipped = f"{base}: {count:,} UDP endpoints skipped (RLIMIT_NOFILE soft limit {limit})"
                    notes.append(skipped)
                    continue
                step(f"{base}: open {count:,} UDP endpoints")
                results.append(udp.open_endpoints(base, mode.endpoint_pairs, count, warmup=i == 0))

    import_figures = None
    if "import" in selected:
        step("import time")
        import_figures = imports.import_time(mode.import_rounds)
    guard_figures = None
    if "guard" in selected:
        # The process-wide guard's own benchmark (benchmarks/guard_overhead.py,
        # kept by the guard's authors): run when it is there.
        try:
            from . import guard_overhead
        except ImportError:
            notes.append("benchmarks/guard_overhead.py is not there: the guard overhead was not measured")
        else:
            step("guard overhead")
            guard_figures = guard_overhead.run(quick=args.quick)
    meta["transport_classes"] = same_transports
    meta["seconds"] = round(time.time() - started, 1)
    meta["load_average_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    if results:
        print()
        print(table(results))
    for base, found in same_transports.items():
        verdict = "the same classes" if found["same"] else "DIFFERENT classes"
        print(
            f"{base}: server, accepted, client and UDP transports of the exclusive loop are {verdict} "
            f"as the plain loop's ({', '.join(name.rsplit('.', 1)[-1] for name in found[EXCLUSIVE])})"
        )
    growth_lines = growth(results)
    if growth_lines:
        print("\nUDP endpoints, growth of the per-endpoint cost (target: linear):")
        print("\n".join(growth_lines))
    if import_figures is not None:
        print()
        print(imports.describe(import_figures))
    if guard_figures is not None:
        print()
        print(guard_overhead.format_table(guard_figures))
    for note in notes:
        print(f"note: {note}")
    if "two_address_host" in meta:
        print(f"note: the two-address create_server case used host={meta['two_address_host']}")
    print(
        f"\n{meta['mode']} run, {meta['seconds']} s, load average {meta['load_average_start']} -> "
        f"{meta['load_average_end']}; ratio = exclusive / plain of each adjacent pair"
    )

    if args.json:
        payload = {
            "meta": meta,
            "notes": notes,
            "results": [r.to_json() for r in results],
            "import": import_figures,
            "guard": guard_figures,
        }
        with open(args.json, "w", encoding="utf-8") as out:
            json.dump(payload, out, indent=2)
            out.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
