"""The exclusive loop against the plain loop of the same base, on the same calls (issue 13).

Every call runs twice, once on the plain loop (asyncio's selector loop, or
uvloop's) and once on the exclusive loop built over it, and both outcomes must
be the same: the same exception type and message, or servers/transports with
sockets of the same families and addresses (and the same port, when a fixed
one was asked for). The only exceptions are the documented ones
(docs/differences.md), each checked here to be exactly what the docs say:

* a request to share the port (``reuse_port=True``, UDP ``reuse_address=True``,
  a shareable ``sock=``) is an `ExclusivityError`;
* a port number outside 0-65535 is an `InvalidPortError` (asyncio raises an
  ``OverflowError``, which it also is; uvloop and ``getaddrinfo`` would bind
  the port modulo 65536);
* uvloop binds a duplicated address twice; the exclusive loop once, as asyncio.

No DNS: on the stdlib base both loops resolve through ``loop.getaddrinfo``,
patched here with a resolver that knows only loopback names. uvloop's servers
resolve through libuv and cannot be patched, so its host strategy holds only
what never reaches DNS (IP literals, ``localhost`` from /etc/hosts, None).
"""

from __future__ import annotations

import asyncio
import gc
import os
import re
import socket
import sys
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from harness import HAVE_IPV6, HAVE_UVLOOP, open_fds, warm_up_loops

from aioexclusive import AddressInUseError, ExclusivityError
from aioexclusive._errors import InvalidPortError
from aioexclusive.lowlevel import exclusive_loop_class

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="compares Linux socket behaviour")
# Windows CPython may have no AF_UNIX; the module must still import there (the Windows leg collects it).
AF_UNIX = getattr(socket, "AF_UNIX", 1)

BASES = ["asyncio", pytest.param("uvloop", marks=pytest.mark.skipif(not HAVE_UVLOOP, reason="uvloop missing"))]
# More examples for a deeper search: AIOEXCLUSIVE_DIFF_EXAMPLES=2000 pytest tests/test_differential.py
EXAMPLES = int(os.environ.get("AIOEXCLUSIVE_DIFF_EXAMPLES", "70"))
SETTINGS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


# -- the two loops ------------------------------------------------------------


def base_class(base: str) -> type:
    if base == "uvloop":
        import uvloop

        return uvloop.Loop
    return asyncio.SelectorEventLoop


LOOPBACK_NAMES = {"localhost": ["127.0.0.1"], "loopback.test": ["127.0.0.1", "::1"], "v6.test": ["::1"]}


async def loopback_resolver(
    host: Any, port: Any, *, family: int = 0, type: int = 0, proto: int = 0, flags: int = 0
) -> Any:
    """getaddrinfo without DNS: literals and None as the C library answers them, a few loopback names, nothing else."""
    if isinstance(host, bytes):
        host = host.decode()
    if host is None or not isinstance(host, str):
        return socket.getaddrinfo(host, port, family, type, proto, flags)
    if host in LOOPBACK_NAMES:
        infos = []
        for address in LOOPBACK_NAMES[host]:
            try:
                infos += socket.getaddrinfo(address, port, family, type, proto, flags | socket.AI_NUMERICHOST)
            except socket.gaierror as exc:
                if exc.errno != socket.EAI_ADDRFAMILY and exc.errno != socket.EAI_FAMILY:
                    raise
        if not infos:
            raise socket.gaierror(socket.EAI_ADDRFAMILY, "Address family for hostname not supported")
        return infos
    try:
        return socket.getaddrinfo(host, port, family, type, proto, flags | socket.AI_NUMERICHOST)
    except socket.gaierror as exc:
        if exc.errno != socket.EAI_NONAME:
            raise
    raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")


