"""Create, configure and bind sockets according to the bind plan.

The only module that calls ``bind``. Everything is all or nothing: when one
address of several fails, every socket opened so far is closed before the error
leaves, so a failed ``create_server`` leaks no file descriptor.
"""

from __future__ import annotations

import _socket
import asyncio
import contextlib
import contextvars
import errno
import functools
import os
import socket
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence, Set
from typing import Any

from . import _wildcard
from ._bases import is_libuv, is_stdlib
from ._errors import AddressInUseError, ExclusivityError, ExclusivityWarning, InvalidPortError, is_address_in_use
from ._plan import SHARING_OPTIONS, SO_EXCLUSIVEADDRUSE, BindPlan, Role, audit_socket_options, make_plan

__all__ = [
    "AddrInfo",
    "apply_plan",
    "audit_socket",
    "kernel_view",
    "bind_now",
    "bind_socket",
    "bound_device",
    "device_bound_refusal",
    "check_port",
    "clear_forbidden_options",
    "configure_socket",
    "hosts_of",
    "new_socket",
    "open_bound_sockets",
    "read_sharing_options",
    "resolve",
    "translate_bind_error",
]

AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, Any]
HostArg = str | Sequence[str] | None

_HAS_IPV6 = socket.has_ipv6 and hasattr(socket, "IPPROTO_IPV6")
# asyncio words a failed bind with str(exc) from 3.13 on, with exc.strerror before;
# uvloop keeps the strerror. A loop sets the context variable while it binds.
_BIND_MESSAGE_STR = sys.version_info >= (3, 13)
bind_message_from_str: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "bind_message_from_str", default=_BIND_MESSAGE_STR
)
# Off while open_bound_sockets makes an attempt it will retry on "address in
# use": naming the holder scans every process's sockets (psutil), milliseconds
# for an error nobody sees.
_name_holder: contextvars.ContextVar[bool] = contextvars.ContextVar("_name_holder", default=True)


def _port_number(port: object) -> int | None:
    """The number a port argument stands for, when it is one (an int, or digits in a str/bytes)."""
    if isinstance(port, bool):
        return None
    if isinstance(port, int):
        return port
    if isinstance(port, (str, bytes)):
        try:
            # int() as asyncio's own fast path reads it: surrounding whitespace
            # is allowed ("8000 "), so the same text means the same port here.
            return int(port)
        except ValueError:
            return None
    return None


def check_port(port: object, name: str = "port") -> None:
    """Refuse a port number outside 0-65535, given as an int or as digits in a string.

    ``getaddrinfo`` silently wraps a numeric service string modulo 65536
    (``"65537"`` binds port 1, ``"65536"`` a random port), and uvloop does the
    same with an int: the wrong port would be bound. Every other type is left
    to the base loop's resolver, which raises what it always raised.
    """
    number = _port_number(port)
    if number is not None and not 0 <= number <= 65535:
        raise InvalidPortError(f"{name} must be 0-65535, got {port!r}")


def check_sockaddr_port(infos: Iterable[AddrInfo], name: str = "port") -> None:
    """Refuse resolved addresses whose port is outside 0-65535 (a float or bool port passed through int())."""
    for info in infos:
        sockaddr = info[4]
        if isinstance(sockaddr, tuple) and len(sockaddr) >= 2 and isinstance(sockaddr[1], int):
            if not 0 <= sockaddr[1] <= 65535:
                raise InvalidPortError(f"{name} must be 0-65535, got {sockaddr[1]!r}")


def hosts_of(host: object) -> list[Any]:
    """The hosts ``create_server`` resolves, expanded exactly as asyncio and uvloop do.

    ``""`` alone means every interface (``[None]``); a str or a non-iterable is
    one host; any other iterable is its items, unchanged: an ``""`` or a
    ``None`` *inside* a sequence goes to the resolver as it is (``""`` is then
    a resolver error, not the wildcard), and an empty sequence binds nothing.
    What the base loop's resolver refuses (bytes items, ints) it refuses here too.
    """
    if host == "":
        return [None]
    if isinstance(host, str) or not isinstance(host, Iterable):
        return [host]
    return list(host)


_INET_FAMILIES = (socket.AF_INET, socket.AF_INET6) if _HAS_IPV6 else (socket.AF_INET,)
_KINDS = {int(socket.SOCK_STREAM): socket.SOCK_STREAM, int(socket.SOCK_DGRAM): socket.SOCK_DGRAM}
_USUAL_PROTO = {socket.SOCK_STREAM: socket.IPPROTO_TCP, socket.SOCK_DGRAM: socket.IPPROTO_UDP}


@functools.cache
def _reported_proto(kind: socket.SocketKind) -> int:
    # What this platform's getaddrinfo puts in the proto field for a literal:
    # 6/17 on Linux, 0 on Windows (seen under Wine). Asked once per kind, so
    # the fast path returns exactly what getaddrinfo would.
    return int(socket.getaddrinfo("127.0.0.1", 0, socket.AF_INET, kind, 0, socket.AI_NUMERICHOST)[0][2])


# A plain int: `flags & socket.AI_CANONNAME` would be an enum operation in
# Python, which costs more than the rest of this function.
_AI_CANONNAME = int(socket.AI_CANONNAME)


def numeric_addrinfo(
    host: object, port: object, *, family: int = 0, type: int = socket.SOCK_STREAM, proto: int = 0, flags: int = 0
) -> list[AddrInfo] | None:
    """What ``getaddrinfo`` returns for an IP literal and an int port; None for anything else.

    ``socket.getaddrinfo`` IDNA-encodes the host and turns every field of every
    result into an enum, in Python: for a numeric host that costs as much as
    creating and binding the socket, and a loop opening many endpoints pays it
    each time (asyncio's own ``_ipaddr_info`` skips it the same way). Anything
    not recognised here (names, scoped or shorthand addresses, service names,
    ``AI_CANONNAME``) goes to ``getaddrinfo`` as before.
    """
    if (
        not isinstance(host, str)
        or isinstance(port, bool)
        or not isinstance(port, int)
        or not 0 <= port <= 65535
        or flags & _AI_CANONNAME
    ):
        return None
    kind = _KINDS.get(type)
    if kind is None or proto not in (0, _USUAL_PROTO[kind]):
        return None
    literal = _ip_literal(host)
    if literal is None or family not in (0, literal[0]):
        return None
    fam, text = literal
    sockaddr = (text, port) if fam == socket.AF_INET else (text, port, 0, 0)
    # An explicit proto comes back as given (Windows answers 0 otherwise).
    return [(fam, kind, proto or _reported_proto(kind), "", sockaddr)]


@functools.lru_cache(maxsize=256)
def _ip_literal(host: str) -> tuple[socket.AddressFamily, str] | None:
    """(family, the spelling getaddrinfo reports) when *host* is an IP literal, else None.

    Cached: a program binds the same few hosts again and again, and parsing
    (an exception per family that does not match) is most of
    `numeric_addrinfo`'s cost. Bounded, so a program resolving many names
    keeps only the latest.
    """
    for fam in _INET_FAMILIES:
        try:
            packed = socket.inet_pton(fam, host)
        except (OSError, ValueError):
            continue
        # The spelling getaddrinfo reports ("::0001" -> "::1").
        return fam, socket.inet_ntop(fam, packed)
    return None


def _own_getaddrinfo(loop: Any) -> bool:
    """Is ``loop.getaddrinfo`` asyncio's own (not replaced on the instance or in a subclass)?"""
    return (
        "getaddrinfo" not in vars(loop)
        and getattr(type(loop), "getaddrinfo", None) is asyncio.BaseEventLoop.getaddrinfo
    )


def _is_ip_literal(host: bytes) -> bool:
    # A scoped IPv6 literal ("fe80::1%eth0") counts: the C library answers it
    # without DNS, while uvloop's public getaddrinfo fast path drops its scope id.
    for family in _INET_FAMILIES:
        try:
            socket.inet_pton(family, host.decode("ascii").partition("%")[0])
        except (OSError, ValueError, UnicodeDecodeError):
            continue
        return True
    return False


def _libuv_resolver_args(host: object, port: object) -> tuple[bytes | None, bytes | None]:
    # uvloop's Loop._getaddrinfo, argument checks and conversions, in order.
    if isinstance(port, str):
        port = port.encode()
    elif isinstance(port, int):
        port = str(port).encode()
    if port is not None and not isinstance(port, bytes):
        raise TypeError("port must be a str, bytes or int")
    if isinstance(host, str):
        host = host.encode("idna")
    if host is not None and not isinstance(host, bytes):
        raise TypeError("host must be a str or bytes")
    return host, port


