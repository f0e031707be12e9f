"""AF_UNIX listeners that never take a live server's socket path over.

asyncio's (and uvloop's) ``create_unix_server(path=...)`` removes any socket
file at *path* before binding, a live server's included: the live server keeps
running, unreachable, and every new client talks to the newcomer. This module
binds the path instead by these rules (docs/design.md, "The attack"; docs/unix.md):

1. ``bind(path)`` first. When nothing is there the kernel creates the file
   atomically and we are done: the common case costs nothing extra.
2. When the name exists (``EADDRINUSE``): a file that is not a socket gives the
   stdlib's own error (it never removes those either). A socket file is
   probed with a non-blocking ``connect``: only ``ECONNREFUSED`` proves that
   nobody is listening (the owner closed or died and left the file). Anything
   else (accepted, backlog full, a datagram socket there, no permission) is
   treated as alive: `AddressInUseError` naming the path.
3. A stale file is *renamed* aside to a unique name in the same directory and
   only deleted if the renamed file is the very inode that was probed. That is
   the answer to the race between the check and the removal: if another server
   replaced the stale file in between, what was moved is its live socket, which
   is linked straight back (``link`` never overwrites) and the bind starts over.
   ``rename`` and ``link`` are atomic within one directory; a plain
   ``unlink(path)`` after the check could not tell which file it removes.
4. Exclusive loops in different processes serialise steps 1-3 on an advisory
   ``flock`` of the directory (no lock file to leave behind), and listen right
   after bind, so one of them never sees another's socket in the short window
   between ``bind`` and ``listen``, where it would refuse connections exactly
   like a stale file. A process that ignores the lock (a plain asyncio loop)
   can still be caught in that window; it would remove our live socket anyway.

Abstract-namespace names (Linux, a leading NUL byte) have no file and are left
to the base loop unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
import stat
import sys
import time
from typing import Any, Union

from ._errors import AddressInUseError

__all__ = ["bind_unix_listener", "bind_unix_path", "guards_path", "probe_unix_path", "remove_own_path"]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# How long to wait for another exclusive loop holding the directory lock. It is
# held for a few system calls only; past this we go on without it (the rename
# check below still prevents removing a live socket that was probed).
_LOCK_WAIT = 2.0
_LOCK_POLL = 0.002
# Rounds of bind / probe / move aside before giving up on a path that keeps
# changing under us (only a hostile or pathological neighbour does that).
_ATTEMPTS = 8


def guards_path(path: Any) -> bool:
    """True when *path* names a filesystem socket this module should bind."""
    if sys.platform == "win32" or not hasattr(socket, "AF_UNIX") or path is None:
        return False
    name = os.fspath(path)
    if not name:
        return False
    # Abstract namespace: no file, nothing to unlink, the kernel refuses duplicates.
    return name[0] not in (0, "\0")


def _in_use_error(shown: Any) -> OSError:
    # Exactly the stdlib's wording and errno for a path that is taken by
    # something it would not remove (asyncio and uvloop say the same).
    return OSError(errno.EADDRINUSE, f"Address {shown!r} is already in use")


def probe_unix_path(path: str) -> str:
    """What is at *path*: ``"missing"``, ``"not-socket"``, ``"stale"`` or ``"live"``.

    Connecting is the only portable liveness test, and only ``ECONNREFUSED``
    proves "nobody listens"; every other answer counts as live, so the guard
    errs on the side of leaving a file alone.
    """
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISSOCK(mode):
        return "not-socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        return "stale"
    except FileNotFoundError:
        return "missing"
    except OSError:
        # EAGAIN: a listener whose backlog is full; EPROTOTYPE: a datagram or
        # seqpacket socket lives there; EACCES: not ours to judge.
        return "live"
    finally:
        probe.close()
    return "live"


class _DirectoryLock:
    """An advisory ``flock`` on the socket's directory, shared by exclusive loops."""

    def __init__(self, directory: str) -> None:
        self._fd: int | None = None
        self._directory = directory

    def _try(self) -> bool | None:
        """Take the lock: True taken, False busy, None no lock to be had (go on unlocked)."""
        try:
            import fcntl
        except ImportError:  # pragma: no cover - POSIX always has it
            return None
        if self._fd is None:
            try:
                self._fd = os.open(self._directory, os.O_RDONLY)
            except OSError:
                return None  # unreadable directory: go on unlocked, the rename check still holds
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError:
            self.release()  # ENOLCK (some network filesystems): go on unlocked
            return None
        return True

    async def acquire(self) -> None:
        # Non-blocking tries with short sleeps: a blocking flock would stall
        # the whole event loop if a neighbour held the lock for long.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _LOCK_WAIT
        while self._try() is False:
            if loop.time() >= deadline:
                self.release()
                return
            await asyncio.sleep(_LOCK_POLL)

    def acquire_sync(self) -> None:
        deadline = time.monotonic() + _LOCK_WAIT
        while self._try() is False:
            if time.monotonic() >= deadline:
                self.release()
                return
            time.sleep(_LOCK_POLL)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


