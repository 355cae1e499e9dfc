"""Sharded, resumable checkpoints with `torch.distributed.checkpoint` (DCP).

`<out>/checkpoints/step-00000010/` holds the DCP shards of the model, optimizer, EMA and
text encoder, plus one small `rank<r>.pt` per writing rank with the trainer's position
(step, sampler), the same on every rank. A checkpoint is written under `step-N.partial`
and renamed once every rank has finished, so a folder named `step-N` is always
complete; loading also verifies DCP's `.metadata` and the rank files of the world that
wrote it. Any number of processes can load it: DCP reshards the tensors and every rank
reads `rank0.pt`.

Trust boundary: DCP's `.metadata` is a pickle, so whoever can write a checkpoint folder
could run code in the job that resumes from it. Each save records the sha256 of every
file in `manifest.json` (signed with HMAC-SHA256 when `OPENSORA_CHECKPOINT_KEY` holds a
secret), and a load refuses a checkpoint whose files do not match it before DCP reads
anything. Without the key the manifest catches a substituted or damaged file, not a
writer who also rewrites the manifest. A checkpoint without a manifest (written before
manifests existed) is refused unless `OPENSORA_ALLOW_UNVERIFIED_CHECKPOINTS=1`.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

from opensora_core.utils.atomic import write_text_atomic
from opensora_core.utils.hashing import file_sha256

STEP_DIR = re.compile(r"^step-(\d{8})$")
WRITERS_KEY = "writers"  # in each rank file: how many ranks wrote the checkpoint
# Test-only: rank 0 SIGKILLs itself in the save of this step, after its DCP shards are
# written and before the rename (tests/train/test_distributed.py).
KILL_IN_SAVE_ENV = "OPENSORA_TEST_KILL_IN_CHECKPOINT_SAVE"
MANIFEST = "manifest.json"
KEY_ENV = "OPENSORA_CHECKPOINT_KEY"
ALLOW_UNVERIFIED_ENV = "OPENSORA_ALLOW_UNVERIFIED_CHECKPOINTS"


class UnverifiedCheckpoint(ValueError):
    """A checkpoint whose files do not match its manifest, or that has none."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    def __init__(self, folder: str | Path, keep_last: int = 2, rank: int = 0):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.rank = rank

    @property
    def world(self) -> int:
        """The processes saving or loading now (not the ones that wrote a checkpoint)."""
        return dist.get_world_size() if dist.is_initialized() else 1

    def complete(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.folder.is_dir():
            return []
        found = [p for p in self.folder.iterdir() if p.is_dir() and STEP_DIR.match(p.name) and self._is_complete(p)]
        return sorted(found, key=lambda p: int(STEP_DIR.match(p.name).group(1)))

    def latest(self) -> Path | None:
        done = self.complete()
        return done[-1] if done else None

    def _is_complete(self, path: Path) -> bool:
        """DCP's `.metadata` and the rank file of every rank that wrote it (rank 0's
        file records how many did)."""
        if not (path / ".metadata").is_file() or not (path / "rank0.pt").is_file():
            return False
        try:
            # Checkpoints from before the count was recorded: rank 0's file alone.
            writers = int(torch.load(path / "rank0.pt", weights_only=True).get(WRITERS_KEY, 1))
        except (OSError, RuntimeError, AttributeError, ValueError, TypeError, EOFError):
            return False
        return all((path / f"rank{r}.pt").is_file() for r in range(writers))

    def save(self, step: int, shared: dict, per_rank: dict) -> Path:
        """`shared`: DCP state (tensors, sharded or not, and Stateful objects);
        `per_rank`: the trainer's small state (tensors and numbers), written by each rank."""
        final = self.folder / f"step-{step:08d}"
        partial = self.folder / f"step-{step:08d}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        dcp.save(shared, checkpoint_id=str(partial))
        writers = dist.get_world_size() if dist.is_initialized() else 1
        torch.save({**per_rank, WRITERS_KEY: writers}, partial / f"rank{self.rank}.pt")
        if self.rank == 0 and os.environ.get(KILL_IN_SAVE_ENV) == str(step):
            os.kill(os.getpid(), signal.SIGKILL)
        _barrier()
        digests = self._hash_share(partial, sorted(_checkpoint_files(partial)))
        if self.rank == 0:
            write_text_atomic(partial / MANIFEST, json.dumps(_manifest(digests), indent=1, sort_keys=True))
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, shared: dict) -> dict:
        """Fill `shared` in place from `path` (resharded to this world); return the
        trainer's position, which every rank wrote alike."""
        if not self._is_complete(path):
            raise ValueError(f"{path} is not a complete checkpoint (missing .metadata or rank files)")
        self.verify(path)
        dcp.load(shared, checkpoint_id=str(path))
        return torch.load(path / "rank0.pt", weights_only=True)

    def verify(self, path: Path) -> None:
        """Raise `UnverifiedCheckpoint` unless every file of `path` matches its manifest.
        The ranks share the hashing and all raise the same error."""
        try:
            expected, problem = _read_manifest(path), None
        except UnverifiedCheckpoint as err:
            expected, problem = None, str(err)
        self._raise_if_any(problem)
        if expected is None:
            return
        names = sorted(_checkpoint_files(path))
        extra, missing = sorted(set(names) - set(expected)), sorted(set(expected) - set(names))
        if extra or missing:
            parts = [f"files not in it: {', '.join(extra)}"] if extra else []
            parts += [f"files missing: {', '.join(missing)}"] if missing else []
            problem = f"checkpoint {path} does not match its {MANIFEST} ({'; '.join(parts)})"
        self._raise_if_any(problem)
        actual = self._hash_share(path, names)
        wrong = [name for name in names if actual[name] != expected[name]]
        if wrong:
            problem = (f"checkpoint {path}: {', '.join(str(path / name) for name in wrong)} "
                       f"{'does' if len(wrong) == 1 else 'do'} not match the sha256 in its {MANIFEST}, "
                       "so it changed after the save; refusing to load it")
        self._raise_if_any(problem)

    def _raise_if_any(self, problem: str | None) -> None:
        """Every rank takes part, so all raise (or go on) together."""
        if dist.is_initialized():
            found: list[str | None] = [None] * self.world
            dist.all_gather_object(found, problem)
            problem = next((p for p in found if p is not None), None)
        if problem is not None:
            raise UnverifiedCheckpoint(f"{problem}. Delete that checkpoint folder to resume from an earlier one, "
                                       "or train the stage in a new --out")

    def _hash_share(self, folder: Path, names: list[str]) -> dict[str, str]:
        """sha256 of every file in `names`; each rank reads its own share (every
        `world`-th file), then they exchange digests."""
        mine = {name: file_sha256(folder / name) for name in names[self.rank::self.world]}
        if not dist.is_initialized():
            return mine
        gathered: list[dict | None] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        return {name: digest for part in gathered for name, digest in part.items()}


