"""The guard's holds: the other family's wildcard, kept while a one-family wildcard listener lives (Linux).

The exclusive loops defend their own wildcard listeners against the two-step
``SO_REUSEPORT`` takeover (`aioexclusive._wildcard` explains the kernel side)
by binding the *other* family's wildcard on the same port with an
option-free socket that never listens (a *hold*). The guard judges options,
and options alone cannot stop that takeover: a ``0.0.0.0:P`` listener with no
sharing option at all is taken over by another user who primes ``[::]:P``
(IPv6-only, ``SO_REUSEPORT``), closes it, and binds a dual-stack ``[::]:P``.
So under ``raise`` and ``enforce`` the guard holds too, for every TCP socket
of the process that starts listening on one family's wildcard (``0.0.0.0``,
or ``::`` with ``IPV6_V6ONLY``), whoever created it: plain asyncio,
``socketserver``, uvicorn, hypercorn, gunicorn.

``listen()``, ``close()`` and ``detach()`` raise no audit event, so the guard
wraps them on the Python class (``socket.socket``), like ``setsockopt``:

* ``listen`` (`on_listen`): before the system call, bind the hold. If the
  other family's wildcard is already taken, by a socket of this very process
  (asyncio's ``create_server(host=None)`` binds both families, then listens
  on each) nothing is needed; by anyone else, the listener can be taken over
  and `on_listen` says so (``raise`` refuses the listen, ``enforce`` warns).
* ``_real_close`` (the system call behind ``close()`` and the last
  ``makefile`` close) and ``detach`` (`on_release`): the hold goes with the
  listener; a weak reference covers a listener that is only garbage
  collected.
* a later bind of the held family's wildcard on the same port by this
  process (``hypercorn --bind 0.0.0.0:P --bind [::]:P``) releases the hold
  just before that bind's system call (`before_bind`, from the audit hook).
  Another socket object cannot become the held one, so there is a window of
  a few microseconds. It gives an attacker nothing silent: the program's
  socket has no ``SO_REUSEPORT`` (``raise`` refused it, ``enforce`` cleared
  it, before this runs), so its bind either succeeds, and joining the bind
  bucket without ``SO_REUSEPORT`` erases whatever reuseport record a prime
  left there, or fails with ``EADDRINUSE``, which the program sees. If that
  socket is closed without listening, the hold is bound again.

Pre-forking servers (gunicorn, uvicorn and hypercorn with workers) listen
in one process, which holds for all of them. A process that is given a socket
that listens already (a spawned worker, gunicorn's re-executed master after a
USR2 upgrade) and calls ``listen`` again (or, gunicorn's master, sets
``SO_REUSEADDR`` on it) cannot bind its hold next to the one that process
has: it is not reported when the holder is of this user (``/proc/net``), but
the listener is registered and a daemon thread tries the hold again
(`_want`), so the port is held again once the other process lets go (the
old master exits). Before, the port was left unheld after a hand-off.
"""

from __future__ import annotations

import _socket
import errno
import functools
import os
import socket
import sys
import threading
import time
import warnings
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

from ._errors import ExclusivityError, ExclusivityWarning
from ._wildcard import (
    HOLDS_WILDCARDS,
    HeldListener,
    _bind_hold,
    demote_spare,
    hold_uncovered,
    is_wildcard,
    wildcard_families,
)

__all__ = ["before_bind", "install", "on_listen", "on_release", "watching"]

_STREAM = int(socket.SOCK_STREAM)
_TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)
_AF_INET = int(socket.AF_INET)
_AF_INET6 = int(getattr(socket, "AF_INET6", -1))
_OTHER = {_AF_INET: _AF_INET6, _AF_INET6: _AF_INET}
_WILDCARD = {_AF_INET: "0.0.0.0", _AF_INET6: "::"}
_SO_REUSEPORT = getattr(socket, "SO_REUSEPORT", None)
_SO_ACCEPTCONN = getattr(socket, "SO_ACCEPTCONN", None)
_ON_LINUX = sys.platform.startswith("linux")

_CSocket = _socket.socket  # C-level methods: a subclass cannot override what the guard reads
_family_of = _CSocket.family.__get__
_type_of = _CSocket.type.__get__
_getsockname = _CSocket.getsockname
_getsockopt = _CSocket.getsockopt

