"""Hold the other address family's side of a wildcard TCP port (Linux).

Why this exists (a kernel detail, measured on Linux 6.x):
every TCP socket bound to port P, IPv4 and IPv6 alike, hangs off one *bind
bucket* for P. When a socket with ``SO_REUSEPORT`` joins a bucket without a
conflict, the kernel records its owner's uid and address in the bucket
(``inet_csk_update_fastreuse``: ``fastreuseport``, ``fast_uid``,
``fast_rcv_saddr``), and it keeps that record after the socket is closed for
as long as the bucket lives. A later bind by the same uid that "matches" the
record (``sk_reuseport_match``: for a wildcard record, any address that is not
IPv6-only matches) skips the conflict check against the sockets already there.

So a listener on ``[::]:P`` with ``IPV6_V6ONLY=1`` and nothing on
``0.0.0.0:P`` can be taken over by *another user* in two steps: bind
``0.0.0.0:P`` with ``SO_REUSEPORT`` (no conflict: ours is IPv6-only), close
it, then bind and listen on a dual-stack ``[::]:P`` with ``SO_REUSEPORT``
(and ``SO_INCOMING_CPU``, which wins the listener lookup). The mirror works
against a lone ``0.0.0.0:P`` listener, primed with an IPv6-only ``[::]:P``.

The defence: while we listen on one family's wildcard, we also bind the other
family's wildcard on the same port with an option-free socket that never
listens (a *hold*). Nothing else can then enter the bucket: every would-be
prime conflicts with the hold or with our listener, because neither has
``SO_REUSEPORT`` and the hold has no ``SO_REUSEADDR``. The hold never listens,
so clients of the other family still get "connection refused", as before.
Listeners on a specific address need no hold: a wildcard co-bound next to them
never wins a lookup for their address (the kernel looks the exact address up
first). The IPv4-mapped ``::ffff:0.0.0.0`` is no specific address: an AF_INET6
socket with ``IPV6_V6ONLY`` off bound there *is* the IPv4 wildcard in the
kernel, so it is held like ``0.0.0.0`` (``[::]`` IPv6-only).

Lifetime: the hold is closed when the last of our listeners on that port is
closed (the listeners are `HeldListener` objects, which report their own close
or detach, the two ways every base loop lets go of a socket). When the program
later listens on the held family itself, the hold is *promoted*: the same
socket gets the listener's options and starts listening, so the port is never
released in between (a release-then-bind would leave a window that a process
looping on ``bind`` hits).
"""

from __future__ import annotations

import _socket
import copyreg
import os
import socket
import sys
import threading
import warnings
import weakref
from collections.abc import Collection
from typing import Any

from ._errors import ExclusivityWarning

__all__ = [
    "HOLDS_WILDCARDS",
    "HeldListener",
    "demote_spare",
    "give_back",
    "is_mapped_wildcard",
    "is_wildcard",
    "protect",
    "take_hold",
    "wildcard_families",
]

# Only Linux has the bucket behaviour above; BSD, macOS and Windows keep their
# per-OS rules (see docs/rules.md) and get no extra socket.
HOLDS_WILDCARDS = sys.platform.startswith("linux") and socket.has_ipv6

_FAMILIES: tuple[int, ...] = (int(socket.AF_INET), int(socket.AF_INET6))
_WILDCARD: dict[int, str] = {int(socket.AF_INET): "0.0.0.0", int(socket.AF_INET6): "::"}
_lock = threading.RLock()
# The C-level getters: ints, not the enums socket.socket's properties build in
# Python (a few of those per listener were a measurable part of protect()).
_family_of = _socket.socket.family.__get__
_type_of = _socket.socket.type.__get__
_proto_of = _socket.socket.proto.__get__
_TYPE_FLAGS = getattr(socket, "SOCK_NONBLOCK", 0) | getattr(socket, "SOCK_CLOEXEC", 0)


