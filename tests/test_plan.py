"""The bind plan for every platform, computed on whatever platform runs the tests."""

from __future__ import annotations

import pytest

from aioexclusive import ExclusivityError
from aioexclusive._plan import (
    PLATFORMS,
    RULES,
    SO_EXCLUSIVEADDRUSE,
    SO_REUSEADDR,
    SO_REUSEPORT,
    Role,
    audit_socket_options,
    current_platform,
    make_plan,
)

# docs/rules.md, "The bind plan", written out once more by hand: the table is the spec.
EXPECTED = {
    ("windows", Role.TCP_LISTENER): ({SO_EXCLUSIVEADDRUSE: 1}, {SO_REUSEADDR}),
    ("windows", Role.UDP_UNICAST): ({SO_EXCLUSIVEADDRUSE: 1}, {SO_REUSEADDR}),
    ("windows", Role.FIXED_PORT_CLIENT): ({SO_EXCLUSIVEADDRUSE: 1}, {SO_REUSEADDR}),
    ("linux", Role.TCP_LISTENER): ({SO_REUSEADDR: 1}, {SO_REUSEPORT}),
    ("linux", Role.UDP_UNICAST): ({}, {SO_REUSEADDR, SO_REUSEPORT}),
    ("linux", Role.FIXED_PORT_CLIENT): ({}, {SO_REUSEPORT}),
    ("bsd", Role.TCP_LISTENER): ({SO_REUSEADDR: 1}, {SO_REUSEPORT}),
    ("bsd", Role.UDP_UNICAST): ({}, {SO_REUSEADDR, SO_REUSEPORT}),
    ("bsd", Role.FIXED_PORT_CLIENT): ({}, {SO_REUSEPORT}),
}


@pytest.mark.parametrize(("platform", "role"), list(EXPECTED))
def test_default_plan_matches_the_design_table(platform: str, role: Role) -> None:
    plan = make_plan(role, platform)  # type: ignore[arg-type]
    expected_set, expected_never = EXPECTED[(platform, role)]
    assert dict(plan.set) == expected_set
    assert set(plan.never) == expected_never
    assert plan.bind_to == "address"
    assert not plan.shared
    assert plan.why


@pytest.mark.parametrize("platform", PLATFORMS)
def test_no_plan_ever_sets_what_it_forbids(platform: str) -> None:
    for (p, role), rule in RULES.items():
        if p == platform:
            assert not set(dict(rule.set)) & set(rule.never), (platform, role)


def test_windows_never_mixes_exclusive_and_reuseaddr() -> None:
    # Setting both fails with WSAEINVAL on Windows.
    for (platform, role), rule in RULES.items():
        if platform == "windows":
            assert {SO_EXCLUSIVEADDRUSE, SO_REUSEADDR} - set(dict(rule.set)), role


@pytest.mark.parametrize(
    ("sys_platform", "expected"),
    [
        ("win32", "windows"),
        ("linux", "linux"),
        ("darwin", "bsd"),
        ("freebsd14", "bsd"),
        ("openbsd7", "bsd"),
        ("netbsd10", "bsd"),
        ("dragonfly6", "bsd"),
        ("cygwin", "linux"),
        ("sunos5", "linux"),
    ],
)
def test_current_platform(sys_platform: str, expected: str) -> None:
    assert current_platform(sys_platform) == expected


@pytest.mark.parametrize("platform", PLATFORMS)
@pytest.mark.parametrize("role", [Role.TCP_LISTENER, Role.UDP_UNICAST, Role.FIXED_PORT_CLIENT])
def test_reuse_port_is_refused_without_the_opt_in(platform: str, role: Role) -> None:
    with pytest.raises(ExclusivityError) as info:
        make_plan(role, platform, reuse_port=True, address=("127.0.0.1", 8000))  # type: ignore[arg-type]
    message = str(info.value)
    assert "reuse_port=True" in message
    assert "127.0.0.1" in message
    if platform != "windows":
        assert "allow_reuse_port=True" in message  # the one opt-in that allows it
        assert "same user" in message