async def resolve(
    loop: Any,
    host: Any,
    port: Any,
    *,
    family: int = 0,
    type: int = socket.SOCK_STREAM,
    proto: int = 0,
    flags: int = 0,
    name: str = "port",
) -> list[AddrInfo]:
    """``getaddrinfo`` for one host, as the base loop itself resolves it.

    An IP literal with an int port resolves right here (asyncio's own fast path
    does the same). Anything else goes to the base loop's resolver: asyncio's
    ``_ensure_resolved`` (its int() reading of ports, its proto handling) on
    the stdlib loops, ``loop.getaddrinfo`` on the others (uvloop's
    ``create_server`` calls the same resolver), so every accepted input and
    every error is the base loop's. A port number outside 0-65535 is refused
    with `InvalidPortError` instead of being wrapped by ``getaddrinfo``.
    """
    literal = numeric_addrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    if literal is not None:
        return literal
    check_port(port, name)
    ensure_resolved = getattr(loop, "_ensure_resolved", None)
    infos: list[Any]
    if is_stdlib(loop) and ensure_resolved is not None:
        if host is None and _own_getaddrinfo(loop):
            # The wildcard involves no DNS: asyncio's executor round trip
            # would call this same getaddrinfo with these same arguments
            # (unless the program replaced loop.getaddrinfo: then it is asked).
            infos = socket.getaddrinfo(host, port, family, type, proto, flags)
        else:
            infos = await ensure_resolved((host, port), family=family, type=type, proto=proto, flags=flags, loop=loop)
    elif is_libuv(loop):
        # uvloop's create_server/create_datagram_endpoint resolve with its
        # internal _getaddrinfo (libuv's, i.e. the C library's getaddrinfo),
        # not with the public loop.getaddrinfo, which has an int() fast path
        # they lack: convert the arguments as that internal one does, then ask
        # the same C function. A name fails that fast path anyway, so for a
        # name loop.getaddrinfo is exactly the internal resolver.
        host_arg, port_arg = _libuv_resolver_args(host, port)
        if host_arg is None or _is_ip_literal(host_arg):
            # No DNS for these: the C library answers at once, as it would in libuv's thread.
            infos = socket.getaddrinfo(host_arg, port_arg, family, type, proto, flags)
        else:
            infos = await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    else:
        infos = await loop.getaddrinfo(host, port, family=family, type=type, proto=proto, flags=flags)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    check_sockaddr_port(infos, name)
    return infos  # type: ignore[return-value]


def _option(name: str) -> int | None:
    return getattr(socket, name, None)


def read_sharing_options(sock: Any) -> dict[str, int]:
    """The sharing options this platform has, as set on *sock* (a socket or a transport's pseudo-socket)."""
    values = {}
    for name in SHARING_OPTIONS:
        const = _option(name)
        if const is not None:
            values[name] = sock.getsockopt(socket.SOL_SOCKET, const)
    return values


def apply_plan(sock: socket.socket, plan: BindPlan, *, strict: bool = False, address: object = None) -> None:
    """Set the plan's options on a socket that is not bound yet."""
    for name, value in plan.set:
        const = _option(name)
        if const is None:
            if name == "SO_REUSEPORT":
                raise ValueError("reuse_port not supported by socket module")
            raise ExclusivityError(
                f"{name} is not available on this system, so the plan for {plan.platform} cannot apply"
            )
        try:
            sock.setsockopt(socket.SOL_SOCKET, const, value)
        except OSError as exc:
            if name != SO_EXCLUSIVEADDRUSE:
                raise
            # Windows before Server 2003 SP1 wanted administrator rights for this.
            # A server that cannot start is worse than an unprotected one, unless
            # the user said otherwise.
            message = (
                f"could not set SO_EXCLUSIVEADDRUSE on the socket for {address}: {exc}; "
                "the port is NOT protected against takeover (pass strict=True to refuse instead)"
            )
            if strict:
                raise ExclusivityError(message) from exc
            warnings.warn(message, ExclusivityWarning, stacklevel=4)


@contextlib.contextmanager
def kernel_view(sock: Any) -> Iterator[Any]:
    """A C-level socket object over the descriptor *sock* hands the base loop.

    Every base loop adopts ``sock.fileno()``; what that descriptor is, is asked
    of the kernel through this view, never of *sock*'s own methods, which a
    socket subclass or a duck-typed object may override to say "unbound", "no
    SO_REUSEADDR" or "AF_UNIX" about a shareable inet socket. The view is
    detached afterwards: the descriptor stays the caller's. Something that has
    no usable descriptor is yielded as it is (the base loop then refuses it in
    its own words).
    """
    try:
        fd = sock.fileno()
        view = _socket.socket(fileno=fd) if isinstance(fd, int) and fd >= 0 else None
    except (AttributeError, OSError, TypeError, ValueError):
        view = None
    if view is None:
        yield sock
        return
    try:
        yield view
    finally:
        view.detach()


def audit_socket(sock: Any, plan: BindPlan) -> None:
    """Refuse a caller's socket that is shareable under *plan* (as the kernel reports it).

    A TCP listener bound to one interface is refused too on Linux
    (`device_bound_refusal`): its options may be clean, but the port is not.
    """
    with kernel_view(sock) as view:
        try:
            address = view.getsockname()
        except OSError:
            address = None
        audit_socket_options(plan, read_sharing_options(view), address=address)
        if plan.role is Role.TCP_LISTENER:
            device = bound_device(view.getsockopt)
            if device:
                raise device_bound_refusal(f"the socket given as sock= ({address})", device)
            if _ON_LINUX and "SO_REUSEPORT" in plan.never and _joinable_by_this_user(view, address):
                raise ExclusivityError(
                    f"the socket passed as sock= on {address} can be joined by any SO_REUSEPORT socket of the "
                    "same user, although it reads SO_REUSEPORT=0: the option was set on it (or on an earlier "
                    "socket of this user on the port) and the Linux kernel keeps the port open to this user's "
                    "SO_REUSEPORT sockets after it is cleared. Create it without SO_REUSEPORT: "
                    "aioexclusive.bind_socket() does it right, or let the loop bind (pass host/port instead of sock)."
                )


