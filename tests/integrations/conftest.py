from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator

import pytest

sys.path.insert(0, os.path.dirname(__file__))


@pytest.fixture
def sock_path() -> Iterator[str]:
    """A fresh AF_UNIX path (pytest's tmp_path can exceed the ~107-byte limit)."""
    directory = tempfile.mkdtemp(prefix="aioex-")
    yield os.path.join(directory, "s.sock")
    shutil.rmtree(directory, ignore_errors=True)
