"""``python -m aioexclusive demo``: a real hijack on loopback, then the same service refusing it.

Two services, each opened the way real code opens it, on a plain loop and then
on the exclusive loop, against an attacker that is a separate process (forked;
as uid 65534 for the cross-user case when the demo runs as root):

1. TCP with ``reuse_port=True`` (what pre-fork servers such as hypercorn's
   workers do): any process of the same user binds the port with
   ``SO_REUSEPORT`` and the kernel hands it a share of the connections.
2. UDP: on uvloop, a socket passed as ``sock=`` (libuv turns ``SO_REUSEADDR``
   on after the bind); without uvloop, a socket bound with ``SO_REUSEADDR`` as
   code written for Python <= 3.10's ``reuse_address=True`` does. On Linux any
   user that also sets ``SO_REUSEADDR`` can then bind the same port and
   receive the datagrams.

Everything is on 127.0.0.1 and takes a few seconds. Exit status: 0 when every
plain-loop service was hijacked and every exclusive service refused the
attacker, 1 if an exclusive one did not (a bug worth reporting), 2 if the demo
cannot run here: the attacker cannot start (no uid 65534 in a user namespace),
or a plain-loop control was not hijacked (then the demo shows nothing).
"""

from __future__ import annotations

import asyncio
import os
import platform
import socket
import sys
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from .._errors import ExclusivityError
from .._guard import exempt
from .attack import NOBODY, Agent, option_sets, resolve_user
from .term import Out

__all__ = ["run_demo"]

HOST = "127.0.0.1"
COUNT = 20
SECRET = b"POST /login HTTP/1.1\r\nCookie: session=7f3a-demo-secret\r\n\r\n"


@dataclass
class Outcome:
    """What happened to one service on one loop."""

    hijacked: bool
    served: int
    stolen: int = 0
    attacker: str = ""
    options: tuple[str, ...] = ()
    sample: str = ""
    refusals: list[str] = field(default_factory=list)
    note: str = ""


class _Victim(asyncio.Protocol):
    def __init__(self, seen: list[int]) -> None:
        self._seen = seen

    def connection_made(self, transport: Any) -> None:
        self._seen[0] += 1

    def eof_received(self) -> bool:
        return False


class _DatagramVictim(asyncio.DatagramProtocol):
    def __init__(self, seen: list[int]) -> None:
        self._seen = seen

    def datagram_received(self, data: bytes, addr: Any) -> None:
        self._seen[0] += 1


def _who(agent: Agent) -> str:
    me = os.getuid() if hasattr(os, "getuid") else None
    if agent.uid is None or agent.uid == me:
        return f"pid {agent.pid}, same user"
    return f"pid {agent.pid}, uid {agent.uid}: another user"


async def _send_tcp(port: int, count: int) -> None:
    for _ in range(count):
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(SECRET)
        await writer.drain()
        writer.close()
        await writer.wait_closed()


def _send_udp(port: int, count: int) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _ in range(count):
            sock.sendto(SECRET, (HOST, port))


async def _settle(seen: list[int], expected: int) -> None:
    # Let the service catch up with what the kernel already queued for it.
    for _ in range(200):
        if seen[0] >= expected:
            return
        await asyncio.sleep(0.01)


def _try_every_option(agents: list[Agent], proto: str, port: int) -> tuple[Agent | None, tuple[str, ...], list[str]]:
    """The first (agent, options) that can hold the port, and a summary of the refusals before it."""
    refusals: list[str] = []
    for agent in agents:
        failed: list[tuple[str, str]] = []
        for options in option_sets():
            result = agent.hold(proto, HOST, port, options)
            if result["ok"]:
                return agent, options, refusals
            failed.append(("+".join(options) or "no options", f"{result['stage']} ({result['error']})"))
        errors = {error for _, error in failed}
        who = "as the same user" if "same user" in _who(agent) else f"as uid {agent.uid}"
        if len(errors) == 1:
            refusals.append(f"{who}: all {len(failed)} option combinations failed at {errors.pop()}")
        else:
            refusals.append(f"{who}: " + ", ".join(f"{label} failed at {error}" for label, error in failed))
    return None, (), refusals


async def _attack(agents: list[Agent], proto: str, port: int, seen: list[int]) -> Outcome:
    agent, options, refusals = _try_every_option(agents, proto, port)
    if proto == "tcp":
        await _send_tcp(port, COUNT)
    else:
        _send_udp(port, COUNT)
    stolen, sample = 0, ""
    if agent is not None:
        report = agent.collect(wait=0.5)
        stolen = int(report["stolen"])
        sample = (report["samples"] or [""])[0]
    await _settle(seen, COUNT - stolen)
    return Outcome(
        hijacked=stolen > 0,
        served=seen[0],
        stolen=stolen,
        attacker=_who(agent) if agent else "",
        options=options,
        sample=sample,
        refusals=refusals,
        note="" if agent is None or stolen else "bound the port but received nothing",
    )


async def _tcp_service(agents: list[Agent], exclusive: bool) -> Outcome:
    loop = asyncio.get_running_loop()
    seen = [0]
    can_reuse_port = hasattr(socket, "SO_REUSEPORT")
    note = ""
    if exclusive and can_reuse_port:
        try:
            server = await loop.create_server(lambda: _Victim(seen), HOST, 0, reuse_port=True)
        except ExclusivityError:
            note = "reuse_port=True itself raised ExclusivityError (opt-in: allow_reuse_port=True); served without it"
        else:  # pragma: no cover - would be a bug in the loop
            server.close()
            await server.wait_closed()
            raise AssertionError("the exclusive loop accepted reuse_port=True")
    server = await loop.create_server(
        lambda: _Victim(seen), HOST, 0, reuse_port=(can_reuse_port and not exclusive) or None
    )
    try:
        port = server.sockets[0].getsockname()[1]
        outcome = await _attack(agents, "tcp", port, seen)
    finally:
        server.close()
        await server.wait_closed()
    outcome.note = outcome.note or note
    return outcome


async def _udp_service(agents: list[Agent], exclusive: bool, on_uvloop: bool) -> Outcome:
    loop = asyncio.get_running_loop()
    seen = [0]
    note = ""
    if exclusive:
        transport, _ = await loop.create_datagram_endpoint(lambda: _DatagramVictim(seen), local_addr=(HOST, 0))
    else:
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        if not on_uvloop:
            # What reuse_address=True did on Python <= 3.10, and what many
            # hand-written services still do.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((HOST, 0))
        transport, _ = await loop.create_datagram_endpoint(lambda: _DatagramVictim(seen), sock=sock)
    try:
        port = transport.get_extra_info("sockname")[1]
        outcome = await _attack(agents, "udp", port, seen)
    finally:
        transport.close()
        await asyncio.sleep(0)
    outcome.note = outcome.note or note
    return outcome


def _run_on(coro_factory: Any, base: str, exclusive: bool) -> Outcome:
    if exclusive:
        from .._entry import run

        return run(coro_factory(), base=base)  # type: ignore[no-any-return]
    loop: asyncio.AbstractEventLoop
    if base == "uvloop":
        import uvloop

        # uvloop.Loop, not uvloop.new_event_loop: under AIOEXCLUSIVE_GUARD the
        # latter gives the exclusive loop (aioexclusive._import_hooks), and the
        # point here is the plain one.
        loop = uvloop.Loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        # The plain-loop victims are shareable on purpose (that is the demo):
        # a guard inherited through AIOEXCLUSIVE_GUARD must not fix or refuse
        # them. The task copies this context, so the exemption covers its binds.
        with exempt():
            return loop.run_until_complete(coro_factory())  # type: ignore[no-any-return]
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def _have_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True


def _report(out: Out, label: str, outcome: Outcome, exclusive: bool, proto: str) -> None:
    unit = "connections" if proto == "tcp" else "datagrams"
    pad = " " * 3 + " " * len(label) + "  "
    if outcome.hijacked:
        out.parts(
            ("   ", None),
            (label, "head"),
            ("  hijacked", "bad"),
            (
                f": the attacker ({outcome.attacker}) bound the same port with {'+'.join(outcome.options) or 'no options'} "
                f"and got {outcome.stolen} of {COUNT} {unit}; the service got {outcome.served}",
                None,
            ),
        )
        if outcome.sample:
            secret = next((part for part in outcome.sample.splitlines() if "secret" in part), outcome.sample[:60])
            out.line(f"{pad}what the attacker read: {secret.strip()!r}", "note")
        return
    tried = "; ".join(outcome.refusals) if outcome.refusals else "none tried"
    if exclusive:
        out.parts(
            ("   ", None),
            (label, "head"),
            ("  refused", "good"),
            (f": every bind the attacker tried failed; the service got {outcome.served} of {COUNT} {unit}", None),
        )
    else:
        out.parts(
            ("   ", None),
            (label, "head"),
            ("  not hijacked here", "note"),
            (f": this system refused the attacker even without aioexclusive; the service got {outcome.served}", None),
        )
    out.line(f"{pad}the attacker tried {tried}", "note")
    if outcome.note:
        out.line(f"{pad}{outcome.note}", "note")


