"""Run CPython's own asyncio tests with the exclusive loop swapped in (issue 13).

    python tests/cpython_asyncio/run.py [--plain] [--list-failures] [unittest args...]

The interpreter's ``test`` package (test.test_asyncio) must be installed; the
pyenv CPythons have it, many distribution builds do not (then this exits 0
with a note, or 1 with --require). Every loop those tests make through
``asyncio.SelectorEventLoop`` / ``asyncio.new_event_loop()`` is the exclusive
subclass of the selector loop. Tests that cannot apply are skipped with the
reason from ``skips.txt`` (one ``test id  # reason`` per line); every other
failure is a difference to fix or to document as a refusal.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import os
import sys
import unittest
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
# The package from this tree, also for an interpreter it is not installed in.
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
MODULES = [
    "test_events",
    "test_server",
    "test_streams",
    "test_sock_lowlevel",
    "test_sendfile",
    "test_unix_events",
    "test_base_events",
]


def read_skips(path: str) -> dict[str, str]:
    """``{test id or id prefix: reason}`` from the skip list."""
    skips: dict[str, str] = {}
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            test_id, _, reason = line.partition("#")
            test_id = test_id.strip()
            reason = reason.strip()
            if not reason:
                raise SystemExit(f"skips.txt: {test_id} has no reason")
            skips[test_id] = reason
    return skips


def swap_in_exclusive_loop() -> type:
    """Make every selector loop the tests build an exclusive one."""
    from aioexclusive.lowlevel import exclusive_loop_class

    base = asyncio.SelectorEventLoop
    exclusive = exclusive_loop_class(base)
    asyncio.SelectorEventLoop = exclusive
    if sys.platform != "win32":
        import asyncio.unix_events as unix_events

        unix_events.SelectorEventLoop = exclusive
        unix_events.DefaultEventLoopPolicy._loop_factory = exclusive  # type: ignore[attr-defined]
    return exclusive


def apply_skips(suite: unittest.TestSuite, skips: dict[str, str], used: set[str]) -> None:
    for test in suite:
        if isinstance(test, unittest.TestSuite):
            apply_skips(test, skips, used)
            continue
        test_id = test.id().removeprefix("test.test_asyncio.")
        for key, reason in skips.items():
            if test_id == key or test_id.startswith(key + "."):
                used.add(key)
                method = getattr(test, test._testMethodName)
                setattr(test, test._testMethodName, unittest.skip(f"aioexclusive: {reason}")(method))
                break


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--plain", action="store_true", help="run on the plain loop (the baseline)")
    parser.add_argument("--require", action="store_true", help="fail when the test package is missing")
    parser.add_argument("modules", nargs="*", help="test_asyncio modules (default: the issue's seven)")
    args = parser.parse_args()
    try:
        # By name: CPython's own test package, which distribution builds often leave out (no stubs either).
        importlib.import_module("test.test_asyncio")
        support: Any = importlib.import_module("test.support")
    except ImportError:
        print("this Python has no test.test_asyncio package; nothing to run")
        return 1 if args.require else 0
    if not args.plain:
        loop_class = swap_in_exclusive_loop()
        print(f"loops: {loop_class.__module__}.{loop_class.__qualname__}")
    # No network beyond loopback here, as in CPython's own default run.
    support.use_resources = []
    skips = {} if args.plain else read_skips(os.path.join(HERE, "skips.txt"))
    loader = unittest.TestLoader()
    names = [f"test.test_asyncio.{name}" for name in (args.modules or MODULES)]
    suite = loader.loadTestsFromNames(names)
    used: set[str] = set()
    apply_skips(suite, skips, used)
    stale = sorted(set(skips) - used)
    runner = unittest.TextTestRunner(verbosity=1, stream=sys.stdout)
    result = runner.run(suite)
    if stale and not args.modules:
        # A skip that matches nothing is checked by Python version: tests come and go.
        print("skip list entries matching no test on this Python:", *stale, sep="\n  ")
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
