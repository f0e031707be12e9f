"""Entry points: `new_event_loop` (a ``loop_factory``), `run`, and the policy.

Python 3.14 deprecates event-loop policies; ``loop_factory`` is the modern
path and works on 3.11+ (``asyncio.Runner``) and 3.12+ (``asyncio.run``).
`run` works on every supported version.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._loops import LoopOptions, exclusive_loop_class, resolve_base

__all__ = ["ExclusiveEventLoopPolicy", "new_event_loop", "run"]

_T = TypeVar("_T")


def new_event_loop(base: str | type | None = None, **options: bool | tuple[int, float] | None) -> asyncio.AbstractEventLoop:
    """A new exclusive event loop.

    Args:
        base: ``None`` or ``"asyncio"`` for the stdlib's default loop of this
            platform (Proactor on Windows, Selector elsewhere), ``"selector"``,
            ``"proactor"``, ``"uvloop"``, ``"winloop"``, or a loop class.
        **options: `LoopOptions`: ``allow_reuse_port``, ``strict``.

    With no arguments it is a ``loop_factory``:
    ``asyncio.run(main(), loop_factory=aioexclusive.new_event_loop)``.
    """
    loop_options = LoopOptions.from_kwargs("new_event_loop", options)
    loop: Any = exclusive_loop_class(resolve_base(base))()
    if options:
        loop._exclusive_options = loop_options
    return loop  # type: ignore[no-any-return]


def run(
    main: Coroutine[Any, Any, _T],
    *,
    base: str | type | None = None,
    debug: bool | None = None,
    **options: bool | tuple[int, float] | None,
) -> _T:
    """Run *main* on a new exclusive loop, like `asyncio.run`, on every supported Python."""
    LoopOptions.from_kwargs("run", options)
    # Check before a loop exists: asyncio.Runner would build one, then fail
    # while closing it and hide this message behind another.
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("aioexclusive.run() cannot be called from a running event loop")
    factory = functools.partial(new_event_loop, base, **options)
    if sys.version_info >= (3, 11):
        with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
            return runner.run(main)
    return _run_310(main, factory, debug)


def _run_310(main: Coroutine[Any, Any, _T], factory: Any, debug: bool | None) -> _T:
    # asyncio.run of 3.10 has no loop_factory: the same steps, our loop.
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("asyncio.run() cannot be called from a running event loop")
    if not asyncio.iscoroutine(main):
        raise ValueError(f"a coroutine was expected, got {main!r}")
    loop = factory()
    try:
        asyncio.set_event_loop(loop)
        if debug is not None:
            loop.set_debug(debug)
        return loop.run_until_complete(main)  # type: ignore[no-any-return]
    finally:
        try:
            _cancel_all_tasks(loop)
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.run_until_complete(loop.shutdown_default_executor())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


def _cancel_all_tasks(loop: asyncio.AbstractEventLoop) -> None:
    to_cancel = asyncio.all_tasks(loop)
    if not to_cancel:
        return
    for task in to_cancel:
        task.cancel()
    loop.run_until_complete(asyncio.gather(*to_cancel, return_exceptions=True))
    for task in to_cancel:
        if task.cancelled():
            continue
        if task.exception() is not None:
            loop.call_exception_handler(
                {
                    "message": "unhandled exception during aioexclusive.run() shutdown",
                    "exception": task.exception(),
                    "task": task,
                }
            )


def _policy_base() -> type:
    # Touching asyncio.DefaultEventLoopPolicy warns on 3.14+; the warning is for
    # whoever builds a policy, which _make_policy_class says itself.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        return asyncio.DefaultEventLoopPolicy


if TYPE_CHECKING:

    class ExclusiveEventLoopPolicy(asyncio.DefaultEventLoopPolicy):
        def __init__(self, base: str | type | None = None, **options: bool | tuple[int, float] | None) -> None: ...

else:

    def __getattr__(name: str) -> Any:
        # Built on first use so that importing aioexclusive on 3.14+ does not
        # touch the deprecated policy machinery.
        if name == "ExclusiveEventLoopPolicy":
            cls = _make_policy_class()
            globals()[name] = cls
            return cls
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _make_policy_class() -> type:
    class ExclusiveEventLoopPolicy(_policy_base()):  # type: ignore[misc]
        """An event-loop policy whose loops are exclusive.

        ``asyncio.set_event_loop_policy(aioexclusive.ExclusiveEventLoopPolicy())``
        then ``asyncio.run(main())``. Policies are deprecated from Python 3.14:
        prefer ``loop_factory=aioexclusive.new_event_loop``.
        """

        def __init__(self, base: str | type | None = None, **options: bool | tuple[int, float] | None) -> None:
            if sys.version_info >= (3, 14):
                warnings.warn(
                    "event loop policies are deprecated since Python 3.14; use "
                    "asyncio.run(main, loop_factory=aioexclusive.new_event_loop) or aioexclusive.run(main)",
                    DeprecationWarning,
                    stacklevel=2,
                )
            LoopOptions.from_kwargs("ExclusiveEventLoopPolicy", options)
            self._loop_class = exclusive_loop_class(resolve_base(base))
            self._options = options
            super().__init__()

        def new_event_loop(self) -> asyncio.AbstractEventLoop:
            return new_event_loop(self._loop_class, **self._options)

    ExclusiveEventLoopPolicy.__module__ = "aioexclusive"
    return ExclusiveEventLoopPolicy
