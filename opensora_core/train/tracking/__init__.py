"""MLflow tracking of one training stage: one run per stage, nested under a pipeline run.

The only package of `opensora_core` that imports mlflow. It uses `MlflowClient` only
(no global active run), so several trackers can live in one process.

Tracking never stops training. Every call is first appended to a local record
(`<local_dir>/record.jsonl`: params, tags, metrics with their steps and timestamps,
artifact paths, the final status); when the tracking store cannot be reached at the
start, or a call fails later, the tracker warns once and carries on with the record
alone. `upload_offline_record(local_dir, uri)` replays what the store missed, later,
into the same run when it exists there, else into a new one.

A profile with `mlflow_required: true` (clusters) makes an unreachable store an error
in `StageTracker.start`, before any training work: a run that must be tracked should not
spend GPU hours first. Once started, a failing store never kills the run (it falls back
to the record as above); hours of training are worth more than a live chart.

Modules: `stage_tracker` (the tracker), `record` (its local record), `upload` (replaying
a record), `mlflow_calls` (the calls both share), `comparison` (`opensora runs
compare`). Every public name is importable from here.
"""

from opensora_core.train.tracking.comparison import (
    CODE_VERSION_TAGS,
    COLUMNS,
    EXPERIMENT,
    METRICS,
    PARAMS,
    compare_runs,
)
from opensora_core.train.tracking.record import RECORD_FILE
from opensora_core.train.tracking.stage_tracker import (
    StageTracker,
    TrackingUnavailable,
    flatten_params,
)
from opensora_core.train.tracking.upload import upload_offline_record

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
