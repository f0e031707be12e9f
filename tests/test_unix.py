"""The AF_UNIX guard: the exclusive loops never take a live server's socket path over."""

from __future__ import annotations

import asyncio
import errno
import os
import secrets
import socket
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from attacker import become_stranger
from harness import run, run_plain

import aioexclusive

pytestmark = pytest.mark.skipif(
    sys.platform == "win32" or not hasattr(socket, "AF_UNIX"), reason="AF_UNIX servers are POSIX-only in asyncio"
)

try:
    import psutil  # noqa: F401

    HAVE_PSUTIL = True
except ImportError:
    HAVE_PSUTIL = False


@pytest.fixture
def path(tmp_path: Any) -> Iterator[str]:
    # Short: AF_UNIX paths are limited to ~107 bytes and tmp_path can be long.
    directory = f"/tmp/aioex-{secrets.token_hex(4)}"
    os.mkdir(directory)
    yield os.path.join(directory, "s.sock")
    for name in os.listdir(directory):
        os.unlink(os.path.join(directory, name))
    os.rmdir(directory)


async def _greeting_server(path: str, greeting: bytes) -> asyncio.AbstractServer:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(greeting)
        writer.close()

    return await asyncio.start_unix_server(handle, path)


def _ask_blocking(path: str) -> bytes:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        client.connect(path)
        chunks = []
        while chunk := client.recv(100):
            chunks.append(chunk)
        return b"".join(chunks)


async def _ask(path: str) -> bytes:
    if path.startswith("\0"):
        # uvloop's create_unix_connection rejects abstract names (EINVAL):
        # talk to the server from a plain socket in a thread instead.
        return await asyncio.get_running_loop().run_in_executor(None, _ask_blocking, path)
    reader, writer = await asyncio.open_unix_connection(path)
    try:
        return await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()


def _live_listener(path: str) -> socket.socket:
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    live.bind(path)
    live.listen(8)
    live.setblocking(False)
    return live