class _Listener:
    """One of our registered wildcard listeners."""

    __slots__ = ("covers", "ref", "spare")

    def __init__(self, ref: weakref.ref[HeldListener], covers: frozenset[int], spare: HeldListener) -> None:
        self.ref = ref
        self.covers = covers
        # A second descriptor of the same kernel socket, kept from registration
        # on. uvloop (libuv) closes the listener's descriptor *before* it calls
        # detach(), so only a descriptor of our own still reaches the socket
        # then: it is what `_demote` turns into the hold.
        self.spare: HeldListener | None = spare


class _Port:
    """What this process holds on one TCP port: wildcard listeners and holds."""

    __slots__ = ("holds", "listeners", "pid")

    def __init__(self) -> None:
        self.listeners: dict[int, _Listener] = {}  # keyed by id(listener)
        self.holds: dict[int, socket.socket] = {}
        # A forked child inherits this registry with descriptors of the same
        # kernel sockets: there it only forgets, it never shuts a listener
        # down (that would stop the parent's) nor binds holds for the parent.
        self.pid = os.getpid()

    @property
    def inherited(self) -> bool:
        return self.pid != os.getpid()

    def covered(self, *, without: int | None = None) -> set[int]:
        families: set[int] = set()
        for key, listener in self.listeners.items():
            if key != without:
                families |= listener.covers
        return families


_ports: dict[int, _Port] = {}


class HeldListener(socket.socket):
    """A listening socket that releases its port's hold when it is let go of.

    Base loops let go of a server socket either with ``close()`` (asyncio's
    selector and proactor loops) or with ``detach()`` (uvloop and winloop,
    after libuv closed the descriptor); both are covered. A ``dup()`` is a
    plain listener of this class that was never registered, so closing it
    changes nothing.
    """

    _exclusive_port: int | None = None

    def close(self) -> None:
        _demote(self)
        try:
            super().close()
        finally:
            _forget(self)

    def detach(self) -> int:
        _demote(self)
        try:
            return super().detach()
        finally:
            _forget(self)


def _reduce_for_workers(sock: HeldListener) -> Any:
    # multiprocessing hands sockets to spawned workers (uvicorn, hypercorn) with
    # a reducer registered for socket.socket itself, not for subclasses: this
    # one does the same for a listener of ours. The worker gets a plain socket
    # for the same descriptor; the hold stays with the supervisor's object.
    # Outside a spawn, a socket cannot be pickled, and neither can this.
    from multiprocessing import context, reduction

    if context.get_spawning_popen() is None:
        raise TypeError(f"cannot pickle {type(sock).__name__!r} object")
    return reduction._reduce_socket(sock)  # type: ignore[attr-defined]


copyreg.pickle(HeldListener, _reduce_for_workers)


# ::ffff:0.0.0.0, the IPv4-mapped wildcard: an AF_INET6 socket with IPV6_V6ONLY
# off bound there is the IPv4 wildcard in the kernel (sk_rcv_saddr 0.0.0.0,
# not IPv6-only) and serves every IPv4 address exactly like 0.0.0.0; it
# serves no IPv6 at all.
_MAPPED_ANY = bytes(10) + b"\xff\xff" + bytes(4)


def _packed6(host: Any) -> bytes | None:
    try:
        return socket.inet_pton(socket.AF_INET6, host)
    except (OSError, ValueError, TypeError):
        return None


def is_wildcard(family: int, sockaddr: Any) -> bool:
    """Is *sockaddr* a wildcard address of *family* (``0.0.0.0``, ``::``, or ``::ffff:0.0.0.0``)?

    The IPv4-mapped ``::ffff:0.0.0.0`` counts: bound by an AF_INET6 socket with
    ``IPV6_V6ONLY`` off it is the IPv4 wildcard (`wildcard_families`), open to
    the same two-step takeover as ``0.0.0.0`` (with ``IPV6_V6ONLY`` on, the
    kernel refuses to bind it).
    """
    if family not in _WILDCARD or not isinstance(sockaddr, tuple) or not sockaddr:
        return False
    host = sockaddr[0]
    if family == socket.AF_INET6:
        return _packed6(host) in (bytes(16), _MAPPED_ANY)
    return bool(host == "0.0.0.0")


