"""The checkpoint trust boundary: DCP's `.metadata` is a pickle, so a checkpoint is
loaded only when its files match the manifest written at save time."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from opensora_core.train.checkpoint import (
    ALLOW_UNVERIFIED_ENV,
    KEY_ENV,
    MANIFEST,
    CheckpointManager,
    UnverifiedCheckpoint,
)
from opensora_core.utils.hashing import file_sha256


class _Payload:
    """Unpickling this creates `marker`: proof that code from the checkpoint ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _state(value: float = 1.0) -> dict:
    return {"model": {"w": torch.full((4, 4), value), "b": torch.arange(3.0)}}


def _saved(tmp_path, monkeypatch, key: str | None = None):
    monkeypatch.delenv(ALLOW_UNVERIFIED_ENV, raising=False)
    if key is None:
        monkeypatch.delenv(KEY_ENV, raising=False)
    else:
        monkeypatch.setenv(KEY_ENV, key)
    manager = CheckpointManager(tmp_path / "checkpoints")
    path = manager.save(3, _state(2.0), {"step": 3})
    return manager, path


def test_a_save_records_the_digest_of_every_file_and_loads_back(tmp_path, monkeypatch):
    manager, path = _saved(tmp_path, monkeypatch)
    manifest = json.loads((path / MANIFEST).read_text())
    names = {p.name for p in path.iterdir() if p.name != MANIFEST}
    assert {".metadata", "rank0.pt"} <= names and any(n.endswith(".distcp") for n in names)
    assert manifest["files"] == {name: file_sha256(path / name) for name in names}
    assert "hmac_sha256" not in manifest  # no key, no signature
    state = _state(0.0)
    assert manager.load(path, state)["step"] == 3
    assert torch.equal(state["model"]["w"], torch.full((4, 4), 2.0))


def test_a_swapped_pickle_in_metadata_is_refused_before_it_is_read(tmp_path, monkeypatch):
    manager, path = _saved(tmp_path, monkeypatch)
    marker = tmp_path / "payload-ran"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(UnverifiedCheckpoint, match=rf"{path / '.metadata'} does not match the sha256"):
        manager.load(path, _state())
    assert not marker.exists()


def test_a_changed_shard_a_missing_file_or_an_extra_file_is_refused(tmp_path, monkeypatch):
    manager, path = _saved(tmp_path, monkeypatch)
    shard = next(p for p in path.iterdir() if p.suffix == ".distcp")
    original = shard.read_bytes()
    shard.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
    with pytest.raises(UnverifiedCheckpoint, match=rf"{shard.name} does not match"):
        manager.load(path, _state())
    shard.write_bytes(original)
    (path / "extra.distcp").write_bytes(b"x")
    with pytest.raises(UnverifiedCheckpoint, match="files not in it: extra.distcp"):
        manager.load(path, _state())
    (path / "extra.distcp").unlink()
    (path / "rank0.pt").rename(tmp_path / "rank0.pt")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        manager.load(path, _state())
    (tmp_path / "rank0.pt").rename(path / "rank0.pt")
    manager.load(path, _state())  # whole again


def test_a_checkpoint_without_manifest_loads_only_when_allowed(tmp_path, monkeypatch):
    manager, path = _saved(tmp_path, monkeypatch)
    (path / MANIFEST).unlink()
    with pytest.raises(UnverifiedCheckpoint, match=rf"has no {MANIFEST}.*{ALLOW_UNVERIFIED_ENV}=1"):
        manager.load(path, _state())
    monkeypatch.setenv(ALLOW_UNVERIFIED_ENV, "1")
    assert manager.load(path, _state())["step"] == 3
    (path / MANIFEST).write_text("{not json")
    with pytest.raises(UnverifiedCheckpoint, match="not a readable checkpoint manifest"):
        manager.load(path, _state())  # a damaged manifest is never taken for a missing one


def test_with_a_key_a_rewritten_manifest_is_refused(tmp_path, monkeypatch):
    manager, path = _saved(tmp_path, monkeypatch, key="s3cret")
    manifest = json.loads((path / MANIFEST).read_text())
    assert len(manifest["hmac_sha256"]) == 64
    manager.load(path, _state())
    # A writer without the key swaps .metadata and updates the digest to match.
    marker = tmp_path / "payload-ran"
    (path / ".metadata").write_bytes(pickle.dumps(_Payload(marker)))
    manifest["files"][".metadata"] = file_sha256(path / ".metadata")
    (path / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(UnverifiedCheckpoint, match=f"not signed with this job's {KEY_ENV}"):
        manager.load(path, _state())
    monkeypatch.setenv(KEY_ENV, "another")
    with pytest.raises(UnverifiedCheckpoint, match="not signed"):
        manager.load(path, _state())
    assert not marker.exists()

