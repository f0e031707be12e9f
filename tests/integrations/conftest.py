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
