"""aioexclusive: asyncio event loops whose listening sockets nobody else can bind.

    asyncio.run(main(), loop_factory=aioexclusive.new_event_loop)   # 3.12+
    aioexclusive.run(main())                                        # any version
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._binding import bind_socket
from ._errors import AddressInUseError, ExclusivityError, ExclusivityWarning
from ._loops import ExclusiveLoopMixin, LoopOptions, exclusive_loop_class
from ._plan import BindPlan, Role, current_platform, make_plan
from .policy import new_event_loop, run

if TYPE_CHECKING:
    from ._guard import guard
    from ._multicast import Multicast, MulticastTransport
    from ._restart import GracefulShutdown, ShutdownResult, retry_bind
    from .policy import ExclusiveEventLoopPolicy

# Loaded on first use: multicast and the process-wide guard are opt-ins, and
# their modules were about half of what `import aioexclusive` costs
# (python -m benchmarks --only import).
_LAZY = {
    "guard": "._guard",
    "Multicast": "._multicast",
    "MulticastTransport": "._multicast",
    "GracefulShutdown": "._restart",
    "ShutdownResult": "._restart",
    "retry_bind": "._restart",
}

__version__ = "0.1.0"

__all__ = [
    "AddressInUseError",
    "BindPlan",
    "ExclusiveEventLoopPolicy",
    "ExclusiveLoopMixin",
    "ExclusivityError",
    "ExclusivityWarning",
    "GracefulShutdown",
    "LoopOptions",
    "Multicast",
    "MulticastTransport",
    "Role",
    "ShutdownResult",
    "bind_socket",
    "current_platform",
    "exclusive_loop_class",
    "guard",
    "make_plan",
    "new_event_loop",
    "retry_bind",
    "run",
]


def __getattr__(name: str) -> Any:
    # The policy class is built lazily: policies are deprecated from 3.14.
    if name == "ExclusiveEventLoopPolicy":
        from . import policy

        return policy.ExclusiveEventLoopPolicy
    if name in _LAZY:
        from importlib import import_module

        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