def run_demo(out: Out) -> int:
    """Run the demo, writing to *out*; returns the exit status."""
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    on_uvloop = _have_uvloop()
    base = "uvloop" if on_uvloop else "asyncio"
    # Fork the attackers first: forking after an event loop (and its threads)
    # exists is unsafe.
    agents: list[Agent] = []
    try:
        try:
            agents.append(Agent())
            if is_root:
                try:
                    uid, gid = resolve_user("nobody")
                except KeyError:
                    uid, gid = NOBODY, NOBODY
                agents.append(Agent(uid, gid))
        except OSError as exc:
            out.line(f"cannot start the attacker process: {exc}", "bad")
            return 2
        for agent in agents:
            # An agent that could not become its user has exited: ask it now,
            # rather than meet a broken pipe in the middle of a case.
            try:
                agent.whoami()
            except OSError as exc:
                who = f" as uid {agent.uid}" if agent.uid is not None else ""
                out.line(
                    f"cannot start the attacker process{who}: it exited ({exc}); in a user namespace "
                    "without that uid, or where setuid is not allowed, the other-user attacker cannot run",
                    "bad",
                )
                return 2
        other = agents[1] if len(agents) > 1 else agents[0]
        out.line(
            f"aioexclusive demo on {platform.system()} {platform.release()}, Python {platform.python_version()}, "
            f"loop: {base}. Everything stays on {HOST}; the attacker is a separate process"
            + (f" (and, for UDP, uid {other.uid}, another user)." if other is not agents[0] else "."),
            "head",
        )
        failures = 0
        uncontrolled: list[str] = []
        cases: list[tuple[str, str, Callable[[bool], Callable[[], Awaitable[Outcome]]]]] = [
            (
                "1. TCP server started with reuse_port=True (as pre-fork servers such as hypercorn's workers do)",
                "tcp",
                lambda exclusive: lambda: _tcp_service(agents[:1] if not exclusive else agents, exclusive),
            ),
            (
                "2. UDP service on uvloop, its socket passed as sock= (libuv turns SO_REUSEADDR on after bind)"
                if on_uvloop
                else "2. UDP service whose socket has SO_REUSEADDR (Python <= 3.10's reuse_address=True, hand-written servers)",
                "udp",
                lambda exclusive: lambda: _udp_service([other] if not exclusive else agents, exclusive, on_uvloop),
            ),
        ]
        plain_label = f"plain {base} loop"
        exclusive_label = "aioexclusive loop".ljust(len(plain_label))
        plain_label = plain_label.ljust(len(exclusive_label))
        for title, proto, make in cases:
            out.line()
            out.line(title, "head")
            plain = _run_on(make(False), base, exclusive=False)
            _report(out, plain_label, plain, False, proto)
            if not plain.hijacked:
                uncontrolled.append(title.split(" ", 1)[1])
            guarded = _run_on(make(True), base, exclusive=True)
            _report(out, exclusive_label, guarded, True, proto)
            if guarded.hijacked or guarded.served != COUNT:
                failures += 1
        out.line()
        if failures:
            out.line(f"{failures} exclusive service(s) did not keep all their traffic: please report this.", "bad")
            return 1
        if uncontrolled:
            # The control failed: a refusal on the exclusive loop proves nothing
            # when the same attacker could not hijack the plain loop either.
            out.line(
                "the plain-loop control was not hijacked ("
                + "; ".join(uncontrolled)
                + "): the attacker could not take even the unprotected service here, so the exclusive loop's "
                "refusals show nothing. The demo cannot demonstrate anything on this system.",
                "bad",
            )
            return 2
        out.line(
            "The exclusive loop refused every attempt and kept all its traffic. "
            "Adopt it with: asyncio.run(main(), loop_factory=aioexclusive.new_event_loop)",
            "good",
        )
        return 0
    finally:
        for agent in agents:
            agent.close()


if __name__ == "__main__":  # pragma: no cover
    sys.exit(run_demo(Out()))
