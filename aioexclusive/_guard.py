"""The process-wide guard: an audit hook on ``socket.bind``, and a watch on late ``setsockopt``.

The exclusive loops only protect sockets they create. Much server code binds
its own sockets first (``socket.create_server``, uvicorn's and hypercorn's
pre-binding, gunicorn, libraries calling ``bind``) and asyncio only ever sees
the result. CPython raises the audit event ``socket.bind`` with the socket and
the address *before* the system call, for every bind made through the
``socket`` module, so a hook added with ``sys.addaudithook`` sees every such
socket in the process while its options can still be checked or changed.
Port 0 included: once bound, an ephemeral port is as public as any other (it
is listed by ``ss``), and a shareable socket on it can be joined all the same.

CPython raises no audit event for ``setsockopt`` or ``listen`` (only
``socket.__new__``, ``bind``, ``connect``, ``sendto``/``sendmsg`` and the name
lookups), yet ``SO_REUSEPORT`` set after ``bind`` (even after ``listen``) or
UDP ``SO_REUSEADDR`` set after ``bind`` shares the port on Linux exactly like
the option set before. ``socket.__new__`` does not help either: it is raised
before the file descriptor is attached, even for ``socket(fileno=...)``. So
the guard also replaces ``socket.socket.setsockopt`` (the Python class; every
``socket.socket`` and ``ssl.SSLSocket`` goes through it) with a wrapper that
judges a sharing option turned on for a socket that is already bound, the
same way the hook judges a bind. Calls that bypass that class attribute
(``_socket.socket.setsockopt(sock, ...)``, C extensions, libuv) stay unseen.

Nor is every bind a ``bind`` call: the kernel binds an unbound socket itself
(wildcard address, ephemeral port, the socket's options kept) on a UDP
socket's first ``sendto``/``sendmsg``/``connect`` and on ``listen``. The hook
judges those audit events while the socket is still unbound, and
``socket.socket.listen`` is wrapped like ``setsockopt``: both as a bind to the
wildcard, port 0.

What this cannot see: binds made in C without the ``socket`` module (uvloop
and winloop bind through libuv, other extension modules call ``bind(2)``
themselves) raise no audit event, nor do sockets that arrive bound (inherited
descriptors, ``socket.fromfd``). Use the exclusive loops for those.

Four facts shape the code below:

* Audit hooks cannot be removed, and the hook is called for *every* audit
  event in the process (imports, ``open``, ``exec``...), so the first lines
  throw away everything that is not a socket event with one comparison and
  one set lookup,
  and ``guard()`` only ever swaps the mode the hook reads.
* An exception raised in an audit hook aborts the operation that raised the
  event. That is how ``raise`` refuses a bind, and also why any *other*
  exception here would break innocent code: everything but our own
  `ExclusivityError` is swallowed (the setsockopt wrapper does the same).
* ``getsockopt``/``setsockopt`` raise no audit event, and the guard calls the
  C-level methods, so fixing a socket from inside the hook re-enters neither
  the hook nor the wrapper. A guard against re-entry stays anyway: a
  ``showwarning`` replacement may well open sockets.
* aioexclusive's own tools (``python -m aioexclusive probe``/``demo``) open
  deliberately shareable attacker sockets, possibly in a process that
  inherited ``AIOEXCLUSIVE_GUARD``: they bind inside `exempt()`.
"""

from __future__ import annotations

import _socket
import contextlib
import functools
import ipaddress
import operator
import os
import socket
import sys
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import FrameType
from typing import Any, Literal, TypeVar, Union

from . import _guard_holds
from ._errors import ExclusivityError, ExclusivityWarning
from ._plan import (
    SHARING_OPTIONS,
    SO_EXCLUSIVEADDRUSE,
    BindPlan,
    Platform,
    Role,
    _who_can_share,
    current_platform,
    make_plan,
)
from ._wildcard import HOLDS_WILDCARDS

__all__ = ["ENV_ALLOW", "ENV_VAR", "MODES", "GuardMode", "activate_from_environment", "current_mode", "exempt", "guard"]

_T = TypeVar("_T")
GuardMode = Literal["warn", "raise", "enforce", "off"]
MODES: tuple[GuardMode, ...] = ("warn", "raise", "enforce", "off")
ENV_VAR = "AIOEXCLUSIVE_GUARD"
ENV_ALLOW = "AIOEXCLUSIVE_GUARD_ALLOW"

AllowEntry = Union[str, int, "tuple[str | None, int | str | None]"]

# Read through the C-level descriptors and methods, not the attributes a
# ``socket.socket`` subclass may override: a subclass (or a mock) whose
# ``getsockopt`` raises or lies must not decide what the hook does. They also
# skip the enum conversion ``socket.socket.family`` does, on the bind path.
_CSocket = _socket.socket  # every socket object, socket.socket and ssl.SSLSocket included, derives from it
_family_of = _CSocket.family.__get__
_type_of = _CSocket.type.__get__
_getsockopt = _CSocket.getsockopt
_setsockopt = _CSocket.setsockopt
_getsockname = _CSocket.getsockname

_AF_INET6 = getattr(socket, "AF_INET6", None)
_INET = frozenset(family for family in (socket.AF_INET, _AF_INET6) if family is not None)
_TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_OPTIONS = {name: getattr(socket, name) for name in SHARING_OPTIONS if hasattr(socket, name)}
_OPTION_NAMES = {const: name for name, const in _OPTIONS.items()}

