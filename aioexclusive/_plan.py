"""The bind plan: which socket options each kind of socket gets on each OS.

Pure data and pure functions, no sockets: every platform's rules are computed
and unit-tested on every platform, and `_binding` only applies what this module
decides. docs/rules.md is the table below in prose.

Options are named as the OS spells them (``"SO_REUSEADDR"``...), not as
``socket`` constants, because the constants of another platform do not exist
here (there is no ``socket.SO_EXCLUSIVEADDRUSE`` on Linux).
"""

from __future__ import annotations

import enum
import functools
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from ._errors import ExclusivityError

__all__ = [
    "PLATFORMS",
    "RULES",
    "BindPlan",
    "Platform",
    "Role",
    "Rule",
    "audit_socket_options",
    "current_platform",
    "make_plan",
]

Platform = Literal["windows", "linux", "bsd"]
PLATFORMS: tuple[Platform, ...] = ("windows", "linux", "bsd")

SO_REUSEADDR = "SO_REUSEADDR"
SO_REUSEPORT = "SO_REUSEPORT"
SO_EXCLUSIVEADDRUSE = "SO_EXCLUSIVEADDRUSE"
SHARING_OPTIONS = (SO_REUSEADDR, SO_REUSEPORT, SO_EXCLUSIVEADDRUSE)


class Role(str, enum.Enum):
    """What a socket is for; each role has its own row in the plan."""

    TCP_LISTENER = "TCP listener"
    UDP_UNICAST = "UDP unicast"
    UDP_MULTICAST = "UDP multicast"
    FIXED_PORT_CLIENT = "client with fixed local port"
    UNIX_LISTENER = "AF_UNIX listener"

    @property
    def protocol(self) -> str:
        return {"TCP listener": "TCP", "client with fixed local port": "TCP", "AF_UNIX listener": "UNIX"}.get(
            self.value, "UDP"
        )


@dataclass(frozen=True)
class Rule:
    """One cell of the table: what to set before ``bind`` and what must stay off."""

    set: tuple[tuple[str, int], ...]
    never: tuple[str, ...]
    why: str
    bind_to: Literal["address", "wildcard"] = "address"


_EXCLUSIVE = ((SO_EXCLUSIVEADDRUSE, 1),)