def outcome_of(loop_class: type, call: Callable[[], Any], patch_resolver: bool) -> Any:
    """What *call* (a coroutine function run on a fresh loop) returned or raised, as comparable data."""
    loop = loop_class()
    if patch_resolver:
        loop.getaddrinfo = loopback_resolver
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            try:
                result: Any = ("ok", loop.run_until_complete(call()))
            except Exception as exc:
                # Reprs inside messages name fds, which differ between two runs.
                # Ports picked by the kernel differ too.
                text = re.sub(r"fd=\d+", "fd=N", str(exc))
                # (With port 0 the exclusive loop binds every address of a call on the port the
                # kernel gave the first, so a later bind error names that port: documented.)
                text = re.sub(r"address \('([^']*)', \d+", r"address ('\1', P", text)
                result = ("error", type(exc), re.sub(r"addr=\('([^']*)', \d+", r"addr=('\1', P", text))
        deprecations = sorted({str(w.message) for w in caught if issubclass(w.category, DeprecationWarning)})
        return (*result, tuple(deprecations))
    finally:
        loop.run_until_complete(asyncio.sleep(0))
        loop.close()


def both(base: str, call: Callable[[], Any]) -> tuple[Any, Any]:
    cls = base_class(base)
    patch = base == "asyncio"
    return outcome_of(cls, call, patch), outcome_of(exclusive_loop_class(cls), call, patch)


def _address(sockaddr: Any, fixed_port: int | None) -> Any:
    if isinstance(sockaddr, tuple) and len(sockaddr) >= 2:
        port = sockaddr[1]
        # Port 0 gives each loop its own port: compare "some port" then.
        return (sockaddr[0], port if fixed_port else port != 0)
    return sockaddr


async def _server_summary(server: Any, fixed_port: int | None) -> Any:
    try:
        return (
            sorted({(int(s.family), _address(s.getsockname(), fixed_port)) for s in server.sockets}, key=repr),
            server.is_serving(),
        )
    finally:
        server.close()
        await server.wait_closed()


def port_number(port: Any) -> int | None:
    """The port int() makes of the argument, as asyncio's fast path reads it (None if it is not a number)."""
    try:
        return int(port)
    except (TypeError, ValueError, OverflowError):
        return None


def assert_same(plain: Any, exclusive: Any, *, sharing: bool = False, port: Any = 0, base: str = "asyncio") -> None:
    """The outcomes match, or differ only as docs/differences.md says."""
    if exclusive[0] == "error" and exclusive[1] is ExclusivityError:
        assert sharing, f"refused a request that shares nothing: {exclusive}"
        return
    assert not (sharing and plain[0] == "ok" and exclusive[0] == "ok"), "a sharing request was served"
    number = port_number(port)
    if exclusive[0] == "error" and exclusive[1] is InvalidPortError:
        assert number is not None and not 0 <= number <= 65535, f"InvalidPortError for port {port!r}"
        return
    if number is not None and not 0 <= number <= 65535 and isinstance(port, (int, str, bytes)):
        # The documented refusal must have come (unless an earlier argument failed first on both).
        assert exclusive[0] == "error" and plain[0] == "error", (plain, exclusive)
    if base == "uvloop" and plain[0] == "error" and plain[1] is OSError and "could not bind to" in plain[2]:
        # uvloop binds only the first local address and then looks for a remote address of that
        # family ("could not bind to remote_addr"), and words a failed bind "could not bind to
        # local_addr"; the exclusive loop pairs local and remote addresses by family and lets the
        # bind's own OSError through, as asyncio does (documented).
        if exclusive[0] == "ok" or issubclass(exclusive[1], OSError):
            return
        if exclusive[1] is ValueError and exclusive[2] == "can not get address information":
            return
    assert plain == exclusive


# -- generated inputs -----------------------------------------------------------


