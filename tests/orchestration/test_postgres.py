"""The cluster profile's stores on a real PostgreSQL: Dagster's instance (run, event log
and schedule storage through dagster-postgres, `configs/dagster/postgres.yaml` as
shipped) and MLflow's backend store, with MLflow's artifacts in an s3-compatible store
(moto). The tiny pipeline runs with the cluster profile's database settings untouched,
reached through the environment variables docs/cluster.md names; only the compute keys
(CUDA, NCCL, Kubernetes, the real encoders) are swapped for ones this CPU can run.

A server is started per module (`tests/pg_server.py`); without PostgreSQL's binaries or
the `postgres` extra the module is skipped, naming what is missing.
"""

from __future__ import annotations

import itertools
import json
import shutil
import threading
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, RunsFilter, materialize

from opensora_core.config import find_config, load_profile
from opensora_core.data.synthetic import synth
from orchestration.local_run import (
    DOWNSTREAM_ASSETS,
    DOWNSTREAM_CHECKS,
    PipelineFolders,
    configure_environment,
    curate_partitions,
    local_instance,
    metadata_of,
    register_new_partitions,
)
from tests.orchestration.test_pipeline import _Setter
from tests.pg_server import MISSING, running_postgres, server_binaries
from tests.s3_server import running_s3_server

pytestmark = pytest.mark.postgres

REPO = Path(__file__).resolve().parents[2]
BUCKET = "mlflow"
# What the test may change in the cluster profile: how and where training computes.
COMPUTE_KEYS = {"name": "cluster-on-cpu", "device": "cpu", "dist_backend": "gloo", "nproc_per_node": 1,
                "torchx_scheduler": "local_cwd", "vae": {"kind": "dct", "path": None},
                "text_encoder": {"kind": "word-embedding", "path": None}}
# One short stage: stage 3 alone, from random weights (the tiny chain's other three
# stages add launches, not stores); evaluation reads its export.
STAGES = ["tiny/stage0", "tiny/stage1", "tiny/stage2", "short_stage3.yaml"]
SELECTED = {"training_dataset", "text_embeddings", "video_latents", "stdit2_stage3", "eval_samples"}
PROMPTS = ["a red square moving left"]


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("dagster_postgres", reason="the postgres extra (dagster-postgres, psycopg2-binary) "
                                                   "is not installed")
    if server_binaries() is None:
        pytest.skip(MISSING)
    with running_postgres(("dagster", "mlflow")) as server:
        yield server


@pytest.fixture(scope="module")
def s3_endpoint():
    pytest.importorskip("boto3", reason="boto3 (MLflow's s3 artifact client) is not installed")
    with running_s3_server() as endpoint:
        yield endpoint


def cluster_profile_on_cpu(path: Path) -> dict:
    """The shipped cluster profile, unexpanded, with COMPUTE_KEYS swapped in; returns
    what was kept (its `${VAR}`s are read when the profile loads)."""
    shipped = yaml.safe_load(find_config("profiles", "cluster").read_text())
    path.write_text(yaml.safe_dump({**shipped, **COMPUTE_KEYS}))
    return {k: v for k, v in shipped.items() if k not in COMPUTE_KEYS}


def store_environment(server, s3_endpoint: str) -> dict[str, str]:
    """The variables docs/cluster.md tells a deployment to set for its stores."""
    return {
        "DAGSTER_PG_HOST": server.host, "DAGSTER_PG_PORT": str(server.port), "DAGSTER_PG_USER": server.user,
        "DAGSTER_PG_PASSWORD": server.password, "DAGSTER_PG_DB": "dagster",
        "MLFLOW_TRACKING_URI": server.url("mlflow", "postgresql+psycopg2"),
        "OPENSORA_MLFLOW_ARTIFACT_ROOT": f"s3://{BUCKET}/artifacts",
        "MLFLOW_S3_ENDPOINT_URL": s3_endpoint,
        "AWS_ACCESS_KEY_ID": "test", "AWS_SECRET_ACCESS_KEY": "test", "AWS_DEFAULT_REGION": "us-east-1",
    }


