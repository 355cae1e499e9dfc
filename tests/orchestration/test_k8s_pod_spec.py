"""The Kubernetes pods the project asks for are the ones docs/cluster.md shows.

No cluster runs here: the training pod is TorchX's dry run of the app a stage asset
submits (`stage_app`, settings from the environment docs/cluster.md lists), and the
curation step pod is what dagster-k8s's executor builds from
`configs/data/k8s_executor.yaml`. Each must contain the YAML excerpt under the matching
`# pod: ...` fence of docs/cluster.md (every key and list item there, at its place).
"""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from opensora_core.config import load_stage
from opensora_core.train.args import TrainArgs

REPO = Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "cluster.md"
IMAGE = "registry.example/opensora:1"
# What the executor reads of the instance's run launcher: the K8sRunLauncher of Dagster's
# Helm chart, with the chart's default names (docs/cluster.md).
HELM_RUN_LAUNCHER = SimpleNamespace(job_image=None, dagster_home="/opt/dagster/dagster_home",
                                    instance_config_map="dagster-instance",
                                    postgres_password_secret="dagster-postgresql-secret")

# The environment docs/cluster.md's Kubernetes section sets (example values).
CLUSTER_ENV = {
    "OPENSORA_PROFILE": "cluster",
    "MLFLOW_TRACKING_URI": "http://mlflow.opensora:5000",
    "OPENSORA_MLFLOW_ARTIFACT_ROOT": "s3://opensora/mlflow",
    "SD_VAE_PATH": "/data/weights/sd-vae-ft-ema",
    "T5_PATH": "/data/weights/t5-v1_1-xxl",
    "DATA_ROOT": "/data/opensora",
    "OPENSORA_TRAIN_ROOT": "/data/opensora/train",
    "OPENSORA_CACHE_ROOT": "/data/opensora/caches",
    "OPENSORA_TRAIN_IMAGE": IMAGE,
    "OPENSORA_TRAIN_MOUNTS": "type=volume,src=opensora-data,dst=/data",
    "OPENSORA_TRAIN_CPU": "64",
    "OPENSORA_TRAIN_MEM_MB": "512000",
    "OPENSORA_TORCHX_CFG": '{"queue": "default", "namespace": "opensora"}',
    "OPENSORA_RAW_ROOT": "s3://opensora/raw",
    "OPENSORA_CURATED_ROOT": "s3://opensora/curated",
    "OPENSORA_DATA_CONFIG": "default",
    "DAGSTER_PG_HOST": "postgres.opensora",
}


def documented_pod(name: str) -> dict:
    """The YAML block of docs/cluster.md that starts with `# pod: <name>`."""
    blocks = re.findall(r"```yaml\n(# pod: [^\n]*\n.*?)```", DOC.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if b.splitlines()[0] == f"# pod: {name}"]
    assert len(found) == 1, f"docs/cluster.md needs one ```yaml block starting '# pod: {name}'"
    return yaml.safe_load(found[0])


def missing(expected, actual, where: str = "") -> list[str]:
    """Where `expected` (a documented excerpt) is not contained in `actual`: mappings by
    key, lists item by item (each documented item contained in some rendered one)."""
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected a mapping, rendered {actual!r}"]
        return [m for k, v in expected.items()
                for m in (missing(v, actual[k], f"{where}.{k}") if k in actual else [f"{where}.{k}: not rendered"])]
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, rendered {actual!r}"]
        problems = []
        for item in expected:
            if any(not missing(item, candidate) for candidate in actual):
                continue
            named = [c for c in actual if isinstance(item, dict) and isinstance(c, dict)
                     and "name" in item and c.get("name") == item["name"]]
            # A named item (container, variable, volume) that differs: say where inside it.
            problems += missing(item, named[0], f"{where}[{item['name']}]") if named else \
                [f"{where}[]: {item!r} not rendered"]
        return problems
    return [] if str(expected) == str(actual) else [f"{where}: documented {expected!r}, rendered {actual!r}"]


def as_plain(obj) -> dict:
    from kubernetes.client import ApiClient

    return ApiClient().sanitize_for_serialization(obj)


@pytest.fixture
def cluster_env(monkeypatch):
    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)