def is_mapped_wildcard(family: int, sockaddr: Any) -> bool:
    """Is *sockaddr* the IPv4-mapped wildcard ``::ffff:0.0.0.0`` of an AF_INET6 socket?"""
    return (
        family == socket.AF_INET6
        and isinstance(sockaddr, tuple)
        and bool(sockaddr)
        and (_packed6(sockaddr[0]) == _MAPPED_ANY)
    )


def wildcard_families(family: int, sockaddr: Any, v6only: bool) -> frozenset[int]:
    """The families whose wildcard a socket of *family* bound to *sockaddr* is (empty: not a wildcard).

    ``0.0.0.0``: IPv4. ``::`` IPv6-only: IPv6; dual-stack: both.
    ``::ffff:0.0.0.0`` (dual-stack, the only way it binds): IPv4 alone, so
    its hold is ``[::]`` IPv6-only, as for ``0.0.0.0``.
    """
    if not is_wildcard(family, sockaddr):
        return frozenset()
    if family == socket.AF_INET6:
        if is_mapped_wildcard(family, sockaddr):
            return frozenset((int(socket.AF_INET),))
        if not v6only:
            return frozenset(_FAMILIES)
    return frozenset((int(family),))


def _covers(sock: socket.socket) -> frozenset[int]:
    family = _family_of(sock)
    v6only = family == socket.AF_INET6 and bool(sock.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY))
    # A listener registered here is a wildcard; a dual-stack [::] is both at once,
    # the IPv4-mapped ::ffff:0.0.0.0 only IPv4.
    return wildcard_families(family, sock.getsockname(), v6only) or frozenset((int(family),))


def take_hold(family: int, port: int, address: Any = None) -> socket.socket | None:
    """Our hold on *family*'s wildcard of *port*, removed from the registry, or None.

    The caller turns it into a listener (`promote`) or gives it back with
    `give_back` if that fails. A listener on *address* ``::ffff:0.0.0.0``
    gets none: no hold is bound there (an IPv6 hold is ``[::]``, which
    cannot become that address), so it binds a socket of its own, as on the
    base loop.
    """
    if not port or is_mapped_wildcard(family, address):
        return None
    with _lock:
        entry = _ports.get(port)
        if entry is None:
            return None
        return entry.holds.pop(family, None)


def give_back(hold: socket.socket, port: int) -> None:
    """Put back a hold that `take_hold` returned and that could not be promoted."""
    with _lock:
        entry = _ports.get(port)
        if entry is None or int(hold.family) in entry.holds:
            hold.close()
            return
        entry.holds[int(hold.family)] = hold


def _bind_hold(family: int, port: int, cls: type[socket.socket] | None = None) -> socket.socket:
    """*family*'s wildcard bound on *port* as a hold: IPv6-only, no sharing option, never listening.

    A `HeldListener` unless *cls* says otherwise (a trial that is closed at
    once), so that once promoted to a listener it reports its close.
    """
    hold = (cls or HeldListener)(family, socket.SOCK_STREAM)
    try:
        # Deliberately no SO_REUSEADDR and no SO_REUSEPORT: with either, a
        # newcomer with the same option could share the bucket again.
        if family == socket.AF_INET6:
            hold.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        hold.bind((_WILDCARD[family], port))
    except BaseException:
        hold.close()
        raise
    return hold


