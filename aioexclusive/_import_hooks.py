"""Post-import hooks: what ``AIOEXCLUSIVE_GUARD`` does for servers that bind where the guard cannot see.

The guard's audit hook sees every ``bind`` made through Python's ``socket``
module. Some popular servers bind elsewhere (grpcio in C, uvloop through
libuv), or decide to share a port before the bind in a way stripping the
option afterwards would break (gunicorn's and tornado's ``reuse_port``
workers). For those, the guard changes the library's *default* right after
the library is imported, before the program can call it:

==================  =====================================================================
module              what the hook does while the guard is on (any mode but ``off``)
==================  =====================================================================
``grpc``            ``grpc.server``/``grpc.aio.server`` get ``("grpc.so_reuseport", 0)``
                    unless the caller set that option; an explicit ``1`` on a port the
                    allow list does not name warns (``warn``) or is refused
                    (``raise``/``enforce``) when the port is added
``uvloop``          ``new_event_loop``/``run``/``install``/``EventLoopPolicy`` give the
                    exclusive loop over ``uvloop.Loop``
``gunicorn.config`` ``raise``/``enforce``: ``--reuse-port`` (one socket per worker) becomes
                    the arbiter's one shared socket, which every worker inherits
``tornado.netutil`` ``raise``/``enforce``: ``bind_sockets(reuse_port=True)`` in a process
                    forked by ``fork_processes`` is refused with the way out
``aiocoap``         ``AIOCOAP_REUSE_PORT=0`` unless the variable is set already
``zeroconf``        the mDNS port is allowed (``*:5353``): mDNS responders share it by design
==================  =====================================================================

Mechanism: one `importlib.abc.MetaPathFinder` at the front of ``sys.meta_path``.
For a module it has no hook for (nearly every import) it returns ``None``
after one dictionary lookup. For a hooked module it asks the finders behind it
for the real spec and wraps the loader, so the hook runs right after the
module's own code; the module ends up with its real loader in ``__loader__``
and ``__spec__.loader``. A module imported before `activate` is patched at
once. Every patch checks the guard's mode when the library is *called*, so
``aioexclusive.guard("off")`` later turns them into plain pass-throughs.

A patch that fails never breaks the import: one line on stderr says that
library is not covered, as the guard's activation does for a bad setting.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys
import threading
import weakref
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

__all__ = ["activate", "guard_allows", "guard_mode", "patched_original"]

# The attribute a patched callable carries, pointing at what it replaced.
ORIGINAL = "__aioexclusive_original__"


def patched_original(func: Any) -> Any:
    """The library's own callable behind a patch (*func* itself when not patched)."""
    return getattr(func, ORIGINAL, func)


def guard_mode() -> str:
    """The process-wide guard's mode (``"off"`` when it was never turned on)."""
    from ._guard import current_mode

    return current_mode()


def guard_allows(host: str, port: int) -> bool:
    """Whether ``AIOEXCLUSIVE_GUARD_ALLOW`` / ``guard(allow=...)`` names this address."""
    from . import _guard

    if host == "":
        host = "0.0.0.0"
    return any(pattern.matches(host, port) for pattern in _guard._state.allow)


