"""Hostile arguments: only the documented exceptions, nothing left open, no warnings.

No test here may touch DNS (this machine's network rule): host names are
answered by a patched resolver that knows no names.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import warnings
from typing import Any

import pytest
from harness import open_fds, warm_up_loops

import aioexclusive
from aioexclusive import AddressInUseError, ExclusivityError

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="counts file descriptors in /proc")

# What create_server/create_datagram_endpoint may raise for bad input, as documented.
DOCUMENTED: tuple[type[BaseException], ...] = (
    TypeError,
    ValueError,
    OverflowError,
    OSError,
    ExclusivityError,
    AddressInUseError,
)
if sys.version_info < (3, 11):
    # asyncio 3.10 asserts a datagram address is a 2-tuple; the exclusive loop raises what it raises.
    DOCUMENTED += (AssertionError,)

hosts = st.one_of(
    st.none(),
    st.just(""),
    st.sampled_from(["127.0.0.1", "::1", "0.0.0.0", "::", "127.0.0.1 ", "256.0.0.1", "::g", "fe80::1%nope", "\x00"]),
    st.text(max_size=12),  # resolved by the patched resolver below, never by DNS
    st.integers(),
    st.binary(max_size=8),
    st.lists(st.sampled_from(["127.0.0.1", "::1", "", 3, None]), max_size=3),
)
ports = st.one_of(
    st.none(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True),
    st.sampled_from(["0", "http", "99999", "-1", "", "x"]),
    st.binary(max_size=4),
)
families = st.sampled_from([0, socket.AF_INET, socket.AF_INET6, getattr(socket, "AF_UNIX", 1), 12345, -1])
flags_ = st.sampled_from([0, socket.AI_PASSIVE, -1, 1 << 20])


async def _no_dns(host: Any, port: Any, **kwargs: Any) -> Any:
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known (test resolver: no DNS)")


async def _attempt(call: str, args: dict[str, Any]) -> None:
    loop = asyncio.get_running_loop()
    loop.getaddrinfo = _no_dns  # type: ignore[method-assign]
    try:
        if call == "server":
            server = await loop.create_server(asyncio.Protocol, **args)
            server.close()
            await server.wait_closed()
        else:
            transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **args)
            transport.close()
            await asyncio.sleep(0)
    except DOCUMENTED:
        pass


@pytest.fixture(autouse=True)
def _in_scratch_dir(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    # family=AF_UNIX turns a host string into a socket *path*: keep those out
    # of the source tree.
    monkeypatch.chdir(tmp_path_factory.mktemp("hostile"))


def _check(base: str, call: str, args: dict[str, Any]) -> None:
    warm_up_loops()
    before = open_fds()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ResourceWarning)
        aioexclusive.run(_attempt(call, args), base=base)
    assert open_fds() - before == set()


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(host=hosts, port=ports, family=families, flags=flags_)
def test_create_server_hostile(base: str, host: Any, port: Any, family: int, flags: int) -> None:
    _check(base, "server", {"host": host, "port": port, "family": family, "flags": flags})


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    local=st.one_of(st.none(), st.tuples(hosts, ports), hosts),
    remote=st.one_of(st.none(), st.tuples(st.sampled_from(["127.0.0.1", "::1", "x"]), ports)),
    family=families,
)
def test_create_datagram_endpoint_hostile(base: str, local: Any, remote: Any, family: int) -> None:
    _check(base, "datagram", {"local_addr": local, "remote_addr": remote, "family": family})
