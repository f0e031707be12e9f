"""AF_UNIX sockets that never take a live server's socket path over.

asyncio's (and uvloop's) ``create_unix_server(path=...)``, and asyncio's
``create_datagram_endpoint(family=AF_UNIX, local_addr=path)``, remove any
socket file at *path* before binding, a live server's included: the live
server keeps running, unreachable, and every new client talks to the newcomer.
This module binds the path instead by these rules (docs/unix.md):

1. ``bind(path)`` first. When nothing is there the kernel creates the file
   atomically and we are done: the common case costs nothing extra.
2. When the name exists (``EADDRINUSE``): anything that is not a socket file
   (a regular file, a directory, a symlink, dangling or not) gives the
   stdlib's own "already in use" error and is left alone. A socket file is
   *alive* when a socket is still bound to it. On Linux the kernel says so
   directly (``sock_diag``: every bound AF_UNIX socket with the inode of its
   file, in any state: listening, datagram, or bound and not listening yet);
   everywhere, a non-blocking ``connect`` that does not fail with
   ``ECONNREFUSED`` counts as alive too. Alive: `AddressInUseError` naming the
   path.
3. A socket file that is not alive is *renamed* aside to a unique name in the
   same directory, and its liveness is checked *again*, on the file that was
   actually moved: only a file that is still not alive is deleted; anything
   else is linked straight back (``link`` never overwrites) and the bind
   starts over. That closes the race between the check and the removal
   without comparing inode numbers (ext4 hands the number just freed to the
   next socket bound in the directory, so "same inode number" proves nothing).
   A socket file's binding cannot come back once its socket is gone: the
   kernel binds a socket only by creating a new file.
4. Exclusive binders serialise steps 2-3 (and the bind that follows) on a
   lock that only their own user can take: a ``flock`` on a file in a
   directory that only that user can write (``/run/aioexclusive-locks`` for
   root, ``/tmp/.aioexclusive-locks-UID`` or ``~/.cache/aioexclusive-locks``
   for others), named after the socket's directory and name. The lock file is
   removed after use. Without it two replacers racing on one stale path could
   move each other's fresh socket aside while a third binds the empty name.
   The first binding attempt takes no lock: a path that does not exist costs
   one ``bind``. (The lock used to be a ``flock`` of the socket's directory:
   any user who can open the directory could hold that one.) On Linux a
   binder between its ``bind`` and its ``listen`` is alive to ``sock_diag``;
   elsewhere (macOS, BSD) a replacer can still meet a fresh binder in that
   window of two system calls.

A path this process was refused (a live server answers there) is also
protected from this process's own ``os.remove``/``os.unlink`` for as long as
that server answers: frameworks such as uvicorn remove their socket path on
the way out, even after a failed start, which would cut the live server off.

Abstract-namespace names (Linux, a leading NUL byte) have no file and are left
to the base loop unchanged.
"""

from __future__ import annotations

import asyncio
import errno
import functools
import hashlib
import os
import secrets
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Callable
from typing import Any, Union

from ._datagram import DatagramBase, adopt, enable_broadcast
from ._errors import AddressInUseError
from ._plan import Role

__all__ = [
    "bind_unix_listener",
    "bind_unix_path",
    "create_unix_datagram_endpoint",
    "refuse_live_path",
    "guards_path",
    "probe_unix_path",
    "remove_own_path",
]

PathArg = Union[str, bytes, "os.PathLike[str]", "os.PathLike[bytes]"]

# Rounds of bind / probe / move aside before giving up on a path that keeps
# changing under us (only a hostile or pathological neighbour does that).
_ATTEMPTS = 8
# How long to wait for another binder *of the same user* holding the
# replacement lock (it holds it for a few system calls). Past this we go on
# without it; the post-rename check still refuses to delete a live socket.
_LOCK_WAIT = 2.0
_LOCK_POLL = 0.002


def guards_path(path: Any) -> bool:
    """True when *path* names a filesystem socket this module should bind."""
    if sys.platform == "win32" or not hasattr(socket, "AF_UNIX") or path is None:
        return False
    name = os.fspath(path)
    if not name:
        return False
    # Abstract namespace: no file, nothing to unlink, the kernel refuses duplicates.
    return name[0] not in (0, "\0")