class Index:
    """An object with __index__ (what operator.index accepts as an int)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __index__(self) -> int:
        return self.value

    def __repr__(self) -> str:
        return f"Index({self.value})"


SAFE_HOSTS = ["127.0.0.1", "::1", "localhost", "0.0.0.0", "::", "::ffff:127.0.0.1", "127.1"]
STDLIB_ONLY_HOSTS = [
    "loopback.test",
    "v6.test",
    "127.0.0.1 ",
    "256.0.0.1",
    "::g",
    "fe80::1%nope",
    "no.such.test",
    "\x00",
]
if not HAVE_IPV6:
    SAFE_HOSTS = [h for h in SAFE_HOSTS if ":" not in h]


def host_strategy(base: str) -> Any:
    names = SAFE_HOSTS + (STDLIB_ONLY_HOSTS if base == "asyncio" else [])
    one = st.sampled_from(names)
    return st.one_of(
        st.none(),
        st.just(""),
        one,
        st.lists(st.one_of(one, st.just(""), st.none()), max_size=3),
        st.tuples(one, one),
        st.just(b"127.0.0.1"),
        st.lists(st.sampled_from([b"127.0.0.1", 3]), min_size=1, max_size=2),
        st.just(5),
    )


def port_strategy() -> Any:
    # "FIXED" is replaced by a port free at the time of the example.
    return st.one_of(
        st.sampled_from([None, 0, "FIXED", "FIXED_STR", "FIXED_SPACES", "0", " 0", "0 ", "", b"0", b""]),
        st.sampled_from([False, True, 0.0, 0.5, float("nan"), float("inf"), Index(0), Index(70000)]),
        st.sampled_from([65536, -1, 2**70, "65536", "65537", "99999", "-1", " 70000", "nosuchservice", "0x10"]),
    )


FAMILIES = st.sampled_from([0, socket.AF_INET, socket.AF_INET6, AF_UNIX, 12345])
FLAGS = st.sampled_from(
    [0, socket.AI_PASSIVE, socket.AI_NUMERICHOST, socket.AI_CANONNAME, socket.AI_PASSIVE | socket.AI_NUMERICSERV]
)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def concrete_port(port: Any) -> tuple[Any, int | None]:
    if port in ("FIXED", "FIXED_STR", "FIXED_SPACES"):
        number = free_port()
        return {"FIXED": number, "FIXED_STR": str(number), "FIXED_SPACES": f" {number} "}[port], number
    return port, None


# -- create_server ----------------------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@SETTINGS
@given(
    data=st.data(),
    family=FAMILIES,
    flags=FLAGS,
    reuse_address=st.sampled_from([None, False, True]),
    reuse_port=st.sampled_from([None, None, False, True]),
    start_serving=st.booleans(),
)
def test_create_server_matches_the_base_loop(
    base: str, data: Any, family: int, flags: int, reuse_address: Any, reuse_port: Any, start_serving: bool
) -> None:
    host = data.draw(host_strategy(base), label="host")
    port, fixed = concrete_port(data.draw(port_strategy(), label="port"))
    kwargs = {"family": family, "flags": flags, "reuse_address": reuse_address, "reuse_port": reuse_port}

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, host, port, start_serving=start_serving, **kwargs)
        return await _server_summary(server, fixed)

    plain, exclusive = both(base, call)
    if _same_port_conflict(host, port) and exclusive[:2] == ("error", AddressInUseError):
        # Documented: each socket listens as soon as it is bound, so a wildcard and a specific
        # address of its family cannot share one port (asyncio binds both before listening,
        # which Linux allows with SO_REUSEADDR). With port 0 every address gets the first one's
        # port, so the same holds there. KNOWN BUG, not a documented difference: a wildcard's
        # other-family hold also collides with the call's own address of that other family
        # (["127.0.0.1", "::"]); see test_a_wildcard_hold_does_not_refuse_the_calls_own_address.
        return
    if (
        base == "asyncio"
        and flags & socket.AI_CANONNAME
        and plain[0] == "error"
        and exclusive[0] == "ok"
        and isinstance(host, (list, tuple))
        and _has_duplicates(host)
    ):
        # With AI_CANONNAME, "localhost" and "127.0.0.1" differ in the canonical name, so asyncio's
        # set keeps both and binds the address twice (on a fixed port the second cannot listen);
        # the exclusive loop binds an address once (documented).
        return
    if base == "uvloop" and isinstance(host, (list, tuple)) and len(host) > 1 and plain[0] == "error":
        # uvloop binds a duplicated address once per mention (on a fixed port the second socket
        # then fails to listen and server.sockets holds None); the exclusive loop binds it once,
        # as asyncio does (documented). Sockets are compared as sets for the same reason.
        if plain[1] is AttributeError and "NoneType" in plain[2]:
            return
        if exclusive[0] == "ok" and (_has_duplicates(host) or "address already in use" in plain[2]):
            # (An address can also repeat through spelling: "::ffff:127.0.0.1" with AF_INET.)
            return
    if isinstance(host, (list, tuple)) and len(host) > 1 and plain[0] == exclusive[0] == "error" and plain != exclusive:
        # The base loops resolve a host list concurrently and report whichever failure comes
        # first, so with several failing hosts the plain loop's own answer varies: accept the
        # failure of any one of them.
        def one(h: Any) -> Callable[[], Any]:
            async def call_one() -> Any:
                loop = asyncio.get_running_loop()
                server = await loop.create_server(asyncio.Protocol, [h], port, start_serving=start_serving, **kwargs)
                return await _server_summary(server, fixed)

            return call_one

        alternatives = [outcome_of(base_class(base), one(h), base == "asyncio") for h in host]
        assert any(_matches(alt, exclusive, reuse_port, port, base) for alt in alternatives), (exclusive, alternatives)
        return
    assert_same(plain, exclusive, sharing=bool(reuse_port), port=port, base=base)


def _matches(plain: Any, exclusive: Any, reuse_port: Any, port: Any, base: str) -> bool:
    try:
        assert_same(plain, exclusive, sharing=bool(reuse_port), port=port, base=base)
    except AssertionError:
        return False
    return True


def _has_duplicates(host: Any) -> bool:
    """Does a host list name one address twice (uvloop then binds it twice)?"""
    names = [LOOPBACK_NAMES.get(h, [h])[0] if isinstance(h, str) else h for h in host]
    return len(set(map(repr, names))) < len(names)


def _same_port_conflict(host: Any, port: Any) -> bool:
    if isinstance(host, (str, bytes)) or host is None:
        return False
    try:
        hosts = list(host)
    except TypeError:
        return False
    wild = {h for h in hosts if h in ("0.0.0.0", "::", "", None)}
    return bool(wild) and len(set(hosts)) > 1


SOCK_KINDS = [
    (family, kind, state, shared)
    for family in (socket.AF_INET, socket.AF_INET6, AF_UNIX)
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM)
    for state in ("fresh", "bound", "listening")
    for shared in (None, "SO_REUSEADDR", "SO_REUSEPORT")
    if not (state == "listening" and kind == socket.SOCK_DGRAM)
    if not (family == AF_UNIX and shared)
    if HAVE_IPV6 or family != socket.AF_INET6
]


def make_sock(spec: tuple[int, int, str, str | None], path: str) -> socket.socket:
    family, kind, state, shared = spec
    sock = socket.socket(family, kind)
    if shared:
        sock.setsockopt(socket.SOL_SOCKET, getattr(socket, shared), 1)
    if state != "fresh":
        sock.bind(path if family == AF_UNIX else ("::1" if family == socket.AF_INET6 else "127.0.0.1", 0))
    if state == "listening":
        sock.listen()
    return sock


def _without_ports(outcome: Any) -> Any:
    sockets, serving = outcome[1]
    return (
        outcome[0],
        ([(fam, addr[0] if isinstance(addr, tuple) else addr) for fam, addr in sockets], serving),
        *outcome[2:],
    )


def _sock_shares(spec: tuple[int, int, str, str | None]) -> bool:
    family, kind, _, shared = spec
    # What the plan refuses on Linux: SO_REUSEPORT on anything, SO_REUSEADDR on UDP.
    return shared == "SO_REUSEPORT" or (shared == "SO_REUSEADDR" and kind == socket.SOCK_DGRAM)


@pytest.mark.parametrize("base", BASES)
@settings(
    max_examples=max(EXAMPLES * 5 // 7, 1), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    spec=st.sampled_from(SOCK_KINDS),
    reuse_port=st.sampled_from([None, True]),
    start_serving=st.booleans(),
    with_port=st.booleans(),
)
def test_create_server_sock_matches_the_base_loop(
    base: str,
    tmp_path_factory: pytest.TempPathFactory,
    spec: Any,
    reuse_port: Any,
    start_serving: bool,
    with_port: bool,
) -> None:
    folder = tmp_path_factory.mktemp("sock")
    socks: list[socket.socket] = []

    async def call() -> Any:
        path = str(folder / "s")
        if os.path.exists(path):
            os.unlink(path)
        sock = make_sock(spec, path)
        socks.append(sock)
        loop = asyncio.get_running_loop()
        port: Any = 0 if with_port else None  # port= next to sock= is what is compared
        server = await loop.create_server(
            asyncio.Protocol, sock=sock, port=port, reuse_port=reuse_port, start_serving=start_serving
        )
        return await _server_summary(server, None)

    try:
        plain, exclusive = both(base, call)
    finally:
        for sock in socks:
            sock.close()
    if not start_serving and plain[0] == exclusive[0] == "ok":
        # Documented: the exclusive loop listens on an adopted TCP socket at once (asyncio only when
        # it starts serving), and listen() gives an unbound socket a port: the port may differ here.
        plain, exclusive = _without_ports(plain), _without_ports(exclusive)
    shares = _sock_shares(spec) and spec[1] == socket.SOCK_STREAM and spec[0] != AF_UNIX
    assert_same(plain, exclusive, sharing=shares)


# -- create_datagram_endpoint -----------------------------------------------------


async def _datagram_summary(transport: Any, fixed: int | None) -> Any:
    try:
        sock = transport.get_extra_info("socket")
        return (
            int(sock.family),
            _address(transport.get_extra_info("sockname"), fixed),
            transport.get_extra_info("peername"),
        )
    finally:
        transport.close()
        await asyncio.sleep(0)


def address_strategy(base: str) -> Any:
    host = st.one_of(
        st.none(), st.just(""), st.sampled_from(SAFE_HOSTS + (STDLIB_ONLY_HOSTS if base == "asyncio" else []))
    )
    pair = st.tuples(host, port_strategy())
    return st.one_of(
        st.none(),
        pair,
        pair.map(list),
        st.tuples(host, port_strategy(), st.just(0), st.just(0)),
        st.just(("127.0.0.1",)),
        st.just("127.0.0.1"),
    )


@pytest.mark.parametrize("base", BASES)
@SETTINGS
@given(
    data=st.data(),
    family=st.sampled_from([0, socket.AF_INET, socket.AF_INET6, 12345]),
    proto=st.sampled_from([0, 0, socket.IPPROTO_UDP, socket.IPPROTO_TCP]),
    reuse_port=st.sampled_from([None, None, True]),
    reuse_address=st.sampled_from(["unset", "unset", False, True]),
    allow_broadcast=st.sampled_from([None, True]),
)
def test_create_datagram_endpoint_matches_the_base_loop(
    base: str, data: Any, family: int, proto: int, reuse_port: Any, reuse_address: Any, allow_broadcast: Any
) -> None:
    local = data.draw(address_strategy(base), label="local_addr")
    remote = data.draw(
        st.one_of(st.none(), st.just(("127.0.0.1", 9)), st.just(("::1", 9)), st.just(["127.0.0.1", 9])), label="remote"
    )
    fixed = None
    if isinstance(local, (tuple, list)) and len(local) >= 2:
        port, fixed = concrete_port(local[1])
        local = type(local)([local[0], port, *local[2:]])
    kwargs: dict[str, Any] = {
        "family": family,
        "proto": proto,
        "reuse_port": reuse_port,
        "allow_broadcast": allow_broadcast,
    }
    if reuse_address != "unset":
        kwargs["reuse_address"] = reuse_address

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local, remote, **kwargs)
        return await _datagram_summary(transport, fixed)

    plain, exclusive = both(base, call)
    port = local[1] if isinstance(local, (tuple, list)) and len(local) >= 2 else 0
    assert_same(plain, exclusive, sharing=bool(reuse_port) or reuse_address is True, port=port, base=base)


# -- create_connection(local_addr=...) ------------------------------------------------


@pytest.mark.parametrize("base", BASES)
@settings(
    max_examples=max(EXAMPLES * 4 // 7, 1), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    local=st.one_of(
        st.tuples(st.sampled_from(["127.0.0.1", "localhost", ""]), st.sampled_from([0, "0", "FIXED"])),
        st.lists(st.sampled_from(["127.0.0.1", 0]), min_size=2, max_size=2),
        st.just(("127.0.0.1", 0, 0, 0)),
        st.just(("127.0.0.1",)),
        st.just("127.0.0.1"),
        st.just(["127.0.0.1", "FIXED"]),
    )
)
def test_create_connection_local_addr_matches_the_base_loop(base: str, local: Any) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        target = listener.getsockname()[1]

        async def call() -> Any:
            # A fixed port is picked afresh for each loop: the first loop's connection may linger.
            address, fixed = local, None
            if isinstance(local, (tuple, list)) and len(local) >= 2 and local[1] == "FIXED":
                fixed = free_port()
                address = type(local)([local[0], fixed])
            loop = asyncio.get_running_loop()
            transport, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", target, local_addr=address)
            try:
                host, port = transport.get_extra_info("sockname")[:2]
                return host, (port == fixed) if fixed else port != 0
            finally:
                transport.abort()
                await asyncio.sleep(0)

        plain, exclusive = both(base, call)
    assert_same(plain, exclusive)


# -- the listed cases of issue 13, one by one ------------------------------------------


LISTED = [
    # 2. nothing to bind
    ("server", {}),
    # 4. an empty string inside a host sequence is not the wildcard
    ("server", {"host": ["127.0.0.1", ""], "port": 0}),
    # 6. what the base loop accepts
    ("server", {"host": "127.0.0.1", "port": "0 "}),
    ("server", {"host": [None], "port": 0}),
    ("server", {"host": [], "port": 0}),
    ("server", {"host": "127.0.0.1", "port": True}),
    ("server", {"host": "127.0.0.1", "port": 0.5}),
    ("server", {"host": b"127.0.0.1", "port": 0}),
    # 12. proto=IPPROTO_TCP on a datagram endpoint; reuse_address's fate per version
    ("datagram", {"local_addr": ("127.0.0.1", 0), "proto": socket.IPPROTO_TCP}),
    ("datagram", {"local_addr": ("127.0.0.1", 0), "reuse_address": False}),
    ("datagram", {"local_addr": ["127.0.0.1", 0]}),
    ("datagram", {"local_addr": ("127.0.0.1", 0, 0, 0)}),
    # 1. broadcast endpoints: connected or not, as the base loop does it
    ("datagram", {"remote_addr": ("127.0.0.1", 9), "allow_broadcast": True}),
    ("datagram", {"local_addr": ("127.0.0.1", 0), "remote_addr": ("127.0.0.1", 9), "allow_broadcast": True}),
]


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize(("kind", "kwargs"), LISTED, ids=[f"{k}-{v}" for k, v in LISTED])
def test_listed_case_matches_the_base_loop(base: str, kind: str, kwargs: dict[str, Any]) -> None:
    async def call() -> Any:
        loop = asyncio.get_running_loop()
        if kind == "server":
            return await _server_summary(await loop.create_server(asyncio.Protocol, **kwargs), None)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, **kwargs)
        return await _datagram_summary(transport, None)

    plain, exclusive = both(base, call)
    assert plain == exclusive


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("port", ["65536", "65537", "99999", 70000, -1])
@pytest.mark.parametrize("kind", ["server", "datagram", "bind_socket"])
def test_out_of_range_port_is_refused_not_wrapped(base: str, port: Any, kind: str) -> None:
    """5. getaddrinfo (and uvloop, for ints) would bind port % 65536: InvalidPortError, an OverflowError too."""
    import aioexclusive

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        if kind == "server":
            await loop.create_server(asyncio.Protocol, "127.0.0.1", port)
        elif kind == "datagram":
            await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", port))
        else:
            aioexclusive.bind_socket(("127.0.0.1", port)).close()

    with pytest.raises(InvalidPortError) as info:
        aioexclusive.run(call(), base=base)
    assert isinstance(info.value, OverflowError)


@pytest.mark.parametrize("base", BASES)
def test_address_in_use_starts_with_the_base_loops_text(base: str) -> None:
    """3. The base loop's message first, word for word; then protocol, holder and hint."""
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    port = holder.getsockname()[1]

    async def call() -> Any:
        await asyncio.get_running_loop().create_server(asyncio.Protocol, "127.0.0.1", port)

    try:
        plain, exclusive = both(base, call)
    finally:
        holder.close()
    assert plain[0] == exclusive[0] == "error"
    assert exclusive[1] is AddressInUseError and issubclass(exclusive[1], plain[1])
    assert exclusive[2].startswith(plain[2] + " (TCP address 127.0.0.1 port"), (plain[2], exclusive[2])


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("plain", [True, False], ids=["plain", "exclusive"])
def test_broadcast_endpoint_hears_replies_from_any_port(base: str, plain: bool) -> None:
    """1. asyncio leaves a remote_addr + allow_broadcast endpoint unconnected; a reply from another port arrives.

    uvloop connects it (its own behaviour, the same on both loops): there only the first peer's reply comes.
    """
    responder = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    responder.bind(("127.0.0.1", 0))
    other.bind(("127.0.0.1", 0))

    class Listener(asyncio.DatagramProtocol):
        def __init__(self) -> None:
            self.got: asyncio.Queue[tuple[bytes, Any]] = asyncio.Queue()

        def datagram_received(self, data: bytes, addr: Any) -> None:
            self.got.put_nowait((data, addr))

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            Listener, remote_addr=responder.getsockname(), allow_broadcast=True
        )
        try:
            transport.sendto(b"ping")
            data, addr = responder.recvfrom(100)
            other.sendto(b"from another port", addr)
            responder.sendto(b"from the peer", addr)
            first = await asyncio.wait_for(protocol.got.get(), 5)
            return first[0]
        finally:
            transport.close()
            await asyncio.sleep(0)

    cls = base_class(base)
    try:
        result = outcome_of(cls if plain else exclusive_loop_class(cls), call, False)
    finally:
        responder.close()
        other.close()
    expected = b"from the peer" if base == "uvloop" else b"from another port"
    assert result[:2] == ("ok", expected)


