"""A stage folder (`opensora train --out`, a Dagster stage asset's folder): its layout,
the record of the inputs its checkpoints were trained from, and the rule that keeps a
folder's checkpoints only for those inputs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from opensora_core.utils.atomic import write_text_atomic

TABLE = "meta.parquet"  # the training table a Dagster stage snapshots into its folder
INPUTS = "inputs.json"  # what the folder's checkpoints were trained from
RESULT = "result.json"
# Outputs of a training run in the stage folder; removed when the inputs change.
RUN_OUTPUTS = ("checkpoints", "export", RESULT, "metrics.jsonl", "mlflow_offline", "loss_curve.png")


class StageFolder:
    def __init__(self, out: str | Path):
        self.out = Path(out)

    @property
    def export_path(self) -> Path:
        return self.out / "export" / "model.safetensors"

    def sweep_leftovers(self) -> list[Path]:
        """Remove what killed runs left: checkpoints never completed (`step-N.partial`)
        and atomic writes' temporary files. Only under the folder's lock: then no live
        writer owns them. Returns what was removed."""
        leftovers = [*self.out.glob("checkpoints/step-*.partial"), *self.out.rglob(".*.tmp")]
        for path in leftovers:
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
        return leftovers

    def finished_result(self) -> dict | None:
        """result.json of a run that finished and exported, else None."""
        result = self.out / RESULT
        if result.is_file() and self.export_path.is_file():
            return json.loads(result.read_text())
        return None

    def reuse_or_reset(self, inputs: dict) -> dict | None:
        """The folder's finished result when it was trained from exactly `inputs`.

        Otherwise None, after making the folder fit `inputs`: the same inputs keep their
        checkpoints (a run resumes from the newest, e.g. after a failure), other inputs
        clear the previous run's outputs so training starts from step 0. The caller holds
        the folder's lock.
        """
        marker = self.out / INPUTS
        previous = json.loads(marker.read_text()) if marker.is_file() else None
        if previous == inputs:
            return self.finished_result()
        for name in RUN_OUTPUTS:
            path = self.out / name
            if path.is_dir():
                shutil.rmtree(path)
            elif path.exists():
                path.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(marker, json.dumps(inputs, indent=2, sort_keys=True) + "\n")
        return None