def _joinable_by_this_user(view: Any, address: Any) -> bool:
    """Can a ``SO_REUSEPORT`` socket of this user bind *view*'s TCP address next to it? Asked of the kernel.

    The Linux kernel records in the port's bind bucket that a ``SO_REUSEPORT``
    socket of this user joined it, and keeps the record when the option is
    cleared afterwards (``getsockopt`` then reads 0): a later ``SO_REUSEPORT``
    bind of the same user skips the conflict check. Only a bind shows it: a
    trial socket, never listening, closed at once. A trial that fails changes
    nothing in the kernel; one that binds means the port was open already.
    """
    if not (isinstance(address, tuple) and len(address) >= 2 and address[1]):
        return False  # not bound to a port: nothing to join yet
    try:
        family = _family_of(view)
    except TypeError:
        return False  # no descriptor of its own: the base loop refuses it in its own words
    if family not in (socket.AF_INET, socket.AF_INET6):
        return False
    try:
        trial = socket.socket(family, socket.SOCK_STREAM)
    except OSError:
        return False
    try:
        trial.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if family == socket.AF_INET6:
            trial.setsockopt(
                socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, view.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY)
            )
        trial.bind(address)
    except OSError:
        return False
    finally:
        trial.close()
    return True


_SO_DOMAIN = getattr(socket, "SO_DOMAIN", None)
_SO_TYPE = getattr(socket, "SO_TYPE", None)


def kernel_kind(sock: Any) -> tuple[int, int]:
    """(family, type) of *sock* as the kernel knows it, not as the object says.

    A Python socket object can lie: ``socket.fromfd(fd, AF_UNIX, SOCK_STREAM)``
    or ``socket.socket(AF_UNIX, fileno=fd)`` around an AF_INET socket (uvicorn's
    ``--fd`` wraps its inherited socket exactly so) reports AF_UNIX, and an
    audit that trusted it would wave a shareable TCP socket through. Linux
    answers ``SO_DOMAIN``/``SO_TYPE``; elsewhere the object's word is all there is.
    """
    family = int(getattr(sock, "family", 0))
    kind = int(getattr(sock, "type", 0))
    if _SO_DOMAIN is not None and _SO_TYPE is not None:
        with kernel_view(sock) as view:
            try:
                family = view.getsockopt(socket.SOL_SOCKET, _SO_DOMAIN)
                kind = view.getsockopt(socket.SOL_SOCKET, _SO_TYPE)
            except (OSError, AttributeError, TypeError):
                pass
    return family, kind


def listen_at_adoption(sock: Any, backlog: int, role: Role) -> None:
    """Listen on a caller's TCP socket now, as the loop does with its own.

    A socket bound with ``SO_REUSEADDR`` but not listening can be bound by
    another socket with ``SO_REUSEADDR`` too, and whichever listens first gets
    every connection (Linux): adopted with ``start_serving=False`` it would
    stay open to that until ``start_serving()``. ``listen`` on a socket that
    already listens only changes its backlog, which the base loop does anyway.
    """
    with kernel_view(sock) as view:
        try:
            view.listen(backlog)
        except OSError as exc:
            try:
                address = view.getsockname()
            except OSError:
                address = None
            raise translate_bind_error(exc, role, address) from exc


def clear_forbidden_options(sock: Any, plan: BindPlan) -> list[str]:
    """Switch off any option the plan forbids that a base loop turned on; return their names."""
    cleared = []
    for name, value in read_sharing_options(sock).items():
        if value and name in plan.never:
            sock.setsockopt(socket.SOL_SOCKET, _option(name), 0)
            cleared.append(name)
    return cleared


def _host_port(sockaddr: Any) -> tuple[str, int | None]:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        return str(sockaddr[0]), int(sockaddr[1])
    return str(sockaddr), None


def translate_bind_error(exc: OSError, role: Role, sockaddr: Any) -> OSError:
    """The exception a failed bind (or listen) should surface as.

    "Address in use" becomes `AddressInUseError`; anything else keeps the
    stdlib's wording, so messages match what asyncio users already know.
    """
    host, port = _host_port(sockaddr)
    if role.protocol == "TCP":
        # asyncio's create_server/create_connection wording; 3.13 switched
        # from the strerror to str(exc) ("[errno 98] address already in use").
        detail = str(exc) if bind_message_from_str.get() or not exc.strerror else exc.strerror
        msg: str | None = f"error while attempting to bind on address {sockaddr!r}: {detail.lower()}"
    else:
        # asyncio's create_datagram_endpoint lets bind's own error through.
        msg = exc.strerror
    if is_address_in_use(exc):
        # Naming the holder needs the optional psutil; _holder never raises and
        # returns None when it cannot tell, and the message then says how to look.
        from ._holder import describe_holder

        holder = describe_holder(role.protocol, host, port) if _name_holder.get() else None
        return AddressInUseError(role.protocol, host, port, exc, holder=holder, base_message=msg)
    if msg is None or msg == exc.strerror:
        return exc
    return OSError(exc.errno, msg)