@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("kind", ["server", "server-two", "datagram", "datagram-remote"])
def test_cancellation_at_every_await_leaves_nothing(base: str, kind: str) -> None:
    """7. Cancel after 0, 1, 2, ... loop iterations: no fd left, and the loop still serves a new server."""
    import aioexclusive

    warm_up_loops()

    async def attempt(iterations: int) -> bool:
        loop = asyncio.get_running_loop()
        # Warm up (a loop opens some descriptors on first use), then count while the loop
        # runs: closing the loop would close a leaked transport and hide it.
        # (libuv opens /dev/null as its spare descriptor at the first listen.)
        warm = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0))
        warm[0].close()
        warm_server = await loop.create_server(asyncio.Protocol, "127.0.0.1", 0)
        warm_server.close()
        await warm_server.wait_closed()
        await asyncio.sleep(0)
        before = open_fds()
        task: asyncio.Future[Any]
        if kind.startswith("server"):
            hosts = ["127.0.0.1", "::1"] if kind == "server-two" and HAVE_IPV6 else "127.0.0.1"
            task = asyncio.ensure_future(loop.create_server(asyncio.Protocol, hosts, 0))
        else:
            remote = ("127.0.0.1", 9) if kind == "datagram-remote" else None
            task = asyncio.ensure_future(
                loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("127.0.0.1", 0), remote)
            )
        for _ in range(iterations):
            await asyncio.sleep(0)
        task.cancel()
        try:
            made = await task
        except asyncio.CancelledError:
            made = None
        if made is not None:
            if kind.startswith("server"):
                made.close()
                await made.wait_closed()
            else:
                made[0].close()
        # Clean-up the exclusive loop hands to a task of its own (a uvloop transport made after
        # the cancellation is closed when it comes) has finished once no other task is left.
        for _ in range(500):
            if not [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]:
                break
            await asyncio.sleep(0.01)
        for _ in range(3):
            await asyncio.sleep(0)
        assert open_fds() - before == set(), f"fd left open after cancelling at iteration {iterations}"
        # Health: a new server on this loop accepts a connection.
        accepted = loop.create_future()

        class Accept(asyncio.Protocol):
            def connection_made(self, transport: Any) -> None:
                if not accepted.done():
                    accepted.set_result(True)
                transport.close()

        server = await loop.create_server(Accept, "127.0.0.1", 0)
        _, writer = await asyncio.open_connection("127.0.0.1", server.sockets[0].getsockname()[1])
        ok = await asyncio.wait_for(accepted, 5)
        writer.close()
        server.close()
        await server.wait_closed()
        return made is None and ok

    cancelled_somewhere = False
    for iterations in range(6):
        before = open_fds()
        cancelled_somewhere |= aioexclusive.run(attempt(iterations), base=base)
        gc.collect()
        assert open_fds() - before == set(), f"fd left after cancelling at iteration {iterations}"
    assert cancelled_somewhere


