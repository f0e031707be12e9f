"""AF_UNIX listeners for the integrations: never take over a live server's path.

uvicorn (single process, through ``loop.create_unix_server``), hypercorn
(``Config.create_sockets``) and anyio all remove an existing socket file before
binding, whether or not a server still answers on it. A second instance started
by mistake then silently steals every new connection while the first one keeps
running with an orphaned socket. This helper binds the way a server should:
refuse when someone answers at the path, replace the file only when nobody does.

It is synchronous because the frameworks bind before any loop runs
(``Config.bind_socket``, ``create_sockets``); the exclusive loops'
``create_unix_server`` applies the same rules through ``aioexclusive._unix``.
"""

from __future__ import annotations

import errno
import os
import socket
import stat
from typing import Union

from .._errors import AddressInUseError

__all__ = ["bind_unix_socket", "path_answers"]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# connect() results that prove a server owns the path. EAGAIN: a live stream
# listener whose backlog is full (non-blocking connect on AF_UNIX never blocks).
_LIVE = {0, errno.EAGAIN, errno.EINPROGRESS, errno.EWOULDBLOCK}
# ... and those that prove nobody does: the file is a leftover of a dead server.
_STALE = {errno.ECONNREFUSED, errno.ENOENT}


def path_answers(path: PathArg, type: int = socket.SOCK_STREAM) -> bool:
    """True when a server is bound (and, for streams, listening) at *path*.

    Anything we cannot interpret (``EACCES`` on a socket owned by someone else,
    say) counts as live: refusing is recoverable, taking over is not.
    """
    probe = socket.socket(socket.AF_UNIX, type)
    try:
        probe.setblocking(False)
        result = probe.connect_ex(os.fsdecode(path))
    finally:
        probe.close()
    return result not in _STALE


def _identity(path: PathArg) -> tuple[int, int] | None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISSOCK(st.st_mode):
        return None
    return st.st_dev, st.st_ino


def _in_use(path: PathArg, cause: OSError | None = None) -> AddressInUseError:
    name = os.fsdecode(path)
    err = cause or OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE))
    return AddressInUseError(
        "UNIX", name, None, err, holder=f"the server answering on {name} (it was left running; stop it first)"
    )


def bind_unix_socket(
    path: PathArg,
    *,
    type: int = socket.SOCK_STREAM,
    backlog: int | None = None,
    umask: int | None = None,
) -> socket.socket:
    """A socket bound at *path*, after making sure no live server is there.

    * A server answers at *path*: `AddressInUseError` naming the path; the
      file is left alone and the server keeps serving.
    * A socket file nobody answers on (a crashed server's leftover): removed
      and replaced, as every framework does.
    * Anything else at *path* (a regular file, a directory): ``bind`` fails
      with the OS's own error, as with the stdlib.

    With *backlog* the stream socket listens at once, so from the moment this
    returns, a second instance's probe sees a live server. *umask* applies to
    the bind (hypercorn's option). Linux abstract names (a leading NUL) have no
    file and are bound as they are: the kernel itself refuses a taken name.
    """
    name = os.fsdecode(path)
    if not name:
        raise ValueError("path must not be empty")
    if not name.startswith("\0"):
        before = _identity(path)
        if before is not None:
            if path_answers(path, type):
                raise _in_use(path)
            # Unlink only the very file we probed: if another instance replaced
            # it meanwhile (same check, faster), its fresh socket has another
            # inode and we fall through to bind, which then fails cleanly.
            if _identity(path) == before:
                try:
                    os.unlink(path)
                except FileNotFoundError:
                    pass
    sock = socket.socket(socket.AF_UNIX, type)
    try:
        old_umask = os.umask(umask) if umask is not None else None
        try:
            sock.bind(name)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE and _identity(path) is not None:
                raise _in_use(path, exc) from exc
            raise
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if backlog is not None and type == socket.SOCK_STREAM:
            sock.listen(backlog)
    except BaseException:
        sock.close()
        raise
    return sock
