"""The pytest plugin: a generated test project run as a subprocess, with and without the option."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("pytest_asyncio")

from ix_support import HAVE_UVLOOP, PY, child_env  # noqa: E402

import aioexclusive  # noqa: E402

INI = """\
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
{extra}
"""

TESTS = """\
import asyncio
import os

import pytest
import pytest_asyncio

import aioexclusive

EXPECT = os.environ["EXPECT_EXCLUSIVE"] == "1"


def exclusive(loop):
    return isinstance(loop, aioexclusive.ExclusiveLoopMixin)


@pytest_asyncio.fixture
async def fixture_loop():
    return asyncio.get_running_loop()


@pytest.mark.asyncio{marker}
async def test_loop(fixture_loop):
    loop = asyncio.get_running_loop()
    assert loop is fixture_loop
    assert exclusive(loop) is EXPECT, type(loop)
    try:
        server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
    except aioexclusive.ExclusivityError:
        refused = True
    else:
        server.close()
        await server.wait_closed()
        refused = False
    assert refused is EXPECT
    print("LOOP-CLASS", [c.__module__ + "." + c.__name__ for c in type(loop).__mro__])
"""

OWN_HOOK = """\
import asyncio

def pytest_asyncio_loop_factories(config, item):
    return {"mine": asyncio.new_event_loop}
"""


def run_project(
    tmp_path: Path,
    *,
    expect: bool,
    ini: str = "",
    args: tuple[str, ...] = (),
    marker: str = "",
    conftest: str | None = None,
) -> subprocess.CompletedProcess[str]:
    (tmp_path / "pytest.ini").write_text(INI.format(extra=ini))
    (tmp_path / "test_generated.py").write_text(TESTS.format(marker=marker))
    if conftest is not None:
        (tmp_path / "conftest.py").write_text(conftest)
    env = child_env()
    env["EXPECT_EXCLUSIVE"] = "1" if expect else "0"
    return subprocess.run(
        [PY, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:hypothesispytest", "-s", "-q", *args],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def passed(result: subprocess.CompletedProcess[str]) -> bool:
    return result.returncode == 0 and "1 passed" in result.stdout


@pytest.mark.skipif(
    sys.platform == "win32",
    reason="the plain-loop side asks for reuse_port=True, which Windows' asyncio rejects itself",
)
def test_without_the_option_nothing_changes(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=False)
    assert passed(result), result.stdout + result.stderr
    assert "aioexclusive:" not in result.stdout  # no report header either


def test_ini_option(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=True, ini="asyncio_exclusive = true")
    assert passed(result), result.stdout + result.stderr


def test_command_line_flag(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=True, args=("--asyncio-exclusive",))
    assert passed(result), result.stdout + result.stderr


def test_marker_names_the_factory(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=True, ini="asyncio_exclusive = true", marker='(loop_factories=["exclusive"])')
    assert passed(result), result.stdout + result.stderr


@pytest.mark.skipif(
    sys.platform == "win32",
    reason="the plain-loop side asks for reuse_port=True, which Windows' asyncio rejects itself",
)
def test_users_own_hook_wins(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=False, ini="asyncio_exclusive = true", conftest=OWN_HOOK)
    assert passed(result), result.stdout + result.stderr


def test_users_hook_can_offer_ours(tmp_path: Path) -> None:
    conftest = (
        "import aioexclusive.pytest_plugin\n\n"
        "def pytest_asyncio_loop_factories(config, item):\n"
        "    return aioexclusive.pytest_plugin.loop_factories(config)\n"
    )
    result = run_project(tmp_path, expect=True, conftest=conftest, marker='(loop_factories=["exclusive"])')
    assert passed(result), result.stdout + result.stderr


@pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop is not installed")
def test_base_option(tmp_path: Path) -> None:
    ini = "asyncio_exclusive = true\nasyncio_exclusive_base = uvloop"
    result = run_project(tmp_path, expect=True, ini=ini)
    assert passed(result), result.stdout + result.stderr
    assert "uvloop.Loop" in result.stdout


def test_bad_base_is_a_usage_error(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=True, ini="asyncio_exclusive = true\nasyncio_exclusive_base = nope")
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "asyncio_exclusive_base" in result.stderr


def test_option_without_pytest_asyncio_is_a_usage_error(tmp_path: Path) -> None:
    result = run_project(tmp_path, expect=True, ini="asyncio_exclusive = true", args=("-p", "no:asyncio"))
    assert result.returncode == pytest.ExitCode.USAGE_ERROR, result.stdout + result.stderr
    assert "pytest-asyncio" in result.stderr


@pytest.mark.asyncio
async def test_this_suite_runs_on_the_exclusive_loop(request: pytest.FixtureRequest) -> None:
    # The project's own pyproject.toml turns the plugin on.
    if not request.config.pluginmanager.has_plugin("aioexclusive-loop-factories"):
        pytest.skip("asyncio_exclusive is off in this run")
    loop = asyncio.get_running_loop()
    assert isinstance(loop, aioexclusive.ExclusiveLoopMixin)
    with pytest.raises(aioexclusive.ExclusivityError):
        await loop.create_server(asyncio.Protocol, "127.0.0.1", 0, reuse_port=True)
