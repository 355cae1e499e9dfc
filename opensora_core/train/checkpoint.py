"""Sharded, resumable checkpoints with `torch.distributed.checkpoint` (DCP).

`<out>/checkpoints/step-00000010/` holds the DCP shards of the model, optimizer, EMA and
text encoder, plus one small `rank<r>.pt` per writing rank with the trainer's position
(step, sampler), the same on every rank. A checkpoint is written under `step-N.partial`
and renamed once every rank has finished, so a folder named `step-N` is always
complete; loading also verifies DCP's `.metadata` and the rank files of the world that
wrote it. Any number of processes can load it: DCP reshards the tensors and every rank
reads `rank0.pt`.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

STEP_DIR = re.compile(r"^step-(\d{8})$")
WRITERS_KEY = "writers"  # in each rank file: how many ranks wrote the checkpoint
# Test-only: rank 0 SIGKILLs itself in the save of this step, after its DCP shards are
# written and before the rename (tests/train/test_distributed.py).
KILL_IN_SAVE_ENV = "OPENSORA_TEST_KILL_IN_CHECKPOINT_SAVE"


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
        if self.rank == 0:
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
        dcp.load(shared, checkpoint_id=str(path))
        return torch.load(path / "rank0.pt", weights_only=True)
