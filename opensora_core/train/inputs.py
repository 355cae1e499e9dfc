"""The one check of a training stage's inputs, shared by every door: `opensora train`
(and the torchrun entry) runs it before any process group or model exists, the Dagster
stage assets run it before launching a job.

`check_inputs` resolves the stage config (with the `--lr` override), the profile, the
model preset, seed / max_steps / ckpt_every, reads the training table, checks that a
sample fits a bucket and that the `--init` weights fit the model; `stage_inputs` is what
the stage's result depends on (`StageFolder.reuse_or_reset` compares it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch

from opensora_core.config import ProfileConfig, StageConfig, load_profile, load_stage
from opensora_core.data.buckets import Bucket, BucketAssigner, stage_streams
from opensora_core.data.meta import TableError, read_training_table
from opensora_core.models import STDiT2Config, load_preset
from opensora_core.models.checkpoint_io import compare_keys, load_state_dict, read_config
from opensora_core.models.pixart import looks_like_pixart, stdit2_state_from_pixart
from opensora_core.train.args import TrainArgs
from opensora_core.utils.hashing import file_sha256

TABLE_COLUMNS = ("path", "text", "num_frames", "height", "width")


class TrainingError(ValueError):
    """Input that makes a stage impossible, reported before any work."""


@dataclass
class CheckedInputs:
    stage: StageConfig  # with the --lr override applied
    profile: ProfileConfig
    config: STDiT2Config  # the stage's model preset
    seed: int
    max_steps: int
    ckpt_every: int
    table: pd.DataFrame
    rows: list[tuple[int, int, int]]  # (num_frames, height, width) per sample
    assigner: BucketAssigner
    init_state: dict[str, torch.Tensor] | None  # meta tensors when checked with shapes_only

    @property
    def streams(self) -> int:
        """The seed of the stage's data order, temporal windows and step draws."""
        return stage_streams(self.seed, self.stage.stage)


def read_table(path: str | Path) -> pd.DataFrame:
    """The training table, with every row's file checked: a relative `path` is read
    from the table's folder (else, as before, from the working directory), and rows whose
    file is in neither are refused up front, named, rather than failing a step later."""
    try:
        table = read_training_table(path, TABLE_COLUMNS, option="--data")
    except TableError as err:
        raise TrainingError(str(err)) from None
    if table.empty:
        raise TrainingError(f"--data {path}: the training table is empty")
    table["path"] = resolve_clip_paths(table["path"], Path(path).parent, f"--data {path}")
    return table


def _clip_file(text: str, table_folder: Path) -> str | None:
    """The file `text` names, as the dataset should open it; the text unchanged where it
    already names that file (cache keys of path-keyed rows stay the same)."""
    as_given = Path(text)
    if as_given.is_absolute():
        return text if as_given.is_file() else None
    in_table = table_folder / text
    if in_table.is_file():
        same = as_given.is_file() and as_given.resolve() == in_table.resolve()
        return text if same else str(in_table.resolve())
    return text if as_given.is_file() else None


def resolve_clip_paths(paths: pd.Series, table_folder: Path, where: str) -> pd.Series:
    """Absolute paths of the table's files; TrainingError naming the rows whose file is
    missing (at most five shown, and how many in all)."""
    resolved, missing = [], []
    for row, value in enumerate(paths):
        text = "" if pd.isna(value) else str(value)
        found = _clip_file(text, table_folder) if text else None
        if found is None:
            missing.append(f"row {row + 1}: {text!r}" if text else f"row {row + 1}: empty")
        resolved.append(found or text)
    if missing:
        raise TrainingError(f"{where}: {len(missing)} of {len(paths)} rows name no file (relative paths are read "
                            f"from the table's folder {table_folder}): {'; '.join(missing[:5])}")
    return pd.Series(resolved, index=paths.index, dtype=object)