def _checkpoint_files(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if p.is_file() and p.name != MANIFEST]


def _key() -> bytes | None:
    key = os.environ.get(KEY_ENV, "")
    return key.encode() if key else None


def _signature(files: dict[str, str], key: bytes) -> str:
    return hmac.new(key, json.dumps(files, sort_keys=True).encode(), hashlib.sha256).hexdigest()


def _manifest(files: dict[str, str]) -> dict:
    manifest = {"format": 1, "algorithm": "sha256", "files": files}
    key = _key()
    if key is not None:
        manifest["hmac_sha256"] = _signature(files, key)
    return manifest


def _read_manifest(path: Path) -> dict[str, str] | None:
    """The manifest's digests; None for a legacy checkpoint the environment allows."""
    file = path / MANIFEST
    if not file.is_file():
        if os.environ.get(ALLOW_UNVERIFIED_ENV) == "1":
            return None
        raise UnverifiedCheckpoint(
            f"checkpoint {path} has no {MANIFEST}, so its files (DCP's pickled .metadata among them) cannot be "
            f"verified; set {ALLOW_UNVERIFIED_ENV}=1 to load it anyway if you trust whoever could write it")
    try:
        manifest = json.loads(file.read_text())
        files = manifest["files"]
        if manifest.get("algorithm") != "sha256" or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
            raise ValueError("unknown layout")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
        raise UnverifiedCheckpoint(f"{file} is not a readable checkpoint manifest ({err})") from None
    key = _key()
    if key is not None and not hmac.compare_digest(str(manifest.get("hmac_sha256", "")), _signature(files, key)):
        raise UnverifiedCheckpoint(f"{file} is not signed with this job's {KEY_ENV}")
    return files
