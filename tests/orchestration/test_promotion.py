import pytest
from mlflow.tracking import MlflowClient

from opensora_core.tracking.registry import promote_if_better, score_tag


@pytest.fixture
def tracking(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    experiment = client.create_experiment("eval", artifact_location=(tmp_path / "artifacts").as_uri())
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not really weights")

    def new_run() -> str:
        run = client.create_run(experiment)
        client.log_artifact(run.info.run_id, str(weights), "export")
        return run.info.run_id

    return uri, client, new_run


def test_champion_moves_only_on_a_better_score(tracking):
    uri, client, new_run = tracking
    first = promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.5)
    assert first["decision"] == "promoted" and first["new_version"] == 1
    assert first["champion_version"] is None and first["champion_score"] is None
    assert int(client.get_model_version_by_alias("stdit2", "champion").version) == 1
    assert first["source"].endswith("/export/model.safetensors")

    second = promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.25)
    assert second["decision"] == "kept" and second["new_version"] == 2
    assert (second["champion_version"], second["champion_score"], second["new_score"]) == (1, 0.5, 0.25)
    assert int(client.get_model_version_by_alias("stdit2", "champion").version) == 1
    assert int(client.get_model_version_by_alias("stdit2", "challenger").version) == 2

    run_id = new_run()
    third = promote_if_better(uri, "stdit2", run_id, "export/model.safetensors", 0.75)
    assert third["decision"] == "promoted" and third["new_version"] == 3
    assert (third["champion_version"], third["champion_score"]) == (1, 0.5)
    champion = client.get_model_version_by_alias("stdit2", "champion")
    assert int(champion.version) == 3 and champion.run_id == run_id
    assert float(champion.tags[score_tag("color_accuracy")]) == 0.75


def test_equal_score_does_not_promote_and_nan_is_refused(tracking):
    uri, _, new_run = tracking
    promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.5)
    assert promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.5)["decision"] == "kept"
    with pytest.raises(ValueError):
        promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", float("nan"))


def test_a_score_at_chance_is_never_promoted_even_without_a_champion(tracking):
    from opensora_core.eval.evaluate import chance_level

    uri, client, new_run = tracking
    floor = chance_level("color_accuracy", {"color_accuracy": 0.1})
    assert floor == pytest.approx(1 / 7)
    first = promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.1, floor=floor)
    assert first["decision"] == "below floor" and first["champion_version"] is None
    assert int(client.get_model_version_by_alias("stdit2", "challenger").version) == 1
    with pytest.raises(Exception, match="champion"):
        client.get_model_version_by_alias("stdit2", "champion")
    second = promote_if_better(uri, "stdit2", new_run(), "export/model.safetensors", 0.5, floor=floor)
    assert second["decision"] == "promoted"
    # prompt_following's chance is the mean over the accuracies it averages
    measured = {"color_accuracy": 0.9, "direction_accuracy": 0.9, "i2v_direction_accuracy": float("nan")}
    assert chance_level("prompt_following", measured) == pytest.approx((1 / 7 + 1 / 4) / 2)
    assert chance_level("diversity", measured) is None