RULES: Mapping[tuple[Platform, Role], Rule] = {
    # Windows: without SO_EXCLUSIVEADDRUSE a later SO_REUSEADDR socket of the same
    # user takes the port over, and a listener that itself set SO_REUSEADDR is open
    # to every user. Microsoft: exclusive for servers, SO_REUSEADDR for multicast only.
    ("windows", Role.TCP_LISTENER): Rule(
        _EXCLUSIVE, (SO_REUSEADDR,), "without it any later SO_REUSEADDR socket can take the port over"
    ),
    ("windows", Role.UDP_UNICAST): Rule(
        _EXCLUSIVE, (SO_REUSEADDR,), "without it any later SO_REUSEADDR socket can take the datagrams"
    ),
    ("windows", Role.UDP_MULTICAST): Rule(
        ((SO_REUSEADDR, 1),),
        (SO_EXCLUSIVEADDRUSE,),
        "receivers of one group share the port; Windows delivers multicast to a wildcard bind",
        bind_to="wildcard",
    ),
    ("windows", Role.FIXED_PORT_CLIENT): Rule(
        _EXCLUSIVE, (SO_REUSEADDR,), "a fixed local port is as hijackable as a listener's"
    ),
    # Linux: SO_REUSEADDR never lets a second TCP socket listen on a listening port,
    # and it is what makes a restart over TIME_WAIT possible. SO_REUSEPORT shares the
    # port with every socket of the same user that also sets it.
    ("linux", Role.TCP_LISTENER): Rule(
        ((SO_REUSEADDR, 1),),
        (SO_REUSEPORT,),
        "SO_REUSEADDR only allows restarts over TIME_WAIT; SO_REUSEPORT would share the port with the same user",
    ),
    # UDP with SO_REUSEADDR can be joined by a socket of any user that sets it too.
    ("linux", Role.UDP_UNICAST): Rule(
        (), (SO_REUSEADDR, SO_REUSEPORT), "either option lets another socket (any user, for SO_REUSEADDR) co-bind"
    ),
    ("linux", Role.UDP_MULTICAST): Rule(
        ((SO_REUSEADDR, 1),), (), "receivers of one group share the port; bind the group so unicast stays out"
    ),
    ("linux", Role.FIXED_PORT_CLIENT): Rule((), (SO_REUSEPORT,), "SO_REUSEPORT would let the same user co-bind"),
    ("linux", Role.UNIX_LISTENER): Rule((), (), "never unlink a path where a live server answers"),
    # macOS/BSD: SO_REUSEPORT shares (XNU even across users on wildcard binds); a
    # newcomer's SO_REUSEADDR specific bind under our wildcard cannot be prevented.
    ("bsd", Role.TCP_LISTENER): Rule(
        ((SO_REUSEADDR, 1),),
        (SO_REUSEPORT,),
        "SO_REUSEADDR only allows restarts; SO_REUSEPORT would share the port",
    ),
    ("bsd", Role.UDP_UNICAST): Rule((), (SO_REUSEADDR, SO_REUSEPORT), "either option lets another socket co-bind"),
    ("bsd", Role.UDP_MULTICAST): Rule(
        ((SO_REUSEPORT, 1),), (), "BSD shares multicast ports through SO_REUSEPORT; bind the group address"
    ),
    ("bsd", Role.FIXED_PORT_CLIENT): Rule((), (SO_REUSEPORT,), "SO_REUSEPORT would let another socket co-bind"),
    ("bsd", Role.UNIX_LISTENER): Rule((), (), "never unlink a path where a live server answers"),
}


def current_platform(sys_platform: str | None = None) -> Platform:
    """The plan's platform family for ``sys.platform`` (or the value given)."""
    name = sys.platform if sys_platform is None else sys_platform
    if name == "win32":
        return "windows"
    if name == "darwin" or "bsd" in name or name.startswith("dragonfly"):
        return "bsd"
    # Linux, and the conservative default for any other POSIX (Cygwin emulates
    # Windows' exclusive semantics itself, on top of Linux-like options).
    return "linux"


@dataclass(frozen=True)
class BindPlan:
    """What to do with one socket before ``bind``, for one request."""

    platform: Platform
    role: Role
    set: tuple[tuple[str, int], ...]
    never: tuple[str, ...]
    bind_to: Literal["address", "wildcard"]
    why: str
    shared: bool = field(default=False)

    def audited(self) -> tuple[str, ...]:
        """The options worth reading back from a socket built under this plan."""
        return tuple(name for name in SHARING_OPTIONS if name in self.never or name in dict(self.set))


def _where(address: object) -> str:
    return f" on {address}" if address not in (None, "") else ""