def _say(message: str) -> None:
    try:
        sys.stderr.write(f"aioexclusive: {message}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001, S110 - no stderr to report on
        pass


# --- the patches -----------------------------------------------------------------------------------


def _patch_grpc(module: ModuleType) -> None:
    from .contrib.grpc import _patch_module

    _patch_module(module)


def _patch_uvloop(module: ModuleType) -> None:
    original_new = module.new_event_loop
    if hasattr(original_new, ORIGINAL):
        return
    original_run = module.run

    def new_event_loop() -> Any:
        """uvloop.new_event_loop, exclusive while AIOEXCLUSIVE_GUARD is on (aioexclusive)."""
        mode = guard_mode()
        if mode == "off":
            return original_new()
        from ._entry import new_event_loop as exclusive

        # warn promises "proceeds": reuse_port=True is honoured there as uvloop
        # would; libuv's UDP SO_REUSEADDR (a cross-user hijack) is closed in every mode.
        return exclusive("uvloop", allow_reuse_port=(mode == "warn"))

    def run(main: Any, *, loop_factory: Any = None, **kwargs: Any) -> Any:
        """uvloop.run on the exclusive uvloop loop while AIOEXCLUSIVE_GUARD is on (aioexclusive)."""
        if loop_factory is None or loop_factory is original_new:
            loop_factory = new_event_loop
        return original_run(main, loop_factory=loop_factory, **kwargs)

    setattr(new_event_loop, ORIGINAL, original_new)
    setattr(run, ORIGINAL, original_run)
    # uvloop.EventLoopPolicy._loop_factory and uvloop.install (through the
    # policy) call the module's new_event_loop by name, so this one assignment
    # covers them; run() bound the original as its default argument.
    setattr(module, "new_event_loop", new_event_loop)
    setattr(module, "run", run)


def _patch_gunicorn_config(module: ModuleType) -> None:
    config = module.Config
    prop = config.__dict__.get("reuse_port")
    if not isinstance(prop, property) or prop.fget is None or hasattr(prop.fget, ORIGINAL):
        return
    original = prop.fget
    announced: list[bool] = []  # inherited by forked workers: the arbiter says it once

    def reuse_port(self: Any) -> bool:
        wanted = bool(original(self))
        if not wanted or guard_mode() not in ("raise", "enforce"):
            return wanted
        addresses = _gunicorn_tcp_addresses(self)
        if addresses and all(guard_allows(host, port) for host, port in addresses):
            return True
        # gunicorn's --reuse-port makes every worker bind its own SO_REUSEPORT
        # socket, which any process of the same user can join too; the guard
        # would strip the option and leave one worker serving. Without it the
        # arbiter binds one socket and every worker inherits it: same workers,
        # same port, nobody else.
        if not announced:
            announced.append(True)
            where = ", ".join(f"{h}:{p}" for h, p in addresses) or "its address"
            _say(
                f"AIOEXCLUSIVE_GUARD={guard_mode()}: gunicorn's --reuse-port (a SO_REUSEPORT socket per worker, "
                f"which other processes of this user could join) is replaced by the arbiter's one exclusive "
                f"socket, shared by every worker; to keep per-worker sockets, allow {where} in "
                f"AIOEXCLUSIVE_GUARD_ALLOW"
            )
        return False

    setattr(reuse_port, ORIGINAL, original)
    config.reuse_port = property(reuse_port, doc=prop.__doc__)


def _gunicorn_tcp_addresses(cfg: Any) -> list[tuple[str, int]]:
    out = []
    for address in getattr(cfg, "address", ()) or ():
        if isinstance(address, tuple) and len(address) >= 2 and isinstance(address[1], int):
            out.append((str(address[0]), address[1]))
    return out


def _patch_tornado_netutil(module: ModuleType) -> None:
    from .contrib.tornado import _patch_netutil

    _patch_netutil(module)


def _patch_aiocoap(module: ModuleType) -> None:
    # aiocoap's UDP transports set SO_REUSEPORT on their dual-stack socket
    # unless AIOCOAP_REUSE_PORT says otherwise (aiocoap.defaults.has_reuse_port,
    # read at each bind); the guard would refuse (raise) or strip (enforce)
    # that, so ask aiocoap not to. An explicit setting is the user's choice.
    if guard_mode() != "off":
        os.environ.setdefault("AIOCOAP_REUSE_PORT", "0")


MDNS_ALLOW = "*:5353"


def _patch_zeroconf(module: ModuleType) -> None:
    # python-zeroconf is an mDNS responder: it binds the wildcard address on
    # 5353 with SO_REUSEADDR/SO_REUSEPORT and joins 224.0.0.251 / ff02::fb
    # afterwards, so that avahi and every other responder on the host share
    # the port. At the bind that is indistinguishable from a unicast server,
    # and the guard would strip (enforce) or refuse (raise) exactly the sharing
    # mDNS needs. A program that imports zeroconf means mDNS: allow its port,
    # as AIOEXCLUSIVE_GUARD_ALLOW='*:5353' would, and say so once.
    from . import _guard

    mode = guard_mode()
    if mode == "off":
        return
    pattern = _guard._parse_entry(MDNS_ALLOW)
    with _guard._install_lock:  # what guard() holds while it swaps the allow list
        if pattern in _guard._state.allow:
            return
        _guard._state.allow = (*_guard._state.allow, pattern)
    _say(
        f"AIOEXCLUSIVE_GUARD={mode}: zeroconf is imported, so the mDNS port is shared as mDNS requires "
        f"(allow {MDNS_ALLOW!r}); every other port stays exclusive"
    )


# module name -> the patch that runs right after it is imported.
_HOOKS: dict[str, Callable[[ModuleType], None]] = {
    "grpc": _patch_grpc,
    "grpc.aio": _patch_grpc,
    "uvloop": _patch_uvloop,
    "gunicorn.config": _patch_gunicorn_config,
    "tornado.netutil": _patch_tornado_netutil,
    "aiocoap": _patch_aiocoap,
    "zeroconf": _patch_zeroconf,
}

_lock = threading.Lock()
_finder: _PatchingFinder | None = None


# Modules patched already, so that activate() twice does not patch twice; an
# import (or a reload) executes the module afresh and is always patched.
_applied: weakref.WeakSet[ModuleType] = weakref.WeakSet()


def _apply(name: str, module: ModuleType) -> None:
    _applied.add(module)
    try:
        _HOOKS[name](module)
    except Exception as exc:  # noqa: BLE001 - an import must never fail because of us
        _say(
            f"could not apply AIOEXCLUSIVE_GUARD's defaults to {name} ({type(exc).__name__}: {exc}); it is NOT covered"
        )


class _PatchingLoader(importlib.abc.Loader):
    """The real loader, then the patch; hands the module its real loader back."""

    def __init__(self, loader: Any, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        result: ModuleType | None = self._loader.create_module(spec)
        return result

    def exec_module(self, module: ModuleType) -> None:
        # Put the real loader back first: code that inspects __loader__ or
        # __spec__.loader (importlib.resources, pkgutil) sees what it expects.
        module.__loader__ = self._loader
        if module.__spec__ is not None:
            module.__spec__.loader = self._loader
        self._loader.exec_module(module)
        _apply(self._name, module)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._loader, attr)


class _PatchingFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of the few modules in `_HOOKS`."""

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _HOOKS:
            return None  # every other import: this one lookup is all we cost
        for finder in sys.meta_path:
            if finder is self:
                continue
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec: importlib.machinery.ModuleSpec | None = find_spec(fullname, path, target)
            if spec is None:
                continue
            if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                spec.loader = _PatchingLoader(spec.loader, fullname)
            return spec
        return None


def activate() -> None:
    """Install the hooks (once per process) and patch hooked modules already imported."""
    global _finder
    with _lock:
        if _finder is None:
            _finder = _PatchingFinder()
            sys.meta_path.insert(0, _finder)
    for name in list(_HOOKS):
        module = sys.modules.get(name)
        if module is not None and module not in _applied:
            _apply(name, module)
