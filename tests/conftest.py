from __future__ import annotations

from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED = REPO_ROOT.parent / "shared"
VIDEOS = SHARED / "data" / "videos"
REFERENCE = SHARED / "reference"
SHARED_MISSING = "../shared is not present (it exists only on the project's build machines)"


@pytest.fixture
def videos_dir() -> Path:
    if not VIDEOS.is_dir():
        pytest.skip(SHARED_MISSING)
    return VIDEOS


@pytest.fixture
def reference_dir() -> Path:
    if not REFERENCE.is_dir():
        pytest.skip(SHARED_MISSING)
    return REFERENCE


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield
