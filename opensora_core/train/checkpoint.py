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
RANK_FILE = re.compile(r"^rank(\d+)\.pt$")
# Test-only: rank 0 SIGKILLs itself in the save of this step, after its DCP shards are
# written and before the rename (tests/train/test_distributed.py).
KILL_IN_SAVE_ENV = "OPENSORA_TEST_KILL_IN_CHECKPOINT_SAVE"


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


class CheckpointManager:
    def __init__(self, folder: str | Path, keep_last: int = 2, rank: int = 0, world: int = 1):
        if keep_last < 1:
            raise ValueError(f"keep_last must be >= 1, got {keep_last}")
        self.folder = Path(folder)
        self.keep_last = keep_last
        self.rank = rank
        self.world = world

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
        """DCP's `.metadata` and rank files 0..n-1 for the n ranks that wrote it."""
        if not (path / ".metadata").is_file():
            return False
        ranks = {int(m.group(1)) for f in path.iterdir() if (m := RANK_FILE.match(f.name))}
        return bool(ranks) and ranks == set(range(max(ranks) + 1))

    def save(self, step: int, shared: dict, per_rank: dict) -> Path:
        """`shared`: DCP state (tensors, sharded or not, and Stateful objects);
        `per_rank`: this rank's own small state (tensors and numbers)."""
        final = self.folder / f"step-{step:08d}"
        partial = self.folder / f"step-{step:08d}.partial"
        if self.rank == 0:
            shutil.rmtree(partial, ignore_errors=True)
            partial.mkdir(parents=True)
        _barrier()
        dcp.save(shared, checkpoint_id=str(partial))
        torch.save(per_rank, partial / f"rank{self.rank}.pt")
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