_lock = threading.RLock()


class _Port:
    """This process's listeners on one TCP port, and the holds it keeps for them."""

    __slots__ = ("holds", "listeners")

    def __init__(self) -> None:
        # id(sock) -> (ref, family covered, fork generation at registration)
        self.listeners: dict[int, tuple[weakref.ref[Any], int, int]] = {}
        self.holds: dict[int, socket.socket] = {}  # family -> hold socket


_ports: dict[int, _Port] = {}
# id(sock) -> port, for every registered listener and every socket that
# bound a released hold's family (pending): the close/detach wrappers look
# only here, so the cost for every other socket of the process is one lookup.
_watched: dict[int, int] = {}
_pending: dict[int, tuple[weakref.ref[Any], int, int]] = {}  # id(sock) -> (ref, port, family)


def watching() -> bool:
    """Does any socket of this process have a hold or a pending release? (The wrappers' fast path.)"""
    return bool(_watched)


def _one_family_wildcard(sock: Any) -> tuple[int, int] | None:
    """(family, port) when *sock* is a TCP socket bound to exactly one family's wildcard, else None."""
    if not isinstance(sock, _CSocket) or _type_of(sock) & ~_TYPE_FLAGS != _STREAM:
        return None
    family = int(_family_of(sock))
    if family not in _OTHER:
        return None
    bound = _getsockname(sock)
    if not isinstance(bound, tuple) or len(bound) < 2 or not bound[1] or not is_wildcard(family, bound):
        return None
    # ::ffff:0.0.0.0 (dual-stack, the only way it binds) is the IPv4 wildcard alone.
    covers = wildcard_families(family, bound, _v6only(sock, family))
    if len(covers) != 1:
        return None  # dual-stack [::]: both wildcards are this socket, nothing to hold
    return next(iter(covers)), int(bound[1])


def _v6only(sock: Any, family: int) -> bool:
    return family == _AF_INET6 and bool(_getsockopt(sock, socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))


def _own_socket_on(family: int, port: int) -> bool:
    """Is *family*'s wildcard on *port* bound by a socket of this process without ``SO_REUSEPORT``?

    Only asked when a hold cannot be bound (rare), so reading /proc/self/fd is affordable.
    A dual-stack ``[::]`` counts for both families.
    """
    try:
        fds = os.listdir("/proc/self/fd")
    except OSError:
        return False
    for name in fds:
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
            probe = _CSocket(fileno=os.dup(int(name)))
        except (OSError, ValueError):
            continue
        try:
            if _type_of(probe) & ~_TYPE_FLAGS != _STREAM or int(_family_of(probe)) not in _OTHER:
                continue
            bound = _getsockname(probe)
            if not isinstance(bound, tuple) or len(bound) < 2 or bound[1] != port:
                continue
            own = int(_family_of(probe))
            if not is_wildcard(own, bound):
                continue
            if _SO_REUSEPORT is not None and _getsockopt(probe, socket.SOL_SOCKET, _SO_REUSEPORT):
                continue  # shareable: not a hold, whoever owns it
            if family in wildcard_families(own, bound, _v6only(probe, own)):
                return True
        except OSError:
            continue
        finally:
            probe.close()
    return False


def _foreign_holder(family: int, port: int) -> bool:
    """Is *family*'s wildcard on *port* bound by a socket of another user (``/proc/net``'s uid column)?

    Asked only when a listener that listens already (inherited, handed
    over) cannot get its hold: rare, so reading the tables is affordable.
    Unreadable tables answer False, as before this was asked.
    """
    from ._procnet import WILDCARD_ADDRESSES, read_sockets

    try:
        rows = read_sockets(("tcp", "tcp6"), ports=[port])
    except OSError:
        return False
    # Root's are not another user's: a server that starts as root and drops its privileges (its hold was
    # made before) is one program; and root can do anything to the port anyway.
    mine = {os.geteuid(), 0}
    # IPv4's side: every wildcard spelling (a dual-stack [::] and ::ffff:0.0.0.0 included); IPv6's: [::].
    wildcards = WILDCARD_ADDRESSES if family == _AF_INET else {"::"}
    # Bound sockets without a peer (a hold is CLOSE, a listener LISTEN); a dual-stack [::] counts for both.
    return any(row.uid not in mine and row.address in wildcards and not row.connected for row in rows)


