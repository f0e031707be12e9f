"""aioexclusive._import_hooks: the post-import hooks AIOEXCLUSIVE_GUARD installs (mechanism only; the servers
have their own tests in tests/integrations). Each case runs in a fresh interpreter: the hooks stay for the
life of a process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(code: str, tmp_path: object, mode: str | None = "warn") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIOEXCLUSIVE_")}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), ROOT])
    if mode:
        env["AIOEXCLUSIVE_GUARD"] = mode
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], env=env, capture_output=True, text=True, timeout=120
    )


# A stand-in library, hooked under a name of our own for the test.
FAKE = """
def server():
    return "original"
"""

PRELUDE = """
import sys
import aioexclusive._import_hooks as hooks
calls = []
def patch(module):
    calls.append(module.__name__)
    original = module.server
    module.server = lambda: "patched " + original()
hooks._HOOKS["fakelib_ix"] = patch
"""


def test_patches_right_after_import_and_restores_the_real_loader(tmp_path: Path) -> None:
    (tmp_path / "fakelib_ix.py").write_text(FAKE)
    result = run(
        PRELUDE
        + """
hooks.activate()
import fakelib_ix
print(fakelib_ix.server(), calls)
print(type(fakelib_ix.__loader__).__name__, type(fakelib_ix.__spec__.loader).__name__)
import importlib; importlib.reload(fakelib_ix)
print(fakelib_ix.server(), len(calls))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "patched original ['fakelib_ix']"
    assert lines[1] == "SourceFileLoader SourceFileLoader"  # no trace of the wrapper left on the module
    assert lines[2] == "patched original 2"  # a reload executes the module afresh: patched again


def test_a_module_imported_before_activation_is_patched_at_once(tmp_path: Path) -> None:
    (tmp_path / "fakelib_ix.py").write_text(FAKE)
    result = run(
        PRELUDE + "import fakelib_ix\nhooks.activate()\nhooks.activate()\nprint(fakelib_ix.server(), calls)\n", tmp_path
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "patched original ['fakelib_ix']"  # once, however often activate() runs


def test_a_failing_patch_never_breaks_the_import(tmp_path: Path) -> None:
    (tmp_path / "fakelib_ix.py").write_text(FAKE)
    code = """
import aioexclusive._import_hooks as hooks
def broken(module):
    raise RuntimeError("library changed")
hooks._HOOKS["fakelib_ix"] = broken
hooks.activate()
import fakelib_ix
print(fakelib_ix.server())
"""
    result = run(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "original"
    assert "fakelib_ix" in result.stderr and "NOT covered" in result.stderr


def test_other_imports_are_untouched(tmp_path: Path) -> None:
    result = run(
        """
import sys, aioexclusive._import_hooks as hooks
hooks.activate()
finder = next(f for f in sys.meta_path if type(f).__name__ == "_PatchingFinder")
print(type(finder).__name__, finder.find_spec("json", None), finder.find_spec("not_a_module_x", None))
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "_PatchingFinder None None"


@pytest.mark.parametrize(("mode", "active"), [("warn", True), ("enforce", True), ("off", False), (None, False)])
def test_the_environment_variable_turns_the_hooks_on(tmp_path: Path, mode: str | None, active: bool) -> None:
    result = run(
        "import sys, aioexclusive._import_hooks as h\nprint(any(type(f).__name__ == '_PatchingFinder' for f in sys.meta_path))\n",
        tmp_path,
        mode,
    )
    assert result.returncode == 0, result.stderr
    # Without the .pth (a bare checkout on PYTHONPATH) nothing activates: skip rather than lie.
    if mode and "aioexclusive._guard" not in run("import sys; print(sys.modules.keys())", tmp_path, mode).stdout:
        pytest.skip("aioexclusive_guard.pth is not installed for this interpreter")
    assert result.stdout.strip() == str(active)


def test_uvloop_patch_passes_through_when_the_guard_is_off(tmp_path: Path) -> None:
    pytest.importorskip("uvloop")
    result = run(
        """
import aioexclusive, aioexclusive._import_hooks as hooks, uvloop
hooks.activate()
print(type(uvloop.new_event_loop()).__name__)
aioexclusive.guard("off")
print(type(uvloop.new_event_loop()).__name__, hooks.patched_original(uvloop.new_event_loop).__module__)
""",
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["ExclusiveLoop", "Loop", "uvloop"]
