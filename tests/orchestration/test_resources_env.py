"""Resources take their settings from environment variables as Dagster `EnvVar`s."""

from __future__ import annotations

from dagster import EnvVar, asset, materialize

from orchestration.definitions import resources_from_env
from orchestration.resources import CurationStorage


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