def protect(listeners: list[socket.socket]) -> None:
    """Register our wildcard *listeners* and hold each port's other family.

    Raises OSError (``EADDRINUSE``) when another socket already has the other
    family's wildcard on a port: then that socket's owner could take the port
    over, so the caller closes everything and reports the port as in use. On
    failure nothing is registered or held for *listeners*.
    """
    if not HOLDS_WILDCARDS or not any(isinstance(sock, HeldListener) for sock in listeners):
        return  # no wildcard listener: nothing to hold (the common case, kept cheap)
    by_port: dict[int, list[socket.socket]] = {}
    # Families that a listener of this same call on a *specific* address
    # covers: the other family's wildcard prime conflicts with it as with a
    # hold (neither has SO_REUSEPORT), and a hold could not be bound next to
    # it anyway. They are closed together with the wildcard listener.
    pinned: dict[int, set[int]] = {}
    for sock in listeners:
        if _type_of(sock) & ~_TYPE_FLAGS != socket.SOCK_STREAM:
            continue
        port = sock.getsockname()[1]
        if isinstance(sock, HeldListener):
            by_port.setdefault(port, []).append(sock)
        else:
            pinned.setdefault(port, set()).add(_family_of(sock))
    with _lock:
        added: list[tuple[int, HeldListener]] = []
        new_holds: list[tuple[int, int]] = []
        try:
            for port, socks in by_port.items():
                entry = _ports.get(port)
                if entry is None or entry.inherited:
                    # A child's own listeners start a registry of its own; the
                    # inherited descriptors it drops are the child's copies.
                    entry = _ports[port] = _Port()
                for sock in socks:
                    assert isinstance(sock, HeldListener)
                    spare = HeldListener(_family_of(sock), _type_of(sock), _proto_of(sock), os.dup(sock.fileno()))
                    entry.listeners[id(sock)] = _Listener(
                        weakref.ref(sock, _collected(port, id(sock))), _covers(sock), spare
                    )
                    sock._exclusive_port = port
                    added.append((port, sock))
                covered = entry.covered() | pinned.get(port, set())
                for family in _FAMILIES:
                    if family not in covered and family not in entry.holds:
                        entry.holds[family] = _bind_hold(family, port)
                        new_holds.append((port, family))
        except BaseException:
            for port, family in new_holds:
                _ports[port].holds.pop(family).close()
            for port, sock in added:
                sock._exclusive_port = None
                _close_spare(_ports[port].listeners.pop(id(sock), None))
            for port in by_port:
                _drop_if_empty(port)
            raise


def _collected(port: int, key: int) -> Any:
    # A listener garbage-collected without close() (a ResourceWarning already)
    # must not keep its port held forever.
    def callback(_: object) -> None:
        with _lock:
            entry = _ports.get(port)
            if entry is not None and key in entry.listeners:
                _close_spare(entry.listeners.pop(key))
                _after_release(port)

    return callback


def _demote(sock: HeldListener) -> None:
    """Keep a closing listener's port as the hold, when another of our listeners still needs it.

    Closing and then binding a fresh hold would release the port for a
    moment, which a process looping on bind wins, and fails outright while
    the closed listener's connections (or their TIME_WAIT) occupy the port.
    Instead the listener's spare descriptor stops listening (``shutdown``:
    the socket leaves LISTEN but stays bound, because it was bound to an
    explicit port) and loses ``SO_REUSEADDR``: from then on it is exactly a
    hold, and the port was never free.
    """
    port = sock._exclusive_port
    if port is None:
        return
    with _lock:
        entry = _ports.get(port)
        record = entry.listeners.get(id(sock)) if entry is not None else None
        if entry is None or entry.inherited or record is None or record.spare is None or len(entry.listeners) < 2:
            return
        others = entry.covered(without=id(sock))
        needed = [f for f in record.covers if f not in others and f not in entry.holds]
        if len(needed) != 1:
            return  # a dual-stack listener's two families: _after_release binds holds
        spare = record.spare
        if _family_of(spare) != needed[0]:
            # An IPv4-mapped ::ffff:0.0.0.0 listener is AF_INET6: as the IPv4 hold,
            # take_hold would give it to a 0.0.0.0 listener. A fresh hold instead.
            return
        if not demote_spare(spare, needed[0], port):
            return  # _after_release binds a fresh hold (_forget closes the spare with the record)
        record.spare = None
        entry.holds[needed[0]] = spare


