"""python-zeroconf (mDNS) under AIOEXCLUSIVE_GUARD: its port stays shared, as mDNS needs, and only that port.

mDNS responders bind the wildcard on 5353 with SO_REUSEADDR + SO_REUSEPORT and
join the group afterwards; at the bind that looks like any unicast server, so
the guard would refuse (raise) or strip (enforce) the sharing and a second
responder (avahi, another program) could not start. The guard's post-import
hook allows '*:5353' once zeroconf is imported. Multicast runs only inside a
network namespace the test creates.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="network namespaces: Linux"),
    pytest.mark.skipif(os.name != "posix" or os.geteuid() != 0, reason="unshare --net needs root"),
    pytest.mark.skipif(not (shutil.which("unshare") and shutil.which("ip")), reason="needs unshare and ip"),
]
pytest.importorskip("zeroconf")

from ix_support import HERE, PY, child_env  # noqa: E402

SCRIPT = os.path.join(HERE, "ix_zeroconf_pair.py")


def run_in_namespace(mode: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in child_env().items() if not k.startswith("AIOEXCLUSIVE_GUARD")}
    if mode:
        env["AIOEXCLUSIVE_GUARD"] = mode
    # A private network namespace: only its own loopback, multicast on, nothing leaves the machine.
    command = f"ip link set lo up && ip link set lo multicast on && exec {PY} {SCRIPT}"
    return subprocess.run(
        ["unshare", "--net", "sh", "-c", command], env=env, capture_output=True, text=True, timeout=120, cwd=HERE
    )


@pytest.mark.parametrize(("mode", "other"), [("raise", "OTHER refused"), ("enforce", "OTHER REUSEADDR 0")])
def test_two_responders_share_5353_and_nothing_else(mode: str, other: str) -> None:
    result = run_in_namespace(mode)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BOUND 2" in result.stdout
    assert other in result.stdout, result.stdout  # the guard still judges every other port
    assert "'*:5353'" in result.stderr  # said once, on stderr


def test_control_unguarded_responders_share_the_port() -> None:
    result = run_in_namespace(None)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "BOUND 2" in result.stdout and "OTHER REUSEADDR 1" in result.stdout