def new_socket(
    family: int,
    type: int,
    proto: int,
    plan: BindPlan,
    *,
    strict: bool = False,
    address: object = None,
    listener_v6only: bool | None = None,
) -> socket.socket:
    """A non-blocking socket with the plan's options set, not bound yet."""
    return configure_socket(
        socket.socket(family, type, proto), plan, strict=strict, address=address, listener_v6only=listener_v6only
    )


# The C-level getter: an int, not the enum that socket.socket.family builds in Python.
_family_of = _socket.socket.family.__get__


def configure_socket(
    sock: socket.socket,
    plan: BindPlan,
    *,
    strict: bool = False,
    address: object = None,
    listener_v6only: bool | None = None,
) -> socket.socket:
    """Apply the plan to a fresh socket (closed again if that fails)."""
    try:
        apply_plan(sock, plan, strict=strict, address=address)
        if listener_v6only is not None and _HAS_IPV6 and _family_of(sock) == socket.AF_INET6:
            # Linux listens on both families through one IPv6 socket by default;
            # asyncio turns that off for listeners and so do we, so each family
            # gets its own socket and its own plan.
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, int(listener_v6only))
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# Linux only: the bind fast path that takes a device-bound listener, and the port record that outlives a
# cleared SO_REUSEPORT (`_joinable_by_this_user`), are the Linux kernel's.
_ON_LINUX = sys.platform.startswith("linux")
_SO_BINDTODEVICE = getattr(socket, "SO_BINDTODEVICE", 25)
_IFNAMSIZ = 16


def device_bound_refusal(where: object, device: str) -> ExclusivityError:
    """The refusal of a TCP listener bound to one network interface (Linux), in words that say what to do."""
    return ExclusivityError(
        f"a TCP listener bound to one network interface ({where} on {device}) can be taken over by any "
        "user on Linux: a SO_REUSEPORT socket bound to another interface primes the port's bind fast path, "
        "then a listener on this interface co-binds the port and wins its connections (docs/limits.md, "
        "'Listeners bound to one interface'). Listen on a global address or on '::'/'0.0.0.0' (the "
        "exclusive loop holds the other family's wildcard) and filter the interface with a firewall"
    )


def _link_local_scope(sockaddr: Any) -> int:
    """The scope id that binds *sockaddr* to one interface (an IPv6 link-local address), else 0."""
    if not (isinstance(sockaddr, tuple) and len(sockaddr) >= 4 and sockaddr[3]):
        return 0
    try:
        # fe80::/10; the kernel ignores a scope id on any other unicast address.
        high = int.from_bytes(socket.inet_pton(socket.AF_INET6, sockaddr[0].partition("%")[0])[:2], "big")
    except (OSError, TypeError, ValueError, AttributeError):
        return 0
    return int(sockaddr[3]) if high & 0xFFC0 == 0xFE80 else 0


def bound_device(getsockopt: Callable[[int, int, int], Any]) -> str:
    """The interface a socket is bound to (``SO_BINDTODEVICE``, or a link-local scope), or ``""``.

    *getsockopt* is the socket's ``getsockopt(level, option, buflen)`` as the
    caller can trust it: a C-level view's, the C function on a socket that may
    be a subclass, or libc's on a bare duplicate.
    """
    if not _ON_LINUX:
        return ""
    try:
        name = getsockopt(socket.SOL_SOCKET, _SO_BINDTODEVICE, _IFNAMSIZ)
    except (OSError, TypeError):
        return ""
    return bytes(name).split(b"\0", 1)[0].decode("ascii", "replace")


def bind_now(sock: socket.socket, sockaddr: Any, role: Role, *, backlog: int | None = None) -> None:
    """Bind (and listen, given a *backlog*), with errors as `translate_bind_error` words them.

    A TCP listener on an IPv6 link-local address is refused on Linux before the
    bind: its scope id binds it to one interface, where no hold can protect it
    (`device_bound_refusal`).
    """
    scope = _link_local_scope(sockaddr) if role is Role.TCP_LISTENER and _ON_LINUX else 0
    if scope:
        try:
            name = socket.if_indextoname(scope)
        except OSError:
            name = f"interface {scope}"
        raise device_bound_refusal(f"[{sockaddr[0]}]:{sockaddr[1]}", name)
    try:
        sock.bind(sockaddr)
        if backlog is not None:
            # Listen straight away: on Linux two SO_REUSEADDR sockets can both be
            # bound until one listens, and the first to listen wins.
            sock.listen(backlog)
    except OSError as exc:
        error = translate_bind_error(exc, role, sockaddr)
        if error is exc:
            raise
        raise error from exc


# How often port 0 is tried again when the port the kernel picked for the
# first family is taken in another (each family gets the same port).
_SAME_PORT_ATTEMPTS = 16


