"""Shared pytest fixtures: paths to the real CT in ../shared/data and pydicom's CT_small.dcm."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("QHQGAN_SHARED_DATA", REPO.parent / "shared" / "data"))


def shared_path(relative: str) -> Path:
    """Path of a file in ../shared/data; skips the calling test with the reason when absent."""
    path = SHARED_DATA / relative
    if not path.exists():
        pytest.skip(f"real CT not available: {path} is absent (set QHQGAN_SHARED_DATA or provide ../shared/data)")
    return path


@pytest.fixture
def ct_small_path() -> Path:
    """pydicom's own 128x128 CT slice, always available."""
    from pydicom.data import get_testdata_file

    return Path(get_testdata_file("CT_small.dcm"))