def test_the_training_pod_is_the_documented_one(cluster_env):
    pytest.importorskip("kubernetes", reason="TorchX's kubernetes scheduler needs the kubernetes client")
    from assets_defs.training import StagePlan, stage_app
    from orchestration.resources import torchx_launcher_from_env, training_settings_from_env

    settings, launcher = training_settings_from_env(), torchx_launcher_from_env()
    assert launcher.scheduler == "kubernetes" and settings.gpu_per_node == 8
    args = TrainArgs(stage="stage1", data="/data/opensora/train/stage1/meta.parquet", out="/data/opensora/train/stage1",
                     profile="cluster", cache="/data/opensora/caches",
                     init="/data/opensora/train/stage0/export/model.safetensors")
    plan = StagePlan(1, "stage1", load_stage("stage1"), args, {})
    pipes = {"DAGSTER_PIPES_CONTEXT": "(set per run)", "DAGSTER_PIPES_MESSAGES": "(set per run)"}
    request = launcher.dryrun(stage_app(plan, settings, launcher, pipes)).request.resource
    assert request["kind"] == "Job" and request["spec"]["queue"] == "default"
    pod = as_plain(request["spec"]["tasks"][0]["template"])
    assert missing(documented_pod("training (TorchX, kubernetes)"), pod) == []
    # Secrets stay out of the job spec unless named: nothing else of this environment leaks in.
    env = {e["name"] for e in pod["spec"]["containers"][0]["env"]}
    assert "DAGSTER_PG_HOST" not in env and "OPENSORA_TRAIN_IMAGE" not in env


def test_the_curation_step_pod_is_the_documented_one(cluster_env):
    pytest.importorskip("dagster_k8s", reason="the k8s extra (dagster-k8s) is not installed")
    from dagster_k8s.container_context import K8sContainerContext
    from dagster_k8s.job import UserDefinedDagsterK8sConfig, construct_dagster_k8s_job

    config = yaml.safe_load((REPO / "configs" / "data" / "k8s_executor.yaml").read_text())["execution"]["config"]
    # The executor's own reading of its config (dagster_k8s.executor.k8s_job_executor),
    # which cannot be built here: it connects to a cluster when created.
    context = K8sContainerContext(
        image_pull_policy=config.get("image_pull_policy"), env_vars=config.get("env_vars"),
        env_secrets=config.get("env_secrets"), volumes=config.get("volumes"),
        volume_mounts=config.get("volume_mounts"), namespace=config.get("job_namespace"),
        run_k8s_config=UserDefinedDagsterK8sConfig.from_dict(config.get("step_k8s_config", {})))
    job = construct_dagster_k8s_job(
        job_config=context.get_k8s_job_config(IMAGE, HELM_RUN_LAUNCHER), args=["dagster", "api", "execute_step"],
        job_name="dagster-step-example", pod_name="dagster-step-example", component="step_worker",
        user_defined_k8s_config=context.run_k8s_config, labels={}, env_vars=[])
    pod = as_plain(job)["spec"]["template"]
    assert missing(documented_pod("curation step (dagster-k8s executor)"), pod) == []
    assert context.namespace == "opensora"


def test_the_comparison_reports_what_differs():
    rendered = {"spec": {"containers": [{"image": "a", "env": [{"name": "X", "value": "1"}]}]}}
    assert missing({"spec": {"containers": [{"image": "a", "env": [{"name": "X"}]}]}}, rendered) == []
    assert missing({"spec": {"containers": [{"image": "b"}]}}, rendered) == [
        ".spec.containers[]: {'image': 'b'} not rendered"]
    assert missing({"spec": {"volumes": []}}, rendered) == [".spec.volumes: not rendered"]
    assert missing({"spec": {"containers": [{"image": "a", "env": [{"name": "X", "value": "2"}]}]}}, rendered) == [
        ".spec.containers[]: {'image': 'a', 'env': [{'name': 'X', 'value': '2'}]} not rendered"]
    named = {"containers": [{"name": "c", "env": [{"name": "X", "value": "1"}]}]}
    assert missing({"containers": [{"name": "c", "env": [{"name": "X", "value": "2"}]}]}, named) == [
        ".containers[c].env[X].value: documented '2', rendered '1'"]