# The frames of these modules are plumbing between the code that asked for a
# socket and the bind; a warning points past them, at the code that asked.
_PLUMBING = ("socket", "asyncio", "selectors", "ssl")
# aioexclusive's own binds have already been planned (a reuse_port socket there
# is the caller's explicit allow_reuse_port=True), so the guard trusts them.
_OWN_BINDER = "aioexclusive._binding"
# Where socket.socketpair() has no system call (Windows), the stdlib emulates
# it with a loopback listener on port 0 that lives for one accept; asyncio
# makes one for every event loop. Nobody can change that code, and refusing it
# would break every loop, so raise and enforce make it exclusive (safe for a
# one-shot listener) and warn leaves it alone.
_SOCKETPAIR = ("socketpair", "_fallback_socketpair")

# Set by exempt(): binds (and late options) in this context are not judged.
_EXEMPT: ContextVar[bool] = ContextVar("aioexclusive_guard_exempt", default=False)


@dataclass(frozen=True)
class _Pattern:
    """One ``allow=`` entry: a host (or network) and a port range."""

    text: str
    host: str | None  # None: any host; otherwise a name compared as given
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    ports: tuple[int, int] | None  # None: any port (0, "the system picks", included)

    def matches(self, host: str, port: int) -> bool:
        if self.ports is not None and not self.ports[0] <= port <= self.ports[1]:
            return False
        if self.network is not None:
            ip = _ip(host)
            return ip is not None and ip.version == self.network.version and ip in self.network
        return self.host is None or self.host == host.lower()


@dataclass
class _State:
    mode: GuardMode = "off"
    allow: tuple[_Pattern, ...] = ()
    installed: bool = False
    platform: Platform = "linux"
    plans: dict[Role, BindPlan] | None = None
    # Per role, the options worth a getsockopt (each one is a system call).
    reads: dict[Role, tuple[tuple[str, int], ...]] | None = None
    # (socket type, option constant) -> (name, value the plan wants or None
    # for "never on"): the late setsockopt calls worth judging.
    late: dict[tuple[int, int], tuple[str, int | None]] = field(default_factory=dict)
    from_environment: bool = False


_state = _State()
_local = threading.local()
_install_lock = threading.Lock()


def current_mode() -> GuardMode:
    """The mode the guard is in (``"off"`` when it was never turned on)."""
    return _state.mode


@contextlib.contextmanager
def exempt() -> Iterator[None]:
    """Leave the binds (and late ``setsockopt`` calls) made inside this block alone, in every mode.

    For aioexclusive's own attacker sockets (``probe``, ``demo``), which are
    meant to be shareable and must behave the same whether or not the process
    inherited ``AIOEXCLUSIVE_GUARD``. A context variable, so it covers this
    thread's code and the asyncio tasks created inside the block, not other
    threads. A process forked inside the block keeps it for the forking thread;
    a new interpreter does not (its own binds must be inside `exempt` too).
    """
    token = _EXEMPT.set(True)
    try:
        yield
    finally:
        _EXEMPT.reset(token)


