"""``python -m aioexclusive plan``: the bind plan of every platform, as a table.

Straight from `aioexclusive._plan.RULES`, so what is printed is what the loops
apply; nothing here restates a rule.
"""

from __future__ import annotations

from typing import Any

from .._plan import PLATFORMS, RULES, Role, current_platform
from .term import Out

__all__ = ["plan_rows", "show_plan"]

_PLATFORM_NAMES = {"windows": "Windows", "linux": "Linux", "bsd": "macOS/BSD"}


def _describe_set(options: tuple[tuple[str, int], ...]) -> str:
    return ", ".join(f"{name}={value}" for name, value in options) or "-"


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
                _bind_to(row),
                row["why"],
            ]
        rows.append(cells)
        marked.append(row["current"])
    out.line()
    out.grouped_table(headers, rows, marked=marked)
    out.line()
    out.line(
        "Refused with ExclusivityError: reuse_port=True (opt-in: allow_reuse_port=True), reuse_address=True on UDP "
        "(opt-in: multicast=True) or on Windows, and a shareable sock=.",
        "note",
    )
