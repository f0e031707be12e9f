"""`AddressInUseError` names who holds the port (with psutil), or says how to find out (without)."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest
from attacker import Attacker
from harness import run

import aioexclusive
from aioexclusive import _holder

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="the holder is a forked attacker process")

try:
    import psutil

    HAVE_PSUTIL = True
except ImportError:  # pragma: no cover - the test extra installs it
    HAVE_PSUTIL = False

needs_psutil = pytest.mark.skipif(not HAVE_PSUTIL, reason="psutil is not installed")


def _port_held_by(attacker: Attacker, proto: str) -> int:
    for _ in range(20):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM) as probe:
            probe.bind(("127.0.0.1", 0))
            port = int(probe.getsockname()[1])
        if attacker.try_bind(proto, 4, "127.0.0.1", port, ()).ok:
            return port
    raise AssertionError("could not get the attacker to hold a port")


async def _bind_tcp(port: int) -> None:
    server = await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port)
    server.close()
    await server.wait_closed()


async def _bind_udp(port: int) -> None:
    transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
        asyncio.DatagramProtocol, local_addr=("127.0.0.1", port)
    )
    transport.close()


@needs_psutil
@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_holder_pid_is_named(proto: str, base: str, same_user_attacker: Attacker) -> None:
    port = _port_held_by(same_user_attacker, proto)
    try:
        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(_bind_tcp(port) if proto == "tcp" else _bind_udp(port), base)
    finally:
        same_user_attacker.collect(wait=0)
    err = info.value
    pid = same_user_attacker.whoami()["pid"]
    assert err.holder is not None and f"pid {pid}" in err.holder
    assert f"held by pid {pid}" in str(err)
    assert "python" in err.holder.lower()


@needs_psutil
def test_holder_of_another_user_is_named_as_root(base: str, other_user_attacker: Attacker) -> None:
    port = _port_held_by(other_user_attacker, "tcp")
    try:
        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(_bind_tcp(port), base)
    finally:
        other_user_attacker.collect(wait=0)
    assert f"pid {other_user_attacker.whoami()['pid']}" in str(info.value)
    assert "nobody" in str(info.value) or "65534" in str(info.value)


def test_without_psutil_the_message_says_how_to_look(
    monkeypatch: pytest.MonkeyPatch, same_user_attacker: Attacker
) -> None:
    monkeypatch.setitem(sys.modules, "psutil", None)  # import psutil -> ImportError
    port = _port_held_by(same_user_attacker, "tcp")
    try:
        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(_bind_tcp(port))
    finally:
        same_user_attacker.collect(wait=0)
    assert info.value.holder is None
    assert "ss -ltnp" in str(info.value) and str(port) in str(info.value)


@needs_psutil
def test_access_denied_falls_back_quietly(monkeypatch: pytest.MonkeyPatch) -> None:
    def denied(kind: str = "inet") -> list[object]:
        raise psutil.AccessDenied()

    monkeypatch.setattr(psutil, "net_connections", denied)
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        assert _holder.describe_holder("TCP", "127.0.0.1", port) is None
        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(_bind_tcp(port))
    assert info.value.holder is None and "ss -ltnp" in str(info.value)


@needs_psutil
def test_unexpected_psutil_failure_never_escapes(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(kind: str = "inet") -> list[object]:
        raise RuntimeError("something odd")

    monkeypatch.setattr(psutil, "net_connections", broken)
    assert _holder.describe_holder("TCP", "127.0.0.1", 1) is None


@needs_psutil
def test_wildcard_and_family_matching() -> None:
    with socket.create_server(("0.0.0.0", 0)) as held:
        port = held.getsockname()[1]
        me = f"pid {os.getpid()}"
        # A wildcard listener conflicts with a specific bind of its family...
        assert me in (_holder.describe_holder("TCP", "127.0.0.1", port) or "")
        assert me in (_holder.describe_holder("TCP", "0.0.0.0", port) or "")
        # ...not with the other family, and not for the other protocol.
        assert _holder.describe_holder("TCP", "::1", port) is None
        assert _holder.describe_holder("UDP", "127.0.0.1", port) is None


@needs_psutil
def test_unix_path_holder_is_named(sock_path: str) -> None:
    # A fresh directory (conftest's sock_path): a fixed name keyed by pid could meet a file an earlier
    # run left behind when pids wrapped.
    path = sock_path
    live = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        live.bind(path)
        live.listen(1)

        async def main() -> None:
            await asyncio.start_unix_server(lambda r, w: None, path)

        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(main())
        assert f"pid {os.getpid()}" in str(info.value)
    finally:
        live.close()
        os.unlink(path)


@needs_psutil
def test_retry_names_the_holder_once_in_the_final_error(monkeypatch: pytest.MonkeyPatch) -> None:
    scans = []
    real = psutil.net_connections

    def counting(kind: str = "inet") -> object:
        scans.append(kind)
        return real(kind)

    monkeypatch.setattr(psutil, "net_connections", counting)
    with socket.create_server(("127.0.0.1", 0)) as held:
        port = held.getsockname()[1]
        with pytest.raises(aioexclusive.AddressInUseError) as info:
            run(_bind_tcp(port), bind_retry=(4, 0))
    assert f"pid {os.getpid()}" in str(info.value)
    assert len(scans) == 1