def guard(mode: GuardMode = "warn", *, allow: Iterable[AllowEntry] = ()) -> GuardMode:
    """Watch every ``socket.bind`` in this process for shareable sockets.

    A bind is *shareable* when the socket's options let another socket bind
    the same port under the bind plan (`make_plan`): ``SO_REUSEPORT``, UDP
    with ``SO_REUSEADDR``, and on Windows a TCP/UDP socket without
    ``SO_EXCLUSIVEADDRUSE`` or with ``SO_REUSEADDR``. Binds to port 0 are
    judged like any other: the port the system picks is public once bound.
    Turning such an option on with ``setsockopt`` *after* the bind is judged
    too (``raise`` refuses the call, ``enforce`` skips it, ``warn`` warns), and
    so are implicit binds: the first ``sendto``/``sendmsg``/``connect`` of an
    unbound UDP socket and ``listen`` on an unbound TCP socket are judged as a
    bind to the wildcard, port 0 (``enforce`` clears the option first).

    Args:
        mode: ``"warn"``: emit `ExclusivityWarning` naming the address and the
            code that bound it; ``"raise"``: refuse the bind with
            `ExclusivityError` before it happens; ``"enforce"``: fix the socket
            (clear the sharing options, set ``SO_EXCLUSIVEADDRUSE`` on Windows)
            and let the bind proceed; ``"off"``: do nothing.
        allow: binds to leave alone, as ``"HOST:PORT"`` strings (``HOST`` an
            address, a network such as ``"10.0.0.0/8"``, a name as the code
            passes it to ``bind``, or ``"*"``; IPv6 in brackets,
            ``"[::1]:8000"``; ``PORT`` a number, a range ``"8000-8010"`` or
            ``"*"``; ``0`` names binds that let the system pick the port),
            bare port numbers, or ``(host, port)`` tuples with ``None`` for
            "any".

    Returns:
        The previous mode.

    The hook is installed on the first call that is not ``"off"`` and stays
    for the life of the process (audit hooks cannot be removed); each later
    call replaces the mode and the allow list. Multicast binds (to a multicast
    group, or on Windows the wildcard bind of a receiver shaped as the plan
    says) are never touched, nor are AF_UNIX sockets. Binds made in C (uvloop,
    winloop, other extensions) raise no audit event and are not seen.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(map(repr, MODES))}, got {mode!r}")
    patterns = _parse_allow(allow)
    with _install_lock:
        previous = _state.mode
        if mode != "off" and not _state.installed:
            _install()
        _state.allow = patterns
        _state.mode = mode
    return previous


def _install() -> None:
    platform = current_platform()
    # Plans are pure and depend only on (platform, role): compute them once,
    # not on every bind.
    plans = {role: make_plan(role, platform) for role in (Role.TCP_LISTENER, Role.UDP_UNICAST, Role.UDP_MULTICAST)}
    multicast_shape = {name for name, _ in plans[Role.UDP_MULTICAST].set}
    reads = {}
    for role in (Role.TCP_LISTENER, Role.UDP_UNICAST):
        wanted = set(plans[role].never) | {name for name, _ in plans[role].set if name == SO_EXCLUSIVEADDRUSE}
        if role is Role.UDP_UNICAST:
            wanted |= multicast_shape
        reads[role] = tuple((name, const) for name, const in _OPTIONS.items() if name in wanted)
    late: dict[tuple[int, int], tuple[str, int | None]] = {}
    for kind, role in ((socket.SOCK_STREAM, Role.TCP_LISTENER), (socket.SOCK_DGRAM, Role.UDP_UNICAST)):
        for name in plans[role].never:
            if name in _OPTIONS:
                late[(kind, _OPTIONS[name])] = (name, None)
        for name, value in plans[role].set:
            if name == SO_EXCLUSIVEADDRUSE and name in _OPTIONS:
                late[(kind, _OPTIONS[name])] = (name, value)
    _state.plans, _state.reads, _state.late = plans, reads, late
    _state.platform = platform
    sys.addaudithook(_hook)
    # sys.addaudithook silently drops the new hook when an existing hook
    # objects (raises a RuntimeError subclass). A guard that is silently not
    # there is worse than an error, so probe for it.
    _local.probed = False
    sys.audit("aioexclusive.guard.probe")
    if not getattr(_local, "probed", False):
        raise RuntimeError("aioexclusive.guard() could not install its audit hook: another audit hook refused it")
    _wrap_setsockopt()
    # First the holds' wrappers (listen/close/detach: the other family's
    # wildcard held for a one-family wildcard listener), then _wrap_listen
    # around them: the implicit-bind check runs before the hold is taken.
    _guard_holds.install(_state, _local, _EXEMPT, _warn, _origin)
    _wrap_listen()
    _state.installed = True


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audit event in the process: keep the common case to one
    # string comparison and one set lookup.
    if event != "socket.bind":
        if event in _IMPLICIT_EVENTS:
            if _pending:  # empty unless a sharing option was set on an unbound socket
                _hook_implicit(event, args)
        elif event == "aioexclusive.guard.probe":
            _local.probed = True
        return
    if _state.mode == "off" or getattr(_local, "busy", False) or _EXEMPT.get():
        return
    _local.busy = True
    try:
        _check_bind(args)
        if _guard_holds._watched and len(args) == 2:
            # Judged and allowed: if it binds a wildcard we hold, the hold steps aside.
            _guard_holds.before_bind(*args)
    except ExclusivityError:
        raise
    except Exception:  # noqa: BLE001, S110 - see below: the hook must not break a bind
        # A socket we cannot read, an address we do not understand, a bug of
        # ours: the bind proceeds exactly as it would without the guard (it
        # fails on its own if the socket is broken). Raising here would turn
        # every such oddity into a failed bind in someone else's code.
        pass
    finally:
        _local.busy = False


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        # "fe80::1%eth0" carries a scope the ipaddress module only takes on 3.9+
        # with the same spelling; strip it, the scope does not change the class.
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


@functools.lru_cache(maxsize=256)
def _classify(host: str) -> tuple[bool, bool]:
    """(multicast, unspecified) for a numeric address; names are neither.

    inet_pton rather than the ipaddress module: an order of magnitude cheaper
    on the bind path, and servers bind the same few addresses over and over.
    Names are not resolved here (that would be a second lookup, with its own
    audit events, inside the bind): a name is treated as a unicast address.
    """
    text = host.split("%", 1)[0]
    for family, multicast_first, length in ((socket.AF_INET, range(224, 240), 4), (_AF_INET6, range(255, 256), 16)):
        if family is None:
            continue
        try:
            packed = socket.inet_pton(family, text)
        except (OSError, ValueError):
            continue
        return packed[0] in multicast_first, packed == bytes(length)
    return False, False


def _host_text(host: object) -> str | None:
    """The host as ``bind`` will take it: ``str``, or ``bytes``/``bytearray`` (CPython's idna converter takes both)."""
    if type(host) is str:
        return host
    if isinstance(host, str):
        return str(host)
    if isinstance(host, (bytes, bytearray)):
        # Passed to the resolver byte for byte; numeric addresses are ASCII,
        # anything else is a name (judged as a unicast address) either way.
        return bytes(host).decode("ascii", "backslashreplace")
    return None  # the bind itself raises TypeError


def _port_number(port: object) -> int:
    """The port as ``bind`` will take it: an int or any object with ``__index__`` (TypeError otherwise)."""
    if type(port) is int:
        return port
    return operator.index(port)  # type: ignore[arg-type]  # a TypeError is swallowed: the bind raises its own


_Finding = tuple[BindPlan, list[str], list[str], str, int]


def _shareable(sock: object, address: object, change: tuple[str, int] | None) -> _Finding | None:
    """(plan, offending, missing, host, port) if *sock* bound to *address* is shareable, else ``None``.

    *change*: an option about to be set (name, value), judged as if set already.
    """
    if not isinstance(sock, _CSocket):
        return None  # anyone may call sys.audit("socket.bind", ...) with anything
    family = _family_of(sock)
    if family not in _INET:
        return None  # AF_UNIX (its own takeover is a different story), AF_PACKET, Bluetooth...
    if not isinstance(address, tuple) or len(address) < 2:
        return None  # the bind itself will reject it
    host = _host_text(address[0])
    if host is None:
        return None
    port = _port_number(address[1])
    kind = _type_of(sock) & ~_TYPE_FLAGS
    if kind == socket.SOCK_STREAM:
        role = Role.TCP_LISTENER  # a fixed-port TCP client has the same row in every platform's plan
    elif kind == socket.SOCK_DGRAM:
        role = Role.UDP_UNICAST
    else:
        return None  # raw sockets and the like are not what the plan is about
    if host == "":
        host = "0.0.0.0" if family == socket.AF_INET else "::"
    for pattern in _state.allow:
        if pattern.matches(host, port):
            return None

    plans, reads = _state.plans, _state.reads
    assert plans is not None and reads is not None
    values = {name: _getsockopt(sock, socket.SOL_SOCKET, const) for name, const in reads[role]}
    if change is not None:
        values[change[0]] = change[1]
    if role is Role.UDP_UNICAST:
        is_multicast, is_unspecified = _classify(host)
        if is_multicast:
            return None  # a receiver bound to its group: sharing the port is the point
        multicast = plans[Role.UDP_MULTICAST]
        if (
            multicast.bind_to == "wildcard"
            and is_unspecified
            and all(values.get(name) == value for name, value in multicast.set)
        ):
            # Windows' multicast receivers bind the wildcard with SO_REUSEADDR
            # and join the group afterwards; the membership comes later than
            # this event, so the shape the plan prescribes is all we can see.
            # (Linux and BSD receivers bind the group: a wildcard bind there is
            # a unicast socket and is judged as one.)
            return None
    plan = plans[role]
    offending = [name for name in plan.never if values.get(name)]
    missing = [
        name for name, value in plan.set if name == SO_EXCLUSIVEADDRUSE and name in values and values[name] != value
    ]
    if not offending and not missing:
        return None
    return plan, offending, missing, host, port


def _check_bind(args: tuple[Any, ...]) -> None:
    if len(args) != 2:
        return
    sock, address = args
    found = _shareable(sock, address, None)
    if found is None:
        return
    plan, offending, missing, host, port = found
    caller = sys._getframe(2)  # _check_bind <- _hook <- the Python code that called bind()
    if caller.f_globals.get("__name__") == _OWN_BINDER:
        return
    mode = _state.mode
    if caller.f_code.co_name in _SOCKETPAIR and caller.f_globals.get("__name__") == "socket":
        if mode != "warn":
            _fix(sock, plan, offending, missing, host, port)
        return
    if mode == "enforce":
        _fix(sock, plan, offending, missing, host, port)
        return
    message = _describe(plan, offending, missing, host, port, caller)
    if mode == "raise":
        raise ExclusivityError(f"refused a {message}")
    _warn(f"a {message}", _origin(caller), f"refused a {message}")


def _fix(sock: Any, plan: BindPlan, offending: list[str], missing: list[str], host: str, port: int) -> None:
    try:
        # Clear first: Windows refuses SO_EXCLUSIVEADDRUSE on a socket that
        # still has SO_REUSEADDR (WSAEINVAL).
        for name in offending:
            _setsockopt(sock, socket.SOL_SOCKET, _OPTIONS[name], 0)
        for name in missing:
            _setsockopt(sock, socket.SOL_SOCKET, _OPTIONS[name], dict(plan.set)[name])
    except OSError as exc:
        # Letting the bind go ahead would serve a port the user asked us to
        # protect; refuse it instead (the one exception the hook may raise).
        raise ExclusivityError(
            f"aioexclusive.guard('enforce') could not make the {plan.role.protocol} socket for "
            f"{_where(host, port)} exclusive ({exc}), so the bind is refused rather than left shareable"
        ) from exc


# --------------------------------------------------------------------------- implicit binds

# The calls that bind an unbound socket themselves (the kernel's autobind to
# the wildcard address and an ephemeral port) with no socket.bind event: the
# first sendto/sendmsg/connect of a UDP socket, and listen() of a TCP socket.
# A UDP socket with SO_REUSEADDR autobound this way is joinable by any user
# who reads the port from /proc/net/udp (red team D); it must be judged like
# an explicit bind to the wildcard, port 0. TCP connect() is left alone: the
# kernel gives a connecting socket a port bind() cannot share a listener on.
_IMPLICIT_EVENTS = frozenset({"socket.sendto", "socket.sendmsg", "socket.connect"})

# Sockets that had a sharing option turned on while unbound (seen by the
# setsockopt wrapper, which asks the kernel anyway for such a call): the only
# ones an implicit bind can make shareable. Weak references, gone with the
# socket, or dropped once it is found bound. Empty in almost every process, so
# the datagram path (one socket.sendto event per datagram) costs one set
# lookup and one truth test, no system call. An autobound UDP socket that
# disconnects (connect(AF_UNSPEC)) is unbound again; setting the option again
# brings it back here.
_pending: set[weakref.ref[Any]] = set()


def _forget(ref: weakref.ref[Any]) -> None:
    _pending.discard(ref)


def _hook_implicit(event: str, args: tuple[Any, ...]) -> None:
    """An audit event that may autobind a UDP socket: judge it if the socket is still unbound."""
    if _state.mode == "off" or not args:
        return
    sock = args[0]
    # Only reached while some socket is pending (see _pending): is it this one,
    # and is it still unbound?
    if not isinstance(sock, _CSocket) or _type_of(sock) & ~_TYPE_FLAGS != socket.SOCK_DGRAM:
        return
    try:
        ref = weakref.ref(sock)
    except TypeError:
        return  # a bare _socket.socket: its setsockopt never passed the wrapper either
    if ref not in _pending:
        return
    try:
        bound = _getsockname(sock)
    except OSError:
        return
    if type(bound) is not tuple or len(bound) < 2:
        return  # AF_UNIX and other names: not ours
    if bound[1] != 0:
        _pending.discard(ref)  # bound (explicitly, or by an earlier call): judged then
        return
    _check_implicit(sock, event[len("socket.") :] + "()", 3)  # _check_implicit <- _hook_implicit <- _hook <- caller


def _check_implicit(sock: Any, call: str, depth: int) -> None:
    """`_judge_implicit` from a wrapper or hook: skipped on re-entry and when exempt, never failing but to refuse.

    *depth*: frames from here up to the program's call.
    """
    if getattr(_local, "busy", False) or _EXEMPT.get():
        return
    _local.busy = True
    try:
        _judge_implicit(sock, call, depth + 1)
    except ExclusivityError:
        raise
    except Exception:  # noqa: BLE001, S110 - as in _hook: our trouble must not break someone's sendto or listen
        pass
    finally:
        _local.busy = False


def _judge_implicit(sock: Any, call: str, depth: int) -> None:
    """Judge *sock* as bound to its family's wildcard, port 0, if it is not bound yet (*call* autobinds it).

    Only options set on purpose are judged (``offending``): a socket merely
    lacking ``SO_EXCLUSIVEADDRUSE`` on Windows is every client socket there,
    and an explicit bind is where that is judged.
    """
    family = _family_of(sock)
    if family not in _INET:
        return
    try:
        bound = _getsockname(sock)
    except OSError:
        return
    if not isinstance(bound, tuple) or len(bound) < 2 or bound[1] != 0:
        return  # bound already (explicitly, or by an earlier call): nothing is bound now
    found = _shareable(sock, ("0.0.0.0" if family == socket.AF_INET else "::", 0), None)
    if found is None:
        return
    plan, offending, _, host, port = found
    if not offending:
        return
    caller = sys._getframe(depth)
    if caller.f_globals.get("__name__") == _OWN_BINDER:
        return
    mode = _state.mode
    if mode == "enforce":
        _fix(sock, plan, offending, [], host, port)
        return
    message = _describe(plan, offending, [], host, port, caller, implicit=call)
    if mode == "raise":
        raise ExclusivityError(f"refused a {message}")
    _warn(f"a {message}", _origin(caller), f"refused a {message}")


def _wrap_listen() -> None:
    """Route ``socket.socket.listen`` through `_check_implicit` (once): ``listen()`` raises no audit event.

    A TCP socket that listens without a bind is bound by the kernel to the
    wildcard and an ephemeral port, with its options: ``SO_REUSEPORT`` there
    lets any socket of the same user join it.
    """
    inner = socket.socket.listen
    if getattr(inner, "__aioexclusive_guard__", False):
        return

    def listen(self: socket.socket, *args: Any) -> None:
        # Once per listener, not a hot path; the unbound check is one getsockname.
        if _state.mode != "off" and isinstance(self, _CSocket) and _type_of(self) & ~_TYPE_FLAGS == socket.SOCK_STREAM:
            _check_implicit(self, "listen()", 2)  # _check_implicit <- this wrapper <- its caller
        return inner(self, *args)

    _guard_holds.put_on_socket_class("listen", listen, inner, "__aioexclusive_guard__")


# --------------------------------------------------------------------------- late setsockopt


def _option_value(args: tuple[Any, ...]) -> int | None:
    """The value a ``setsockopt(level, name, value[, optlen])`` call sets, as an int (``None``: not judged)."""
    if len(args) != 3:
        return None  # (level, name, None, optlen) sets nothing readable; bad calls fail on their own
    value = args[2]
    if isinstance(value, int):
        return int(value)
    try:
        data = bytes(memoryview(value))
    except TypeError:
        return None
    # A packed int (struct.pack("i", 1)): any nonzero byte turns the option on.
    return int(any(data))


def _wrap_setsockopt() -> None:
    """Route ``socket.socket.setsockopt`` through `_late_option` (once; audit events do not cover it)."""
    inner = socket.socket.setsockopt
    if getattr(inner, "__aioexclusive_guard__", False):
        return
    # And SO_BINDTODEVICE (Linux): a listener bound to one interface afterwards (`_late_device`).
    watched = frozenset(_OPTION_NAMES) | (_DEVICE_OPTIONS if HOLDS_WILDCARDS and _SO_BINDTODEVICE else frozenset())
    sol_socket = socket.SOL_SOCKET

    def setsockopt(self: socket.socket, *args: Any) -> None:
        # Every setsockopt of the process passes here (asyncio sets
        # TCP_NODELAY on each connection): one tuple index and one set lookup
        # for anything that is not a sharing option.
        if len(args) >= 3 and args[1] in watched and args[0] == sol_socket and _state.mode != "off":
            if _late_option(self, args):
                return None  # enforce: the option stays off, the socket exclusive
        return inner(self, *args)

    _guard_holds.put_on_socket_class("setsockopt", setsockopt, inner, "__aioexclusive_guard__")


def _late_option(sock: Any, args: tuple[Any, ...]) -> bool:
    """Judge a sharing option set on an already bound socket; ``True``: skip the call (enforce)."""
    # First, with no system call: can this option make this kind of socket
    # shareable at all? (create_server sets SO_REUSEADDR on every TCP
    # listener, which the POSIX plans allow: that call stops here.)
    if not isinstance(sock, _CSocket):
        return False
    if args[1] in _DEVICE_OPTIONS:
        _late_device(sock, args[1], args[2])
        return False
    kind = _type_of(sock) & ~_TYPE_FLAGS
    if kind == socket.SOCK_STREAM and HOLDS_WILDCARDS:
        _adopt_if_listening(sock)
    rule = _state.late.get((kind, args[1]))
    if rule is None or getattr(_local, "busy", False) or _EXEMPT.get():
        return False
    _local.busy = True
    try:
        return _check_late_option(sock, args)
    except ExclusivityError:
        raise
    except Exception:  # noqa: BLE001 - as in _hook: our trouble must not break someone's setsockopt
        return False
    finally:
        _local.busy = False


_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25) if sys.platform.startswith("linux") else None
# SO_BINDTOIFINDEX (Linux 5.0): the same binding by interface index.
_SO_BINDTOIFINDEX = getattr(socket, "SO_BINDTOIFINDEX", 62)
_DEVICE_OPTIONS: frozenset[int] = (
    frozenset({_SO_BINDTODEVICE, _SO_BINDTOIFINDEX}) if _SO_BINDTODEVICE is not None else frozenset()
)