# Listeners of this process whose other family's wildcard another process of
# this user holds (a hand-off's old process, a pre-fork parent or sibling):
# port -> the family to hold. A daemon thread binds the hold as soon as it can
# (every _RETRY_FIRST seconds, then more slowly), so the port is not left unheld when that
# process lets go. No system call, no thread, while this is empty.
_wanted: dict[int, int] = {}
_retrying = False
# The first retries come fast (a hand-over's old process usually lets go soon), then slow down to one a
# second: a spawned pre-fork worker, whose parent holds for its whole life, retries for as long as it lives.
_RETRY_FIRST = 0.05
_RETRY_MOST = 1.0
# How often a retry that keeps failing looks for another user's listener on the other side (/proc/net).
_FOREIGN_CHECK_EVERY = 5.0
_reported: set[int] = set()


def _want(port: int, family: int) -> None:
    global _retrying  # noqa: PLW0603 - one flag: is the retry thread running?
    _wanted[port] = family
    if not _retrying:
        try:
            threading.Thread(target=_retry_holds, name="aioexclusive-guard-holds", daemon=True).start()
        except RuntimeError:
            return  # interpreter shutting down: no thread to start; the next _want tries again
        _retrying = True


def _retry_holds() -> None:
    """The retry thread: bind each wanted hold once its family's wildcard is free; end when none is wanted."""
    global _retrying  # noqa: PLW0603
    _guard.local.busy = True  # its binds are the guard's own holds: not judged (this thread's flag only)
    pid = os.getpid()
    delay, waited = _RETRY_FIRST, 0.0
    while True:
        time.sleep(delay)
        waited += delay
        delay = min(delay * 2, _RETRY_MOST)
        with _lock:
            if not _wanted or os.getpid() != pid:
                _retrying = False
                return
            retry_wanted()
            stuck = dict(_wanted) if waited >= _FOREIGN_CHECK_EVERY else {}
        if stuck:
            waited = 0.0
            _report_taken(stuck)


def _report_taken(stuck: dict[int, int]) -> None:
    """Warn once per port when the other side a retry waits for is listened on by another user.

    That is the end of the two-step takeover (the old holder let go, and
    another user's prime got in before the retry): the hold cannot be taken
    back, and this listener's connections go to that socket. Only listening
    sockets show in ``/proc/net``; a prime that is only bound does not.
    """
    for port, family in stuck.items():
        if port in _reported or not _foreign_holder(family, port):
            continue
        _reported.add(port)
        warnings.warn(
            _problem(_OTHER[family], port, "is listened on by another user (the retry to hold it lost the race)"),
            ExclusivityWarning,
            stacklevel=1,
        )


def retry_wanted() -> None:
    """One round of the retry thread (under the lock): bind the wanted holds that can be bound now."""
    for port, family in list(_wanted.items()):
        entry = _ports.get(port)
        if entry is None or not entry.listeners:
            del _wanted[port]
            continue
        covered = {record[1] for record in entry.listeners.values()}
        covered |= {f for _, p, f in _pending.values() if p == port}
        if family in covered or family in entry.holds:
            del _wanted[port]
            continue
        try:
            entry.holds[family] = _bind_hold(family, port)
        except OSError:
            continue  # still held by the other process (or taken: the next round tries again)
        del _wanted[port]


def on_listening(sock: Any, mode: str) -> str | None:
    """`on_listen` for *sock* if it listens already and is not one of ours yet (a listener handed over), else None."""
    if not HOLDS_WILDCARDS or _SO_ACCEPTCONN is None or id(sock) in _watched or isinstance(sock, HeldListener):
        return None
    try:
        if not _getsockopt(sock, socket.SOL_SOCKET, _SO_ACCEPTCONN):
            return None  # not listening yet: its listen() is where it is judged
    except OSError:
        return None
    return on_listen(sock, mode)


# How long a listen() whose hold is refused waits for the socket to listen (a sibling's listen), and how often it looks.
_SIBLING_WAIT = 0.1
_SIBLING_LOOK = 0.002


