"""The process-wide guard: an audit hook on ``socket.bind``.

The exclusive loops only protect sockets they create. Much server code binds
its own sockets first (``socket.create_server``, uvicorn's and hypercorn's
pre-binding, gunicorn, libraries calling ``bind``) and asyncio only ever sees
the result. CPython raises the audit event ``socket.bind`` with the socket and
the address *before* the system call, for every bind made through the
``socket`` module, so a hook added with ``sys.addaudithook`` sees every such
socket in the process while its options can still be checked or changed.

What this cannot see: binds made in C without the ``socket`` module (uvloop
and winloop bind through libuv, other extension modules call ``bind(2)``
themselves) raise no audit event. Use the exclusive loops for those.

Three facts shape the code below:

* Audit hooks cannot be removed, and the hook is called for *every* audit
  event in the process (imports, ``open``, ``exec``...), so the first line
  throws away everything that is not a ``socket.bind`` with one comparison,
  and ``guard()`` only ever swaps the mode the hook reads.
* An exception raised in an audit hook aborts the operation that raised the
  event. That is how ``raise`` refuses a bind, and also why any *other*
  exception here would break innocent code: everything but our own
  `ExclusivityError` is swallowed.
* ``getsockopt``/``setsockopt`` raise no audit event (only ``socket.__new__``,
  ``bind``, ``connect``, ``sendto``/``sendmsg`` and the name lookups do), so
  fixing a socket from inside the hook does not re-enter it. A guard against
  re-entry stays anyway: a ``showwarning`` replacement may well open sockets.
"""

from __future__ import annotations

import _socket
import functools
import ipaddress
import os
import socket
import sys
import threading
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from types import FrameType
from typing import Any, Literal, Union

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

__all__ = ["ENV_ALLOW", "ENV_VAR", "MODES", "GuardMode", "activate_from_environment", "current_mode", "guard"]

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

_AF_INET6 = getattr(socket, "AF_INET6", None)
_TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_OPTIONS = {name: getattr(socket, name) for name in SHARING_OPTIONS if hasattr(socket, name)}

# The frames of these modules are plumbing between the code that asked for a
# socket and the bind; a warning points past them, at the code that asked.
_PLUMBING = ("socket", "asyncio", "selectors", "ssl")
# aioexclusive's own binds have already been planned (a reuse_port socket there
# is the caller's explicit allow_reuse_port=True), so the guard trusts them.
_OWN_BINDER = "aioexclusive._binding"


@dataclass(frozen=True)
class _Pattern:
    """One ``allow=`` entry: a host (or network) and a port range."""

    text: str
    host: str | None  # None: any host; otherwise a name compared as given
    network: ipaddress.IPv4Network | ipaddress.IPv6Network | None
    ports: tuple[int, int] | None  # None: any port

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
    from_environment: bool = False


_state = _State()
_local = threading.local()
_install_lock = threading.Lock()


def current_mode() -> GuardMode:
    """The mode the guard is in (``"off"`` when it was never turned on)."""
    return _state.mode