def refuse_live_path(path: str) -> None:
    """`AddressInUseError` if a live server answers at *path*; anything else is left to the caller.

    For the calls handed to asyncio unchanged (``reuse_port=True`` under
    ``allow_reuse_port``, which asyncio refuses for AF_UNIX only *after* it
    removed the socket file it found): a live server's file is never removed.
    """
    if probe_unix_path(path) == "live":
        raise _live_error(path)


def _in_use_error(shown: Any, detail: str = "") -> OSError:
    # Exactly the stdlib's wording and errno for a path that is taken by
    # something it would not remove (asyncio and uvloop say the same).
    return OSError(errno.EADDRINUSE, f"Address {shown!r} is already in use{detail}")


# -- liveness -------------------------------------------------------------------

_NETLINK_SOCK_DIAG = 4
_SOCK_DIAG_BY_FAMILY = 20
_NLM_F_REQUEST_DUMP = 0x1 | 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_UDIAG_SHOW_VFS = 0x2
_UNIX_DIAG_VFS = 1
_diag_unavailable = False


def _bound_inodes() -> set[int] | None:
    """The inode numbers (low 32 bits) of every socket file an AF_UNIX socket is bound to, or None.

    Linux only: a ``sock_diag`` dump of this network namespace's AF_UNIX
    sockets with ``UDIAG_SHOW_VFS`` (what ``ss -x`` reads; no privilege
    needed). It sees sockets in every state, so a socket that is bound and not
    listening yet is as alive as a listener. ``None`` where the kernel cannot
    be asked (other systems, a sandbox refusing netlink): callers then rely on
    ``connect`` alone.
    """
    global _diag_unavailable
    if _diag_unavailable or not sys.platform.startswith("linux"):
        return None
    try:
        diag = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, _NETLINK_SOCK_DIAG)
    except (OSError, AttributeError):
        _diag_unavailable = True
        return None
    inodes: set[int] = set()
    try:
        # A blocking read would stall the caller forever if the kernel never
        # answered; it answers at once, so a generous bound costs nothing.
        diag.settimeout(5.0)
        # struct unix_diag_req: family, protocol, pad, states (all), ino (any),
        # show, cookie[2].
        request = struct.pack("=BBHIIIII", socket.AF_UNIX, 0, 0, 0xFFFFFFFF, 0, _UDIAG_SHOW_VFS, 0xFFFFFFFF, 0xFFFFFFFF)
        header = struct.pack("=IHHII", 16 + len(request), _SOCK_DIAG_BY_FAMILY, _NLM_F_REQUEST_DUMP, 1, 0)
        diag.sendto(header + request, (0, 0))
        while True:
            data = diag.recv(1 << 16)
            offset = 0
            while offset + 16 <= len(data):
                length, kind = struct.unpack_from("=IH", data, offset)
                if kind == _NLMSG_DONE:
                    return inodes
                if kind == _NLMSG_ERROR or length < 16:
                    _diag_unavailable = True
                    return None
                # struct unix_diag_msg (16 bytes) follows the header, then attributes.
                attr = offset + 32
                end = offset + length
                while attr + 4 <= end:
                    attr_len, attr_type = struct.unpack_from("=HH", data, attr)
                    if attr_len < 4:
                        break
                    if attr_type == _UNIX_DIAG_VFS and attr_len >= 12:
                        inodes.add(struct.unpack_from("=I", data, attr + 4)[0])
                    attr += (attr_len + 3) & ~3
                offset += (length + 3) & ~3
            if not data:
                return None
    except OSError:
        return None
    finally:
        diag.close()


