"""Drive the whole asset graph in a local Dagster instance, in this process: what
`make demo` does, and what the pipeline tests run on a tiny dataset.

`PipelineFolders` names every store under one root; `configure_environment` exports
them as the variables `orchestration.definitions` reads, so `dagster dev` (and
`make ui`) started with the same variables shows exactly these materializations.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dagster import (
    AssetKey,
    DagsterInstance,
    Definitions,
    DeleteDynamicPartitionsRequest,
    ExecuteInProcessResult,
    SensorResult,
    SkipReason,
    build_sensor_context,
    materialize,
)

from assets_defs.caches import cache_checks, text_embeddings, video_latents
from assets_defs.curation import (
    curation_checks,
    raw_partitions,
    raw_videos,
    scene_clips,
    scored_clips,
    training_dataset,
)
from assets_defs.evaluation import eval_samples
from assets_defs.training import training_assets, training_checks
from orchestration.sensors import raw_videos_sensor

CURATION_PARTITION_ASSETS = [raw_videos, scene_clips, scored_clips]
DOWNSTREAM_ASSETS = [training_dataset, text_embeddings, video_latents, *training_assets, eval_samples]
DOWNSTREAM_CHECKS = [*curation_checks, *cache_checks, *training_checks]


@dataclass(frozen=True)
class PipelineFolders:
    """Every store of one pipeline, under `root` (the project folder for `make demo`)."""

    root: Path

    @property
    def raw(self) -> Path:
        return self.root / "data" / "raw"

    @property
    def curated(self) -> Path:
        return self.root / "data" / "curated"

    @property
    def caches(self) -> Path:
        return self.root / "artifacts" / "caches"

    @property
    def train(self) -> Path:
        return self.root / "artifacts" / "train"

    @property
    def eval(self) -> Path:
        return self.root / "artifacts" / "eval"

    @property
    def torchx_logs(self) -> Path:
        return self.root / "artifacts" / "torchx"

    @property
    def dagster_home(self) -> Path:
        return self.root / ".dagster"


def configure_environment(folders: PipelineFolders, profile: str, environ: dict | None = None,
                          **extra: str | int | None) -> dict[str, str]:
    """Set (in `environ`, default `os.environ`) the variables the resources read; `extra`
    adds more (`OPENSORA_MAX_STEPS=2`, ...; None leaves one unset). Returns what was set."""
    environ = os.environ if environ is None else environ
    values = {
        "OPENSORA_PROFILE": profile,
        "OPENSORA_RAW_ROOT": str(folders.raw),
        "OPENSORA_CURATED_ROOT": str(folders.curated),
        "OPENSORA_CACHE_ROOT": str(folders.caches),
        "OPENSORA_TRAIN_ROOT": str(folders.train),
        "OPENSORA_EVAL_ROOT": str(folders.eval),
        "OPENSORA_TORCHX_CFG": f'{{"log_dir": "{folders.torchx_logs}"}}',
        "DAGSTER_HOME": str(folders.dagster_home),
        **{k: str(v) for k, v in extra.items() if v is not None},
    }
    environ.update(values)
    return values


def local_instance(folders: PipelineFolders) -> DagsterInstance:
    """The persistent instance in `<root>/.dagster` (what `dagster dev` opens there)."""
    folders.dagster_home.mkdir(parents=True, exist_ok=True)
    settings = folders.dagster_home / "dagster.yaml"
    if not settings.exists():  # defaults: run and event storage in SQLite files in this folder
        settings.write_text("# Local instance of the embedded profile; Dagster's defaults (SQLite in this folder).\n")
    return DagsterInstance.from_config(str(folders.dagster_home))


def register_new_partitions(instance: DagsterInstance, defs: Definitions) -> list[str]:
    """One tick of `raw_videos_sensor`: registers new raw files as partitions (and removes
    those of files gone) and returns the keys to curate (new files, and files whose
    sidecar caption changed; empty when nothing is)."""
    resources = {"curation_storage": defs.resources["curation_storage"]}
    result = raw_videos_sensor(build_sensor_context(instance=instance, resources=resources))
    if isinstance(result, SkipReason) or not isinstance(result, SensorResult):
        return []
    apply_partition_requests(instance, result)
    return [r.partition_key for r in result.run_requests or []]


def apply_partition_requests(instance: DagsterInstance, result: SensorResult) -> None:
    """Do what a sensor result asks of dynamic partitions, as the daemon would: add new
    ones, delete those of files gone."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
        else:
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))