@pytest.mark.parametrize("platform", ["linux", "bsd"])
def test_reuse_port_with_the_opt_in_shares(platform: str) -> None:
    plan = make_plan(Role.TCP_LISTENER, platform, reuse_port=True, allow_reuse_port=True)  # type: ignore[arg-type]
    assert dict(plan.set) == {SO_REUSEADDR: 1, SO_REUSEPORT: 1}
    assert SO_REUSEPORT not in plan.never
    assert plan.shared


def test_reuse_port_on_windows_is_refused_even_with_the_opt_in() -> None:
    with pytest.raises(ExclusivityError, match="Windows has no SO_REUSEPORT"):
        make_plan(Role.TCP_LISTENER, "windows", reuse_port=True, allow_reuse_port=True)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_reuse_address_on_udp_is_refused_everywhere(platform: str) -> None:
    with pytest.raises(ExclusivityError, match="multicast=True"):
        make_plan(Role.UDP_UNICAST, platform, reuse_address=True)  # type: ignore[arg-type]


def test_reuse_address_on_windows_tcp_is_refused() -> None:
    with pytest.raises(ExclusivityError, match="SO_EXCLUSIVEADDRUSE instead"):
        make_plan(Role.TCP_LISTENER, "windows", reuse_address=True)


@pytest.mark.parametrize("platform", ["linux", "bsd"])
def test_reuse_address_on_posix_tcp(platform: str) -> None:
    assert dict(make_plan(Role.TCP_LISTENER, platform, reuse_address=True).set) == {SO_REUSEADDR: 1}  # type: ignore[arg-type]
    # An explicit "no" is honoured, like the stdlib: SO_REUSEADDR is safe either way.
    assert dict(make_plan(Role.TCP_LISTENER, platform, reuse_address=False).set) == {}  # type: ignore[arg-type]


def test_windows_tcp_reuse_address_false_keeps_exclusive() -> None:
    assert dict(make_plan(Role.TCP_LISTENER, "windows", reuse_address=False).set) == {SO_EXCLUSIVEADDRUSE: 1}


def test_unknown_cell_is_a_clear_error() -> None:
    with pytest.raises(ValueError, match="do not exist on windows"):
        make_plan(Role.UNIX_LISTENER, "windows")


# -- auditing a caller's socket ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("platform", "role", "values", "refused"),
    [
        ("linux", Role.TCP_LISTENER, {SO_REUSEADDR: 1, SO_REUSEPORT: 0}, False),
        ("linux", Role.TCP_LISTENER, {SO_REUSEADDR: 0, SO_REUSEPORT: 1}, True),
        ("linux", Role.UDP_UNICAST, {SO_REUSEADDR: 1, SO_REUSEPORT: 0}, True),
        ("linux", Role.UDP_UNICAST, {SO_REUSEADDR: 0, SO_REUSEPORT: 1}, True),
        ("linux", Role.UDP_UNICAST, {SO_REUSEADDR: 0, SO_REUSEPORT: 0}, False),
        ("bsd", Role.UDP_UNICAST, {SO_REUSEADDR: 0, SO_REUSEPORT: 1}, True),
        ("windows", Role.TCP_LISTENER, {SO_REUSEADDR: 0, SO_EXCLUSIVEADDRUSE: 1}, False),
        ("windows", Role.TCP_LISTENER, {SO_REUSEADDR: 0, SO_EXCLUSIVEADDRUSE: 0}, True),
        ("windows", Role.TCP_LISTENER, {SO_REUSEADDR: 1, SO_EXCLUSIVEADDRUSE: 0}, True),
        ("windows", Role.UDP_UNICAST, {SO_REUSEADDR: 0, SO_EXCLUSIVEADDRUSE: 0}, True),
    ],
)
def test_audit(platform: str, role: Role, values: dict[str, int], refused: bool) -> None:
    plan = make_plan(role, platform)  # type: ignore[arg-type]
    if refused:
        with pytest.raises(ExclusivityError, match="sock=") as info:
            audit_socket_options(plan, values, address=("127.0.0.1", 9))
        assert "bind_socket()" in str(info.value)  # says how to create it correctly
    else:
        audit_socket_options(plan, values)


def test_audit_allows_reuse_port_with_the_opt_in() -> None:
    plan = make_plan(Role.TCP_LISTENER, "linux", reuse_port=True, allow_reuse_port=True)
    audit_socket_options(plan, {SO_REUSEADDR: 1, SO_REUSEPORT: 1})