def _connect_says_alive(path: str) -> bool | None:
    """What a non-blocking ``connect`` says: True alive, False refused (no listener), None gone."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.setblocking(False)
        probe.connect(path)
    except ConnectionRefusedError:
        # Nobody accepts on that file. Stale, or (elsewhere than Linux, where
        # sock_diag answered first) bound and not listening yet.
        return False
    except FileNotFoundError:
        return None
    except OSError:
        # EAGAIN: a listener whose backlog is full; EPROTOTYPE: a datagram or
        # seqpacket socket is bound there; EACCES: not ours to judge.
        return True
    finally:
        probe.close()
    return True


def _alive(path: str, st: os.stat_result) -> bool:
    """Is a socket still bound to the socket file *path* (whose ``lstat`` is *st*)?"""
    inodes = _bound_inodes()
    # Only the low 32 bits are reported: a match on another file with the same
    # low bits errs towards "alive", the safe side.
    if inodes is not None and (st.st_ino & 0xFFFFFFFF) in inodes:
        return True
    return _connect_says_alive(path) is True


def probe_unix_path(path: str) -> str:
    """What is at *path*: ``"missing"``, ``"not-socket"``, ``"stale"`` or ``"live"``.

    A symlink counts as ``"not-socket"`` whatever it points to: the name is
    someone's link, and this module never removes it.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return "missing"
    if not stat.S_ISSOCK(st.st_mode):
        return "not-socket"
    return "live" if _alive(path, st) else "stale"


# -- the replacement lock ---------------------------------------------------------


def _private_dir(path: str) -> bool:
    """Is *path* a real directory owned by us that nobody else can write or list?"""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid() and not st.st_mode & 0o077


def _lock_directory() -> str | None:
    """A directory only this user can write, the same for every process of the user, or None."""
    euid = os.geteuid()
    candidates = ["/run/aioexclusive-locks"] if euid == 0 else []
    candidates.append(f"/tmp/.aioexclusive-locks-{euid}")
    home = os.path.expanduser("~")
    if home != "~":
        candidates.append(os.path.join(home, ".cache", "aioexclusive-locks"))
    for candidate in candidates:
        try:
            os.mkdir(candidate, 0o700)
        except FileExistsError:
            pass
        except OSError:
            continue
        # Someone else may have made it first (squatting in /tmp): then it is
        # not ours and not used; the next candidate is.
        if _private_dir(candidate):
            return candidate
    return None