def open_bound_sockets(
    infos: Iterable[AddrInfo],
    plan: BindPlan,
    *,
    backlog: int | None,
    keep_alive: bool = False,
    dualstack_ipv6: bool = False,
    strict: bool = False,
    skip_unavailable: bool = False,
) -> list[socket.socket]:
    """One configured, bound, listening socket per address.

    All or nothing: on any failure every socket made here is closed.
    *skip_unavailable*: skip an address whose bind fails with
    ``EADDRNOTAVAIL`` (a family that is not enabled), as asyncio does from 3.13.

    Listeners (a *backlog* given) on port 0 all get the port the kernel picked
    for the first one, and a wildcard listener's other family is held on Linux
    (see `_wildcard`); when that port is taken in another family, port 0 is
    tried again.
    """
    infos = list(infos)
    if len(infos) == 1 and not _needs_hold(infos[0], backlog):
        # One address that no hold concerns (the common create_server("127.0.0.1", port)):
        # nothing to share a port with, nothing to hold; keep it as cheap as the base loop.
        family, type_, proto, _, sockaddr = infos[0]
        sock = _open_socket(
            socket.socket,
            family,
            type_,
            proto,
            sockaddr,
            plan,
            backlog,
            keep_alive,
            dualstack_ipv6,
            strict,
            skip_unavailable,
        )
        return [] if sock is None else [sock]
    port_zero = backlog is not None and any(_port_of(info[4]) == 0 for info in infos)
    attempts = _SAME_PORT_ATTEMPTS if port_zero else 1
    for attempt in range(1, attempts + 1):
        last = attempt == attempts
        quiet = None if last else _name_holder.set(False)
        try:
            return _open_bound_sockets_once(
                infos,
                plan,
                backlog=backlog,
                keep_alive=keep_alive,
                dualstack_ipv6=dualstack_ipv6,
                strict=strict,
                skip_unavailable=skip_unavailable,
                same_port=port_zero,
            )
        except OSError as exc:
            if last or not is_address_in_use(exc):
                raise
        finally:
            if quiet is not None:
                _name_holder.reset(quiet)
    raise AssertionError("unreachable")  # pragma: no cover


def _needs_hold(info: AddrInfo, backlog: int | None) -> bool:
    """Is *info* a wildcard TCP listener, whose other family `_wildcard` holds (Linux)?"""
    return (
        backlog is not None
        and _wildcard.HOLDS_WILDCARDS
        and info[1] == socket.SOCK_STREAM
        and _wildcard.is_wildcard(info[0], info[4])
    )


def _open_socket(
    cls: type[socket.socket],
    family: int,
    type_: int,
    proto: int,
    sockaddr: Any,
    plan: BindPlan,
    backlog: int | None,
    keep_alive: bool,
    dualstack_ipv6: bool,
    strict: bool,
    skip_unavailable: bool,
) -> socket.socket | None:
    """One configured socket bound to *sockaddr* (listening, given a *backlog*); None for a skipped address.

    Skipped, as asyncio skips them: a family, type or protocol the host
    cannot make (IPv6 disabled in the kernel, say), and with
    *skip_unavailable* an address whose bind fails with ``EADDRNOTAVAIL``.
    On any other failure the socket is closed and the error raised.
    """
    try:
        sock = cls(family, type_, proto)
    except OSError:
        return None
    try:
        configure_socket(sock, plan, strict=strict, address=sockaddr, listener_v6only=not dualstack_ipv6)
        if keep_alive:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        try:
            bind_now(sock, sockaddr, plan.role, backlog=backlog)
        except OSError as exc:
            if skip_unavailable and exc.errno == errno.EADDRNOTAVAIL:
                sock.close()
                return None
            raise
    except BaseException:
        sock.close()
        raise
    return sock


def _port_of(sockaddr: Any) -> int | None:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2 and isinstance(sockaddr[1], int):
        return sockaddr[1]
    return None


def _with_port(sockaddr: Any, port: int) -> Any:
    return (sockaddr[0], port, *sockaddr[2:])


