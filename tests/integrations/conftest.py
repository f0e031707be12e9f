from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator

import pytest

# ix_support is found through pytest's `pythonpath` (pyproject.toml).


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
