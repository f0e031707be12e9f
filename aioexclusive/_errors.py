"""The exceptions and the warning aioexclusive raises.

`ExclusivityError` is a `ValueError` because every case is a request the caller
can change (an option, a socket it built); `AddressInUseError` is an `OSError`
with the original errno, so existing ``except OSError`` handlers and
``err.errno == errno.EADDRINUSE`` checks keep working.
"""

from __future__ import annotations

import errno as _errno
import sys

__all__ = ["AddressInUseError", "ExclusivityError", "ExclusivityWarning", "InvalidPortError"]


class ExclusivityError(ValueError):
    """A request that would let another socket share the port was refused.

    The message says what was asked, why it is refused and the one explicit
    opt-in that allows it.
    """


class ExclusivityWarning(RuntimeWarning):
    """A socket could not be made exclusive and is served unprotected."""


class InvalidPortError(ValueError, OverflowError):
    """A port outside 0-65535.

    The stdlib's ``create_server`` raises ``OverflowError`` here; this class is
    both, so handlers written for either keep working.
    """


# Windows reports "someone holds this exclusively" as WSAEACCES and a plain
# conflict as WSAEADDRINUSE; POSIX only has EADDRINUSE for a taken port (EACCES
# there means a privileged port, which is not "in use").
WSAEACCES = 10013
WSAEADDRINUSE = 10048
_WINDOWS_REASONS = {
    WSAEACCES: "WSAEACCES: another socket holds it with SO_EXCLUSIVEADDRUSE, "
    "or a socket on the wildcard address covers it",
    WSAEADDRINUSE: "WSAEADDRINUSE: another socket is bound to it",
}


def is_address_in_use(exc: BaseException) -> bool:
    """True when *exc* is the OS saying "this address and port are taken"."""
    if not isinstance(exc, OSError):
        return False
    winerror = getattr(exc, "winerror", None)
    if winerror is not None:
        return winerror in _WINDOWS_REASONS
    return exc.errno == _errno.EADDRINUSE


def _how_to_find_holder(protocol: str, port: int | str | None, address: str = "") -> str:
    if protocol == "UNIX":
        return f"find the holder with `ss -lxp src {address}` or `lsof -U {address}` (as root to see other users' processes)"
    if sys.platform == "win32":
        return f"find the holder with `netstat -ano -p {protocol}` and look for port {port}"
    option = "-ltnp" if protocol == "TCP" else "-lunp"
    return f"find the holder with `ss {option} 'sport = :{port}'` (as root to see other users' processes)"


class AddressInUseError(OSError):
    """Binding failed because another socket already holds the address and port.

    ``errno`` (and ``winerror`` on Windows) are those of the failed call, and the
    original exception is chained as ``__cause__``.

    Attributes:
        protocol: ``"TCP"`` or ``"UDP"`` (or ``"UNIX"`` for a socket path).
        address: the host address (or path) that was bound.
        port: the port that was bound (``None`` for a path).
        holder: a description of the process holding the port, if known.
    """

    protocol: str
    address: str
    port: int | None
    holder: str | None

    def __init__(
        self,
        protocol: str,
        address: str,
        port: int | None,
        cause: OSError,
        *,
        holder: str | None = None,
        base_message: str | None = None,
    ) -> None:
        winerror = getattr(cause, "winerror", None)
        if winerror in _WINDOWS_REASONS:
            reason = _WINDOWS_REASONS[winerror]
        else:
            name = _errno.errorcode.get(cause.errno or 0, f"errno {cause.errno}")
            reason = f"{name}: {(cause.strerror or 'address already in use').lower()}"
        where = address if port is None else f"address {address} port {port}"
        # The base loop's own text comes first, word for word (programs and
        # test suites match it, e.g. "error while attempting to bind on
        # address ('127.0.0.1', 8000): address already in use"); what we know
        # beyond it follows in parentheses.
        detail = f"{protocol} {where} is already in use ({reason}); "
        detail += f"held by {holder}" if holder else _how_to_find_holder(protocol, port, address)
        message = f"{base_message} ({detail})" if base_message else detail
        super().__init__(cause.errno, message)
        if winerror is not None:
            self.winerror = winerror
        self.protocol = protocol
        self.address = address
        self.port = port
        self.holder = holder

    def __reduce__(self):  # type: ignore[no-untyped-def]
        # OSError pickles through its args; keep ours for multiprocessing
        # (spawn on Windows), the WinError included: it is what tells
        # WSAEACCES from WSAEADDRINUSE there.
        winerror = getattr(self, "winerror", None)
        return (
            _rebuild_address_in_use,
            (self.protocol, self.address, self.port, self.errno, self.strerror, self.holder, winerror),
        )


def _rebuild_address_in_use(
    protocol: str,
    address: str,
    port: int | None,
    errno: int,
    strerror: str,
    holder: str | None,
    winerror: int | None = None,
) -> AddressInUseError:
    err = AddressInUseError.__new__(AddressInUseError, errno, strerror)
    OSError.__init__(err, errno, strerror)
    if winerror is not None:
        err.winerror = winerror
    err.protocol, err.address, err.port, err.holder = protocol, address, port, holder
    return err