@pytest.mark.parametrize("value", [(2, float("inf")), (2, float("nan")), (2, -1.0), (0, 0.1), (10**9, 0.1), (5000, 50)])
def test_bind_retry_refuses_endless_or_absurd_values(value: tuple[int, float]) -> None:
    """9. A held port must never make a restart wait forever."""
    import aioexclusive
    from aioexclusive import retry_bind

    with pytest.raises(ValueError, match="bind_retry"):
        aioexclusive.new_event_loop(bind_retry=value).close()

    async def call() -> None:
        await retry_bind(lambda: None, attempts=value[0], delay=value[1])

    with pytest.raises(ValueError, match="retry_bind"):
        asyncio.run(call())


@pytest.mark.skipif(not HAVE_IPV6, reason="needs IPv6")
@pytest.mark.parametrize("base", BASES)
def test_dual_stack_as_the_base_loop(base: str) -> None:
    """11. TCP listeners on "::" are IPv6-only, UDP endpoints on "::" dual-stack: on both loops alike."""

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(asyncio.Protocol, "::", 0)
        transport, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, ("::", 0))
        v6only = (
            server.sockets[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
            transport.get_extra_info("socket").getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY),
        )
        server.close()
        await server.wait_closed()
        transport.close()
        return v6only

    plain, exclusive = both(base, call)
    assert plain == exclusive == ("ok", (1, 0), ())