def guard(mode: GuardMode = "warn", *, allow: Iterable[AllowEntry] = ()) -> GuardMode:
    """Watch every ``socket.bind`` in this process for shareable sockets.

    A bind is *shareable* when the socket's options let another socket bind
    the same port under the bind plan (`make_plan`): ``SO_REUSEPORT``, UDP
    with ``SO_REUSEADDR``, and on Windows a TCP/UDP socket without
    ``SO_EXCLUSIVEADDRUSE`` or with ``SO_REUSEADDR``.

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
            ``"*"``), bare port numbers, or ``(host, port)`` tuples with
            ``None`` for "any".

    Returns:
        The previous mode.

    The hook is installed on the first call that is not ``"off"`` and stays
    for the life of the process (audit hooks cannot be removed); each later
    call replaces the mode and the allow list. Multicast binds (to a multicast
    group, or on Windows the wildcard bind of a receiver shaped as the plan
    says) are never touched, nor are AF_UNIX sockets and port 0 binds. Binds
    made in C (uvloop, winloop, other extensions) raise no audit event and are
    not seen.
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
    _state.plans, _state.reads = plans, reads
    _state.platform = platform
    sys.addaudithook(_hook)
    # sys.addaudithook silently drops the new hook when an existing hook
    # objects (raises a RuntimeError subclass). A guard that is silently not
    # there is worse than an error, so probe for it.
    _local.probed = False
    sys.audit("aioexclusive.guard.probe")
    if not getattr(_local, "probed", False):
        raise RuntimeError("aioexclusive.guard() could not install its audit hook: another audit hook refused it")
    _state.installed = True


def _hook(event: str, args: tuple[Any, ...]) -> None:
    # Called for every audit event in the process: keep the common case to one
    # string comparison.
    if event != "socket.bind":
        if event == "aioexclusive.guard.probe":
            _local.probed = True
        return
    if _state.mode == "off" or getattr(_local, "busy", False):
        return
    _local.busy = True
    try:
        _check_bind(args)
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


def _check_bind(args: tuple[Any, ...]) -> None:
    if len(args) != 2:
        return
    sock, address = args
    if not isinstance(sock, _CSocket):
        return  # anyone may call sys.audit("socket.bind", ...) with anything
    family = _family_of(sock)
    if family not in (socket.AF_INET, getattr(socket, "AF_INET6", None)):
        return  # AF_UNIX (its own takeover is a different story), AF_PACKET, Bluetooth...
    if not isinstance(address, tuple) or len(address) < 2:
        return  # the bind itself will reject it
    host, port = address[0], address[1]
    if not isinstance(host, str) or not isinstance(port, int) or port == 0:
        return  # port 0: an ephemeral port nobody can aim at in advance
    kind = _type_of(sock) & ~_TYPE_FLAGS
    if kind == socket.SOCK_STREAM:
        role = Role.TCP_LISTENER  # a fixed-port TCP client has the same row in every platform's plan
    elif kind == socket.SOCK_DGRAM:
        role = Role.UDP_UNICAST
    else:
        return  # raw sockets and the like are not what the plan is about
    if host == "":
        host = "0.0.0.0" if family == socket.AF_INET else "::"
    for pattern in _state.allow:
        if pattern.matches(host, port):
            return

    plans, reads = _state.plans, _state.reads
    assert plans is not None and reads is not None
    values = {name: _getsockopt(sock, socket.SOL_SOCKET, const) for name, const in reads[role]}
    if role is Role.UDP_UNICAST:
        is_multicast, is_unspecified = _classify(host)
        if is_multicast:
            return  # a receiver bound to its group: sharing the port is the point
        multicast = plans[Role.UDP_MULTICAST]
        if (
            multicast.bind_to == "wildcard"
            and is_unspecified
            and all(values.get(name) == value for name, value in multicast.set)
        ):
            # Windows' multicast receivers bind the wildcard with SO_REUSEADDR
            # and join the group afterwards; the membership comes later than
            # this event, so the shape the plan prescribes is all we can see.
            return
    plan = plans[role]
    offending = [name for name in plan.never if values.get(name)]
    missing = [name for name, value in plan.set if name == SO_EXCLUSIVEADDRUSE and name in values and values[name] != value]
    if not offending and not missing:
        return

    caller = sys._getframe(2)  # _check_bind <- _hook <- the Python code that called bind()
    if caller.f_globals.get("__name__") == _OWN_BINDER:
        return
    mode = _state.mode
    if mode == "enforce":
        _fix(sock, plan, offending, missing, host, port)
        return
    message = _describe(plan, offending, missing, host, port, caller)
    if mode == "raise":
        raise ExclusivityError(f"refused a {message}")
    _warn(f"a {message}", _origin(caller))


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


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


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


def _describe(plan: BindPlan, offending: list[str], missing: list[str], host: str, port: int, caller: FrameType) -> str:
    what = "connections" if plan.role.protocol == "TCP" else "datagrams"
    reasons = [
        f"{name} lets {_who_can_share(plan.platform, plan.role, name)} bind the same port and receive its {what}"
        for name in offending
    ]
    reasons += [f"{name} is not set: {plan.why}" for name in missing]
    origin = _origin(caller)
    where = _frame_text(caller)
    if origin is not caller:
        where += f", called from {_frame_text(origin)}"
    return (
        f"shareable {plan.role.protocol} bind to {_where(host, port)} (at {where}): {'; '.join(reasons)}. "
        f"aioexclusive.guard('enforce') makes such sockets exclusive before they bind; if the sharing is "
        f"intended, allow it with guard(..., allow=[{_where(host, port)!r}])"
    )


def _warn(message: str, frame: FrameType) -> None:
    # warn_explicit with the frame's own module and registry: attributed to the
    # code that bound the socket, like warnings.warn(stacklevel=N) would be if
    # there were a fixed N between an audit hook and that code.
    module_globals = frame.f_globals
    registry = module_globals.setdefault("__warningregistry__", {})
    try:
        warnings.warn_explicit(
            message,
            ExclusivityWarning,
            frame.f_code.co_filename,
            frame.f_lineno,
            module=str(module_globals.get("__name__", "<unknown>")),
            registry=registry,
            module_globals=module_globals,
        )
    except ExclusivityWarning as exc:
        # The warning filters turned it into an error (-W error, pytest's
        # filterwarnings): the user asked for warn to be fatal, which is what
        # "raise" does; keep the promise that only ExclusivityError leaves.
        raise ExclusivityError(f"refused a {message}") from exc


def _parse_port(text: str, entry: object) -> tuple[int, int] | None:
    if text == "*":
        return None
    low, sep, high = text.partition("-")
    try:
        first = int(low)
        last = int(high) if sep else first
    except ValueError:
        raise ValueError(f"allow entry {entry!r}: the port must be a number, a range like 8000-8010 or '*'") from None
    if not (0 < first <= last <= 65535):
        raise ValueError(f"allow entry {entry!r}: ports must be 1-65535 (low-high)")
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