def _device_named(option: int, value: Any) -> str | None:
    """The interface a ``SO_BINDTODEVICE``/``SO_BINDTOIFINDEX`` value binds to, ``""`` for none, ``None`` if unreadable.

    Read as the kernel reads it: a name (bytes, or an int, whose native bytes
    the kernel takes as the name's first four characters) or an index.
    """
    if isinstance(value, int):
        try:
            raw = value.to_bytes(4, sys.byteorder, signed=value < 0)
        except OverflowError:
            return None  # the call fails on its own
    else:
        try:
            raw = memoryview(value).tobytes()
        except TypeError:
            return None  # the call fails on its own
    if option == _SO_BINDTOIFINDEX:
        index = int.from_bytes(raw[:4].ljust(4, b"\0"), sys.byteorder)
        if not index:
            return ""
        try:
            return socket.if_indextoname(index)
        except OSError:
            return f"interface {index}"
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def _late_device(sock: Any, option: int, value: Any) -> None:
    """``SO_BINDTODEVICE`` set on a TCP socket that listens already: judged as `listen()` judges a device-bound one.

    Before ``listen()`` nothing is judged here: the ``listen`` wrapper reads the
    option then. ``raise`` refuses the call (the option is not set); ``enforce``
    and ``warn`` warn and let it be set (clearing it would open the listener
    to every interface).
    """
    if getattr(_local, "busy", False) or _EXEMPT.get():
        return
    device = _device_named(option, value)
    if not device:
        return  # unreadable (the call fails on its own), or unbinding from the interface
    refusal = _judged(_guard_holds.device_refusal, sock, _state.mode, device, listening_only=True)
    if refusal is None:
        return
    if _state.mode == "raise":
        raise refusal
    caller = sys._getframe(3)  # _late_device <- _late_option <- setsockopt wrapper <- its caller
    cannot = "" if _state.mode == "warn" else "; guard('enforce') cannot fix this and lets it be set"
    name = "SO_BINDTOIFINDEX" if option == _SO_BINDTOIFINDEX else "SO_BINDTODEVICE"
    _warn(f"{refusal}{cannot}", _origin(caller), f"refused setsockopt({name}): {refusal}")


def _judged(judge: Callable[..., _T], *args: Any, **kwargs: Any) -> _T | None:
    """One of `_guard_holds`' judgements, run with this thread's busy flag up (the sockets it opens and
    reads are not judged in turn); our trouble, as in _hook, must not break the program's call: None."""
    _local.busy = True
    try:
        return judge(*args, **kwargs)
    except Exception:  # noqa: BLE001
        return None
    finally:
        _local.busy = False


def _adopt_if_listening(sock: Any) -> None:
    """A sharing option set on a TCP socket that listens already and is not known yet: hold for it as at ``listen()``.

    gunicorn's re-executed master (its USR2 upgrade) never calls ``listen()``
    on the listener it inherits, which listens already, but sets
    ``SO_REUSEADDR`` on it: the only call of the guard's it passes. One
    ``getsockopt`` (``SO_ACCEPTCONN``) per such call on a TCP socket.
    """
    if getattr(_local, "busy", False) or _EXEMPT.get():
        return
    problem = _judged(_guard_holds.on_listening, sock, _state.mode)
    if problem is not None:
        refusal = f"refused setsockopt() on a {problem}"
        if _state.mode == "raise":
            raise ExclusivityError(refusal)
        caller = sys._getframe(3)  # _adopt_if_listening <- _late_option <- setsockopt wrapper <- its caller
        _warn(f"a {problem}", _origin(caller), refusal)


