"""The process torchrun starts for one training stage (every rank runs it).

`python -m orchestration.launch.train_entry --stage ... --data ... --out ...` takes the
flags of `opensora train` and calls `opensora_core.train.loop.train_stage`. When Dagster
launched the job through Pipes (its bootstrap variables are in the environment), rank 0
also reports to Dagster: each metrics dict as a log line plus a custom message (the
asset draws the loss curve from those), then the materialization with the final loss,
steps, tokens/s, wall time, MLflow run link and checkpoint paths. Without those
variables it is a plain training run.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from dagster_pipes import PipesContext, PipesEnvVarParamsLoader, open_dagster_pipes
from torch.distributed.elastic.multiprocessing.errors import record

from opensora_core.train import loop
from opensora_core.train.args import parse_train_args


def reports_to_dagster() -> bool:
    """Rank 0 of a job that Dagster launched through Pipes."""
    return int(os.environ.get("RANK", "0")) == 0 and PipesEnvVarParamsLoader().is_dagster_pipes_process()


def metrics_forwarder(pipes: PipesContext) -> Callable[[int, dict[str, float]], None]:
    def forward(step: int, metrics: dict[str, float]) -> None:
        pipes.log.info(f"step {step}: " + ", ".join(f"{k}={v:.4g}" for k, v in metrics.items()))
        pipes.report_custom_message({"step": step, "metrics": metrics})

    return forward


def materialization_metadata(result: loop.TrainResult) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "final_loss": {"raw_value": result.final_loss, "type": "float"},
        "steps": {"raw_value": result.steps, "type": "int"},
        "tokens_per_second": {"raw_value": result.tokens_per_second, "type": "float"},
        "wall_seconds": {"raw_value": result.wall_seconds, "type": "float"},
        "checkpoint": {"raw_value": result.export_path, "type": "path"},
        "dcp_dir": {"raw_value": result.dcp_dir, "type": "path"},
    }
    if result.mlflow_run_id:
        metadata["mlflow_run_id"] = {"raw_value": result.mlflow_run_id, "type": "text"}
    if result.mlflow_run_url:
        metadata["mlflow_run"] = {"raw_value": result.mlflow_run_url, "type": "url"}
    return metadata


@record  # a failing rank leaves its traceback where torchrun's summary (and the job log) shows it
def main(argv: list[str] | None = None) -> None:
    args = parse_train_args(argv, description="Train one STDiT-2 stage (the process torchrun starts).")
    if not reports_to_dagster():
        result = loop.train_stage(args)
    else:
        with open_dagster_pipes() as pipes:
            result = loop.train_stage(args, on_metrics=metrics_forwarder(pipes))
            pipes.report_asset_materialization(metadata=materialization_metadata(result))
    if int(os.environ.get("RANK", "0")) == 0:
        print(loop.result_summary(result, args.out))


if __name__ == "__main__":
    main()
