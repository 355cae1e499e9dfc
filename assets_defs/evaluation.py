"""`eval_samples`: sample the fixed prompt set from the newest stage's export, score
prompt following, log everything to MLflow and promote the model when it beats the
champion. A door to `opensora_core.eval.round.eval_samples` (the round's layout and
rules are documented there); this module adds the Dagster UI's previews and links.
"""

import base64
import json
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from assets_defs.training import stdit2_stage3
from opensora_core.eval import round as eval_round
from opensora_core.tracking.store import TrackingUnreachable
from orchestration.resources import EvaluationSettings, MlflowTracking, TrainingSettings

EVALUATED_STAGE = 3  # the newest stage: eval_samples follows stdit2_stage3


def _training_run_id(training_settings: TrainingSettings) -> str | None:
    result = training_settings.stage_dir(EVALUATED_STAGE) / "result.json"
    if not result.is_file():
        return None
    return json.loads(result.read_text()).get("mlflow_run_id")


def _embedded(path: Path, mime: str, alt: str) -> str:
    return f"![{alt}](data:{mime};base64,{base64.b64encode(path.read_bytes()).decode()})"


def _dagster_metadata(plain: dict, folder: Path) -> dict:
    """The round's JSON-able outcome plus previews, paths and links for the UI."""
    metadata = {k: v for k, v in plain.items() if k not in ("mlflow_eval_run",)}
    metadata.update({
        "folder": MetadataValue.path(str(folder)),
        "preview": MetadataValue.md(_embedded(folder / "preview.gif", "image/gif", "samples (seed 0)")),
        "frame_strip": MetadataValue.md(_embedded(folder / "frame_strip.png", "image/png",
                                                  "first, middle, last frame")),
        "mlflow_eval_run": MetadataValue.url(plain["mlflow_eval_run"]),
    })
    return metadata


@asset(deps=[stdit2_stage3], group_name="evaluation", kinds={"pytorch", "mlflow"},
       description="Samples of the fixed prompt set from the newest stage, scored; promotes the model in the "
                   "MLflow registry when it beats the champion.")
def eval_samples(context: AssetExecutionContext, training_settings: TrainingSettings,
                 evaluation_settings: EvaluationSettings, mlflow_tracking: MlflowTracking) -> MaterializeResult:
    export = training_settings.export_path(EVALUATED_STAGE)
    if not export.is_file():
        raise Failure(f"eval_samples: no export of stage {EVALUATED_STAGE} at {export}; "
                      f"materialize stdit2_stage{EVALUATED_STAGE} first")
    try:  # an unreachable tracking server fails here, before any sampling
        outcome = eval_round.eval_samples(
            export, evaluation_settings.round_settings(), training_settings.profile, mlflow_tracking.store(),
            context.run.run_id, _training_run_id(training_settings), str(EVALUATED_STAGE), context.log.info)
    except (eval_round.EvaluationError, TrackingUnreachable) as err:
        raise Failure(f"eval_samples: {err}") from None
    return MaterializeResult(metadata=_dagster_metadata(outcome.summary, outcome.folder))


evaluation_assets = [eval_samples]
