"""Entry points: `new_event_loop` (a ``loop_factory``), `run`, the policy, and choosing the base loop class.

Python 3.14 deprecates event-loop policies; ``loop_factory`` is the modern
path and works on 3.11+ (``asyncio.Runner``) and 3.12+ (``asyncio.run``).
`run` works on every supported version. Users import these from the top
level (``aioexclusive.new_event_loop``); this module is private.
"""

from __future__ import annotations

import asyncio
import functools
import sys
import warnings
from collections.abc import Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from ._loops import LoopOptions, exclusive_loop_class

__all__ = ["ExclusiveEventLoopPolicy", "new_event_loop", "resolve_base", "run"]

_T = TypeVar("_T")


# -- choosing the base loop class -----------------------------------------------


def _uvloop() -> type[asyncio.AbstractEventLoop]:
    try:
        import uvloop
    except ImportError as exc:
        raise ImportError("base='uvloop' needs uvloop: pip install 'aioexclusive[uvloop]'") from exc
    return uvloop.Loop


def _winloop() -> type[asyncio.AbstractEventLoop]:
    try:
        import winloop
    except ImportError as exc:
        raise ImportError("base='winloop' needs winloop (Windows only): pip install 'aioexclusive[winloop]'") from exc
    return winloop.Loop  # type: ignore[no-any-return]


def _stdlib_default() -> type[asyncio.AbstractEventLoop]:
    # What asyncio.new_event_loop() builds: Proactor on Windows, Selector elsewhere.
    if sys.platform == "win32":
        return asyncio.ProactorEventLoop  # type: ignore[attr-defined,no-any-return]
    return asyncio.SelectorEventLoop


_NAMED_BASES: dict[str, Callable[[], type[asyncio.AbstractEventLoop]]] = {
    "asyncio": _stdlib_default,
    "selector": lambda: asyncio.SelectorEventLoop,
    "proactor": lambda: asyncio.ProactorEventLoop,  # type: ignore[attr-defined]
    "uvloop": _uvloop,
    "winloop": _winloop,
}


def resolve_base(base: str | type | None) -> type[asyncio.AbstractEventLoop]:
    """The loop class named by *base* (see `aioexclusive.new_event_loop`)."""
    if base is None:
        return _stdlib_default()
    if isinstance(base, str):
        try:
            factory = _NAMED_BASES[base]
        except KeyError:
            raise ValueError(
                f"base must be one of {', '.join(map(repr, _NAMED_BASES))}, a loop class or None, got {base!r}"
            ) from None
        try:
            return factory()
        except AttributeError:
            raise ValueError(f"base={base!r} does not exist on {sys.platform}") from None
    if isinstance(base, type) and issubclass(base, asyncio.AbstractEventLoop):
        return base
    raise TypeError(
        f"base must be a loop class (a subclass of asyncio.AbstractEventLoop), a name or None, got {base!r}"
    )


# -- entry points -----------------------------------------------------------------


def _options(caller: str, allow_reuse_port: bool, strict: bool, bind_retry: tuple[int, float] | None) -> LoopOptions:
    # The typed keywords are checked at run time as before (callers without a
    # type checker pass strings and lists): the same checks and messages.
    # bind_retry=None needs no check, and leaving it out keeps _restart (which
    # checks it) unloaded for loops that do not retry.
    options: dict[str, object] = {"allow_reuse_port": allow_reuse_port, "strict": strict}
    if bind_retry is not None:
        options["bind_retry"] = bind_retry
    return LoopOptions.from_kwargs(caller, options)