@pytest.fixture(scope="module")
def pipeline(postgres, s3_endpoint, tmp_path_factory):
    import boto3

    root = tmp_path_factory.mktemp("pg-pipeline")
    kept = cluster_profile_on_cpu(root / "profile.yaml")
    folders = PipelineFolders(root)
    synth(folders.raw, videos=4, images=0, seed=0)
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    (root / "short_stage3.yaml").write_text(yaml.safe_dump({  # batches of one: four clips fill a step
        "extends": "tiny/stage3", "init_from": None,
        "bucket_config": {res: {t: [1.0, 1] for t in (1, 4, 8, 16)} for res in ("32px", "64px")}}))
    stages = ",".join(str(root / s) if s.endswith(".yaml") else s for s in STAGES)
    folders.dagster_home.mkdir(parents=True)
    shutil.copy(REPO / "configs" / "dagster" / "postgres.yaml", folders.dagster_home / "dagster.yaml")
    stores = store_environment(postgres, s3_endpoint)
    with pytest.MonkeyPatch.context() as env:
        configure_environment(folders, str(root / "profile.yaml"), environ=_Setter(env), OPENSORA_MAX_STEPS=1,
                              OPENSORA_EVAL_SEEDS=1, OPENSORA_EVAL_STEPS=2, OPENSORA_EVAL_PROMPTS=str(prompts),
                              OPENSORA_DATA_CONFIG="synthetic", OPENSORA_EVAL_PROMOTION_FLOOR="none",
                              OPENSORA_TRAIN_STAGES=stages, OPENSORA_STAGES=stages,
                              DATA_ROOT=str(root / "data"), ARTIFACTS_ROOT=str(root / "artifacts"), **stores)
        boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=BUCKET)
        from orchestration.definitions import build_definitions

        defs = build_definitions()
        instance = local_instance(folders)
        keys = register_new_partitions(instance, defs)
        curated = curate_partitions(instance, defs, keys, workers=2)  # two runs at once, two processes
        result = materialize_selected(instance, defs)
        yield {"root": root, "folders": folders, "instance": instance, "keys": keys, "curated": curated,
               "result": result, "kept": kept, "stores": stores, "defs": defs}
        instance.dispose()


def materialize_selected(instance, defs):
    """SELECTED and their checks in one run, as `materialize_downstream` runs them all."""
    assets = [a for a in DOWNSTREAM_ASSETS if a.key.to_user_string() in SELECTED]
    checks = [c for c in DOWNSTREAM_CHECKS if all(k.asset_key.to_user_string() in SELECTED for k in c.check_keys)]
    return materialize([*assets, *checks], instance=instance, resources=defs.resources,
                       tags={"opensora/kind": "pipeline"},
                       run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})


def test_the_stores_are_the_cluster_profiles_read_from_the_environment(pipeline):
    kept, stores = pipeline["kept"], pipeline["stores"]
    assert kept["mlflow_tracking_uri"] == "${MLFLOW_TRACKING_URI}" and kept["mlflow_required"] is True
    profile = load_profile(str(pipeline["root"] / "profile.yaml"))
    assert profile.mlflow_tracking_uri == stores["MLFLOW_TRACKING_URI"]
    assert pipeline["defs"].resources["mlflow_tracking"].tracking_uri == stores["MLFLOW_TRACKING_URI"]
    instance = pipeline["instance"]
    names = {type(s).__name__ for s in (instance.run_storage, instance.event_log_storage, instance.schedule_storage)}
    assert names == {"PostgresRunStorage", "PostgresEventLogStorage", "PostgresScheduleStorage"}