def test_no_usable_address_follows_the_running_python() -> None:
    """8. Every address EADDRNOTAVAIL: 3.13 raises "could not bind on any address", earlier ones raise the bind error."""

    async def call() -> Any:
        loop = asyncio.get_running_loop()

        async def unavailable(host: Any, port: Any, **kw: Any) -> Any:
            # 192.0.2.1 (TEST-NET-1) is on no interface here: bind says EADDRNOTAVAIL.
            return socket.getaddrinfo("192.0.2.1", port, socket.AF_INET, socket.SOCK_STREAM)

        setattr(loop, "getaddrinfo", unavailable)  # a program's own resolver, as CPython's tests do
        return await _server_summary(await loop.create_server(asyncio.Protocol, "unavailable.test", 0), None)

    plain, exclusive = both("asyncio", call)
    assert plain == exclusive
    if sys.version_info >= (3, 13):
        assert plain[1] is OSError and "could not bind on any address" in plain[2]
    else:
        assert plain[1] is OSError and "cannot assign requested address" in plain[2]


def test_a_replaced_getaddrinfo_is_asked_for_the_wildcard() -> None:
    """Found by CPython's test_create_server_empty_host: a program's own loop.getaddrinfo answers for host None too."""

    async def call() -> Any:
        loop = asyncio.get_running_loop()
        asked: list[Any] = []

        async def resolver(host: Any, port: Any, **kw: Any) -> Any:
            asked.append(host)
            return socket.getaddrinfo("127.0.0.1", port, socket.AF_INET, socket.SOCK_STREAM)

        setattr(loop, "getaddrinfo", resolver)
        summary = await _server_summary(await loop.create_server(asyncio.Protocol, "", 0), None)
        return asked, summary

    plain, exclusive = both("asyncio", call)
    assert plain == exclusive
    assert plain[1][0] == [None]


@pytest.mark.skipif(not HAVE_IPV6, reason="needs IPv6")
@pytest.mark.parametrize("base", BASES)
def test_a_wildcard_hold_does_not_refuse_the_calls_own_address(base: str) -> None:
    async def call() -> Any:
        server = await asyncio.get_running_loop().create_server(asyncio.Protocol, ["127.0.0.1", "::"], 0)
        return await _server_summary(server, None)

    plain, exclusive = both(base, call)
    assert plain == exclusive