def _check_late_option(sock: Any, args: tuple[Any, ...]) -> bool:
    value = _option_value(args)
    rule = _state.late[(_type_of(sock) & ~_TYPE_FLAGS, args[1])]
    if value is None or (not value if rule[1] is None else value == rule[1]) or _family_of(sock) not in _INET:
        return False  # turning the option off (or the plan's value on): nothing to judge
    try:
        bound = _getsockname(sock)
    except OSError:
        return False
    if not isinstance(bound, tuple) or len(bound) < 2 or bound[1] == 0:
        # Not bound (yet, or again: an autobound UDP socket that disconnected):
        # an explicit bind is judged with this option in place; an implicit
        # one (sendto/sendmsg/connect) only for the sockets noted here.
        with contextlib.suppress(TypeError):
            _pending.add(weakref.ref(sock, _forget))
        return False
    name = _OPTION_NAMES[args[1]]
    found = _shareable(sock, bound, (name, value))
    if found is None:
        return False
    plan, offending, missing, host, port = found
    if name not in offending and name not in missing:
        return False  # shareable already (warned at bind, or allowed); this call adds nothing
    # Only now: sys._getframe materializes frame objects, which costs.
    caller = sys._getframe(3)  # _check_late_option <- _late_option <- setsockopt wrapper <- its caller
    if caller.f_globals.get("__name__") == _OWN_BINDER:
        return False
    mode = _state.mode
    if mode == "enforce":
        return True
    change = f"setsockopt({name}, {value}) after the bind"
    message = _describe(
        plan, [n for n in offending if n == name], [n for n in missing if n == name], host, port, caller, change
    )
    if mode == "raise":
        raise ExclusivityError(f"refused {message}")
    _warn(message, _origin(caller), f"refused {message}")
    return False