def _listens_soon(sock: Any) -> bool:
    """Does *sock* listen within `_SIBLING_WAIT` seconds (another process listening on the same socket)?

    Only on the rare path where the hold is refused: a listen() of a socket
    nobody shares pays it once, when the port's other side really is taken.
    """
    if _SO_ACCEPTCONN is None:
        return False
    deadline = time.monotonic() + _SIBLING_WAIT
    while True:
        try:
            if _getsockopt(sock, socket.SOL_SOCKET, _SO_ACCEPTCONN):
                return True
        except OSError:
            return False
        if time.monotonic() >= deadline:
            return False
        time.sleep(_SIBLING_LOOK)


def on_listen(sock: Any, mode: str) -> str | None:
    """Hold the other family's wildcard for *sock*, which is about to listen; a problem to report, or None.

    *mode* is ``"warn"`` (nothing is bound: only the problem is reported),
    ``"raise"`` or ``"enforce"``. The caller raises or warns with the text.
    """
    if not HOLDS_WILDCARDS or isinstance(sock, HeldListener):
        # HeldListener: an exclusive loop's own listener (or hold), which
        # _wildcard.protect holds itself right after this listen.
        return None
    found = _one_family_wildcard(sock)
    if found is None:
        return None
    family, port = found
    other = _OTHER[family]
    key = id(sock)
    with _lock:
        entry = _ports.get(port)
        if entry is not None and key in entry.listeners:
            return None  # listen() again (asyncio's create_server(sock=...)): registered already
        pending = _pending.pop(key, None)
        if pending is not None:
            _watched.pop(key, None)
        if entry is not None and (
            other in entry.holds or any(record[1] == other for record in entry.listeners.values())
        ):
            _register(sock, port, family)
            return None
        listening = _SO_ACCEPTCONN is not None and bool(_getsockopt(sock, socket.SOL_SOCKET, _SO_ACCEPTCONN))
        if mode == "warn":
            if listening or _own_socket_on(other, port):
                return None
            return _problem(family, port, "is not held (guard mode 'warn' binds nothing)")
        try:
            hold = _bind_hold(other, port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return None  # no IPv6 on this host (EADDRNOTAVAIL...): nothing to take over through
            if _own_socket_on(other, port):
                return None  # bound by a socket of this process: it covers the family itself
            if not listening:
                # Two pre-fork workers given one unlistened socket (hypercorn --workers) call listen() at
                # once: the first binds its hold, then listens; the second finds that hold a moment before
                # the socket they share listens. Wait that moment out before calling the holder a stranger.
                listening = _listens_soon(sock)
            if listening and not _foreign_holder(other, port):
                # Listening already, and the other family's wildcard is held by another process of this
                # user: a worker given its parent's socket (the parent holds), or a listener handed over
                # to a new process (gunicorn's USR2 upgrade) while the old one still holds. The holder
                # may go first (the old master exits): take the hold over then (`_want`).
                _register(sock, port, family)
                _want(port, other)
                return None
            return _problem(family, port, "is taken by a socket outside this process")
        _ports.setdefault(port, _Port()).holds[other] = hold
        _register(sock, port, family)
    return None


# Device-bound listeners already reported in this process (a second listen(),
# asyncio's create_server(sock=...), says nothing new).
_device_reported: weakref.WeakSet[Any] = weakref.WeakSet()


def device_refusal(
    sock: Any, mode: str, device: str | None = None, *, listening_only: bool = False
) -> ExclusivityError | None:
    """The refusal of *sock*, a TCP socket about to listen, if it is bound to one network interface (Linux).

    Such a listener is taken over by any user (`_binding.device_bound_refusal`
    says how) and no hold can protect it. ``raise`` refuses the listen with
    this error; ``enforce`` cannot fix it and ``warn`` only reports: both warn
    once per socket (None when reported already, or not device-bound).
    *device*: the interface it is about to be bound to (a late
    ``SO_BINDTODEVICE``), judged only if it listens already (*listening_only*).
    """
    if not _ON_LINUX or not isinstance(sock, _CSocket) or _type_of(sock) & ~_TYPE_FLAGS != _STREAM:
        return None
    family = int(_family_of(sock))
    if family not in _OTHER:
        return None
    if listening_only and not (_SO_ACCEPTCONN is not None and _getsockopt(sock, socket.SOL_SOCKET, _SO_ACCEPTCONN)):
        return None  # judged at its listen()
    from ._binding import bound_device, device_bound_refusal

    # SO_BINDTODEVICE, or the interface a link-local address's scope id bound it to (the kernel reports both).
    # The C-level getsockopt: a subclass cannot lie to it.
    device = device or bound_device(functools.partial(_getsockopt, sock))
    if not device or (mode != "raise" and sock in _device_reported):
        return None
    try:
        bound = _getsockname(sock)
        where = _where(str(bound[0]), int(bound[1]))
    except (OSError, TypeError, ValueError, IndexError):
        where = "an unbound socket"
    if mode != "raise":
        _device_reported.add(sock)
    return device_bound_refusal(where, device)


def _problem(family: int, port: int, what: str) -> str:
    other = _WILDCARD[_OTHER[family]]
    mine = _WILDCARD[family]
    return (
        f"TCP listener on {_where(mine, port)}: the other family's wildcard {_where(other, port)} {what}, "
        f"so a socket of another user can take this listener over with the two-step SO_REUSEPORT "
        f"takeover (prime {_where(other, port)} with SO_REUSEPORT, close it, listen on a dual-stack "
        f"[::]:{port}; docs/limits.md). Listen on a dual-stack [::] or on a specific address, or use "
        "an exclusive loop"
    )


def _where(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _register(sock: Any, port: int, family: int) -> None:
    entry = _ports.setdefault(port, _Port())
    key = id(sock)
    entry.listeners[key] = (weakref.ref(sock, _collected(port, key)), family, _forks)
    _watched[key] = port


def _collected(port: int, key: int) -> Any:
    # A listener garbage-collected without close() must not keep its port held.
    def callback(_: object) -> None:
        with _lock:
            entry = _ports.get(port)
            if entry is not None and key in entry.listeners:
                del entry.listeners[key]
                _watched.pop(key, None)
                _rehold(port)

    return callback


def spare_for_demotion(sock: Any) -> socket.socket | None:
    """Before *sock*'s close: a second descriptor of it, if it is to become its port's hold (else None).

    When another of our listeners on the port still needs *sock*'s family
    held, binding a fresh hold after the close fails as long as the closed
    listener's connections (or their TIME_WAIT) occupy the port, and a
    release-then-bind would leave a window anyway. So, as `_wildcard._demote`
    does for the exclusive loops, the closing socket itself becomes the hold:
    its spare descriptor stops listening (``shutdown``) and loses
    ``SO_REUSEADDR`` after the close. Not for a socket this process shared by
    forking since its registration: the shutdown would stop it listening in
    the children (a pre-fork server's workers) too.
    """
    key = id(sock)
    with _lock:
        port = _watched.get(key)
        entry = _ports.get(port) if port is not None else None
        record = entry.listeners.get(key) if entry is not None else None
        if entry is None or record is None or record[2] != _forks:
            return None
        listener = record[0]()
        if listener is not sock or listener is None:
            return None
        family = record[1]
        if family in entry.holds or any(r[1] == family for k, r in entry.listeners.items() if k != key):
            return None
        if not any(k != key for k in entry.listeners):
            return None  # the last listener: the holds go, nothing to keep
        try:
            return socket.socket(fileno=os.dup(_CSocket.fileno(listener)))
        except OSError:
            return None


def on_release(sock: Any, spare: socket.socket | None = None) -> None:
    """*sock* was closed or detached: drop its registration and, with the last listener, the hold.

    *spare* (from `spare_for_demotion`) becomes the hold of *sock*'s family.
    """
    key = id(sock)
    with _lock:
        port = _watched.pop(key, None)
        entry = _ports.get(port) if port is not None else None
        if port is None or entry is None:
            if spare is not None:
                spare.close()
            return
        pending = _pending.pop(key, None)
        if pending is None:
            record = entry.listeners.get(key)
            if record is None or record[0]() is not sock:
                if spare is not None:
                    spare.close()
                return
            del entry.listeners[key]
            if spare is not None:
                _demote(entry, port, record[1], spare)
            elif record[2] != _forks and entry.listeners:
                # Registered before a fork: in a child (a pre-fork worker),
                # the kernel socket still listens in the parent, which keeps
                # its family covered; a fresh hold would only fail against it.
                return
        _rehold(port)


def _demote(entry: _Port, port: int, family: int, spare: socket.socket) -> None:
    if demote_spare(spare, family, port) and family not in entry.holds:
        entry.holds[family] = spare
    else:
        spare.close()  # _rehold binds a fresh hold, or warns


def _rehold(port: int) -> None:
    """After a listener (or a pending bind) let go of *port*: drop the holds, or bind the ones now needed."""
    entry = _ports[port]
    if not entry.listeners:
        if any(p == port for _, p, _f in _pending.values()):
            return
        for hold in entry.holds.values():
            hold.close()
        del _ports[port]
        _wanted.pop(port, None)
        return
    covered = {record[1] for record in entry.listeners.values()}
    covered |= {f for _, p, f in _pending.values() if p == port}  # a pending bind covers its family itself
    hold_uncovered(entry.holds, port, covered, stacklevel=4)


def before_bind(sock: Any, address: Any) -> None:
    """*sock* of this process is about to bind *address*: if that is a wildcard we hold, release the hold.

    Called from the audit hook after the bind was judged (so *sock* has no
    ``SO_REUSEPORT`` unless the user allowed it).
    """
    if not isinstance(sock, _CSocket) or _type_of(sock) & ~_TYPE_FLAGS != _STREAM:
        return
    family = int(_family_of(sock))
    if family not in _OTHER or not isinstance(address, tuple) or len(address) < 2:
        return
    try:
        port = int(address[1])
    except (TypeError, ValueError):
        return
    if not is_wildcard(family, address):
        return
    # The family the bind takes: ::ffff:0.0.0.0 is the IPv4 wildcard (bound dual-stack).
    covers = wildcard_families(family, address, _v6only(sock, family))
    if len(covers) != 1:
        return  # dual-stack [::]: conflicts with our listener anyway; releasing would gain nothing
    family = next(iter(covers))
    with _lock:
        entry = _ports.get(port)
        if entry is None or family not in entry.holds:
            return
        # Closed right before the bind's system call: see the module docstring
        # for why the few microseconds in between give an attacker nothing silent.
        entry.holds.pop(family).close()
        key = id(sock)
        _pending[key] = (weakref.ref(sock, _collected_pending(key)), port, family)
        _watched[key] = port


def _collected_pending(key: int) -> Any:
    def callback(_: object) -> None:
        with _lock:
            pending = _pending.pop(key, None)
            _watched.pop(key, None)
            if pending is not None and pending[1] in _ports:
                _rehold(pending[1])

    return callback


class _Guard:
    """What the wrappers read from `aioexclusive._guard` (given to `install`: no import cycle)."""

    state: Any = None  # _guard._State: .mode
    local: Any = None  # _guard._local: .busy, the guard's re-entry flag
    exempt: Any = None  # _guard._EXEMPT: ContextVar[bool]
    warn: Callable[[str, FrameType, str], None] | None = None
    origin: Callable[[FrameType], FrameType] | None = None


_guard = _Guard()


def install(
    state: Any,
    local: Any,
    exempt: Any,
    warn: Callable[[str, FrameType, str], None],
    origin: Callable[[FrameType], FrameType],
) -> None:
    """Wrap ``socket.socket.listen``, ``_real_close`` and ``detach`` (once; none of them raises an audit event)."""
    _guard.state, _guard.local, _guard.exempt, _guard.warn, _guard.origin = state, local, exempt, warn, origin
    if not HOLDS_WILDCARDS or getattr(socket.socket.listen, "__aioexclusive_holds__", False):
        return
    inner_listen = socket.socket.listen
    inner_close: Callable[[socket.socket, Any], None] = socket.socket._real_close  # type: ignore[attr-defined]
    inner_detach = socket.socket.detach

    def listen(self: socket.socket, *args: Any) -> None:
        # Once per listener, not a hot path.
        mode = _guard.state.mode
        if mode != "off" and not getattr(_guard.local, "busy", False) and not _guard.exempt.get():
            watched_before = id(self) in _watched
            _guard.local.busy = True
            try:
                device = device_refusal(self, mode)
            except Exception:  # noqa: BLE001 - as in the guard's hook: our trouble must not break a listen
                device = None
            finally:
                _guard.local.busy = False
            if device is not None:
                # Judged first, so that a refusal leaves no hold behind.
                if mode == "raise":
                    raise device
                assert _guard.warn is not None and _guard.origin is not None
                # enforce cannot fix it (no option or hold can) and never stops a program: it reports.
                cannot = "" if mode == "warn" else "; guard('enforce') cannot fix this and lets it listen"
                _guard.warn(f"{device}{cannot}", _guard.origin(_caller()), f"refused listen(): {device}")
            _guard.local.busy = True
            try:
                problem = on_listen(self, mode)
            except Exception:  # noqa: BLE001 - as in the guard's hook: our trouble must not break a listen
                problem = None
            finally:
                _guard.local.busy = False
            if problem is not None:
                refusal = f"refused listen() of a {problem}"
                if mode == "raise":
                    raise ExclusivityError(refusal)
                assert _guard.warn is not None and _guard.origin is not None
                _guard.warn(f"a {problem}", _guard.origin(_caller()), refusal)
            try:
                return inner_listen(self, *args)
            except BaseException:
                if not watched_before:
                    on_release(self)  # the hold taken for this listen goes with it
                raise
        return inner_listen(self, *args)

    def _real_close(self: socket.socket, _ss: Any = _socket.socket) -> None:
        # Every socket close of the process passes here: one dict lookup
        # (empty unless a hold exists) for a socket that is not ours.
        if _watched and id(self) in _watched:
            spare = spare_for_demotion(self)
            try:
                inner_close(self, _ss)
            finally:
                # After the close: the listener goes first, so it is never
                # left listening without its hold.
                on_release(self, spare)
            return
        inner_close(self, _ss)

    def detach(self: socket.socket) -> int:
        if _watched and id(self) in _watched:
            try:
                return inner_detach(self)
            finally:
                on_release(self)
        return inner_detach(self)

    wrappers: tuple[tuple[str, Any, Any], ...] = (
        ("listen", listen, inner_listen),
        ("_real_close", _real_close, inner_close),
        ("detach", detach, inner_detach),
    )
    for name, wrapper, inner in wrappers:
        # Not __aioexclusive_guard__: _guard's own listen wrapper checks that
        # marker to wrap only once, and must still wrap over this one.
        put_on_socket_class(name, wrapper, inner, "__aioexclusive_holds__")


def put_on_socket_class(name: str, wrapper: Any, inner: Any, marker: str) -> None:
    """Make *wrapper* ``socket.socket.<name>``, documented as *inner* and marked with *marker*.

    The Python class, not ``_socket.socket`` (a C type cannot be changed):
    that is the attribute ``sock.<name>`` finds for ``socket.socket``, its
    subclasses (``ssl.SSLSocket``) and asyncio's ``TransportSocket``, which
    forwards to it. The marker lets each wrapper be installed only once.
    """
    wrapper.__doc__ = inner.__doc__
    wrapper.__qualname__ = f"socket.{name}"
    wrapper.__wrapped__ = inner
    setattr(wrapper, marker, True)
    setattr(socket.socket, name, wrapper)


def _caller() -> FrameType:
    """The frame that called ``listen`` (past the guard's own listen wrapper around ours)."""
    frame = sys._getframe(2)  # _caller <- our listen wrapper <- its caller
    while frame.f_back is not None and frame.f_globals.get("__name__") in ("aioexclusive._guard", __name__):
        frame = frame.f_back
    return frame


# Counts the forks of this process (and of its parents since the import):
# listeners registered before a fork are shared with the child, whose
# descriptors keep them listening, so their close must never shut them down.
_forks = 0


def after_fork_in_child() -> None:
    """In the child only: count the fork, and take a new lock.

    Only the child's view changes: in the parent the listeners are still its
    own, so closing one there must still demote it or hold its side again.
    (Counting in the parent too left the parent's port unheld after any fork.)
    A new lock: a fork while another thread held it must not deadlock the child.
    """
    global _forks, _lock, _retrying  # noqa: PLW0603 - a counter, a lock replaced, not mutated, a flag
    _forks += 1
    _lock = threading.RLock()
    # The retry thread stays in the parent, whose listeners these are.
    _wanted.clear()
    _retrying = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=after_fork_in_child)
