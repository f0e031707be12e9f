"""The core examples run, and say what they should."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from harness import HAVE_UVLOOP

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.skipif(sys.platform == "win32", reason="the thief uses SO_REUSEPORT, which Windows lacks")
@pytest.mark.parametrize(
    "base", ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="no uvloop"))]
)
def test_echo_server_example(base: str) -> None:
    out = subprocess.run(
        [sys.executable, str(EXAMPLES / "echo_server.py"), base], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert "thief on TCP port: refused" in out.stdout
    assert "thief on UDP port: refused" in out.stdout
    assert "HIJACKED" not in out.stdout
    assert "TCP echo: hello over TCP" in out.stdout
