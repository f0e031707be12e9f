"""pytest plugin: run pytest-asyncio tests on exclusive event loops.

Registered through the ``pytest11`` entry point, so it loads wherever
aioexclusive is installed, and it does nothing until asked::

    # pyproject.toml
    [tool.pytest.ini_options]
    asyncio_exclusive = true            # or: pytest --asyncio-exclusive
    asyncio_exclusive_base = "uvloop"   # optional: the base loop

Then every pytest-asyncio test (and async fixture) runs on
``aioexclusive.new_event_loop()``, through pytest-asyncio's (>= 1.4)
``pytest_asyncio_loop_factories`` hook, under the factory name
``"exclusive"``, which ``@pytest.mark.asyncio(loop_factories=["exclusive"])``
can name.

Why registration is conditional: that hook is ``firstresult``, and
pytest-asyncio treats a registered implementation that returns ``None`` as an
error, so an implementation must only exist when it has an answer. Ours is
registered at configure time when the option is on, and marked ``trylast``:
a ``pytest_asyncio_loop_factories`` in the user's own ``conftest.py`` is
asked first and wins. To combine ours with other factories there, return
``{**aioexclusive.pytest_plugin.loop_factories(config), "uvloop": ...}``.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from ._entry import new_event_loop

__all__ = ["FACTORY_NAME", "loop_factories"]

FACTORY_NAME = "exclusive"
_PLUGIN_NAME = "aioexclusive-loop-factories"
_INI = "asyncio_exclusive"
_INI_BASE = "asyncio_exclusive_base"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("asyncio")
    group.addoption(
        "--asyncio-exclusive",
        action="store_true",
        default=None,
        dest="asyncio_exclusive",
        help="run pytest-asyncio tests on aioexclusive's exclusive event loops (the 'exclusive' loop factory)",
    )
    parser.addini(_INI, type="bool", default=False, help="default value for --asyncio-exclusive")
    parser.addini(
        _INI_BASE,
        default="",
        help="base loop of the exclusive loops: asyncio (default), selector, proactor, uvloop, winloop",
    )


def _enabled(config: pytest.Config) -> bool:
    flag = config.getoption("asyncio_exclusive", default=None)
    if flag is not None:
        return bool(flag)
    return bool(config.getini(_INI))


def loop_factories(config: pytest.Config | None = None) -> dict[str, Callable[[], asyncio.AbstractEventLoop]]:
    """``{"exclusive": factory}`` for a ``pytest_asyncio_loop_factories`` hook.

    The base loop comes from the ``asyncio_exclusive_base`` ini option when
    *config* is given.
    """
    base = (str(config.getini(_INI_BASE)) or None) if config is not None else None
    # Resolve now: a typo in the ini fails once, at start-up, with our message.
    new_event_loop(base).close()
    return {FACTORY_NAME: functools.partial(new_event_loop, base) if base else new_event_loop}


class _LoopFactories:
    """The hook implementation, registered only when the option is on."""

    def __init__(self, factories: Mapping[str, Callable[[], asyncio.AbstractEventLoop]]) -> None:
        self._factories = dict(factories)

    @pytest.hookimpl(trylast=True)
    def pytest_asyncio_loop_factories(self, config: pytest.Config, item: pytest.Item) -> Mapping[str, Any]:
        return dict(self._factories)


def pytest_configure(config: pytest.Config) -> None:
    if not _enabled(config):
        return
    if not config.pluginmanager.hasplugin("asyncio"):
        raise pytest.UsageError(
            "asyncio_exclusive is on but pytest-asyncio is not active: install pytest-asyncio>=1.4 "
            "(pip install 'aioexclusive[test]') or remove the option"
        )
    if not hasattr(config.hook, "pytest_asyncio_loop_factories"):
        raise pytest.UsageError(
            "asyncio_exclusive needs pytest-asyncio>=1.4 (the pytest_asyncio_loop_factories hook); "
            "upgrade it: pip install -U 'pytest-asyncio>=1.4'"
        )
    try:
        factories = loop_factories(config)
    except (ValueError, TypeError, ImportError) as exc:
        raise pytest.UsageError(f"{_INI_BASE}: {exc}") from exc
    config.pluginmanager.register(_LoopFactories(factories), _PLUGIN_NAME)


def pytest_report_header(config: pytest.Config) -> str | None:
    if config.pluginmanager.has_plugin(_PLUGIN_NAME):
        base = str(config.getini(_INI_BASE)) or "asyncio"
        return f"aioexclusive: pytest-asyncio tests run on exclusive loops (base {base})"
    return None