def _reaches(live: socket.socket, path: str) -> bool:
    """True when a connection to *path* arrives at *live*."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.connect(path)
        try:
            conn, _ = live.accept()
        except BlockingIOError:
            return False
        conn.close()
        return True


def test_live_server_is_refused_and_keeps_answering(base: str, path: str, no_fd_leak: None) -> None:
    async def main() -> None:
        first = await _greeting_server(path, b"first")
        try:
            with pytest.raises(aioexclusive.AddressInUseError) as info:
                await _greeting_server(path, b"second")
            err = info.value
            assert err.errno == errno.EADDRINUSE
            assert err.protocol == "UNIX" and err.address == path and err.port is None
            assert path in str(err)
            if HAVE_PSUTIL:
                assert f"pid {os.getpid()}" in str(err)
            # The first server still owns the path and answers.
            assert await _ask(path) == b"first"
        finally:
            first.close()
            await first.wait_closed()

    run(main(), base)


def test_control_plain_loop_takes_a_live_path_over(base: str, path: str) -> None:
    # What the guard prevents, shown on the plain loop: the harness can see a takeover.
    live = _live_listener(path)
    try:
        assert _reaches(live, path)

        async def main() -> bool:
            server = await _greeting_server(path, b"thief")
            try:
                return await _ask(path) == b"thief" and not _reaches(live, path)
            finally:
                server.close()
                await server.wait_closed()

        assert run_plain(main(), base)
    finally:
        live.close()


def test_live_listener_in_another_socket_is_left_alone(base: str, path: str, no_fd_leak: None) -> None:
    live = _live_listener(path)
    try:

        async def main() -> None:
            with pytest.raises(aioexclusive.AddressInUseError):
                await _greeting_server(path, b"thief")

        run(main(), base)
        assert _reaches(live, path)
    finally:
        live.close()


def test_datagram_socket_at_the_path_counts_as_live(base: str, path: str) -> None:
    # connect() from a stream socket fails with EPROTOTYPE there, not
    # ECONNREFUSED: it is not provably stale, so it is not removed.
    dgram = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dgram.bind(path)
    try:

        async def main() -> None:
            with pytest.raises(aioexclusive.AddressInUseError):
                await _greeting_server(path, b"thief")

        run(main(), base)
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"still here", path)
        assert dgram.recv(32) == b"still here"
    finally:
        dgram.close()


def test_stale_socket_file_is_replaced(base: str, path: str, no_fd_leak: None) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.listen(1)
    dead.close()  # the file stays: a crashed server's leftover
    assert os.path.exists(path)

    async def main() -> None:
        server = await _greeting_server(path, b"fresh")
        try:
            assert await _ask(path) == b"fresh"
        finally:
            server.close()
            await server.wait_closed()

    run(main(), base)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".stale")]


def test_restart_over_own_leftover(base: str, path: str) -> None:
    async def main(greeting: bytes) -> None:
        server = await _greeting_server(path, greeting)
        try:
            assert await _ask(path) == greeting
        finally:
            server.close()
            await server.wait_closed()

    for round_ in range(3):
        run(main(b"round %d" % round_), base)


def _assert_the_stdlib_eaddrinuse(base: str, path: str) -> None:
    """A server on *path* fails with the very OSError (EADDRINUSE, same message) the plain loop raises."""

    async def attempt() -> OSError:
        with pytest.raises(OSError) as info:
            await _greeting_server(path, b"x")
        return info.value

    ours = run(attempt(), base)
    theirs = run_plain(attempt(), base)
    assert type(ours) is type(theirs) is OSError
    assert ours.errno == theirs.errno == errno.EADDRINUSE
    assert str(ours) == str(theirs)


def test_non_socket_path_gives_the_stdlib_error(base: str, path: str) -> None:
    with open(path, "w") as f:
        f.write("keep me")

    _assert_the_stdlib_eaddrinuse(base, path)
    with open(path) as f:
        assert f.read() == "keep me"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="abstract socket names are Linux-only")
def test_abstract_names_are_unaffected(base: str, no_fd_leak: None) -> None:
    name = f"\0aioexclusive-test-{secrets.token_hex(6)}"

    async def main() -> None:
        server = await _greeting_server(name, b"abstract")
        try:
            assert await _ask(name) == b"abstract"
            # The kernel itself refuses a taken abstract name: the base loop's error.
            with pytest.raises(OSError) as info:
                await _greeting_server(name, b"again")
            assert info.value.errno == errno.EADDRINUSE
            assert not isinstance(info.value, aioexclusive.AddressInUseError)
        finally:
            server.close()
            await server.wait_closed()

    run(main(), base)


def test_bad_arguments_leave_no_file(base: str, path: str, no_fd_leak: None) -> None:
    async def main() -> None:
        with pytest.raises(TypeError):
            await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path, ssl=True)

    run(main(), base)
    assert not os.path.exists(path)


@pytest.mark.skipif(sys.version_info < (3, 13), reason="cleanup_socket is new in 3.13")
def test_cleanup_on_close_as_in_313(path: str) -> None:
    async def main() -> None:
        server = await _greeting_server(path, b"x")
        assert os.path.exists(path)
        server.close()
        await server.wait_closed()

    run(main(), "asyncio")
    assert not os.path.exists(path)


def test_racing_starts_on_a_stale_path_have_one_winner(base: str, path: str) -> None:
    """The race between the liveness check and the removal: exactly one server may end up owning the path."""
    contenders = 6
    for _ in range(5):
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()
        barrier = threading.Barrier(contenders)
        results: list[Any] = [None] * contenders
        release = threading.Event()

        def contender(index: int) -> None:
            async def main() -> None:
                barrier.wait()
                try:
                    server = await _greeting_server(path, b"winner %d" % index)
                except Exception as exc:  # noqa: BLE001 - any failure is a result to check
                    results[index] = exc
                    return
                results[index] = "won"
                # Keep serving until every contender has finished.
                await asyncio.get_running_loop().run_in_executor(None, release.wait)
                results[index] = ("won", await _ask(path))
                server.close()
                await server.wait_closed()

            run(main(), base)

        threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
        for thread in threads:
            thread.start()
        for _ in range(3000):  # a generous bound, only so that a broken guard cannot hang the run
            if sum(r is not None for r in results) == contenders:
                break
            threading.Event().wait(0.01)
        release.set()
        for thread in threads:
            thread.join()
        winners = [(i, r) for i, r in enumerate(results) if isinstance(r, tuple)]
        assert len(winners) == 1, results
        index, (_, answer) = winners[0]
        assert answer == b"winner %d" % index
        assert all(isinstance(r, aioexclusive.AddressInUseError) for r in results if not isinstance(r, tuple))
        if os.path.exists(path):
            os.unlink(path)


def test_sync_binder_for_frameworks(path: str, no_fd_leak: None) -> None:
    from aioexclusive._unix import bind_unix_path

    live = _live_listener(path)
    try:
        with pytest.raises(aioexclusive.AddressInUseError):
            bind_unix_path(path, backlog=8)
        assert _reaches(live, path)
    finally:
        live.close()  # now a stale file
    with bind_unix_path(path, backlog=8, umask=0o077) as sock:
        assert sock.getblocking()
        assert os.stat(path).st_mode & 0o077 == 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.connect(path)
    os.unlink(path)
    with bind_unix_path(path, type=socket.SOCK_DGRAM) as dgram:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.sendto(b"hi", path)
        assert dgram.recv(8) == b"hi"
        # A datagram socket bound there is alive too.
        with pytest.raises(aioexclusive.AddressInUseError):
            bind_unix_path(path, type=socket.SOCK_DGRAM)
    with pytest.raises(ValueError, match="path"):
        bind_unix_path("")
    if sys.platform.startswith("linux"):
        # An abstract name has no file: bound as it is, and the kernel refuses a second one.
        name = f"\0aioexclusive-test-{os.getpid()}"
        with bind_unix_path(name, backlog=8) as abstract:
            with pytest.raises(OSError):
                bind_unix_path(name, backlog=8)
            assert abstract.getsockname() == name.encode()


# -- helpers that act from another process -----------------------------------------


class _Child:
    """A forked process (optionally uid 65534) that runs *action* and then waits to be told to exit.

    Forked, not exec'd: the interpreter may live under a home only root can
    read. The child only makes system calls, then blocks on a pipe.
    """

    def __init__(self, action: Any, uid: int | None = None) -> None:
        ready_r, ready_w = os.pipe()
        self._stop_r, self._stop_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                # Nothing of the parent's: its sockets (kept alive by a copy
                # here) and its locks (shared through the descriptor) stay its own.
                become_stranger(uid, ready_w, self._stop_r)
                keep = action()  # noqa: F841 - held until told to stop
                os.write(ready_w, b"k")
                os.read(self._stop_r, 1)
            except BaseException as exc:  # noqa: BLE001
                os.write(ready_w, b"e" + repr(exc).encode()[:500])
                code = 1
            os._exit(code)
        os.close(ready_w)
        os.close(self._stop_r)
        self.pid = pid
        answer = os.read(ready_r, 512)
        os.close(ready_r)
        if answer != b"k":
            self.stop()
            raise RuntimeError(f"the helper process failed: {answer[1:].decode(errors='replace')}")

    def stop(self) -> None:
        os.close(self._stop_w)
        os.waitpid(self.pid, 0)


def _serve_dgram(path: str) -> Any:
    def action() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        return sock

    return action


def _serve_stream(path: str) -> Any:
    def action() -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(path)
        sock.listen(8)
        return sock

    return action


def _talks_to_child_stream(path: str) -> bool:
    """A connection to *path* is accepted by a live listener (the child's, when we hold none)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
        client.settimeout(5)
        try:
            client.connect(path)
        except OSError:
            return False
        return True


# -- AF_UNIX datagram endpoints (issue 12.5) --------------------------------------


def _dgram_endpoint(path: str, remote: str | None = None) -> Any:
    return asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=path, remote_addr=remote, family=socket.AF_UNIX
    )


