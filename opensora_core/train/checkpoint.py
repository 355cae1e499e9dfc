"""Sharded, resumable checkpoints with `torch.distributed.checkpoint` (DCP).

`<out>/checkpoints/step-00000010/` holds the DCP shards of the model, optimizer, EMA and
text encoder, plus one small `rank<r>.pt` per rank with what differs between ranks
(RNG states, the sampler position, the step). A checkpoint is written under
`step-N.partial` and renamed once every rank has finished, so a folder named `step-N`
is always complete; loading also verifies DCP's `.metadata` and every rank file.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp

STEP_DIR = re.compile(r"^step-(\d{8})$")


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
        return (path / ".metadata").is_file() and all((path / f"rank{r}.pt").is_file() for r in range(self.world))

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
        _barrier()
        if self.rank == 0:
            shutil.rmtree(final, ignore_errors=True)
            partial.rename(final)
            for old in self.complete()[: -self.keep_last]:
                shutil.rmtree(old, ignore_errors=True)
        _barrier()
        return final

    def load(self, path: Path, shared: dict) -> dict:
        """Fill `shared` in place from `path`; return this rank's own state."""
        if not self._is_complete(path):
            raise ValueError(f"{path} is not a complete checkpoint (missing .metadata or rank files)")
        dcp.load(shared, checkpoint_id=str(path))
        return torch.load(path / f"rank{self.rank}.pt", weights_only=True)