def _open_bound_sockets_once(
    infos: list[AddrInfo],
    plan: BindPlan,
    *,
    backlog: int | None,
    keep_alive: bool,
    dualstack_ipv6: bool,
    strict: bool,
    skip_unavailable: bool,
    same_port: bool,
) -> list[socket.socket]:
    listening = backlog is not None
    holds = listening and _wildcard.HOLDS_WILDCARDS
    chosen = 0
    on_chosen: set[int] = set()  # families already listening on the chosen port
    sockets: list[socket.socket] = []
    # Which addresses are wildcard TCP listeners, decided once: only they are held.
    wildcards = [holds and info[1] == socket.SOCK_STREAM and _wildcard.is_wildcard(info[0], info[4]) for info in infos]
    picker = (
        _pick_port(infos, plan, _families_to_hold(infos, wildcards, not dualstack_ipv6))
        # Listeners can bind next to the picker only when both have SO_REUSEADDR
        # (not with reuse_address=False), and only wildcards are ever demoted.
        if same_port and True in wildcards and ("SO_REUSEADDR", 1) in plan.set
        else None
    )
    if picker is not None:
        chosen = picker.getsockname()[1]
    try:
        for (family, type_, proto, _, sockaddr), wildcard in zip(infos, wildcards):
            if same_port and chosen and family not in on_chosen and _port_of(sockaddr) == 0:
                # Each family on the port the kernel picked for the first
                # (asyncio gives each its own); two addresses of one family
                # would conflict on one port, so a second one gets its own.
                sockaddr = _with_port(sockaddr, chosen)
            hold = _wildcard.take_hold(family, sockaddr[1], sockaddr) if wildcard else None
            if hold is not None:
                # We already hold this wildcard for another of our listeners:
                # promote that socket instead of releasing it and binding anew,
                # which would leave a window (see _wildcard).
                sockets.append(_promote(hold, plan, backlog, keep_alive, dualstack_ipv6, sockaddr, strict))
                continue
            sock = _open_socket(
                _wildcard.HeldListener if wildcard else socket.socket,
                family,
                type_,
                proto,
                sockaddr,
                plan,
                backlog,
                keep_alive,
                dualstack_ipv6,
                strict,
                skip_unavailable,
            )
            if sock is None:
                continue
            sockets.append(sock)
            if same_port:
                # Only a port-0 bind needs the kernel's answer.
                bound_port = sockaddr[1] or sock.getsockname()[1]
                if not chosen:
                    chosen = bound_port
                if bound_port == chosen:
                    on_chosen.add(family)
        if picker is not None:
            picker.close()
            picker = None
        if True in wildcards:
            try:
                _wildcard.protect(sockets)
            except OSError as exc:
                port = sockets[0].getsockname()[1] if sockets else None
                raise _other_family_in_use(exc, plan.role, port) from exc
        return sockets
    except BaseException:
        if picker is not None:
            picker.close()
        for sock in sockets:
            sock.close()
        raise


# How many ports `_pick_port` asks the hold's family for, when the first pick does not fit the hold.
_PICKS = 8


def _families_to_hold(infos: list[AddrInfo], wildcards: list[bool], v6only: bool) -> frozenset[int]:
    """The families `_wildcard.protect` will hold for these listeners (some of them wildcards): those no
    listener of the call covers, as `_wildcard.wildcard_families` says what a wildcard covers (a dual-stack
    ``[::]`` both, ``::ffff:0.0.0.0`` IPv4 alone) and a specific address covers its own family."""
    covered: set[int] = set()
    for (family, _, _, _, sockaddr), wildcard in zip(infos, wildcards):
        covered |= _wildcard.wildcard_families(family, sockaddr, v6only) if wildcard else {int(family)}
    return frozenset(_wildcard._FAMILIES).difference(covered)


def _hold_fits(port: int, family: int) -> bool:
    """Can the hold on *family*'s side of *port* be bound now? Only an address in use says no."""
    try:
        # Bound and closed without SO_REUSEPORT, it leaves no bucket record for anyone.
        _wildcard._bind_hold(family, port, socket.socket).close()
    except OSError as exc:
        return not is_address_in_use(exc)
    return True


def _pick_port(infos: list[AddrInfo], plan: BindPlan, hold: Set[int] = frozenset()) -> socket.socket | None:
    """A socket bound to port 0 at the first address, so that every listener binds an explicit port.

    On Linux a listener the kernel gave its port (bound to port 0) leaves the
    port when it is shut down, while one bound to an explicit port keeps it
    until closed; the wildcard holds rely on the latter (``_wildcard._demote``).
    So the port is picked by this socket, which has the listeners' own options
    (``SO_REUSEADDR``: they can bind next to it, it never listens) and is
    closed once they listen.

    The kernel picks a port free for the picker's family only. When the other
    family's wildcard will be held (*hold*) and cannot be bound on that port
    (connections in TIME_WAIT on that side of it: the hold has no
    ``SO_REUSEADDR``), the kernel is asked for a port free on the hold's side
    instead, and the picker is bound there. Without this, a host whose other
    family's ports are busy failed a port-0 ``create_server`` the base loop serves.
    """
    picker = _one_picker(infos, plan)
    if picker is None or len(hold) != 1:
        return picker
    (family,) = hold
    if _hold_fits(picker.getsockname()[1], family):
        return picker
    picker.close()
    # Kept bound until the end, so that the kernel does not offer their ports again.
    trials: list[socket.socket] = []
    try:
        for _ in range(_PICKS):
            try:
                trials.append(_wildcard._bind_hold(family, 0, socket.socket))
            except OSError:
                break
            picker = _one_picker(infos, plan, trials[-1].getsockname()[1])
            if picker is not None:
                return picker
    finally:
        for trial in trials:
            trial.close()
    return _one_picker(infos, plan)  # as before: the hold's own bind reports the port in use


