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


def test_non_socket_path_gives_the_stdlib_error(base: str, path: str) -> None:
    with open(path, "w") as f:
        f.write("keep me")

    async def attempt() -> OSError:
        with pytest.raises(OSError) as info:
            await _greeting_server(path, b"x")
        return info.value

    ours = run(attempt(), base)
    theirs = run_plain(attempt(), base)
    assert type(ours) is type(theirs) is OSError
    assert ours.errno == theirs.errno == errno.EADDRINUSE
    assert str(ours) == str(theirs)
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
            await asyncio.get_running_loop().create_unix_server(asyncio.Protocol, path, ssl=True)  # type: ignore[arg-type]

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