def check_init(path: str | Path, preset_config: STDiT2Config, seed: int = 0,
               shapes_only: bool = False) -> dict[str, torch.Tensor]:
    """The `--init` weights, verified against the stage's model (names and shapes). A
    PixArt-alpha image checkpoint is converted first (stage 0)."""
    try:
        state = load_state_dict(path, map_location="meta" if shapes_only else "cpu")
    except (OSError, ValueError, RuntimeError) as err:
        raise TrainingError(f"--init {path}: cannot read it: {err}") from None
    if looks_like_pixart(state):
        try:
            state = stdit2_state_from_pixart(state, preset_config, seed)
        except ValueError as err:
            raise TrainingError(f"--init {path}: {err}") from None
    report = compare_keys(state, preset_config)
    if not report.ok:
        raise TrainingError(f"--init {path} does not fit the stage's model: {report.describe()}")
    # Weights trained under one micro-condition convention drift if fine-tuned under the other.
    try:
        init_config = read_config(path)
    except ValueError as err:
        raise TrainingError(f"--init {path}: {err}") from None
    wanted = preset_config.micro_condition_convention
    if init_config is not None and init_config.micro_condition_convention != wanted:
        raise TrainingError(
            f"--init {path} was trained with micro_condition_convention {init_config.micro_condition_convention!r} "
            f"but the stage's model preset has {wanted!r}; use a preset with the weights' convention")
    return state


def check_buckets(assigner: BucketAssigner, rows: list[tuple[int, int, int]], seed: int) -> None:
    """Epoch 0's draw with the stage's seed, the assignment training starts with, must
    give at least one sample a bucket."""
    assignments = assigner.assign_all(rows, seed, 0)
    if not any(isinstance(a, Bucket) for a in assignments):
        reasons = sorted({a.reason for a in assignments})[:3]
        raise TrainingError(f"no sample of the {len(rows)} fits any bucket of the stage ({'; '.join(reasons)})")


def check_inputs(args: TrainArgs, shapes_only: bool = False) -> CheckedInputs:
    """Every input of `args`, resolved and checked; TrainingError (or ConfigError) names
    the first problem. `shapes_only` checks `--init` without reading its values."""
    stage = load_stage(args.stage)
    profile = load_profile(args.profile)
    seed = stage.seed if args.seed is None else args.seed
    max_steps = stage.max_steps if args.max_steps is None else args.max_steps
    ckpt_every = stage.ckpt_every if args.ckpt_every is None else args.ckpt_every
    if max_steps < 1 or ckpt_every < 1:
        raise TrainingError(f"max_steps ({max_steps}) and ckpt_every ({ckpt_every}) must be >= 1")
    if args.lr is not None:
        if not (math.isfinite(args.lr) and args.lr > 0):
            raise TrainingError(f"--lr must be a finite number > 0, got {args.lr}")
        # The override replaces the stage's lr everywhere, the logged `stage.lr` included.
        stage = stage.model_copy(update={"lr": float(args.lr)})
    config = load_preset(stage.model_preset)
    table = read_table(args.data)
    assigner = BucketAssigner(stage)
    rows = list(zip(table["num_frames"].astype(int), table["height"].astype(int), table["width"].astype(int)))
    check_buckets(assigner, rows, stage_streams(seed, stage.stage))
    init_state = check_init(args.init, config, seed, shapes_only) if args.init else None
    return CheckedInputs(stage, profile, config, seed, max_steps, ckpt_every, table, rows, assigner, init_state)


def stage_inputs(args: TrainArgs, checked: CheckedInputs, world: int = 1) -> dict:
    """What the stage's result depends on: the table's and init weights' content, the
    stage config (overrides applied), seed, steps and the profile. The config's batch
    sizes are per process; the record holds the global ones (times `world`, the number
    of training processes), since W processes with batch B train exactly as one with
    batch W * B (`BucketBatchSampler`): such a folder resumes on either, another global
    batch starts again."""
    init = Path(args.init) if args.init else None
    config = checked.stage.model_dump(mode="json")
    for entries in config["bucket_config"].values():
        for entry in entries.values():
            if entry["batch_size"] is not None:
                entry["batch_size"] *= world
    return {"table_sha256": file_sha256(args.data), "stage_config": config,
            "init_sha256": file_sha256(init) if init is not None and init.is_file() else None,
            "seed": checked.seed, "streams": checked.streams, "max_steps": checked.max_steps,
            "profile": args.profile}