def _datagram_reaches_child(path: str, child_has_it: bool) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        try:
            sender.sendto(b"x", path)
        except OSError:
            return False
    return child_has_it


def test_datagram_endpoint_refuses_a_live_datagram_server(path: str, no_fd_leak: None) -> None:
    # The live datagram server is another process; asyncio would unlink its file.
    child = _Child(_serve_dgram(path), uid=None)
    try:
        before = os.lstat(path).st_ino

        async def main() -> None:
            with pytest.raises(aioexclusive.AddressInUseError) as info:
                await _dgram_endpoint(path)
            assert info.value.errno == errno.EADDRINUSE and info.value.address == path

        run(main(), "asyncio")
        assert os.lstat(path).st_ino == before  # still the live server's file
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
            sender.connect(path)  # a stale file would refuse this
    finally:
        child.stop()


def test_control_plain_loop_unlinks_a_live_datagram_server(path: str) -> None:
    child = _Child(_serve_dgram(path), uid=None)
    try:
        before = os.lstat(path).st_ino

        async def main() -> None:
            transport, _ = await _dgram_endpoint(path)
            try:
                # The path is now the newcomer's: the live server's file was
                # removed (its socket still holds that inode, so this is another).
                assert transport.get_extra_info("sockname") == path
                assert os.lstat(path).st_ino != before
            finally:
                transport.close()

        run_plain(main(), "asyncio")
    finally:
        child.stop()