def _one_picker(infos: list[AddrInfo], plan: BindPlan, port: int = 0) -> socket.socket | None:
    """The picker bound at the first port-0 address, on *port* (0: the kernel's choice); None if it cannot be."""
    for family, type_, proto, _, sockaddr in infos:
        if _port_of(sockaddr) != 0:
            continue
        try:
            picker = socket.socket(family, type_, proto)
        except OSError:
            return None
        try:
            apply_plan(picker, plan, address=sockaddr)
            if family == socket.AF_INET6:
                picker.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            picker.bind(_with_port(sockaddr, port) if port else sockaddr)
        except OSError:
            picker.close()
            return None  # the listeners' own binds report what is wrong
        return picker
    return None


def _promote(
    hold: socket.socket,
    plan: BindPlan,
    backlog: int | None,
    keep_alive: bool,
    dualstack_ipv6: bool,
    sockaddr: Any,
    strict: bool,
) -> socket.socket:
    port = sockaddr[1]
    if dualstack_ipv6 and hold.family == socket.AF_INET6:
        # IPV6_V6ONLY cannot change once bound; a dual-stack [::] conflicts with
        # our own IPv4 listener anyway, exactly as on the base loop.
        _wildcard.give_back(hold, port)
        raise translate_bind_error(OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)), plan.role, sockaddr)
    try:
        apply_plan(hold, plan, strict=strict, address=sockaddr)
        if keep_alive:
            hold.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        hold.setblocking(False)
        hold.listen(backlog if backlog is not None else min(socket.SOMAXCONN, 128))
    except OSError as exc:
        _wildcard.give_back(hold, port)
        raise translate_bind_error(exc, plan.role, sockaddr) from exc
    except BaseException:
        _wildcard.give_back(hold, port)
        raise
    return hold


def _other_family_in_use(exc: OSError, role: Role, port: int | None) -> OSError:
    """The error for a wildcard port whose other family someone else holds."""
    error = translate_bind_error(exc, role, ("0.0.0.0 and ::", port))
    if hasattr(error, "add_note"):  # 3.11+
        error.add_note(
            f"Another socket holds the other address family's wildcard on port {port}; on Linux its owner "
            "could take a one-family wildcard listener over (the two-step SO_REUSEPORT takeover, "
            "docs/limits.md). Free that port, or listen on both families (host=None)."
        )
    return error


def bind_socket(
    address: tuple[Any, ...] | tuple[str | None, int],
    *,
    type: int = socket.SOCK_STREAM,
    family: int = socket.AF_UNSPEC,
    backlog: int | None = None,
    dualstack_ipv6: bool = False,
    reuse_port: bool = False,
    allow_reuse_port: bool = False,
    strict: bool = False,
) -> socket.socket:
    """One exclusive, bound socket, like `socket.create_server` but by the bind plan.

    ``type=socket.SOCK_STREAM`` (default) gives a listening TCP socket,
    ``socket.SOCK_DGRAM`` a bound UDP socket. The host is resolved with
    ``getaddrinfo`` and the first address is used (``None`` or ``""``: the IPv4
    wildcard, or the IPv6 one with ``family=AF_INET6``/``dualstack_ipv6=True``).
    The socket is blocking, as `socket.create_server` returns it; hand it to
    any loop, server or framework that takes a ``sock=``.
    """
    if not isinstance(address, tuple) or len(address) < 2:
        raise TypeError(f"address must be a (host, port) tuple, got {address!r}")
    host, port = address[0], address[1]
    check_port(port)
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"type must be socket.SOCK_STREAM or socket.SOCK_DGRAM, got {type!r}")
    if dualstack_ipv6:
        if not socket.has_dualstack_ipv6():
            raise ValueError("dualstack_ipv6 not supported on this platform")
        family = socket.AF_INET6
    elif family == socket.AF_UNSPEC and host in (None, ""):
        family = socket.AF_INET
    role = Role.TCP_LISTENER if type == socket.SOCK_STREAM else Role.UDP_UNICAST
    plan = make_plan(role, reuse_port=reuse_port, allow_reuse_port=allow_reuse_port, address=address)
    infos = socket.getaddrinfo(host or None, port, family, type, 0, socket.AI_PASSIVE)
    if not infos:
        raise OSError(f"getaddrinfo({host!r}) returned empty list")
    if role is Role.TCP_LISTENER:
        # The listener path of create_server: listen at once, and on Linux hold
        # the other family's wildcard next to a one-family wildcard (_wildcard).
        listen_backlog = backlog if backlog is not None else min(socket.SOMAXCONN, 128)
        (sock,) = open_bound_sockets(
            infos[:1], plan, backlog=listen_backlog, dualstack_ipv6=dualstack_ipv6, strict=strict
        )
    else:
        family_, type_, proto, _, sockaddr = infos[0]
        sock = new_socket(family_, type_, proto, plan, strict=strict, address=sockaddr)
        try:
            bind_now(sock, sockaddr, role)
        except BaseException:
            sock.close()
            raise
    sock.setblocking(True)
    return sock
