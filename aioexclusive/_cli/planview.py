"""``python -m aioexclusive plan``: the bind plan of every platform, as a table.

Straight from `aioexclusive._plan.RULES`, so what is printed is what the loops
apply; nothing here restates a rule. The one step a rule does not hold, the
other family's wildcard that the loops bind next to a wildcard TCP listener
on Linux, comes from `aioexclusive._wildcard` (``HOLDS_WILDCARDS``, the
addresses it binds), the module that takes it.
"""

from __future__ import annotations

from typing import Any

from .. import _wildcard
from .._plan import PLATFORMS, RULES, Role, current_platform
from .term import Out

__all__ = ["plan_rows", "show_plan"]

_PLATFORM_NAMES = {"windows": "Windows", "linux": "Linux", "bsd": "macOS/BSD"}


def _describe_set(options: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{name}={value}" for name, value in options) or "-"


def _hold(platform: str, role: Role, here: str) -> dict[str, Any] | None:
    """The wildcard hold a listener of *role* gets on *platform*, as `aioexclusive._wildcard` binds it, or ``None``.

    On this machine's platform it is `_wildcard.HOLDS_WILDCARDS` itself (Linux
    with IPv6); for the others, the platform the loops hold on: Linux.
    """
    if role is not Role.TCP_LISTENER:
        return None
    holds = _wildcard.HOLDS_WILDCARDS if platform == here else platform == "linux"
    if not holds:
        return None
    v4, v6 = (_wildcard._WILDCARD[int(family)] for family in _wildcard._FAMILIES)
    return {
        "when": "the listener is bound to a wildcard address",
        # Listener's wildcard -> the hold: its address and what is set before its bind (as _bind_hold does).
        "bind": {v4: {"address": v6, "set": [["IPV6_V6ONLY", 1]]}, v6: {"address": v4, "set": []}},
        "never": ["SO_REUSEADDR", "SO_REUSEPORT"],
        "listen": False,
        "for": "as long as a listener of the program serves the port",
        "text": (
            f"for a listener on {v4} or an IPv6-only [{v6}]: also bind the other family's wildcard on the same port "
            f"([{v6}] with IPV6_V6ONLY=1, resp. {v4}), without SO_REUSEADDR or SO_REUSEPORT, never listening, for as "
            "long as the listener lives: without it another user primes that side with SO_REUSEPORT and takes the "
            "port through the kernel's bind fast path"
        ),
    }


def plan_rows(platform: str | None = None) -> list[dict[str, Any]]:
    """One dict per (role, platform) cell, in table order; ``current`` marks this machine's platform."""
    here = platform or current_platform()
    rows = []
    for role in Role:
        for plat in PLATFORMS:
            rule = RULES.get((plat, role))
            rows.append(
                {
                    "role": role.value,
                    "platform": plat,
                    "current": plat == here,
                    "set": [list(option) for option in rule.set] if rule else None,
                    "never": list(rule.never) if rule else None,
                    "bind_to": rule.bind_to if rule else None,
                    "hold": _hold(plat, role, here) if rule else None,
                    "why": rule.why if rule else "does not exist on this platform",
                }
            )
    return rows


def _bind_to(row: dict[str, Any]) -> str:
    if row["bind_to"] == "wildcard":
        return "the wildcard"
    if row["role"] == Role.UNIX_LISTENER.value:
        return "the path"
    if row["role"] == Role.UDP_MULTICAST.value:
        return "the group"
    return "the address"


def show_plan(out: Out, platform: str | None = None) -> None:
    here = platform or current_platform()
    out.parts(
        ("The bind plan: what aioexclusive sets before bind(), per socket and OS. ", "head"),
        (f"This machine: {_PLATFORM_NAMES[here]} (marked *).", "mark"),
    )
    headers = ["socket", "platform", "set before bind", "never", "bind to", "why"]
    rows: list[list[str]] = []
    marked: list[bool] = []
    for row in plan_rows(here):
        if row["set"] is None:
            cells = [row["role"], _PLATFORM_NAMES[row["platform"]], "n/a", "", "", row["why"]]
        else:
            cells = [
                row["role"],
                _PLATFORM_NAMES[row["platform"]],
                _describe_set(tuple((name, value) for name, value in row["set"])),
                ", ".join(row["never"]) or "-",
                _bind_to(row) + (" + hold (below)" if row["hold"] else ""),
                row["why"],
            ]
        rows.append(cells)
        marked.append(row["current"])
    out.line()
    out.grouped_table(headers, rows, marked=marked)
    out.line()
    hold = next((row["hold"] for row in plan_rows(here) if row["hold"]), None)
    if hold is None:
        hold = _hold("linux", Role.TCP_LISTENER, "linux")
    if hold is not None:
        out.line(f"Hold (Linux TCP listeners, '+ hold' above): {hold['text']}.", "note")
    out.line(
        "Refused with ExclusivityError: reuse_port=True (opt-in: allow_reuse_port=True), reuse_address=True on UDP "
        "(opt-in: multicast=True) or on Windows, and a shareable sock=.",
        "note",
    )