def test_datagram_endpoint_replaces_a_stale_file_and_connects(path: str, no_fd_leak: None) -> None:
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    dead.bind(path)
    dead.close()
    peer_path = path + ".peer"
    peer = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    peer.bind(peer_path)
    try:

        async def main() -> None:
            received: asyncio.Queue[bytes] = asyncio.Queue()

            class Proto(asyncio.DatagramProtocol):
                def datagram_received(self, data: bytes, addr: Any) -> None:
                    received.put_nowait(data)

            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_datagram_endpoint(
                Proto, local_addr=path, remote_addr=peer_path, family=socket.AF_UNIX
            )
            try:
                transport.sendto(b"to peer")
                assert peer.recv(16) == b"to peer"
                # Like asyncio's own remote_addr path: another address is refused.
                with pytest.raises(ValueError):
                    transport.sendto(b"x", "/elsewhere")
                peer.sendto(b"to us", path)
                assert await asyncio.wait_for(received.get(), 10) == b"to us"
            finally:
                transport.close()

        run(main(), "asyncio")
    finally:
        peer.close()
        os.unlink(peer_path)
    assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".stale")]


def test_datagram_endpoint_bad_arguments_as_asyncio(path: str) -> None:
    async def attempt(local: Any, remote: Any) -> type:
        with pytest.raises(Exception) as info:
            await asyncio.get_running_loop().create_datagram_endpoint(
                asyncio.DatagramProtocol, local_addr=local, remote_addr=remote, family=socket.AF_UNIX
            )
        return type(info.value)

    for local, remote in ((path.encode(), None), (path, ("127.0.0.1", 9))):
        assert run(attempt(local, remote), "asyncio") is run_plain(attempt(local, remote), "asyncio") is TypeError
    assert not os.path.exists(path)


# -- inode reuse (issue 14.5) ---------------------------------------------------------


def test_file_replaced_between_check_and_rename_is_put_back(
    base: str, path: str, monkeypatch: pytest.MonkeyPatch, no_fd_leak: None
) -> None:
    """Another server replaces the stale file after our liveness check and before our rename.

    On ext4 its new file usually carries the very inode number of the stale
    one, so only a liveness check of the file actually moved tells them apart.
    """
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()
    stale_inode = os.lstat(path).st_ino
    real_rename = os.rename
    children: list[_Child] = []
    seen: list[int] = []

    def rename_after_a_replacement(src: Any, dst: Any, *args: Any, **kwargs: Any) -> None:
        if not children and os.fspath(src) == path:
            # The other server: removes the stale file and binds its own, in another process.
            os.unlink(path)
            children.append(_Child(_serve_stream(path)))
            seen.append(os.lstat(path).st_ino)
        real_rename(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "rename", rename_after_a_replacement)
    try:

        async def main() -> bool:
            try:
                server = await _greeting_server(path, b"thief")
            except aioexclusive.AddressInUseError:
                return True
            server.close()
            await server.wait_closed()
            return False

        refused = run(main(), base)
        monkeypatch.undo()
        assert refused, "the other server's live socket was deleted and its path taken"
        assert children, "the replacement window was never reached"
        # The other server's live file is back at the path and answers.
        assert os.lstat(path).st_ino == seen[0]
        assert _talks_to_child_stream(path)
        assert not [n for n in os.listdir(os.path.dirname(path)) if n.endswith(".stale")]
        print("inode reused:", seen[0] == stale_inode)
    finally:
        monkeypatch.undo()
        for child in children:
            child.stop()


# -- the lock another user could hold (issue 14.6) ------------------------------------


def _hold_directory_flock(directory: str) -> Any:
    def action() -> int:
        import fcntl

        fd = os.open(directory, os.O_RDONLY)
        fcntl.flock(fd, fcntl.LOCK_EX)
        return fd

    return action