def _bind_and_listen(path: str, backlog: int | None, type: int, umask: int | None) -> socket.socket | None:
    """Our socket bound at *path* (listening, for a stream with a backlog), or ``None`` if the name exists."""
    sock = socket.socket(socket.AF_UNIX, type)
    try:
        old_umask = os.umask(umask) if umask is not None else None
        try:
            sock.bind(path)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if backlog is not None and type == socket.SOCK_STREAM:
            # Listen at once: a bound socket that does not listen refuses
            # connections, which is exactly what a stale file does.
            sock.listen(backlog)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            return None
        raise
    except BaseException:
        sock.close()
        raise
    return sock


def _identity(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _move_aside_if_same(path: str, expected: tuple[int, int], shown: Any) -> None:
    """Remove the stale socket file *path* only if it is still the inode *expected*."""
    directory, name = os.path.split(path)
    grave = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        os.rename(path, grave)
    except FileNotFoundError:
        return  # someone else removed it: just bind again
    except OSError as exc:
        # No right to touch the directory entry: the stdlib logs this and then
        # fails to bind with EADDRINUSE; fail the same way, with the cause.
        raise _in_use_error(shown) from exc
    try:
        moved = os.lstat(grave)
    except FileNotFoundError:
        return
    if _identity(moved) == expected:
        os.unlink(grave)
        return
    # The file changed between the probe and the rename: what we moved is
    # someone else's (maybe live) socket. Put it back without overwriting
    # anything that appeared since, then start over.
    try:
        os.link(grave, path, follow_symlinks=False)
    except FileExistsError:
        # A third party bound the path in the meantime. Leave the moved file
        # where it is rather than destroy it; it is visible and named after us.
        return
    except OSError:
        return
    os.unlink(grave)


def _bind_locked(path: PathArg, backlog: int | None, type: int, umask: int | None) -> socket.socket:
    shown = path
    name = os.fsdecode(os.fspath(path))
    for _ in range(_ATTEMPTS):
        sock = _bind_and_listen(name, backlog, type, umask)
        if sock is not None:
            return sock
        try:
            before = os.lstat(name)
        except FileNotFoundError:
            continue
        state = probe_unix_path(name)
        if state == "missing":
            continue
        if state == "not-socket":
            raise _in_use_error(shown)
        if state == "live":
            raise _live_error(name)
        _move_aside_if_same(name, _identity(before), shown)
    raise OSError(
        errno.EADDRINUSE,
        f"Address {shown!r} is already in use: the socket file kept changing while it was being replaced",
    )


def _lock_for(path: PathArg) -> _DirectoryLock:
    return _DirectoryLock(os.path.dirname(os.path.abspath(os.fsdecode(os.fspath(path)))))


async def bind_unix_listener(path: PathArg, backlog: int = 100) -> socket.socket:
    """A non-blocking AF_UNIX stream socket bound and listening at *path* (the loops' path).

    Raises `AddressInUseError` (errno ``EADDRINUSE``) naming the path when a
    live server answers there, and the stdlib's ``OSError(EADDRINUSE)`` when
    the path exists and is not a socket. A stale socket file is replaced.
    """
    lock = _lock_for(path)
    await lock.acquire()
    try:
        sock = _bind_locked(path, backlog, socket.SOCK_STREAM, None)
    finally:
        lock.release()
    sock.setblocking(False)
    return sock


def bind_unix_path(
    path: PathArg, *, backlog: int | None = None, type: int = socket.SOCK_STREAM, umask: int | None = None
) -> socket.socket:
    """The same rules for code outside a loop (frameworks that pre-bind): a blocking socket bound at *path*.

    With *backlog* a stream socket listens at once; *type* may be
    ``SOCK_DGRAM``; *umask* applies to the file the bind creates. Waits at
    most a couple of seconds for another exclusive binder's directory lock.
    """
    if type not in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        raise ValueError(f"type must be socket.SOCK_STREAM or socket.SOCK_DGRAM, got {type!r}")
    if not path:
        raise ValueError(f"path must be a socket path or a Linux abstract name, got {path!r}")
    if not guards_path(path):
        # An abstract name has no file to take over: the kernel itself refuses
        # a name that is bound already.
        sock = socket.socket(socket.AF_UNIX, type)
        try:
            sock.bind(os.fsdecode(os.fspath(path)))
            if backlog is not None and type == socket.SOCK_STREAM:
                sock.listen(backlog)
        except BaseException:
            sock.close()
            raise
        return sock
    lock = _lock_for(path)
    lock.acquire_sync()
    try:
        return _bind_locked(path, backlog, type, umask)
    finally:
        lock.release()


def _live_error(name: str) -> AddressInUseError:
    from ._holder import describe_holder

    cause = OSError(errno.EADDRINUSE, "a live server answers on this socket path; it was left in place")
    return AddressInUseError("UNIX", name, None, cause, holder=describe_holder("UNIX", None, None, path=name))


def remove_own_path(sock: socket.socket, path: PathArg) -> None:
    """Undo `bind_unix_listener` after a later failure: close, and remove the file if nobody answers there.

    Used when the base loop rejects the socket (a bad ``ssl=``, say), so a
    failed call leaves no file behind, as the stdlib's argument checks (done
    before its bind) leave none.
    """
    sock.close()
    name = os.fsdecode(os.fspath(path))
    try:
        before = os.lstat(name)
    except OSError:
        return
    if probe_unix_path(name) == "stale":
        try:
            _move_aside_if_same(name, _identity(before), path)
        except OSError:
            pass
