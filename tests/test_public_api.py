"""The public surface, pinned (like anyio's tests/test_all_attributes.py and trio's).

A name added to or dropped from `aioexclusive` or `aioexclusive.lowlevel`
fails here until this file, docs/api.md and the CHANGELOG say so.
"""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

import aioexclusive
import aioexclusive.lowlevel

DOCS_API = Path(__file__).resolve().parent.parent / "docs" / "api.md"

TOP_LEVEL = {
    "AddressInUseError",
    "ExclusiveEventLoopPolicy",
    "ExclusiveLoopMixin",
    "ExclusivityError",
    "ExclusivityWarning",
    "GracefulShutdown",
    "InvalidPortError",
    "Multicast",
    "MulticastTransport",
    "ShutdownResult",
    "bind_socket",
    "guard",
    "new_event_loop",
    "retry_bind",
    "run",
}

LOWLEVEL = {
    "PLATFORMS",
    "RULES",
    "BindPlan",
    "LoopOptions",
    "Platform",
    "Role",
    "Rule",
    "audit_socket_options",
    "current_platform",
    "exclusive_loop_class",
    "make_plan",
}

# 0.1.0's top-level names that moved to aioexclusive.lowlevel.
MOVED = ["BindPlan", "LoopOptions", "Role", "current_platform", "exclusive_loop_class", "make_plan"]


def test_top_level_all_is_exact() -> None:
    assert set(aioexclusive.__all__) == TOP_LEVEL
    assert len(aioexclusive.__all__) == len(TOP_LEVEL), "a name is listed twice"


def test_lowlevel_all_is_exact() -> None:
    assert set(aioexclusive.lowlevel.__all__) == LOWLEVEL
    assert len(aioexclusive.lowlevel.__all__) == len(LOWLEVEL), "a name is listed twice"


@pytest.mark.parametrize("name", sorted(TOP_LEVEL))
def test_top_level_name_is_importable_and_documented(name: str) -> None:
    with warnings.catch_warnings():
        # The policy warns on 3.14+ when built, never when imported.
        warnings.simplefilter("error")
        value = getattr(aioexclusive, name)
    doc = inspect.getdoc(value)
    assert doc and doc.strip(), f"aioexclusive.{name} has no docstring"
    # Defined in the package, not a stdlib object re-exported by accident.
    assert value.__module__.startswith("aioexclusive"), value.__module__


@pytest.mark.parametrize("name", sorted(LOWLEVEL))
def test_lowlevel_name_is_importable_and_documented(name: str) -> None:
    value = getattr(aioexclusive.lowlevel, name)
    if inspect.isclass(value) or inspect.isfunction(value):
        doc = inspect.getdoc(value)
        assert doc and doc.strip(), f"aioexclusive.lowlevel.{name} has no docstring"
    # Data (RULES, PLATFORMS) and the Platform alias have no docstring of
    # their own: the module docstring says what each name is.
    assert f"`{name}`" in (aioexclusive.lowlevel.__doc__ or ""), f"lowlevel's docstring does not describe {name}"


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        exec("from aioexclusive import *", namespace)
    assert set(namespace) - {"__builtins__"} == TOP_LEVEL


def test_dir_is_clean() -> None:
    names = set(dir(aioexclusive))
    public = {name for name in names if not name.startswith("_")}
    assert public == TOP_LEVEL | {"lowlevel"}
    assert "__version__" in names
    for helper in ("Any", "TYPE_CHECKING", "annotations"):
        assert helper not in names
    # Every name dir() shows can be read.
    for name in names:
        getattr(aioexclusive, name)


def test_version() -> None:
    assert isinstance(aioexclusive.__version__, str)
    assert aioexclusive.__version__.count(".") >= 2


def test_lowlevel_objects_are_the_implementation() -> None:
    from aioexclusive import _loops, _plan

    for name in LOWLEVEL:
        source = _loops if name in ("LoopOptions", "exclusive_loop_class") else _plan
        assert getattr(aioexclusive.lowlevel, name) is getattr(source, name)


@pytest.mark.parametrize("name", MOVED)
def test_moved_names_still_work_and_warn(name: str) -> None:
    with pytest.warns(DeprecationWarning, match=rf"aioexclusive\.{name} moved to aioexclusive\.lowlevel") as caught:
        value = getattr(aioexclusive, name)
    assert value is getattr(aioexclusive.lowlevel, name)
    # The warning points at the caller's line, not at aioexclusive.
    assert caught[0].filename == __file__
    # It warns every time (not cached into the module), so no user misses it.
    with pytest.warns(DeprecationWarning):
        getattr(aioexclusive, name)


def test_moved_names_warn_on_from_import() -> None:
    with pytest.warns(DeprecationWarning, match="aioexclusive.lowlevel") as caught:
        from aioexclusive import make_plan
    assert make_plan is aioexclusive.lowlevel.make_plan
    # Once, at the import statement (not also inside importlib's own hasattr).
    assert [w.filename for w in caught] == [__file__]


def test_unknown_name_is_attribute_error() -> None:
    with pytest.raises(AttributeError, match="has no attribute 'nonexistent'"):
        aioexclusive.nonexistent  # noqa: B018
    with pytest.raises(ImportError):
        from aioexclusive import nonexistent  # noqa: F401


def test_entry_points_take_typed_keyword_only_options() -> None:
    from aioexclusive import _entry

    policy_class: Any = _entry._make_policy_class()  # built lazily, typed only as "type"
    for func in (aioexclusive.new_event_loop, aioexclusive.run, policy_class.__init__):
        params = inspect.signature(func).parameters
        for option, default in (("allow_reuse_port", False), ("strict", False), ("bind_retry", None)):
            assert params[option].kind is inspect.Parameter.KEYWORD_ONLY, (func, option)
            assert params[option].default is default
        assert not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()), func
    # The options are the fields of LoopOptions: adding one without the other fails here.
    from dataclasses import fields

    option_names = {f.name for f in fields(aioexclusive.lowlevel.LoopOptions)}
    assert option_names == {"allow_reuse_port", "strict", "bind_retry"}


def test_policy_module_is_gone() -> None:
    # Renamed to the private _entry (nothing public imported from it).
    with pytest.raises(ImportError):
        importlib.import_module("aioexclusive.policy")


def test_import_stays_lazy() -> None:
    # The opt-in modules load on first use (benchmarks/imports.py measures the
    # cost), not on import and not by building a loop that uses none of them.
    code = (
        "import sys, aioexclusive; aioexclusive.new_event_loop().close(); "
        "print(sorted(m for m in ('aioexclusive._guard', 'aioexclusive._multicast', 'aioexclusive._multicast_plan', 'aioexclusive._restart', "
        "'aioexclusive.lowlevel') if m in sys.modules)); "
        # ...and aioexclusive.lowlevel is there without importing it by name.
        "print(aioexclusive.lowlevel.make_plan.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=DOCS_API.parent.parent
    ).stdout
    assert out.split() == ["[]", "aioexclusive._plan"]


def test_docs_api_lists_every_public_name() -> None:
    text = DOCS_API.read_text(encoding="utf-8")
    for name in TOP_LEVEL:
        assert f"`aioexclusive.{name}`" in text, name
    for name in LOWLEVEL:
        assert f"`aioexclusive.lowlevel.{name}`" in text, name