@pytest.mark.cross_user
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_another_users_directory_lock_neither_stalls_nor_unlocks(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """uid 65534 holds a flock on the socket's directory (any user who can open it can).

    Neither a stall (the wait is made an hour here: a start that waited for
    that user would never finish) nor an unlocked race between two exclusive
    starters (the second must not remove the first one's live socket).
    """
    import aioexclusive._unix as unix

    os.chmod(os.path.dirname(path), 0o755)
    holder = _Child(_hold_directory_flock(os.path.dirname(path)), uid=65534)
    try:
        monkeypatch.setattr(unix, "_LOCK_WAIT", 3600.0, raising=False)
        dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        dead.bind(path)
        dead.close()
        done = threading.Event()
        outcome: list[Any] = []

        def start() -> None:
            try:
                with unix.bind_unix_path(path, backlog=8):
                    outcome.append("bound")
            except BaseException as exc:  # noqa: BLE001
                outcome.append(exc)
            done.set()

        threading.Thread(target=start, daemon=True).start()
        # Not a timing assertion: only a bound so that a start stuck behind
        # the other user's lock fails the test instead of hanging it.
        assert done.wait(60), "the start waited for another user's lock"
        assert outcome == ["bound"]
    finally:
        holder.stop()


@pytest.mark.cross_user
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_racing_starts_with_another_users_directory_lock(path: str, monkeypatch: pytest.MonkeyPatch) -> None:
    import aioexclusive._unix as unix

    os.chmod(os.path.dirname(path), 0o755)
    holder = _Child(_hold_directory_flock(os.path.dirname(path)), uid=65534)
    # Short, so that the old design (wait, then go on unlocked) reaches its race quickly.
    monkeypatch.setattr(unix, "_LOCK_WAIT", 0.05, raising=False)
    try:
        contenders = 6
        for _ in range(10):
            dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            dead.bind(path)
            dead.close()
            barrier = threading.Barrier(contenders)
            results: list[Any] = [None] * contenders

            def contender(index: int) -> None:
                barrier.wait()
                try:
                    results[index] = unix.bind_unix_path(path, backlog=8)
                except OSError as exc:
                    results[index] = exc

            threads = [threading.Thread(target=contender, args=(i,)) for i in range(contenders)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            winners = [r for r in results if isinstance(r, socket.socket)]
            try:
                assert len(winners) == 1, results
                assert all(isinstance(r, aioexclusive.AddressInUseError) for r in results if r not in winners)
                assert _reaches(winners[0], path)
            finally:
                for sock in winners:
                    sock.close()
            os.unlink(path)
    finally:
        holder.stop()


# -- dangling symlinks (issue 14.7) -------------------------------------------------------


def test_dangling_symlink_gives_the_stdlib_error(base: str, path: str, no_fd_leak: None) -> None:
    os.symlink(path + ".nowhere", path)

    _assert_the_stdlib_eaddrinuse(base, path)
    assert os.path.islink(path)


def test_symlink_to_a_live_socket_is_left_alone(base: str, path: str) -> None:
    target = path + ".real"
    live = _live_listener(target)
    os.symlink(target, path)
    try:

        async def main() -> None:
            with pytest.raises(OSError) as info:
                await _greeting_server(path, b"thief")
            assert info.value.errno == errno.EADDRINUSE

        run(main(), base)
        assert os.path.islink(path) and _reaches(live, path)
    finally:
        live.close()
        os.unlink(target)


# -- a refused path is protected from this process's own os.remove (issue 12.9) --------


def test_refused_live_path_cannot_be_removed_by_this_process(path: str) -> None:
    from aioexclusive._unix import bind_unix_path

    child = _Child(_serve_stream(path))
    try:
        with pytest.raises(aioexclusive.AddressInUseError):
            bind_unix_path(path, backlog=8)
        with pytest.raises(PermissionError, match="live server"):
            os.remove(path)  # what uvicorn's CLI does on its way out
        with pytest.raises(PermissionError):
            os.unlink(path)
        assert _talks_to_child_stream(path)
    finally:
        child.stop()
    os.remove(path)  # stale now: nothing to protect


@pytest.mark.cross_user
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root to drop to uid 65534")
def test_another_user_cannot_take_the_replacement_lock(path: str) -> None:
    import aioexclusive._unix as unix

    lock = unix._ReplaceLock(path)
    assert lock._file is not None
    directory = os.path.dirname(lock._file)
    st = os.lstat(directory)
    assert st.st_uid == os.geteuid() and not st.st_mode & 0o077
    lock.acquire()
    try:
        assert lock._fd is not None  # held now, by us

        def take_it() -> int:
            import fcntl

            fd = os.open(lock._file or "", os.O_RDONLY)
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return fd

        with pytest.raises(RuntimeError, match="helper process failed"):
            _Child(take_it, uid=65534)
        # Control: the same user could open the socket's directory and flock it (the old lock).
        _Child(_hold_directory_flock(os.path.dirname(path)), uid=65534).stop()
    finally:
        lock.release()
    assert not os.path.exists(lock._file or "")  # removed after use
