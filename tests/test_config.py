"""Tests for opensora_core.config: shipped YAML, published values, error messages."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from opensora_core.config import (
    MASK_NAMES,
    ConfigError,
    ProfileConfig,
    StageConfig,
    expand_env,
    find_config,
    is_stage_base,
    load_config,
    load_profile,
    load_stage,
    project_root,
    read_stage_data,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[1]
# Files named *base.yaml hold keys other stages extend; they are not stages.
STAGE_FILES = sorted(p for p in (ROOT / "configs" / "stages").rglob("*.yaml") if not is_stage_base(p))
# StageConfig.model_dump(mode="json") of every stage, captured before the stage files
# extended shared bases: moving keys between files must change no resolved value.
RESOLVED_STAGES = json.loads((ROOT / "tests/fixtures/stage_configs_resolved.json").read_text())
PROFILE_FILES = sorted((ROOT / "configs" / "profiles").glob("*.yaml"))

CLUSTER_ENV = {
    "MLFLOW_TRACKING_URI": "http://mlflow.internal:5000",
    "SD_VAE_PATH": "/weights/sd-vae-ft-ema",
    "T5_PATH": "/weights/t5-v1_1-xxl",
}

# Transcribed by hand from OPEN_SORA_1_1.md ("Buckets"), independently of the YAML.
N = None
PUBLISHED_BUCKETS: dict[int, dict[str, dict[int, tuple[float, int | None]]]] = {
    1: {
        "144p": {1: (0.5, 48), 16: (1, 6), 32: (1, 3), 96: (1, 1)},
        "256": {1: (0.5, 24), 16: (0.5, 3), 48: (0.5, 1), 64: (0, N)},
        "240p": {16: (0.3, 2), 32: (0.3, 1), 64: (0, N)},
        "512": {1: (0.4, 12)},
        "1024": {1: (0.3, 3)},
    },
    2: {
        "144p": {1: (1, 48), 16: (1, 17), 32: (1, 9), 64: (1, 4), 128: (1, 1)},
        "256": {1: (0.8, 254), 16: (0.5, 17), 32: (0.5, 9), 64: (0.5, 4), 128: (0.5, 1)},
        "240p": {1: (0.1, 20), 16: (0.9, 17), 32: (0.8, 9), 64: (0.8, 4), 128: (0.8, 2)},
        "512": {1: (0.5, 86), 16: (0.2, 4), 32: (0.2, 2), 64: (0.2, 1), 128: (0, N)},
        "480p": {1: (0.4, 54), 16: (0.4, 4), 32: (0, N)},
        "720p": {1: (0.1, 20), 16: (0.1, 2), 32: (0, N)},
        "1024": {1: (0.3, 20)},
        "1080p": {1: (0.4, 8)},
    },
    3: {
        "144p": {1: (1, 200), 16: (1, 36), 32: (1, 18), 64: (1, 9), 128: (1, 4)},
        "256": {1: (0.8, 200), 16: (0.5, 22), 32: (0.5, 11), 64: (0.5, 6), 128: (0.8, 4)},
        "240p": {1: (0.8, 200), 16: (0.5, 22), 32: (0.5, 10), 64: (0.5, 6), 128: (0.5, 3)},
        "360p": {1: (0.5, 120), 16: (0.5, 9), 32: (0.5, 4), 64: (0.5, 2), 128: (0.5, 1)},
        "512": {1: (0.5, 120), 16: (0.5, 9), 32: (0.5, 4), 64: (0.5, 2), 128: (0.8, 1)},
        "480p": {1: (0.4, 80), 16: (0.6, 6), 32: (0.6, 3), 64: (0.6, 1), 128: (0, N)},
        "720p": {1: (0.4, 40), 16: (0.6, 3), 32: (0.6, 1), 96: (0, N)},
        "1024": {1: (0.3, 40)},
    },
}

PUBLISHED_MASKS = {
    "no_mask": 0.75,
    "quarter_random": 0.025,
    "quarter_head": 0.025,
    "quarter_tail": 0.025,
    "quarter_head_tail": 0.05,
    "image_random": 0.025,
    "image_head": 0.025,
    "image_tail": 0.025,
    "image_head_tail": 0.05,
}


@pytest.fixture(autouse=True)
def _pin_project_root(monkeypatch: pytest.MonkeyPatch) -> None:
    # Tests must not depend on where pytest was started from.
    monkeypatch.setenv("OPENSORA_PROJECT_ROOT", str(ROOT))


@pytest.fixture
def cluster_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in CLUSTER_ENV.items():
        monkeypatch.setenv(name, value)
    for name in ("NNODES", "DATA_ROOT", "ARTIFACTS_ROOT", "TORCHX_SCHEDULER"):
        monkeypatch.delenv(name, raising=False)


def _stage1_data() -> dict[str, Any]:
    return read_stage_data("stage1")


def _write(tmp_path: Path, data: Any, name: str = "stage.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(path: Path, schema: type = StageConfig) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, schema)
    return str(info.value)


# ---------------------------------------------------------------- shipped files


def test_shipped_files_exist() -> None:
    names = {str(p.relative_to(ROOT / "configs/stages")) for p in STAGE_FILES}
    for stage in range(4):
        assert f"stage{stage}.yaml" in names
        assert f"tiny/stage{stage}.yaml" in names
    assert {p.stem for p in PROFILE_FILES} >= {"embedded", "cluster"}


@pytest.mark.parametrize("path", STAGE_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_stage_file_loads(path: Path) -> None:
    cfg = load_stage(path)
    assert isinstance(cfg, StageConfig)
    assert f"stage{cfg.stage}" == path.stem


def test_resolved_stage_configs_are_unchanged() -> None:
    stems = {str(p.relative_to(ROOT / "configs/stages").with_suffix("")) for p in STAGE_FILES}
    assert stems == set(RESOLVED_STAGES)
    for stem, expected in RESOLVED_STAGES.items():
        assert load_stage(stem).model_dump(mode="json") == expected, stem


@pytest.mark.parametrize("path", PROFILE_FILES, ids=lambda p: p.stem)
def test_every_profile_file_loads(path: Path, cluster_env: None) -> None:
    profile = load_profile(path)
    assert isinstance(profile, ProfileConfig)
    assert profile.name == path.stem


# ------------------------------------------------------------- published values


@pytest.mark.parametrize("stage", [1, 2, 3])
def test_published_buckets_match_reference(stage: int) -> None:
    cfg = load_stage(f"stage{stage}")
    assert cfg.bucket_tuples() == PUBLISHED_BUCKETS[stage]


def test_published_spot_checks() -> None:
    s1, s3 = load_stage("stage1"), load_stage("stage3")
    assert s1.bucket_config["144p"][1].as_tuple() == (0.5, 48)
    assert s1.bucket_config["256"][64].as_tuple() == (0.0, None)
    assert s1.bucket_config["240p"][16].as_tuple() == (0.3, 2)
    assert s3.bucket_config["720p"][96].as_tuple() == (0.0, None)
    assert s3.bucket_config["144p"][1].batch_size == 200


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_published_stage_settings(stage: int) -> None:
    cfg = load_stage(f"stage{stage}")
    assert cfg.stage == stage
    assert cfg.model_preset == "stdit2-xl2"
    assert cfg.lr == pytest.approx(2e-5)
    assert cfg.grad_clip == 1.0
    assert cfg.frame_interval == 3
    assert cfg.mixed_precision == "bf16"
    assert cfg.extra_resolutions == {}
    if stage == 0:
        assert cfg.mask_ratios is None
        assert cfg.max_steps == 6000
        assert cfg.init_from is None
        assert all(list(frames) == [1] for frames in cfg.bucket_config.values())
        assert len(cfg.bucket_config) >= 3
    else:
        assert cfg.mask_ratios == pytest.approx({**PUBLISHED_MASKS, "half_head": 0.0, "half_tail": 0.0})
        assert cfg.init_from == "previous"
        assert cfg.grad_checkpoint is (stage >= 2)


def test_tiny_stages_mirror_published_ones() -> None:
    for stage in range(4):
        published = read_stage_data(f"stage{stage}")
        tiny_raw = read_stage_data(f"tiny/stage{stage}")
        assert set(tiny_raw) - {"extra_resolutions"} == set(published) - {"extra_resolutions"}

        big, tiny = load_stage(f"stage{stage}"), load_stage(f"tiny/stage{stage}")
        assert tiny.stage == stage
        assert tiny.model_preset == "stdit2-tiny"
        assert tiny.mixed_precision == "fp32"
        assert tiny.mask_ratios == big.mask_ratios
        assert tiny.init_from == big.init_from
        assert tiny.max_steps <= 100
        assert set(tiny.bucket_config) <= set(tiny.extra_resolutions)
        frames = {t for buckets in tiny.bucket_config.values() for t in buckets}
        assert frames <= {1, 4, 8, 16}


# -------------------------------------------------------------------- errors


def test_mask_ratios_must_sum_to_one(tmp_path: Path) -> None:
    data = _stage1_data()
    data["mask_ratios"]["no_mask"] = 0.65  # total 0.9
    message = _error(_write(tmp_path, data))
    assert "mask_ratios" in message
    assert "sum" in message and "0.9" in message


def test_unknown_mask_name_lists_valid_ones(tmp_path: Path) -> None:
    data = _stage1_data()
    data["mask_ratios"]["random_blob"] = data["mask_ratios"].pop("image_random")
    message = _error(_write(tmp_path, data))
    assert "random_blob" in message
    assert all(name in message for name in MASK_NAMES)


def test_omitted_mask_kinds_are_zero() -> None:
    data = _stage1_data()
    data["mask_ratios"] = {"no_mask": 0.5, "image_head": 0.5}
    cfg = validate_config(data, StageConfig, "inline")
    assert cfg.mask_ratios is not None
    assert list(cfg.mask_ratios) == list(MASK_NAMES)
    assert cfg.mask_ratios["quarter_tail"] == 0.0


def test_unknown_key_names_file_and_key(tmp_path: Path) -> None:
    data = _stage1_data()
    data["lrr"] = 1e-4
    message = _error(_write(tmp_path, data, "my_stage.yaml"))
    assert "my_stage.yaml" in message
    assert "unknown key 'lrr'" in message
    assert "did you mean 'lr'" in message


def test_unknown_nested_key_names_its_parent(tmp_path: Path, cluster_env: None) -> None:
    data = yaml.safe_load((ROOT / "configs/profiles/embedded.yaml").read_text())
    data["vae"]["weights"] = "x"
    message = _error(_write(tmp_path, data, "p.yaml"), ProfileConfig)
    assert "p.yaml: vae: unknown key 'weights'" in message


def test_wrong_type_names_key_and_expected_type(tmp_path: Path) -> None:
    data = _stage1_data()
    data["lr"] = "abc"
    message = _error(_write(tmp_path, data))
    assert "lr: expected a number, got 'abc'" in message

    data = _stage1_data()
    data["max_steps"] = "many"
    assert "max_steps: expected an integer, got 'many'" in _error(_write(tmp_path, data))


def test_literal_error_lists_choices(tmp_path: Path) -> None:
    data = _stage1_data()
    data["mixed_precision"] = "fp8"
    message = _error(_write(tmp_path, data))
    assert "mixed_precision" in message and "'bf16'" in message and "'fp8'" in message


def test_missing_key_is_reported(tmp_path: Path) -> None:
    data = _stage1_data()
    del data["seed"]
    assert "seed: missing required key" in _error(_write(tmp_path, data))


def test_keep_prob_out_of_range_names_bucket_path(tmp_path: Path) -> None:
    data = _stage1_data()
    data["bucket_config"]["240p"][16] = [1.3, 2]
    message = _error(_write(tmp_path, data, "stage1.yaml"))
    assert "stage1.yaml: bucket_config.240p.16: keep_prob 1.3 not in [0, 1]" in message


@pytest.mark.parametrize(
    ("entry", "fragment"),
    [
        ([0.5, None], "batch_size is null"),
        ([0.5, 0], "batch_size: expected a positive integer"),
        ([0.5, 2, 3], "expected [keep_prob, batch_size]"),
        ("half", "expected [keep_prob, batch_size]"),
        ([True, 2], "keep_prob: expected a number"),
    ],
)
def test_bad_bucket_entries(tmp_path: Path, entry: Any, fragment: str) -> None:
    data = _stage1_data()
    data["bucket_config"]["144p"][32] = entry
    message = _error(_write(tmp_path, data))
    assert "bucket_config.144p.32" in message
    assert fragment in message


def test_never_assigned_bucket_is_allowed() -> None:
    data = _stage1_data()
    data["bucket_config"]["144p"][32] = [0, None]
    cfg = validate_config(data, StageConfig, "inline")
    assert cfg.bucket_config["144p"][32].as_tuple() == (0.0, None)


def test_num_frames_keys_must_be_positive_ints(tmp_path: Path) -> None:
    data = _stage1_data()
    data["bucket_config"]["144p"][-4] = [1, 1]
    assert "bucket_config.144p.-4" in _error(_write(tmp_path, data))
    data = _stage1_data()
    data["bucket_config"]["144p"]["many"] = [1, 1]
    assert "bucket_config.144p.many: expected an integer" in _error(_write(tmp_path, data))


def test_unknown_resolution_is_an_error(tmp_path: Path) -> None:
    data = _stage1_data()
    data["bucket_config"]["999p"] = {1: [1, 4]}
    message = _error(_write(tmp_path, data))
    assert "bucket_config.999p: unknown resolution '999p'" in message
    assert "240p" in message  # lists the known names


def test_extra_resolutions_declare_new_names(tmp_path: Path) -> None:
    data = _stage1_data()
    data["bucket_config"]["16px"] = {1: [1, 4]}
    data["extra_resolutions"] = {"16px": 256}
    assert load_config(_write(tmp_path, data), StageConfig).resolution_areas()["16px"] == 256

    data["extra_resolutions"] = {"16px": 0}
    assert "extra_resolutions" in _error(_write(tmp_path, data))
    data["extra_resolutions"] = {"16px": 256, "240p": 5}
    assert "already a known resolution" in _error(_write(tmp_path, data))


def test_unquoted_numeric_resolution_names_are_accepted(tmp_path: Path) -> None:
    text = (ROOT / "configs/stages/stage1.yaml").read_text().replace('"256":', "256:")
    path = tmp_path / "s.yaml"
    path.write_text(text)
    assert "256" in load_config(path, StageConfig).bucket_config


def test_stage0_cannot_start_from_previous(tmp_path: Path) -> None:
    data = read_stage_data("stage0")
    data["init_from"] = "previous"
    assert "stage 0 has no previous stage" in _error(_write(tmp_path, data))


def test_file_level_errors(tmp_path: Path) -> None:
    assert "file not found" in _error(tmp_path / "nope.yaml")

    bad = tmp_path / "bad.yaml"
    bad.write_text("stage: 1\nlr: [1, 2\nseed: 3\n")
    message = _error(bad)
    assert "bad.yaml" in message and "line " in message and "YAML syntax error" in message

    top = tmp_path / "list.yaml"
    top.write_text("- 1\n- 2\n")
    assert "top level must be a mapping" in _error(top)

    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing\n")
    assert "top level must be a mapping" in _error(empty)

    dup = tmp_path / "dup.yaml"
    dup.write_text("stage: 1\nlr: 0.1\nlr: 0.2\n")
    message = _error(dup)
    assert "duplicate key 'lr'" in message and "line 3" in message


def test_validate_config_uses_source_name() -> None:
    data = _stage1_data()
    data["grad_clip"] = -1
    with pytest.raises(ConfigError) as info:
        validate_config(data, StageConfig, "dagster run config")
    assert str(info.value).startswith("dagster run config: grad_clip: expected a value > 0")


def test_several_problems_are_all_reported() -> None:
    data = _stage1_data()
    data["lr"] = "abc"
    data["seed"] = "x"
    with pytest.raises(ConfigError) as info:
        validate_config(data, StageConfig, "s")
    assert len(info.value.problems) == 2


# ----------------------------------------------------------- env and profiles


def test_expand_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OS_TEST_A", "/weights")
    monkeypatch.delenv("OS_TEST_UNSET", raising=False)
    monkeypatch.setenv("OS_TEST_EMPTY", "")
    assert expand_env("${OS_TEST_A}/vae") == "/weights/vae"
    assert expand_env("${OS_TEST_UNSET:-/default}/x") == "/default/x"
    assert expand_env("${OS_TEST_EMPTY:-fallback}") == "fallback"
    assert expand_env("$${OS_TEST_A}") == "${OS_TEST_A}"
    assert expand_env("no vars here $HOME") == "no vars here $HOME"
    with pytest.raises(ConfigError, match="OS_TEST_UNSET"):
        expand_env("${OS_TEST_UNSET}")


def test_cluster_profile_expands_env(cluster_env: None) -> None:
    profile = load_profile("cluster")
    assert profile.device == "cuda" and profile.dist_backend == "nccl"
    assert profile.torchx_scheduler == "kubernetes" and profile.nproc_per_node == 8
    assert profile.mlflow_tracking_uri == CLUSTER_ENV["MLFLOW_TRACKING_URI"]
    assert profile.vae.kind == "sd-kl" and profile.vae.path == CLUSTER_ENV["SD_VAE_PATH"]
    assert profile.text_encoder.kind == "t5" and profile.text_encoder.path == CLUSTER_ENV["T5_PATH"]
    assert profile.nnodes == 1  # ${NNODES:-1}, coerced to int
    assert profile.data_root == "/data/opensora"


def test_cluster_profile_switches_to_slurm_by_environment(
    cluster_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCHX_SCHEDULER", "slurm")
    assert load_profile("cluster").torchx_scheduler == "slurm"
    monkeypatch.setenv("TORCHX_SCHEDULER", "slrum")
    with pytest.raises(ConfigError, match="torchx_scheduler"):
        load_profile("cluster")


def test_cluster_profile_with_unset_var_errors(
    cluster_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SD_VAE_PATH")
    with pytest.raises(ConfigError) as info:
        load_profile("cluster")
    message = str(info.value)
    assert "cluster.yaml" in message and "vae.path" in message and "SD_VAE_PATH" in message


def test_embedded_profile_paths_live_in_project() -> None:
    profile = load_profile("embedded")
    assert profile.device == "cpu" and profile.dist_backend == "gloo"
    assert profile.torchx_scheduler == "local_cwd" and profile.nproc_per_node == 1
    assert profile.vae.kind == "dct" and profile.text_encoder.kind == "word-embedding"
    assert profile.mlflow_tracking_uri == f"sqlite:///{ROOT / 'mlruns.db'}"
    assert Path(profile.data_root).is_absolute()


def test_profile_cross_checks() -> None:
    data = yaml.safe_load((ROOT / "configs/profiles/embedded.yaml").read_text())
    data["dist_backend"] = "nccl"
    with pytest.raises(ConfigError, match="nccl needs device cuda"):
        validate_config(data, ProfileConfig, "p")


# ------------------------------------------------------------- finding files


def test_find_config_by_stem_and_path() -> None:
    assert find_config("stages", "stage1") == ROOT / "configs/stages/stage1.yaml"
    assert find_config("stages", "tiny/stage2") == ROOT / "configs/stages/tiny/stage2.yaml"
    assert find_config("profiles", ROOT / "configs/profiles/embedded.yaml").name == "embedded.yaml"


def test_unknown_stem_lists_available() -> None:
    with pytest.raises(ConfigError) as info:
        find_config("stages", "stage9")
    message = str(info.value)
    assert "stage9" in message and "stage1" in message and "tiny/stage1" in message
    with pytest.raises(ConfigError, match="unknown config kind"):
        find_config("weights", "x")
    with pytest.raises(ConfigError, match="file not found"):
        find_config("stages", "missing.yaml")


def test_project_root_walks_up_from_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "configs" / "profiles").mkdir(parents=True)
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    monkeypatch.delenv("OPENSORA_PROJECT_ROOT")
    monkeypatch.chdir(nested)
    assert project_root() == tmp_path.resolve()


def test_timestep_shift_belongs_to_rectified_flow(tmp_path: Path) -> None:
    data = _stage1_data()
    assert load_config(_write(tmp_path, data), StageConfig).timestep_shift == 1.0  # absent: no shift
    assert "timestep_shift: 3.0 needs scheduler rflow, not iddpm" in _error(
        _write(tmp_path, {**data, "scheduler": "iddpm", "timestep_shift": 3.0}))
    assert "timestep_shift" in _error(_write(tmp_path, {**data, "scheduler": "rflow", "timestep_shift": 0.5}))
    assert load_config(_write(tmp_path, {**data, "scheduler": "rflow", "timestep_shift": 3.0}),
                       StageConfig).timestep_shift == 3.0


def test_min_lr_above_lr_is_refused():
    import pydantic

    from opensora_core.config import StageConfig, load_stage

    data = load_stage("tiny/stage1").model_dump()
    with pytest.raises(pydantic.ValidationError, match="min_lr"):
        StageConfig(**{**data, "lr_schedule": "cosine", "min_lr": data["lr"] * 2})
    with pytest.raises(pydantic.ValidationError, match="lr_schedule"):
        StageConfig(**{**data, "lr_schedule": "linear"})


# ---------------------------------------------------------- stages that extend


def _stage_files(tmp_path: Path, files: dict[str, Any]) -> Path:
    """Write `files` (relative path -> mapping or text) and return the folder."""
    for name, content in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(content if isinstance(content, str) else yaml.safe_dump(content, sort_keys=False))
    return tmp_path


def test_extends_merges_mappings_and_replaces_the_rest(tmp_path: Path) -> None:
    base = {k: v for k, v in _stage1_data().items() if k not in ("stage", "description")}
    base["extra_resolutions"] = {"16px": 256}
    _stage_files(tmp_path, {
        "common/base.yaml": base,
        "child.yaml": {
            "extends": "common/base.yaml",  # a path, relative to this file
            "stage": 1,
            "description": "child",
            "extra_resolutions": {"8px": 64},                 # merged with the parent's
            "bucket_config": {"144p": {16: [0.25, 2]}},       # merged down to num_frames
            "mask_ratios": {"no_mask": 0.7, "quarter_head": 0.075},  # merged: still sums to 1
            "ema_decay": None,                                # null replaces, it does not inherit
            "lr": 1e-4,
        },
    })
    cfg = load_stage(tmp_path / "child.yaml")
    assert cfg.extra_resolutions == {"16px": 256, "8px": 64}
    assert cfg.bucket_config["144p"][16].as_tuple() == (0.25, 2)
    assert cfg.bucket_config["144p"][1].as_tuple() == (0.5, 48)  # inherited
    assert set(cfg.bucket_config) == set(PUBLISHED_BUCKETS[1])
    assert cfg.mask_ratios is not None and cfg.mask_ratios["quarter_head"] == pytest.approx(0.075)
    assert cfg.mask_ratios["image_head_tail"] == pytest.approx(0.05)
    assert cfg.ema_decay is None and cfg.lr == 1e-4 and cfg.seed == 42
    # load_config with the stage schema resolves `extends` the same way.
    assert load_config(tmp_path / "child.yaml", StageConfig) == cfg


def test_extends_by_stem_chains_and_expands_env_after_merging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OS_TEST_INIT", "/ckpt/model.safetensors")
    monkeypatch.delenv("OS_TEST_UNSET", raising=False)
    stages = tmp_path / "configs" / "stages"
    _stage_files(stages, {
        "fam/base.yaml": {"extends": "stage1", "init_from": "${OS_TEST_UNSET}"},  # overridden below
        "fam/mid.yaml": {"extends": "fam/base", "seed": 7},
        "fam/stage2.yaml": {"extends": "fam/mid", "stage": 2, "init_from": "${OS_TEST_INIT}"},
    })
    (tmp_path / "configs" / "models").mkdir()
    monkeypatch.setenv("OPENSORA_PROJECT_ROOT", str(tmp_path))
    with pytest.raises(ConfigError, match="unknown stages config 'stage1'"):
        load_stage("fam/stage2")  # stems resolve in the extending file's project
    _stage_files(stages, {"stage1.yaml": (ROOT / "configs/stages/stage1.yaml").read_text(),
                          "base.yaml": (ROOT / "configs/stages/base.yaml").read_text()})
    cfg = load_stage("fam/stage2")
    assert (cfg.stage, cfg.seed, cfg.init_from) == (2, 7, "/ckpt/model.safetensors")
    assert cfg.bucket_tuples() == PUBLISHED_BUCKETS[1]
    assert read_stage_data("fam/stage2")["init_from"] == "${OS_TEST_INIT}"  # unexpanded


def test_extends_cycle_is_refused_with_its_chain(tmp_path: Path) -> None:
    _stage_files(tmp_path, {"a.yaml": "extends: b.yaml\n", "b.yaml": "extends: c.yaml\n",
                            "c.yaml": "extends: a.yaml\n", "self.yaml": "extends: self.yaml\n"})
    a, b, c = (str(tmp_path / f"{name}.yaml") for name in "abc")
    assert _error(tmp_path / "a.yaml") == f"{c}: extends: cycle: {a} -> {b} -> {c} -> {a}"
    me = str(tmp_path / "self.yaml")
    assert _error(tmp_path / "self.yaml") == f"{me}: extends: cycle: {me} -> {me}"


def test_extends_missing_or_malformed_parent_names_file_and_key(tmp_path: Path) -> None:
    _stage_files(tmp_path, {"path.yaml": "extends: nowhere.yaml\n", "stem.yaml": "extends: tiny/nope\n",
                            "num.yaml": "extends: 3\n"})
    message = _error(tmp_path / "path.yaml")
    assert message.startswith(f"{tmp_path / 'path.yaml'}: extends: file not found: nowhere.yaml")
    message = _error(tmp_path / "stem.yaml")
    assert "stem.yaml: extends: unknown stages config 'tiny/nope'" in message and "tiny/base" in message
    assert "num.yaml: extends: expected a stage name" in _error(tmp_path / "num.yaml")


def test_error_in_merged_stage_names_the_file_that_set_the_value(tmp_path: Path) -> None:
    base = {k: v for k, v in _stage1_data().items() if k not in ("stage", "description")}
    base["lr"] = "abc"
    _stage_files(tmp_path, {"base.yaml": base,
                            "child.yaml": {"extends": "base.yaml", "stage": 1, "description": "c",
                                           "grad_clip": -1, "bucket_config": {"240p": {16: [1.3, 2]}},
                                           "mask_ratios": {"no_mask": 0.5}}})
    with pytest.raises(ConfigError) as info:
        load_stage(tmp_path / "child.yaml")
    base_name, child_name = str(tmp_path / "base.yaml"), str(tmp_path / "child.yaml")
    problems = info.value.problems
    assert f"{base_name}: lr: expected a number, got 'abc' (inherited by {child_name})" in problems
    assert f"{child_name}: grad_clip: expected a value > 0.0, got -1" in problems
    assert f"{child_name}: bucket_config.240p.16: keep_prob 1.3 not in [0, 1]" in problems
    # A mapping both files wrote is blamed on the extending file.
    assert any(p.startswith(f"{child_name}: mask_ratios: ratios sum to") for p in problems)
    # A key no file sets is reported on the file being loaded.
    _stage_files(tmp_path, {"short.yaml": {"extends": "base.yaml", "stage": 1}})
    assert f"{tmp_path / 'short.yaml'}: description: missing required key" in _error(tmp_path / "short.yaml")


def test_stage_bases_are_neither_listed_nor_loaded_as_stages() -> None:
    assert {"base.yaml", "tiny/base.yaml", "demo/base.yaml"} <= {
        str(p.relative_to(ROOT / "configs/stages")) for p in (ROOT / "configs/stages").rglob("*base.yaml")}
    with pytest.raises(ConfigError) as info:
        find_config("stages", "stage9")
    assert "base" not in str(info.value)
    with pytest.raises(ConfigError, match=r"tiny/base.yaml: a base for other stage configs"):
        load_stage("tiny/base")
    assert is_stage_base("configs/stages/tiny/base.yaml") and not is_stage_base("stage1.yaml")


def test_shipped_stages_inherit_their_family_base() -> None:
    for stem in RESOLVED_STAGES:
        family = stem.rpartition("/")[0]
        raw = yaml.safe_load(find_config("stages", stem).read_text())
        assert raw["extends"] == (f"{family}/base" if family else "base"), stem


def test_removed_profile_key_dagster_home_is_an_unknown_key(tmp_path: Path) -> None:
    # Dagster reads DAGSTER_HOME before project code runs, so a profile cannot set it.
    data = yaml.safe_load((ROOT / "configs/profiles/embedded.yaml").read_text())
    message = _error(_write(tmp_path, {**data, "dagster_home": ".dagster"}, "p.yaml"), ProfileConfig)
    assert "p.yaml: unknown key 'dagster_home'" in message and "attention_backend" in message
