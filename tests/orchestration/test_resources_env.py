"""Resources take their settings from environment variables as Dagster `EnvVar`s."""

from __future__ import annotations

from pathlib import Path

from dagster import EnvVar, asset, materialize

from orchestration.definitions import resources_from_env
from orchestration.resources import CurationStorage

REPO = Path(__file__).resolve().parents[2]


def test_set_variables_become_env_vars_resolved_when_a_run_starts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENSORA_RAW_ROOT", str(tmp_path / "first"))
    monkeypatch.delenv("OPENSORA_CURATED_ROOT", raising=False)
    storage = resources_from_env()["curation_storage"]
    assert isinstance(storage.raw_root, EnvVar) and storage.raw_root == "OPENSORA_RAW_ROOT"
    assert not isinstance(storage.curated_root, EnvVar)  # unset: the profile's folder
    assert storage.curated_root.endswith("/curated")

    @asset
    def roots(curation_storage: CurationStorage) -> str:
        return curation_storage.raw_root

    # Resolved at run time: the value when the run starts, not when Definitions loaded.
    monkeypatch.setenv("OPENSORA_RAW_ROOT", str(tmp_path / "second"))
    result = materialize([roots], resources={"curation_storage": storage})
    assert result.output_for_node("roots") == str(tmp_path / "second")


def test_a_job_gets_the_variables_its_profile_reads(tmp_path, monkeypatch):
    from orchestration.resources import training_settings_from_env

    profile = tmp_path / "profile.yaml"
    # The embedded profile with a store read from the environment; a comment naming
    # ${NOT_READ} and an escaped $${LITERAL} name nothing.
    text = (REPO / "configs" / "profiles" / "embedded.yaml").read_text().replace(
        "mlflow_tracking_uri: sqlite:///mlruns.db", "mlflow_tracking_uri: ${STORE_URI}  # not ${NOT_READ}")
    profile.write_text(text.replace("name: embedded", "name: $${LITERAL}-${PROFILE_TAG:-x}"))
    for name, value in {"OPENSORA_PROFILE": str(profile), "STORE_URI": "sqlite:////tmp/x.db",
                        "OPENSORA_MLFLOW_ARTIFACT_ROOT": "s3://bucket/mlflow", "EXTRA_ONE": "1",
                        "OPENSORA_TRAIN_ENV": "EXTRA_ONE, EXTRA_UNSET",
                        "OPENSORA_TRAIN_MOUNTS": "type=volume,src=a,dst=/a; type=bind,src=/b,dst=/b"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)
    settings = training_settings_from_env()
    assert settings.forward_env == ["PROFILE_TAG", "STORE_URI", "OPENSORA_MLFLOW_ARTIFACT_ROOT",
                                    "MLFLOW_S3_ENDPOINT_URL", "EXTRA_ONE", "EXTRA_UNSET"]
    assert settings.mounts == ["type=volume,src=a,dst=/a", "type=bind,src=/b,dst=/b"]
    # Only what is set is forwarded; the Pipes variables come last and win.
    assert settings.job_env({"DAGSTER_PIPES_CONTEXT": "c", "EXTRA_ONE": "pipes"}) == {
        "STORE_URI": "sqlite:////tmp/x.db", "OPENSORA_MLFLOW_ARTIFACT_ROOT": "s3://bucket/mlflow",
        "EXTRA_ONE": "pipes", "DAGSTER_PIPES_CONTEXT": "c"}
