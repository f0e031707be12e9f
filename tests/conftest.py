from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Iterator

import pytest

# attacker and harness are found through pytest's `pythonpath` (pyproject.toml).
from attacker import NOBODY, Attacker
from harness import BASES, IS_ROOT, open_fds, warm_up_loops


@pytest.fixture(params=BASES)
def base(request: pytest.FixtureRequest) -> str:
    return request.param  # type: ignore[no-any-return]


_ATTACKERS: dict[str, Attacker] = {}


def pytest_sessionstart(session: pytest.Session) -> None:
    if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        # Started in the background by a non-interactive shell, the suite inherits SIGINT ignored, and an
        # ignored signal stays ignored across exec: every server a test stops with SIGINT (ix_support's
        # ServerProcess) would sit out its 20 s grace period and be killed. A handler is reset to the
        # default on exec, so the servers get SIGINT as from a terminal.
        signal.signal(signal.SIGINT, signal.default_int_handler)
    # Fork the attackers before any test can start a thread (an executor of a
    # finished loop, say): forking a multi-threaded process is unsafe, and
    # Python 3.12+ warns about it.
    if hasattr(os, "fork"):
        _ATTACKERS["same_user"] = Attacker()
        if IS_ROOT:
            _ATTACKERS["other_user"] = Attacker(uid=NOBODY)


def pytest_sessionfinish(session: pytest.Session) -> None:
    for attacker in _ATTACKERS.values():
        attacker.close()
    _ATTACKERS.clear()


@pytest.fixture(scope="session")
def same_user_attacker() -> Attacker:
    if "same_user" not in _ATTACKERS:
        pytest.skip("the attacker is a forked process; this platform cannot fork")
    return _ATTACKERS["same_user"]


@pytest.fixture(scope="session")
def other_user_attacker() -> Attacker:
    if "other_user" not in _ATTACKERS:
        pytest.skip("cross-user attacks need root, to fork and drop to uid 65534")
    attacker = _ATTACKERS["other_user"]
    assert attacker.whoami()["uid"] == NOBODY
    return attacker


@pytest.fixture
def no_fd_leak() -> Iterator[None]:
    """Fails the test if it leaves a file descriptor open (Linux /proc)."""
    if not sys.platform.startswith("linux"):
        # Under Wine /proc is the Linux host's, not this process's descriptors.
        yield
        return
    warm_up_loops()
    before = open_fds()
    yield
    leaked = open_fds() - before
    # The default executor of a closed loop may still be winding down a thread.
    assert not leaked, f"file descriptors left open: {sorted(leaked)}"


# -- for tests/integrations (one conftest for the whole tree, so that `mypy tests` sees one module of the name)


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A fresh AF_UNIX path (pytest's tmp_path can exceed the ~107-byte limit)."""
    directory = tempfile.mkdtemp(prefix="aioex-")
    yield os.path.join(directory, "s.sock")
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def guard_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    """No AIOEXCLUSIVE_GUARD* (nor AIOCOAP_REUSE_PORT) from outside: the servers a test starts inherit
    exactly what the test sets through the returned monkeypatch."""
    for name in ("AIOEXCLUSIVE_GUARD", "AIOEXCLUSIVE_GUARD_ALLOW", "AIOCOAP_REUSE_PORT"):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch
