"""MLflow, in one package: the only part of `opensora_core` that imports mlflow (lazily,
inside the functions that call it). It uses `MlflowClient` only (no global active run),
so several trackers can live in one process.

Modules:
- `store`: the store a process talks to (client with a reachability check, experiment,
  links into the UI); `mlflow_calls`: the calls everything here shares.
- `stage_tracker`, `record`, `upload`: one MLflow run per training stage, nested under a
  pipeline run. Every call is first appended to a local record
  (`<local_dir>/record.jsonl`); when the store cannot be reached at the start, or a call
  fails later, the tracker warns once and carries on with the record alone, and
  `upload_offline_record(local_dir, uri)` replays what the store missed, later. A profile
  with `mlflow_required: true` (clusters) makes an unreachable store an error in
  `StageTracker.start`, before any training work; once started, a failing store never
  kills the run.
- `registry`: the model registry, promotion and the champion.
- `comparison`, `runs_cli`: `opensora runs compare`.

The names most callers need are importable from here.
"""

from opensora_core.tracking.comparison import (
    CODE_VERSION_TAGS,
    COLUMNS,
    EXPERIMENT,
    METRICS,
    PARAMS,
    compare_runs,
)
from opensora_core.tracking.record import RECORD_FILE
from opensora_core.tracking.stage_tracker import (
    StageTracker,
    TrackingUnavailable,
    flatten_params,
)
from opensora_core.tracking.upload import upload_offline_record

__all__ = [
    "CODE_VERSION_TAGS",
    "COLUMNS",
    "EXPERIMENT",
    "METRICS",
    "PARAMS",
    "RECORD_FILE",
    "StageTracker",
    "TrackingUnavailable",
    "compare_runs",
    "flatten_params",
    "upload_offline_record",
]