def test_the_tiny_pipeline_materializes_with_both_stores_on_postgres(pipeline, postgres):
    from mlflow.tracking import MlflowClient

    result, instance, folders = pipeline["result"], pipeline["instance"], pipeline["folders"]
    assert len(pipeline["keys"]) == 4 and all(pipeline["curated"].values()), pipeline["curated"]
    assert result.success
    for name in ["raw_videos", "scene_clips", "scored_clips", *sorted(SELECTED)]:
        assert instance.get_latest_materialization_event(AssetKey(name)) is not None, name
    assert set(instance.get_materialized_partitions(AssetKey("scored_clips"))) == set(pipeline["keys"])
    assert metadata_of(result, "stdit2_stage3")["steps"] == 1
    checks = {e.check_name: e.passed for e in result.get_asset_check_evaluations()}
    assert "stdit2_stage3_loss" in checks and checks["training_dataset_not_empty"], checks
    md = metadata_of(result, "eval_samples")
    assert md["decision"] == "promoted" and md["model_version"] == 1

    # The lineage is in PostgreSQL: read it back through a second, fresh connection.
    fresh = DagsterInstance.from_config(str(folders.dagster_home))
    try:
        assert fresh.get_latest_materialization_event(AssetKey("eval_samples")).run_id == result.run_id
    finally:
        fresh.dispose()

    uri = pipeline["stores"]["MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    stage3_run = json.loads((folders.train / "stage3" / "result.json").read_text())["mlflow_run_id"]
    run = client.get_run(stage3_run)
    assert run.info.artifact_uri.startswith(f"s3://{BUCKET}/artifacts/") and run.info.status == "FINISHED"
    assert "loss" in run.data.metrics
    assert {"export/model.safetensors"} <= {a.path for a in client.list_artifacts(stage3_run, "export")}
    champion = client.get_model_version_by_alias("stdit2", "champion")
    assert int(champion.version) == 1 and champion.run_id == stage3_run
    assert champion.source.startswith(f"s3://{BUCKET}/artifacts/")


def test_two_runs_at_once_write_without_conflict(pipeline):
    """The curation runs went two at a time, from two processes: their runs overlap in
    time, and every one of them and every event it wrote is in the store."""
    instance = pipeline["instance"]
    records = instance.get_run_records(RunsFilter(tags={"opensora/kind": "curate"}))
    assert len(records) == len(pipeline["keys"])
    assert all(r.dagster_run.status == DagsterRunStatus.SUCCESS for r in records)
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert any(later[0] < earlier[1] for earlier, later in itertools.pairwise(spans)), spans
    for record in records:
        key = record.dagster_run.tags["dagster/partition"]
        materialized = {e.asset_materialization.asset_key.to_user_string()
                        for e in instance.all_logs(record.dagster_run.run_id)
                        if e.dagster_event is not None and e.dagster_event.is_step_materialization}
        assert materialized == {"raw_videos", "scene_clips", "scored_clips"}, key


def test_more_runs_at_once_through_one_instance(pipeline):
    """Threads of one process share the instance's connection pool: four runs started
    together all succeed and each keeps its own events."""
    from dagster import asset

    @asset
    def counter(context) -> int:
        context.log.info(f"run {context.run.run_id}")
        return 1

    instance, outcomes = pipeline["instance"], {}

    def run(i: int) -> None:
        result = materialize([counter], instance=instance, tags={"opensora/kind": "concurrency", "n": str(i)})
        outcomes[i] = result.run_id if result.success else None

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert len(outcomes) == 4 and all(outcomes.values()), outcomes
    for i, run_id in outcomes.items():
        assert instance.get_run_by_id(run_id).tags["n"] == str(i)
        logs = [e.user_message for e in instance.all_logs(run_id)]
        assert any(f"run {run_id}" in m for m in logs) and not any(
            f"run {other}" in m for other in outcomes.values() if other != run_id for m in logs)


def test_the_registry_alias_moves_and_the_champion_downloads_from_s3(pipeline):
    from mlflow.tracking import MlflowClient

    from opensora_core.tracking.registry import download_champion, promote_if_better

    uri, folders = pipeline["stores"]["MLFLOW_TRACKING_URI"], pipeline["folders"]
    first = metadata_of(pipeline["result"], "eval_samples")
    stage3_run = json.loads((folders.train / "stage3" / "result.json").read_text())["mlflow_run_id"]
    worse = promote_if_better(uri, "stdit2", stage3_run, "export", first["score"] - 0.1, first["metric"])
    better = promote_if_better(uri, "stdit2", stage3_run, "export", first["score"] + 0.1, first["metric"])
    assert (worse["decision"], worse["new_version"]) == ("kept", 2)
    assert (better["decision"], better["new_version"], better["champion_version"]) == ("promoted", 3, 1)
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert int(client.get_model_version_by_alias("stdit2", "champion").version) == 3
    assert int(client.get_model_version_by_alias("stdit2", "challenger").version) == 2
    weights, version = download_champion(uri, pipeline["root"] / "champion")
    exported = folders.train / "stage3" / "export" / "model.safetensors"
    assert version == 3 and weights.read_bytes() == exported.read_bytes()
