"""grpcio servers that nobody else can bind next to.

grpcio binds in C (its core's TCP server), so neither the exclusive loops nor
the guard's audit hook ever see the socket, and its core turns
``SO_REUSEPORT`` on by default (the channel argument ``grpc.so_reuseport``,
default 1 on Linux): any process of the same user can bind the same port and
receive a share of the calls. Measured: a same-user socket with
``SO_REUSEADDR`` + ``SO_REUSEPORT`` took 20 of 20 calls. ``grpc.so_reuseport=0``
closes it. `server` and `aio_server` are drop-ins for ``grpc.server`` and
``grpc.aio.server`` that do this::

    from aioexclusive.contrib import grpc as exclusive_grpc
    server = exclusive_grpc.server(futures.ThreadPoolExecutor(8))          # was grpc.server(...)
    server = exclusive_grpc.aio_server()                                   # was grpc.aio.server()

* sharing is off unless the caller opts in: ``options=[("grpc.so_reuseport", 1)]``
  together with ``allow_reuse_port=True`` (grpc's multiprocessing example,
  where each worker process binds the same port on purpose); the option alone
  raises `ExclusivityError`;
* a failed ``add_insecure_port``/``add_secure_port`` raises `AddressInUseError`
  (an ``OSError``) when the port is taken, whatever the grpcio version does
  (older ones return 0, newer ones raise ``RuntimeError``); other failures
  stay as grpcio reports them.

Under ``AIOEXCLUSIVE_GUARD`` (see `aioexclusive._import_hooks`), unmodified
programs get the same default: ``grpc.server``/``grpc.aio.server`` add
``("grpc.so_reuseport", 0)`` when the caller did not set it. An explicit
``1`` is the caller's choice and the mode decides what happens when a port is
added that the allow list does not name: ``warn`` warns, ``raise`` and
``enforce`` refuse with `ExclusivityError` (stripping it would leave one of N
processes serving, the others failing to bind).
"""

from __future__ import annotations

import functools
import socket
import warnings
from collections.abc import Callable, Sequence
from types import ModuleType
from typing import Any

import grpc

from .._binding import open_bound_sockets
from .._errors import AddressInUseError, ExclusivityError, ExclusivityWarning
from .._import_hooks import ORIGINAL, guard_allows, guard_mode, patched_original
from .._plan import Role, make_plan

__all__ = ["REUSE_PORT_OPTION", "aio_server", "server"]

REUSE_PORT_OPTION = "grpc.so_reuseport"
_OPTIONS_INDEX = 3  # grpc.server(thread_pool, handlers, interceptors, options, ...), grpc.aio.server alike


def _requests_sharing(options: Sequence[Any] | None) -> bool:
    return any(_is_reuse_port(item) and bool(item[1]) for item in options or ())


def _is_reuse_port(item: Any) -> bool:
    return isinstance(item, (tuple, list)) and len(item) == 2 and item[0] == REUSE_PORT_OPTION


def _exclusive_options(options: Sequence[Any] | None) -> tuple[Any, ...]:
    """The caller's options, with ``grpc.so_reuseport=0`` unless they set it."""
    given = tuple(options or ())
    if any(_is_reuse_port(item) for item in given):
        return given
    return (*given, (REUSE_PORT_OPTION, 0))


def parse_address(address: str) -> tuple[str, int] | None:
    """(host, port) of a grpc server address; ``None`` for unix sockets and what is not host:port."""
    text = address.strip()
    for scheme in ("ipv4:", "ipv6:"):
        if text.startswith(scheme):
            text = text[len(scheme) :]
    if text.startswith(("unix:", "unix-abstract:", "vsock:")):
        return None
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or not rest.startswith(":"):
            return None
        port_text = rest[1:]
    else:
        host, colon, port_text = text.rpartition(":")
        if not colon or ":" in host:
            return None
    try:
        port = int(port_text)
    except ValueError:
        return None
    return host, port


def _taken(address: str) -> AddressInUseError | None:
    """Why grpc could not bind *address*, if the reason is that the port is taken.

    grpcio reports a failed bind as 0 or a RuntimeError without the errno, so
    ask the kernel: bind an exclusive socket (by the plan, never listening,
    closed at once) on each address the host resolves to. Only a conflict
    counts; any other failure leaves grpc's own report as it is.
    """
    parsed = parse_address(address)
    if parsed is None or parsed[1] == 0:
        return None  # an ephemeral port is never "in use"
    host, port = parsed
    try:
        infos = socket.getaddrinfo(host or None, port, socket.AF_UNSPEC, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)
    except OSError:
        return None
    plan = make_plan(Role.TCP_LISTENER)
    for family, type_, proto, _, sockaddr in infos:
        # grpc binds "[::]" dual-stack: the IPv4 wildcard's holder counts too.
        dualstack = family == getattr(socket, "AF_INET6", None) and sockaddr[0] == "::"
        try:
            probes = open_bound_sockets(
                [(family, type_, proto, "", sockaddr)], plan, backlog=None, dualstack_ipv6=dualstack
            )
        except AddressInUseError as exc:
            return exc
        except OSError:
            continue
        for probe in probes:
            probe.close()
    return None


def _in_use_error(address: str, cause: BaseException | None) -> AddressInUseError | None:
    err = _taken(address)
    if err is not None:
        err.__cause__ = cause
    return err


