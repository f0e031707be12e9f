"""aioexclusive: asyncio event loops whose listening sockets nobody else can bind.

    asyncio.run(main(), loop_factory=aioexclusive.new_event_loop)   # 3.12+
    aioexclusive.run(main())                                        # any version

The top level holds what an application calls; the bind plan and the loop
machinery (`make_plan`, `Role`, `exclusive_loop_class`...) are in
`aioexclusive.lowlevel`. docs/api.md lists both.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._binding import bind_socket
from ._entry import new_event_loop, run
from ._errors import AddressInUseError, ExclusivityError, ExclusivityWarning, InvalidPortError
from ._loops import ExclusiveLoopMixin

if TYPE_CHECKING:
    from . import lowlevel as lowlevel  # for type checkers: aioexclusive.lowlevel.X
    from ._entry import ExclusiveEventLoopPolicy
    from ._guard import guard
    from ._multicast import MulticastTransport
    from ._multicast_plan import Multicast
    from ._restart import GracefulShutdown, ShutdownResult, retry_bind

# Loaded on first use: multicast and the process-wide guard are opt-ins, and
# their modules were about half of what `import aioexclusive` costs
# (python -m benchmarks --only import). The policy class is built on first use
# because policies are deprecated from 3.14.
_LAZY = {
    "ExclusiveEventLoopPolicy": "._entry",
    "guard": "._guard",
    "Multicast": "._multicast_plan",
    "MulticastTransport": "._multicast",
    "GracefulShutdown": "._restart",
    "ShutdownResult": "._restart",
    "retry_bind": "._restart",
}

# Top-level names of 0.1.0 that moved to aioexclusive.lowlevel: still found
# here, with a DeprecationWarning, so that 0.1.0 code keeps running.
_MOVED_TO_LOWLEVEL = frozenset(
    {"BindPlan", "LoopOptions", "Role", "current_platform", "exclusive_loop_class", "make_plan"}
)

__version__ = "0.1.0"

__all__ = [
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
]


def __getattr__(name: str) -> Any:
    from importlib import import_module

    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    if name == "lowlevel":
        # Loaded on first use too (importing it sets the attribute for good).
        return import_module(".lowlevel", __name__)
    if name in _MOVED_TO_LOWLEVEL:
        import sys
        import warnings

        value = getattr(import_module(".lowlevel", __name__), name)
        if sys._getframe(1).f_globals.get("__name__") == "importlib._bootstrap":
            # The hasattr() that `from aioexclusive import X` makes first: the
            # statement itself reads the name next and warns at the user's line.
            return value
        warnings.warn(
            f"aioexclusive.{name} moved to aioexclusive.lowlevel; "
            f"import it from there (from aioexclusive.lowlevel import {name})",
            DeprecationWarning,
            stacklevel=2,
        )
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    # The public names and the module's dunders, not the helpers imported to
    # build it (Any, TYPE_CHECKING, annotations, the private submodules).
    names = set(__all__) | {"lowlevel"}
    names.update(name for name in globals() if name.startswith("__") and name.endswith("__"))
    return sorted(names)