def unprocessed_partitions(instance: DagsterInstance) -> list[str]:
    """Registered partitions whose `scored_clips` were never materialized (new ones, and
    any whose curation run failed or never ran)."""
    done = instance.get_materialized_partitions(AssetKey("scored_clips"))
    return sorted(set(instance.get_dynamic_partitions(raw_partitions.name)) - set(done))


def curate_partitions(instance: DagsterInstance, defs: Definitions, keys: list[str],
                      on_partition: Callable[[str, bool], None] | None = None, workers: int = 1) -> dict[str, bool]:
    """Run the per-file curation assets for each key (as `curate_partition` runs would);
    returns key -> success. A failing file does not stop the others. `workers` > 1 runs
    that many partitions at once, each in a worker process of its own on the same
    instance, as a run launcher would: each run is mostly single-threaded Dagster
    bookkeeping (event storage), so one process leaves the other cores idle."""
    outcome = {}
    if workers <= 1 or len(keys) < 2 * workers:
        for key in keys:
            outcome[key] = _curate_one(instance, defs, key)
            if on_partition is not None:
                on_partition(key, outcome[key])
        return outcome
    import concurrent.futures
    import multiprocessing

    home = instance.root_directory
    # spawn: a forked copy of a process with torch's thread pools can deadlock.
    with concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                                initializer=_worker_init, initargs=(home,)) as pool:
        futures = [pool.submit(_worker_curate, key) for key in keys]
        for future in concurrent.futures.as_completed(futures):
            key, ok = future.result()
            outcome[key] = ok
            if on_partition is not None:
                on_partition(key, ok)
    return {key: outcome[key] for key in keys}


def _curate_one(instance: DagsterInstance, defs: Definitions, key: str) -> bool:
    resources = {"curation_storage": defs.resources["curation_storage"]}
    result = materialize(CURATION_PARTITION_ASSETS, partition_key=key, instance=instance, resources=resources,
                         raise_on_error=False, tags={"opensora/kind": "curate"})
    return result.success


_WORKER: dict = {}


def _worker_init(dagster_home: str) -> None:
    from orchestration.definitions import build_definitions

    _WORKER["defs"] = build_definitions()  # from the environment the parent configured
    _WORKER["instance"] = DagsterInstance.from_config(dagster_home)


def _worker_curate(key: str) -> tuple[str, bool]:
    return key, _curate_one(_WORKER["instance"], _WORKER["defs"], key)


def materialize_downstream(instance: DagsterInstance, defs: Definitions,
                           log_level: str = "DEBUG") -> ExecuteInProcessResult:
    """training_dataset -> caches -> stdit2_stage0..3 -> eval_samples, with their checks,
    in one run (stages whose inputs are unchanged reuse their results). `log_level`
    filters the run's console log (the instance keeps every event)."""
    return materialize([*DOWNSTREAM_ASSETS, *DOWNSTREAM_CHECKS], instance=instance, resources=defs.resources,
                       tags={"opensora/kind": "pipeline"},
                       run_config={"loggers": {"console": {"config": {"log_level": log_level}}}})


def metadata_of(result: ExecuteInProcessResult, asset_name: str) -> dict:
    """The plain values of an asset's materialization metadata in `result`."""
    events = result.asset_materializations_for_node(asset_name)
    if not events:
        return {}
    return {k: getattr(v, "value", v) for k, v in events[-1].metadata.items()}