def _port_adder(method: Callable[..., int], check: Callable[[str], None] | None, translate: bool) -> Callable[..., int]:
    @functools.wraps(method)
    def add_port(address: str, *args: Any, **kwargs: Any) -> int:
        if check is not None:
            check(address)
        try:
            port = method(address, *args, **kwargs)
        except RuntimeError as exc:
            # grpcio >= 1.5x: "Failed to bind to address ..."
            err = _in_use_error(address, exc) if translate else None
            if err is not None:
                raise err from exc
            raise
        if port == 0 and translate:
            # older grpcio: 0 for a port it could not bind
            err = _in_use_error(address, None)
            if err is not None:
                raise err
        return port

    return add_port


def _wrap_ports(srv: Any, check: Callable[[str], None] | None, translate: bool) -> Any:
    for name in ("add_insecure_port", "add_secure_port"):
        method = getattr(srv, name, None)
        if method is not None:
            # An instance attribute: the server stays grpc's own class
            # (isinstance(srv, grpc.Server) and friends keep working).
            setattr(srv, name, _port_adder(method, check, translate))
    return srv


def _refuse_sharing(what: str) -> ExclusivityError:
    return ExclusivityError(
        f"{what}(options=[({REUSE_PORT_OPTION!r}, 1)]) lets any process of the same user bind the same port and "
        f"receive a share of its calls; pass allow_reuse_port=True if the processes sharing the port are all "
        f"yours (grpc's multiprocessing pattern), or drop the option"
    )


def server(
    thread_pool: Any,
    handlers: Any = None,
    interceptors: Any = None,
    options: Sequence[tuple[str, Any]] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    xds: bool = False,
    *,
    allow_reuse_port: bool = False,
) -> Any:
    """``grpc.server`` whose ports no other socket can bind (see the module docstring).

    Takes ``grpc.server``'s arguments, plus ``allow_reuse_port``: honour an
    explicit ``("grpc.so_reuseport", 1)`` in *options*.
    """
    if _requests_sharing(options) and not allow_reuse_port:
        raise _refuse_sharing("grpc.server")
    create = patched_original(grpc.server)
    kwargs: dict[str, Any] = {}
    if xds:
        kwargs["xds"] = xds  # older grpcio has no xds argument; pass it only when asked
    srv = create(
        thread_pool, handlers, interceptors, _exclusive_options(options), maximum_concurrent_rpcs, compression, **kwargs
    )
    return _wrap_ports(srv, None, translate=True)


def aio_server(
    migration_thread_pool: Any = None,
    handlers: Any = None,
    interceptors: Any = None,
    options: Sequence[tuple[str, Any]] | None = None,
    maximum_concurrent_rpcs: int | None = None,
    compression: Any = None,
    *,
    allow_reuse_port: bool = False,
) -> Any:
    """``grpc.aio.server`` whose ports no other socket can bind (see the module docstring)."""
    if _requests_sharing(options) and not allow_reuse_port:
        raise _refuse_sharing("grpc.aio.server")
    from grpc import aio

    create = patched_original(aio.server)
    srv = create(
        migration_thread_pool, handlers, interceptors, _exclusive_options(options), maximum_concurrent_rpcs, compression
    )
    return _wrap_ports(srv, None, translate=True)


# --- AIOEXCLUSIVE_GUARD: the post-import hook for unmodified programs -----------------------------


def _guard_check(what: str) -> Callable[[str], None]:
    def check(address: str) -> None:
        mode = guard_mode()
        parsed = parse_address(address)
        # Port 0 is checked too: an ephemeral port with SO_REUSEPORT can be
        # joined as soon as it is known, and it is printed or published.
        if mode == "off" or parsed is None or guard_allows(*parsed):
            return
        host = f"[{parsed[0]}]" if ":" in parsed[0] else parsed[0]
        where = f"{host}:{parsed[1]}"
        allow = f"{host}:{parsed[1] or '*'}"  # an allow entry names ports 1-65535 or '*'
        message = (
            f"{what}(options=[({REUSE_PORT_OPTION!r}, 1)]) on {where} lets any process of the same user bind the "
            f"same port and receive a share of its calls; if the processes sharing it are all yours (grpc's "
            f"multiprocessing pattern), allow it: AIOEXCLUSIVE_GUARD_ALLOW={allow!r}"
        )
        if mode == "warn":
            try:
                warnings.warn(message, ExclusivityWarning, stacklevel=3)
            except ExclusivityWarning as exc:
                # Warnings made errors (-W error): fatal, as the guard's own warn is.
                raise ExclusivityError(f"refused: {message}") from exc
            return
        # raise and enforce alike: grpc's socket is bound in C, the option
        # cannot be stripped after the server exists, and stripping it would
        # leave one of the processes serving and the others failing to bind.
        raise ExclusivityError(f"AIOEXCLUSIVE_GUARD={mode} refused {message}")

    return check


def _patch_module(module: ModuleType) -> None:
    """Give ``module.server`` (``grpc`` or ``grpc.aio``) the exclusive default while the guard is on."""
    original = getattr(module, "server", None)
    if original is None or hasattr(original, ORIGINAL):
        return
    what = f"{module.__name__}.server"

    @functools.wraps(original)
    def guarded_server(*args: Any, **kwargs: Any) -> Any:
        if guard_mode() == "off":
            return original(*args, **kwargs)
        if len(args) > _OPTIONS_INDEX:
            options = args[_OPTIONS_INDEX]
            args = (*args[:_OPTIONS_INDEX], _exclusive_options(options), *args[_OPTIONS_INDEX + 1 :])
        else:
            options = kwargs.get("options")
            kwargs["options"] = _exclusive_options(options)
        srv = original(*args, **kwargs)
        if _requests_sharing(options):
            _wrap_ports(srv, _guard_check(what), translate=False)
        return srv

    setattr(guarded_server, ORIGINAL, original)
    setattr(module, "server", guarded_server)