def new_event_loop(
    base: str | type | None = None,
    *,
    allow_reuse_port: bool = False,
    strict: bool = False,
    bind_retry: tuple[int, float] | None = None,
) -> asyncio.AbstractEventLoop:
    """A new exclusive event loop.

    Args:
        base: ``None`` or ``"asyncio"`` for the stdlib's default loop of this
            platform (Proactor on Windows, Selector elsewhere), ``"selector"``,
            ``"proactor"``, ``"uvloop"``, ``"winloop"``, or a loop class.
        allow_reuse_port: honour ``reuse_port=True``: other processes of the
            same user can then bind the port and take a share of its traffic.
            Only for pre-fork servers that want exactly that.
        strict: on Windows, refuse to serve when ``SO_EXCLUSIVEADDRUSE`` cannot
            be set, instead of warning (`ExclusivityWarning`) and serving unprotected.
        bind_retry: ``(attempts, delay)``: retry a TCP bind whose port the
            previous instance of a restarting server still holds; ``None``: no retry.

    With no arguments it is a ``loop_factory``:
    ``asyncio.run(main(), loop_factory=aioexclusive.new_event_loop)``.
    """
    loop_options = _options("new_event_loop", allow_reuse_port, strict, bind_retry)
    loop: Any = exclusive_loop_class(resolve_base(base))()
    if loop_options != LoopOptions():
        loop._exclusive_options = loop_options
    return loop  # type: ignore[no-any-return]


def run(
    main: Coroutine[Any, Any, _T],
    *,
    base: str | type | None = None,
    debug: bool | None = None,
    allow_reuse_port: bool = False,
    strict: bool = False,
    bind_retry: tuple[int, float] | None = None,
) -> _T:
    """Run *main* on a new exclusive loop, like `asyncio.run`, on every supported Python.

    *base* and the options are those of `new_event_loop`; *debug* is `asyncio.run`'s.
    """
    _options("run", allow_reuse_port, strict, bind_retry)
    # Check before a loop exists: asyncio.Runner would build one, then fail
    # while closing it and hide this message behind another.
    if asyncio.events._get_running_loop() is not None:
        raise RuntimeError("aioexclusive.run() cannot be called from a running event loop")
    factory = functools.partial(
        new_event_loop, base, allow_reuse_port=allow_reuse_port, strict=strict, bind_retry=bind_retry
    )
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


class _ExclusivePolicy:
    """`ExclusiveEventLoopPolicy`'s own part, mixed in before asyncio's default policy.

    Written once here, for the class built on first use and for type checkers alike.
    """

    def __init__(
        self,
        base: str | type | None = None,
        *,
        allow_reuse_port: bool = False,
        strict: bool = False,
        bind_retry: tuple[int, float] | None = None,
    ) -> None:
        if sys.version_info >= (3, 14):
            warnings.warn(
                "event loop policies are deprecated since Python 3.14; use "
                "asyncio.run(main, loop_factory=aioexclusive.new_event_loop) or aioexclusive.run(main)",
                DeprecationWarning,
                stacklevel=2,
            )
        options = _options("ExclusiveEventLoopPolicy", allow_reuse_port, strict, bind_retry)
        self._loop_class = exclusive_loop_class(resolve_base(base))
        self._options = options
        super().__init__()

    def new_event_loop(self) -> asyncio.AbstractEventLoop:
        options = self._options
        return new_event_loop(
            self._loop_class,
            allow_reuse_port=options.allow_reuse_port,
            strict=options.strict,
            bind_retry=options.bind_retry,
        )


if TYPE_CHECKING:

    class ExclusiveEventLoopPolicy(_ExclusivePolicy, asyncio.DefaultEventLoopPolicy): ...

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
    class ExclusiveEventLoopPolicy(_ExclusivePolicy, _policy_base()):  # type: ignore[misc]
        """An event-loop policy whose loops are exclusive.

        ``asyncio.set_event_loop_policy(aioexclusive.ExclusiveEventLoopPolicy())``
        then ``asyncio.run(main())``. Policies are deprecated from Python 3.14:
        prefer ``loop_factory=aioexclusive.new_event_loop``.
        """

    ExclusiveEventLoopPolicy.__module__ = "aioexclusive"
    return ExclusiveEventLoopPolicy