class _ReplaceLock:
    """A ``flock`` that only this user can take, serialising replacements of one socket path."""

    def __init__(self, path: str) -> None:
        self._fd: int | None = None
        self._file: str | None = None
        directory, name = os.path.split(os.path.abspath(path))
        try:
            st = os.stat(directory)
        except OSError:
            return
        where = _lock_directory()
        if where is None:
            return  # no private place: go on unlocked, the post-rename check still holds
        key = hashlib.sha256(f"{st.st_dev}:{st.st_ino}:{name}".encode("utf-8", "surrogateescape")).hexdigest()
        self._file = os.path.join(where, key[:40] + ".lock")

    def _try(self) -> bool | None:
        """Take the lock: True taken, False busy, None no lock to be had (go on unlocked)."""
        import fcntl

        assert self._file is not None
        try:
            fd = os.open(self._file, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError:
            return None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        except OSError:
            os.close(fd)
            return None  # ENOLCK (some network filesystems)
        # The holder before us removes the file when done: a lock on a file
        # that is no longer at that name locks nothing. (Our open descriptor
        # keeps its inode allocated, so the number cannot be reused meanwhile.)
        try:
            same = os.fstat(fd).st_ino == os.lstat(self._file).st_ino
        except OSError:
            same = False
        if not same:
            os.close(fd)
            return False
        self._fd = fd
        return True

    def acquire(self) -> None:
        if self._file is None:
            return
        deadline = time.monotonic() + _LOCK_WAIT
        while (taken := self._try()) is False:
            if time.monotonic() >= deadline:
                return
            time.sleep(_LOCK_POLL)
        if taken is None:
            self._file = None

    def release(self) -> None:
        if self._fd is not None:
            assert self._file is not None
            try:
                os.unlink(self._file)  # while still holding it: see _try
            except OSError:
                pass
            os.close(self._fd)  # closing the descriptor drops the flock
            self._fd = None


# -- binding --------------------------------------------------------------------


def _bind_new(path: str, backlog: int | None, type: int, umask: int | None, proto: int = 0) -> socket.socket | None:
    """Our socket bound at *path* (listening, for a stream with a backlog), or ``None`` if the name exists."""
    sock = socket.socket(socket.AF_UNIX, type, proto)
    try:
        old_umask = os.umask(umask) if umask is not None else None
        try:
            sock.bind(path)
        finally:
            if old_umask is not None:
                os.umask(old_umask)
        if backlog is not None and type == socket.SOCK_STREAM:
            # Listen at once: a bound socket that does not listen refuses
            # connections, which is what a stale file does to a connect probe.
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


def _remove_if_stale(path: str, shown: Any, *, refuse: bool) -> None:
    """Remove the socket file at *path* if no socket is bound to it, without any race.

    With *refuse*, a live socket raises `AddressInUseError` and anything that
    is not a socket file the stdlib's ``OSError(EADDRINUSE)``; without, both
    are left alone silently. Returns quietly when the file vanished or was
    put back (the caller tries again).
    """
    try:
        before = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(before.st_mode):
        if refuse:
            # A regular file, a directory, a symlink (dangling or not: bind()
            # fails with EADDRINUSE on it too): the stdlib's own error, word
            # for word. A link is never followed or removed.
            raise _in_use_error(shown)
        return
    if _alive(path, before):
        if refuse:
            raise _live_error(path)
        return
    directory, name = os.path.split(path)
    grave = os.path.join(directory, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.stale")
    try:
        # Atomic within the directory: what we hold afterwards under a name
        # nobody else knows is exactly the file that was at *path* just now.
        os.rename(path, grave)
    except FileNotFoundError:
        return  # someone else removed it: just bind again
    except OSError as exc:
        # No right to touch the directory entry: the stdlib logs this and then
        # fails to bind with EADDRINUSE; fail the same way, with the cause.
        if refuse:
            raise _in_use_error(shown) from exc
        return
    try:
        moved = os.lstat(grave)
    except FileNotFoundError:
        return
    # Check the moved file again: between the first check and the rename
    # another server may have replaced the stale file with its live one (and
    # on ext4 that new file may even carry the inode number of the old one).
    if stat.S_ISSOCK(moved.st_mode) and not _alive(grave, moved):
        try:
            os.unlink(grave)
        except FileNotFoundError:
            pass
        return
    # Someone else's (live) socket: put it back without overwriting anything
    # that appeared since, then start over (the next round refuses it).
    try:
        os.link(grave, path, follow_symlinks=False)
    except OSError:
        # A third party bound the path in the meantime. Leave the moved file
        # where it is rather than destroy it; it is visible and named after us.
        return
    os.unlink(grave)


def _bind_guarded(path: PathArg, backlog: int | None, type: int, umask: int | None, proto: int = 0) -> socket.socket:
    shown = path
    name = os.fsdecode(os.fspath(path))
    sock = _bind_new(name, backlog, type, umask, proto)
    if sock is not None:
        return sock  # the common case: nothing was there
    lock = _ReplaceLock(name)
    lock.acquire()
    try:
        for _ in range(_ATTEMPTS):
            _remove_if_stale(name, shown, refuse=True)
            sock = _bind_new(name, backlog, type, umask, proto)
            if sock is not None:
                return sock
    finally:
        lock.release()
    raise _in_use_error(shown, ": the socket file kept changing while it was being replaced")


async def bind_unix_listener(path: PathArg, backlog: int = 100) -> socket.socket:
    """A non-blocking AF_UNIX stream socket bound and listening at *path* (the loops' path).

    Raises `AddressInUseError` (errno ``EADDRINUSE``) naming the path when a
    live socket is bound there, and the stdlib's ``OSError(EADDRINUSE)`` when
    the path exists and is not a socket file. A stale socket file is replaced
    (under the replacement lock, which only this user can hold).
    """
    sock = _bind_guarded(path, backlog, socket.SOCK_STREAM, None)
    sock.setblocking(False)
    return sock


def bind_unix_path(
    path: PathArg, *, backlog: int | None = None, type: int = socket.SOCK_STREAM, umask: int | None = None
) -> socket.socket:
    """The same rules for code outside a loop (frameworks that pre-bind): a blocking socket bound at *path*.

    With *backlog* a stream socket listens at once; *type* may be
    ``SOCK_DGRAM``; *umask* applies to the file the bind creates.
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
    return _bind_guarded(path, backlog, type, umask)


async def create_unix_datagram_endpoint(
    base: DatagramBase,
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    local_addr: str,
    remote_addr: str | None,
    *,
    proto: int = 0,
    allow_broadcast: bool | None = None,
) -> tuple[asyncio.BaseTransport, asyncio.BaseProtocol]:
    """asyncio's AF_UNIX ``create_datagram_endpoint`` with *local_addr* bound by the rules above.

    asyncio removes any socket file at *local_addr* first, a live datagram
    server's included; here a live one raises `AddressInUseError`. Otherwise
    the same steps as asyncio (``base_events.create_datagram_endpoint``):
    ``SO_BROADCAST`` if asked, bind, connect to *remote_addr*, and a transport
    that knows its peer (`_datagram.adopt`). Only for the stdlib's selector
    loop (uvloop and the Proactor loop have no AF_UNIX datagram path of their own).
    """
    if remote_addr is not None and not isinstance(remote_addr, str):
        raise TypeError("string is expected")  # asyncio's own check and wording
    sock = _bind_guarded(local_addr, None, socket.SOCK_DGRAM, None, proto)
    discard = functools.partial(remove_own_path, sock, local_addr)
    try:
        enable_broadcast(sock, allow_broadcast)
        sock.setblocking(False)
        if remote_addr and not allow_broadcast:
            await base.loop.sock_connect(sock, remote_addr)
    except BaseException:
        discard()
        raise
    # The plan is unused here: no sharing option exists for AF_UNIX, and a
    # libuv base never comes this way.
    plan = base.plan(Role.UDP_UNICAST)
    return await adopt(base, protocol_factory, sock, plan, remote=remote_addr, discard=discard)


# -- refusals and clean-up ----------------------------------------------------------


def _live_error(name: str) -> AddressInUseError:
    from ._holder import describe_holder

    _protect(name)
    cause = OSError(errno.EADDRINUSE, "a live server answers on this socket path; it was left in place")
    return AddressInUseError("UNIX", name, None, cause, holder=describe_holder("UNIX", None, None, path=name))


def remove_own_path(sock: socket.socket, path: PathArg) -> None:
    """Undo a bind of ours after a later failure, or at shutdown: close, then remove the file if nothing is bound to it.

    The removal goes through the same rename-and-check as a replacement, so
    it never removes a socket file that another server has bound in the
    meantime (on ext4 possibly with the very inode number ours had).
    """
    sock.close()
    if not guards_path(path):
        return
    name = os.fsdecode(os.fspath(path))
    try:
        _remove_if_stale(name, path, refuse=False)
    except OSError:
        pass  # best effort: a failed clean-up must not hide the error being raised


# -- protecting a refused path from this process's own os.remove ------------------

_protected: dict[str, int] = {}  # absolute path -> inode number of the live file we were refused
_protect_lock = threading.Lock()
_hook_installed = False


def _protect(name: str) -> None:
    """Refuse this process's later ``os.remove(name)`` while a live socket is bound there.

    uvicorn's CLI (``uvicorn.main.run``) removes ``--uds PATH`` on its way out
    even when the start failed because PATH belonged to a live server: after
    the loop refused the path, uvicorn itself would cut that server off. The
    hook is installed on the first refusal only and looks at ``os.remove``
    events (which ``os.unlink`` raises too) for the refused paths only, and
    only while the same live socket is bound there.
    """
    global _hook_installed
    try:
        inode = os.lstat(name).st_ino
    except OSError:
        return
    with _protect_lock:
        _protected[os.path.abspath(name)] = inode
        if not _hook_installed:
            sys.addaudithook(_audit_remove)
            _hook_installed = True


def _audit_remove(event: str, args: tuple[Any, ...]) -> None:
    if event != "os.remove" or not _protected:
        return
    path, dir_fd = args[0], args[1] if len(args) > 1 else None
    if dir_fd not in (None, -1) or isinstance(path, int):
        return
    try:
        name = os.path.abspath(os.fsdecode(path))
    except (TypeError, ValueError):
        return
    inode = _protected.get(name)
    if inode is None:
        return
    try:
        st = os.lstat(name)
    except OSError:
        return
    if st.st_ino == inode and stat.S_ISSOCK(st.st_mode) and _alive(name, st):
        raise PermissionError(
            errno.EPERM,
            "aioexclusive: not removing the socket file of the live server this process was refused "
            "(removing it would cut that server off)",
            name,
        )