def make_plan(
    role: Role,
    platform: Platform | None = None,
    *,
    reuse_address: bool | None = None,
    reuse_port: bool | None = None,
    allow_reuse_port: bool = False,
    address: object = None,
) -> BindPlan:
    """The plan for one socket, or `ExclusivityError` if the request opens a hole.

    *address* only makes the error messages precise.
    """
    platform = current_platform() if platform is None else platform
    if (platform, role) not in RULES:
        raise ValueError(f"{role.value} sockets do not exist on {platform}")
    where = _where(address)
    share_port = bool(reuse_port) and role is not Role.UNIX_LISTENER
    if share_port:
        if platform == "windows":
            raise ExclusivityError(
                f"reuse_port=True was asked for a {role.value}{where}; Windows has no SO_REUSEPORT and its "
                "nearest equivalent, SO_REUSEADDR, lets any later socket take the port over. "
                "Run separate ports per process instead."
            )
        if not allow_reuse_port:
            raise ExclusivityError(
                f"reuse_port=True was asked for a {role.value}{where}; refused because SO_REUSEPORT lets any "
                "other process of the same user bind the same port and receive a share of its "
                f"{'connections' if role.protocol == 'TCP' else 'datagrams'}. If that sharing is intended "
                "(a pre-fork server), build the loop with allow_reuse_port=True."
            )
    if reuse_address and role is not Role.UDP_MULTICAST:
        if role is Role.UDP_UNICAST:
            raise ExclusivityError(
                f"reuse_address=True was asked for a UDP socket{where}; refused because a UDP socket with "
                "SO_REUSEADDR can be joined by another socket that sets it too (on Linux, of any user), which "
                "then receives its datagrams (bpo-37228). Only multicast receivers share a port: pass "
                "multicast=True with a multicast group address."
            )
        if platform == "windows":
            raise ExclusivityError(
                f"reuse_address=True was asked for a {role.value}{where}; refused because on Windows "
                "SO_REUSEADDR lets a later socket take the port over and opens it to other users. "
                "Omit reuse_address: the loop sets SO_EXCLUSIVEADDRUSE instead. For fast restarts, shut "
                "connections down gracefully before closing."
            )
    # Linux/BSD: SO_REUSEADDR is safe on a listener and only helps restarts,
    # but an explicit "no" is honoured, exactly like the stdlib does.
    drop_reuse_address = reuse_address is False and role is Role.TCP_LISTENER
    return _granted_plan(role, platform, share_port, drop_reuse_address)


@functools.cache
def _granted_plan(role: Role, platform: Platform, share_port: bool, drop_reuse_address: bool) -> BindPlan:
    # Past the refusals a plan depends on these four values only, and loops
    # opening many endpoints ask for the same few plans over and over.
    rule = RULES[(platform, role)]
    options = dict(rule.set)
    never = list(rule.never)
    if share_port:
        options[SO_REUSEPORT] = 1
        never = [name for name in never if name != SO_REUSEPORT]
    if drop_reuse_address:
        options.pop(SO_REUSEADDR, None)
    return BindPlan(
        platform=platform,
        role=role,
        set=tuple(options.items()),
        never=tuple(never),
        bind_to=rule.bind_to,
        why=rule.why,
        shared=share_port or role is Role.UDP_MULTICAST,
    )


def audit_socket_options(plan: BindPlan, values: Mapping[str, int], *, address: object = None) -> None:
    """Raise `ExclusivityError` if a caller's socket, read as *values*, is shareable.

    *values* maps option names to what ``getsockopt`` returned; options the
    platform does not have are simply absent.
    """
    where = _where(address)
    for name in plan.never:
        if values.get(name):
            raise ExclusivityError(
                f"the socket passed as sock={where} has {name} set, so another socket "
                f"({_who_can_share(plan.platform, plan.role, name)}) can bind the same port and take its "
                f"{'connections' if plan.role.protocol == 'TCP' else 'datagrams'}. "
                f"Create it without {name}: aioexclusive.bind_socket() does it right, or let the loop bind "
                "(pass host/port or local_addr instead of sock)."
            )
    for name, value in plan.set:
        if name == SO_EXCLUSIVEADDRUSE and name in values and values[name] != value:
            raise ExclusivityError(
                f"the socket passed as sock={where} was bound without SO_EXCLUSIVEADDRUSE, so on Windows a "
                "later SO_REUSEADDR socket can take its port over. Set SO_EXCLUSIVEADDRUSE before bind() "
                "(aioexclusive.bind_socket() does), or let the loop bind (pass host/port or local_addr)."
            )


def _who_can_share(platform: Platform, role: Role, option: str) -> str:
    if option == SO_REUSEPORT:
        return "any other process of the same user" if platform == "linux" else "another process"
    if platform == "linux" and role is Role.UDP_UNICAST:
        return "of any user"
    return "another process"
