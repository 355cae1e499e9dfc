from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml

from opensora_core.config import find_config

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


@pytest.fixture(autouse=True, scope="session")
def _digest_cache_in_a_temporary_folder(tmp_path_factory):
    """Weight digests are cached across processes in the user's cache folder; the tests
    keep theirs apart (and subprocesses inherit the variable)."""
    patch = pytest.MonkeyPatch()
    patch.setenv("OPENSORA_DIGEST_CACHE", str(tmp_path_factory.mktemp("digests") / "file_digests.json"))
    yield
    patch.undo()


@pytest.fixture(autouse=True)
def _deterministic_torch():
    torch.manual_seed(0)
    yield


@pytest.fixture
def test_profile(tmp_path):
    """The embedded profile with its MLflow store in the test's folder."""
    data = yaml.safe_load(find_config("profiles", "embedded").read_text())
    data["mlflow_tracking_uri"] = f"sqlite:///{tmp_path / 'mlruns.db'}"
    path = tmp_path / "profile.yaml"
    path.write_text(yaml.safe_dump(data))
    return path
