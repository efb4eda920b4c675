"""Fixtures of the hostile-input suite."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from disk_space import mounted_tmpfs


@pytest.fixture
def tmpfs(tmp_path) -> Iterator[Path]:
    """A 2 MB tmpfs mounted for the test (root only; skipped otherwise, with the reason)."""
    yield from mounted_tmpfs(tmp_path / "tmpfs")