# --------------------------------------------------------------------------- messages


def _where(host: str, port: int) -> str:
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    return where + " (a port the system picks)" if port == 0 else where


def _frame_text(frame: FrameType) -> str:
    return f"{frame.f_code.co_filename}:{frame.f_lineno} in {frame.f_code.co_name}"


def _origin(frame: FrameType) -> FrameType:
    """The first frame above the stdlib plumbing (socket.create_server, asyncio...)."""
    current: FrameType | None = frame
    while current is not None:
        name = str(current.f_globals.get("__name__", ""))
        if name.split(".", 1)[0] not in _PLUMBING:
            return current
        current = current.f_back
    return frame


def _describe(
    plan: BindPlan,
    offending: list[str],
    missing: list[str],
    host: str,
    port: int,
    caller: FrameType,
    change: str | None = None,
    implicit: str | None = None,
) -> str:
    what = "connections" if plan.role.protocol == "TCP" else "datagrams"
    reasons = []
    for name in offending:
        who = _who_can_share(plan.platform, plan.role, name)
        who = f"a socket {who}" if who.startswith("of ") else who  # "of any user" (Linux UDP SO_REUSEADDR)
        reasons.append(f"{name} lets {who} bind the same port and receive its {what}")
    reasons += [f"{name} is not set: {plan.why}" for name in missing]
    origin = _origin(caller)
    where = _frame_text(caller)
    if origin is not caller:
        where += f", called from {_frame_text(origin)}"
    address = _where(host, port)
    pattern = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if implicit is not None:
        head = f"shareable {plan.role.protocol} socket bound implicitly by {implicit} to {address}"
        fix = "makes such sockets exclusive before they bind"
    elif change is None:
        head = f"shareable {plan.role.protocol} bind to {address}"
        fix = "makes such sockets exclusive before they bind"
    else:
        head = f"{change} of the {plan.role.protocol} socket on {address}"
        fix = "leaves such late options unset"
    return (
        f"{head} (at {where}): {'; '.join(reasons)}. "
        f"aioexclusive.guard('enforce') {fix}; if the sharing is "
        f"intended, allow it with guard(..., allow=[{pattern!r}])"
    )


def _warn(message: str, frame: FrameType, refusal: str) -> None:
    """Emit `ExclusivityWarning` attributed to *frame*; never silently nothing.

    warn_explicit with the frame's own module and registry: attributed to the
    code that bound the socket, like warnings.warn(stacklevel=N) would be if
    there were a fixed N between an audit hook and that code. Passing
    ``module_globals`` lets the warning show source that is not a plain file
    (zip imports), but makes warn_explicit ask the module's loader for it, and
    some loaders raise there: ``__main__`` under ``python -c`` or read from
    stdin has BuiltinImporter, whose get_source raises ImportError. Each
    failure falls back to a plainer way, down to a line on stderr.
    """
    module_globals = frame.f_globals
    filename, lineno = frame.f_code.co_filename, frame.f_lineno
    module = str(module_globals.get("__name__", "<unknown>"))
    registry = module_globals.get("__warningregistry__")
    if not isinstance(registry, dict):
        registry = {}
        with contextlib.suppress(Exception):
            module_globals["__warningregistry__"] = registry
    ways: tuple[Callable[[], None], ...] = (
        lambda: warnings.warn_explicit(
            message,
            ExclusivityWarning,
            filename,
            lineno,
            module=module,
            registry=registry,
            module_globals=module_globals,
        ),
        lambda: warnings.warn_explicit(message, ExclusivityWarning, filename, lineno, module=module, registry=registry),
        lambda: warnings.warn(message, ExclusivityWarning, stacklevel=2),
    )
    failure: BaseException | None = None
    for way in ways:
        try:
            way()
            return
        except ExclusivityWarning as exc:
            # The warning filters turned it into an error (-W error, pytest's
            # filterwarnings): the user asked for warn to be fatal, which is what
            # "raise" does; keep the promise that only ExclusivityError leaves.
            raise ExclusivityError(refusal) from exc
        except Exception as exc:  # noqa: BLE001 - try the next, plainer way
            failure = exc
    try:
        sys.stderr.write(
            f"{filename}:{lineno}: ExclusivityWarning: {message} (the warnings machinery failed: {failure!r})\n"
        )
    except Exception:  # noqa: BLE001, S110 - no warnings and no stderr: nothing is left to report with
        pass


def _parse_port(text: str, entry: object) -> tuple[int, int] | None:
    if text == "*":
        return None
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise ValueError(f"allow entry {entry!r}: the port must be a number, a range like 8000-8010 or '*'") from None
    if not (0 <= first <= last <= 65535):
        # 0 names the binds that let the system pick the port ("127.0.0.1:0").
        raise ValueError(f"allow entry {entry!r}: ports must be 0-65535 (low-high; 0: the system picks)")
    return (first, last)


def _make_pattern(host: str | None, port: str, entry: object) -> _Pattern:
    ports = _parse_port(port, entry)
    if host in (None, "", "*"):
        return _Pattern(str(entry), None, None, ports)
    assert host is not None
    try:
        network = ipaddress.ip_network(host.split("%", 1)[0], strict=False)
    except ValueError:
        if "/" in host:
            raise ValueError(f"allow entry {entry!r}: {host!r} is not a valid network") from None
        return _Pattern(str(entry), host.lower(), None, ports)
    return _Pattern(str(entry), None, network, ports)


def _parse_entry(entry: object) -> _Pattern:
    if isinstance(entry, bool):
        raise TypeError(f"allow entries must be 'HOST:PORT' strings, ports or (host, port) tuples, got {entry!r}")
    if isinstance(entry, int):
        return _make_pattern(None, str(entry), entry)
    if isinstance(entry, tuple):
        if len(entry) != 2 or not (entry[0] is None or isinstance(entry[0], str)):
            raise TypeError(f"allow tuples must be (host or None, port or None), got {entry!r}")
        port = entry[1]
        if port is not None and (isinstance(port, bool) or not isinstance(port, (int, str))):
            raise TypeError(f"allow tuples must be (host or None, port or None), got {entry!r}")
        return _make_pattern(entry[0], "*" if port is None else str(port), entry)
    if not isinstance(entry, str):
        raise TypeError(f"allow entries must be 'HOST:PORT' strings, ports or (host, port) tuples, got {entry!r}")
    text = entry.strip()
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            raise ValueError(f"allow entry {entry!r}: write IPv6 as '[ADDRESS]:PORT'")
        return _make_pattern(host, rest[1:], entry)
    if text.count(":") != 1:
        raise ValueError(
            f"allow entry {entry!r}: expected 'HOST:PORT' (IPv6 as '[ADDRESS]:PORT', any host as '*:PORT')"
        )
    host, _, port = text.partition(":")
    return _make_pattern(host, port, entry)


def _parse_allow(allow: Iterable[AllowEntry]) -> tuple[_Pattern, ...]:
    if isinstance(allow, (str, bytes, int)) or not isinstance(allow, Iterable):
        raise TypeError(f"allow must be a list of 'HOST:PORT' strings, ports or (host, port) tuples, got {allow!r}")
    return tuple(_parse_entry(entry) for entry in allow)


def activate_from_environment() -> None:
    """Turn the guard on as ``AIOEXCLUSIVE_GUARD`` says; the ``.pth`` file calls this.

    Runs during interpreter start-up, so it never raises: a bad value is
    reported on stderr in one line and the program starts unguarded.
    ``AIOEXCLUSIVE_GUARD_ALLOW`` holds ``allow=`` entries separated by commas
    or spaces.
    """
    value = os.environ.get(ENV_VAR, "").strip().lower()
    if not value or _state.from_environment:
        return
    # Once per process: some interpreters (pyenv-built venvs among them) walk
    # site-packages twice at start-up, and a bad value should be reported once.
    _state.from_environment = True
    try:
        if value not in MODES:
            raise ValueError(f"expected one of {', '.join(MODES)}")
        allow = os.environ.get(ENV_ALLOW, "").replace(",", " ").split()
        guard(value, allow=allow)
        if value != "off":
            # Servers that bind in C or decide on sharing before the bind (grpc, uvloop, gunicorn...).
            __import__("aioexclusive._import_hooks")._import_hooks.activate()
    except Exception as exc:  # noqa: BLE001 - start-up must go on, whatever went wrong
        try:
            sys.stderr.write(f"aioexclusive: {ENV_VAR}={value!r} ignored, the guard is NOT on: {exc}\n")
        except Exception:  # noqa: BLE001, S110 - no stderr to report on
            pass