def demote_spare(spare: socket.socket, family: int, port: int) -> bool:
    """Turn *spare*, a second descriptor of a closing listener on *port*, into a hold of *family*'s wildcard.

    True when it now is one. False when it cannot be: it was bound to port 0
    (the kernel picked the port), and the shutdown took it out of the port's
    bind bucket, or a call failed; the caller then closes it and binds a fresh
    hold. Shared by the exclusive loops (`_demote`) and the guard
    (`_guard_holds`).
    """
    try:
        # Leaves LISTEN but stays bound (when bound to an explicit port); the
        # pending connections are reset, as the close would have done.
        spare.shutdown(socket.SHUT_RDWR)
        # Without SO_REUSEADDR it is exactly a hold: nothing can share it.
        spare.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        # A port-0 listener leaves the bucket though getsockname still names
        # the port: only the kernel can say (in_bucket).
        return bool(spare.getsockname()[1] == port) and in_bucket(family, port)
    except OSError:
        return False


def in_bucket(family: int, port: int) -> bool:
    """Does a socket without ``SO_REUSEADDR`` (a demoted listener) still hold *family*'s wildcard on *port*?

    A listener the kernel gave its port (bound to port 0) leaves the bind
    bucket when it is shut down, though ``getsockname`` still names the port;
    one bound to an explicit port stays (measured, not documented): so ask the
    kernel. The probe has ``SO_REUSEADDR`` to get past the closed listener's
    connections, which share its ``SO_REUSEADDR``, and never listens.
    """
    probe = socket.socket(family, socket.SOCK_STREAM)
    try:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        probe.bind((_WILDCARD[family], port))
    except OSError:
        return True
    finally:
        probe.close()
    return False


def _close_spare(record: _Listener | None) -> None:
    if record is not None and record.spare is not None:
        record.spare.close()
        record.spare = None


def _forget(sock: HeldListener) -> None:
    port = sock._exclusive_port
    if port is None:
        return
    sock._exclusive_port = None
    with _lock:
        entry = _ports.get(port)
        record = entry.listeners.pop(id(sock), None) if entry is not None else None
        if record is None:
            return
        _close_spare(record)
        _after_release(port)


def _drop_if_empty(port: int) -> None:
    entry = _ports.get(port)
    if entry is not None and not entry.listeners:
        for hold in entry.holds.values():
            hold.close()
        del _ports[port]


def _after_release(port: int) -> None:
    entry = _ports[port]
    if entry.inherited:
        # The parent still serves: nothing to hold for it here. Closing the
        # child's copies of the holds releases nothing in the parent.
        _drop_if_empty(port)
        return
    if not entry.listeners:
        _drop_if_empty(port)
        return
    # Another of our listeners still serves this port: the family just let go
    # of must be held again, or that listener is open to the two-step takeover.
    hold_uncovered(entry.holds, port, entry.covered(), stacklevel=3)


def hold_uncovered(holds: dict[int, socket.socket], port: int, covered: Collection[int], *, stacklevel: int) -> None:
    """Bind a hold on *port* for each family that neither *covered* (listeners, pending binds) nor *holds* has.

    After one of two listeners let go of the port. Shared by the exclusive
    loops (`_after_release`) and the guard (`_guard_holds._rehold`). A hold
    that cannot be bound is warned about (*stacklevel* as the caller's).
    """
    for family in _FAMILIES:
        if family in covered or family in holds:
            continue
        try:
            holds[family] = _bind_hold(family, port)
        except OSError as exc:
            # Connections the closed listener accepted still occupy the port,
            # or someone else got in: the remaining listener is not held. Say
            # so rather than pretend (docs/limits.md).
            host = _WILDCARD[family]
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            warnings.warn(
                f"could not hold {where} after its listener closed ({exc.strerror}); "
                f"the remaining listener on port {port} is open to the two-step SO_REUSEPORT takeover "
                "until it is restarted (see docs/limits.md)",
                ExclusivityWarning,
                stacklevel=stacklevel + 1,
            )
