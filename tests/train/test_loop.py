from __future__ import annotations

import itertools
import json
import math
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from opensora_core.models import STDiT2, build_stdit2
from opensora_core.models.checkpoint_io import load_stdit2, save_model
from opensora_core.train.args import train_argv
from opensora_core.train.loop import TrainArgs, TrainingError, train_stage

REPO = Path(__file__).resolve().parents[2]


def _train_command(meta, out, profile, steps=8, every=2):
    return [sys.executable, "-m", "opensora_core.train.loop", *train_argv(TrainArgs(
        stage="tiny/stage1", data=str(meta), out=str(out), profile=str(profile), max_steps=steps, ckpt_every=every))]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_resume_after_sigkill_is_bit_identical(tmp_path, training_table, test_profile):
    straight = tmp_path / "straight"
    subprocess.run(_train_command(training_table, straight, test_profile), check=True, env=_env(),
                   capture_output=True, timeout=300)

    killed = tmp_path / "killed"
    # The run stops in its third step (after the checkpoint of step 2) and says so through
    # a file: the kill always lands mid-run, however fast or slow the machine.
    reached = tmp_path / "in-step-3"
    hold = ("import sys, time\nfrom pathlib import Path\nfrom opensora_core.train import loop\n"
            "step_once = loop.train_step\n"
            "def train_step(s, items, step):\n"
            "    if step == 2:\n"
            f"        Path({str(reached)!r}).touch()\n"
            "        time.sleep(3600)\n"
            "    return step_once(s, items, step)\n"
            "loop.train_step = train_step\n"
            "loop.main(sys.argv[1:])\n")
    log = tmp_path / "killed.log"
    with open(log, "wb") as err:
        process = subprocess.Popen([sys.executable, "-c", hold,
                                    *_train_command(training_table, killed, test_profile)[3:]],
                                   env=_env(), stdout=subprocess.DEVNULL, stderr=err)
    while not reached.exists() and process.poll() is None:
        time.sleep(0.02)
    assert process.poll() is None, log.read_text()[-2000:]  # still running: held in step 3
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL
    assert (killed / "checkpoints" / "step-00000002").is_dir() and not (killed / "export").exists()

    resumed = subprocess.run(_train_command(training_table, killed, test_profile), env=_env(),
                             capture_output=True, text=True, timeout=300, check=False)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    a = load_file(str(straight / "export" / "model.safetensors"))
    b = load_file(str(killed / "export" / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    te_a = load_file(str(straight / "export" / "text_encoder.safetensors"))
    te_b = load_file(str(killed / "export" / "text_encoder.safetensors"))
    assert all(torch.equal(te_a[k], te_b[k]) for k in te_a)
    assert sorted(p.name for p in (killed / "checkpoints").iterdir()) == ["step-00000006", "step-00000008"]
    result = json.loads((killed / "result.json").read_text())
    assert result["steps"] == 8 and result["final_loss"] == result["final_loss"]  # not NaN


def test_stage_exports_a_loadable_model_and_metrics(tmp_path, training_table, test_profile):
    result = train_stage(TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(tmp_path / "s1"),
                                   profile=str(test_profile), max_steps=3, ckpt_every=3))
    assert result.steps == 3 and len(result.loss_curve) == 3
    model = load_stdit2(result.export_path)
    assert model.config.hidden_size == build_stdit2("stdit2-tiny").config.hidden_size
    lines = [json.loads(line) for line in (tmp_path / "s1" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2, 3]
    for key in ("loss", "grad_norm", "lr", "samples_per_s", "tokens_per_s", "tflops_per_s", "peak_memory_gib"):
        assert key in lines[-1]
    assert lines[0]["lr"] < lines[-1]["lr"]  # warm-up

    # The next stage starts from this export.
    nxt = train_stage(TrainArgs(stage="tiny/stage2", data=str(training_table), out=str(tmp_path / "s2"),
                                profile=str(test_profile), init=result.export_path, max_steps=1, ckpt_every=1))
    assert nxt.steps == 1


def test_an_out_folder_resumes_only_the_inputs_it_was_trained_from(tmp_path, training_table, test_profile):
    """`inputs.json` in --out: the same inputs resume (a finished run stays finished),
    another lr (or table, config, init, seed, steps) starts again from step 0."""
    out = tmp_path / "s1"
    args = TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out), profile=str(test_profile),
                     max_steps=2, ckpt_every=1)
    first = train_stage(args)
    recorded = json.loads((out / "inputs.json").read_text())
    assert recorded["max_steps"] == 2 and recorded["stage_config"]["lr"] == first_lr(args)
    again = train_stage(args)  # nothing left to train: resumes at step 2, trains no step
    assert again.steps == 2 and again.loss_curve == []
    other = train_stage(TrainArgs(**{**vars(args), "lr": 5e-4}))
    assert other.steps == 2 and [s for s, _ in other.loss_curve] == [1, 2]  # from step 0
    assert json.loads((out / "inputs.json").read_text())["stage_config"]["lr"] == 5e-4
    assert first.loss_curve[0][1] == other.loss_curve[0][1]  # the first step's loss precedes any update


def first_lr(args: TrainArgs) -> float:
    from opensora_core.config import load_stage

    return load_stage(args.stage).lr


def test_bad_input_fails_before_any_work(tmp_path, training_table, test_profile):
    def run(**overrides):
        values = {"stage": "tiny/stage1", "data": str(training_table), "out": str(tmp_path / "x"),
                      "profile": str(test_profile), "max_steps": 1}
        values.update(overrides)
        return train_stage(TrainArgs(**values))

    empty = tmp_path / "empty.csv"
    pd.DataFrame(columns=["path", "text", "num_frames", "height", "width"]).to_csv(empty, index=False)
    with pytest.raises(TrainingError, match="empty"):
        run(data=str(empty))
    tiny = tmp_path / "tiny.csv"
    pd.DataFrame([{"path": "a.mp4", "text": "x", "num_frames": 16, "height": 8, "width": 8}]).to_csv(tiny, index=False)
    with pytest.raises(TrainingError, match=r"1 of 1 rows name no file .*row 1: 'a.mp4'"):
        run(data=str(tiny))
    (tmp_path / "a.mp4").write_bytes(b"")  # found beside the table, whatever the working directory
    with pytest.raises(TrainingError, match="fits any bucket"):
        run(data=str(tiny))
    wrong = build_stdit2("stdit2-tiny", depth=2)
    save_model(wrong, tmp_path / "wrong" / "model.safetensors")
    with pytest.raises(TrainingError, match="missing: blocks.2"):
        run(init=str(tmp_path / "wrong" / "model.safetensors"))
    with pytest.raises(TrainingError, match="no such file"):
        run(data=str(tmp_path / "absent.csv"))
    assert not (tmp_path / "x").exists()


def test_two_processes_with_fsdp2_over_gloo_in_bf16(tmp_path, training_table, test_profile):
    """FSDP2's mixed-precision policy on CPU: bf16 compute, fp32 sharded weights."""
    out = tmp_path / "ddp"
    stage = _stage_with(tmp_path, "bf16", mixed_precision="bf16")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               "-m", "opensora_core.train.loop", *train_argv(TrainArgs(
                   stage=str(stage), data=str(training_table), out=str(out), profile=str(test_profile),
                   max_steps=2, ckpt_every=2))]
    done = subprocess.run(command, env=_env(), capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    checkpoint = out / "checkpoints" / "step-00000002"
    assert (checkpoint / "rank0.pt").is_file() and (checkpoint / "rank1.pt").is_file()
    assert len(list(checkpoint.glob("*.distcp"))) == 2  # one shard file per rank
    recorded = json.loads((checkpoint / "manifest.json").read_text())["files"]  # both ranks' files, hashed
    assert sorted(recorded) == sorted(p.name for p in checkpoint.iterdir() if p.name != "manifest.json")
    model = load_stdit2(out / "export" / "model.safetensors")
    assert all(torch.isfinite(p).all() and p.dtype == torch.float32 for p in model.parameters())
    losses = [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses)


def test_loss_summary_flags_nan_and_rising_loss(tmp_path):
    from opensora_core.train.metrics import summarize_loss

    def write(values):
        path = tmp_path / "metrics.jsonl"
        path.write_text("".join(json.dumps({"step": i + 1, "loss": v}) + "\n" for i, v in enumerate(values)))
        return summarize_loss(path)

    good = write([1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.45, 0.4])
    assert good.finite and good.decreased and good.points == 8 and good.first == pytest.approx(0.95)
    assert not write([1.0, 0.9, float("nan"), 0.5]).decreased
    assert not write([0.5, 0.6, 0.7, 0.9]).decreased
    # What the blocking stage check asks: finite, and no rise past RISE_LIMIT once 8 steps
    # were logged; a flat loss (a fine-tune of a converged model) passes.
    assert good.healthy and write([0.5, 0.6]).healthy and not write([0.5, float("inf")]).healthy
    assert not write([0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1, 1.2]).healthy
    flat = write([1.0, 1.05, 0.98, 1.02, 1.03, 0.99, 1.04, 1.01])
    assert flat.healthy and not flat.decreased and not flat.rose


def test_an_rflow_stage_exports_its_objective_and_samples_with_its_own_sampler(tmp_path, training_table, test_profile):
    import yaml

    from opensora_core.config import read_stage_data
    from opensora_core.infer.sample import PromptRequest, SampleSettings, load_generation_stack
    from opensora_core.models.checkpoint_io import read_objective

    stage = read_stage_data("tiny/stage1")
    stage_file = tmp_path / "rflow.yaml"
    stage_file.write_text(yaml.safe_dump({**stage, "scheduler": "rflow", "timestep_shift": 2.0}))
    result = train_stage(TrainArgs(stage=str(stage_file), data=str(training_table), out=str(tmp_path / "s"),
                                   profile=str(test_profile), max_steps=2, ckpt_every=2))
    assert all(math.isfinite(loss) for _, loss in result.loss_curve)
    assert read_objective(result.export_path) == ("rflow", 2.0)
    generator, provenance = load_generation_stack(checkpoint=result.export_path, profile=str(test_profile))
    assert generator.objective == provenance["objective"] == "rflow" and provenance["timestep_shift"] == 2.0
    request = [PromptRequest("a red square moving left")]
    for sampler in ("auto", "rflow", "dpm-solver"):
        video, = generator.generate(request, SampleSettings(num_frames=2, height=32, width=32, steps=2,
                                                            sampler=sampler), progress=False)
        assert video.shape == (3, 2, 32, 32) and torch.isfinite(video).all()
    with pytest.raises(ValueError, match="does not fit a model trained with rflow"):
        generator.generate(request, SampleSettings(num_frames=2, height=32, width=32, steps=2, sampler="iddpm"))
    # An IDDPM export (and any file that records nothing, such as Open-Sora's) is IDDPM.
    plain = save_model(build_stdit2("stdit2-tiny"), tmp_path / "plain" / "model.safetensors")
    assert read_objective(plain) == ("iddpm", 1.0)


def test_cosine_schedule_warms_up_then_decays_to_min_lr():
    from opensora_core.config import load_stage
    from opensora_core.train.step import learning_rate

    stage = load_stage("tiny/stage1").model_copy(update={"lr": 1e-3, "warmup_steps": 4, "lr_schedule": "cosine",
                                                           "min_lr": 1e-4})
    lrs = [learning_rate(stage, step, 21) for step in range(21)]
    assert lrs[:4] == pytest.approx([2.5e-4, 5e-4, 7.5e-4, 1e-3])
    assert lrs[4] == pytest.approx(1e-3) and lrs[-1] == pytest.approx(1e-4)
    assert all(a >= b for a, b in itertools.pairwise(lrs[4:]))
    assert lrs[12] == pytest.approx(5.5e-4)  # half-way: the middle of lr and min_lr
    constant = stage.model_copy(update={"lr_schedule": "constant"})
    assert {learning_rate(constant, step, 20) for step in range(4, 20)} == {1e-3}


def _wide_table(folder: Path) -> Path:
    """One 16-frame 48x96 clip at 8 fps and one 48x96 still: ar 0.5 as height/width."""
    from opensora_core.data.synthetic import moving_square_clip
    from opensora_core.data.video_io import write_image, write_video

    clip, still = folder / "wide.mp4", folder / "wide.png"
    write_video(clip, moving_square_clip(16, 48, 96, seed=0), fps=8)
    write_image(still, moving_square_clip(1, 48, 96, seed=1)[0])
    meta = folder / "meta.csv"
    pd.DataFrame([{"path": str(clip), "text": "a red square", "num_frames": 16, "height": 48, "width": 96, "fps": 8.0},
                  {"path": str(still), "text": "a red square", "num_frames": 1, "height": 48, "width": 96,
                   "fps": 0.0}]).to_csv(meta, index=False)
    return meta


@pytest.mark.parametrize(
    ("convention", "video", "image"),
    [
        # Ours: height/width and the sampled frames' fps (the clip's fps / the stage's frame_interval).
        ("consistent", {"ar": 0.5, "fps": 4.0}, {"ar": 0.5, "fps": 120.0}),
        # Open-Sora 1.1's training: width/height and the clip's source fps; images 120.
        ("opensora-1.1", {"ar": 2.0, "fps": 8.0}, {"ar": 2.0, "fps": 120.0}),
    ],
)
def test_training_feeds_the_models_micro_condition_convention(
    tmp_path, test_profile, monkeypatch, convention, video, image
):
    import yaml

    from opensora_core.config import read_stage_data
    from opensora_core.models import load_preset
    from opensora_core.train import inputs as train_inputs

    stage = read_stage_data("tiny/stage1")
    stage.update(frame_interval=2, bucket_config={"64px": {1: [1.0, 1], 4: [1.0, 1]}}, ema_decay=None)
    stage_file = tmp_path / "stage.yaml"
    stage_file.write_text(yaml.safe_dump(stage))
    config = load_preset("stdit2-tiny").model_copy(update={"micro_condition_convention": convention})
    monkeypatch.setattr(train_inputs, "load_preset", lambda name: config)
    seen = {}
    real_forward = STDiT2.forward

    def recording(self, x, timestep, y, **kwargs):
        if isinstance(kwargs.get("ar"), torch.Tensor):  # a training batch, not the cost model's scalars
            frames = "image" if x.shape[2] == 1 else "video"
            seen[frames] = {key: kwargs[key].tolist() for key in ("height", "width", "ar", "fps")}
        return real_forward(self, x, timestep, y, **kwargs)

    monkeypatch.setattr(STDiT2, "forward", recording)
    result = train_stage(TrainArgs(stage=str(stage_file), data=str(_wide_table(tmp_path)), out=str(tmp_path / "s"),
                                   profile=str(test_profile), max_steps=2, ckpt_every=2))
    assert seen["video"] == {"height": [48.0], "width": [96.0], "ar": [video["ar"]], "fps": [video["fps"]]}
    assert seen["image"] == {"height": [48.0], "width": [96.0], "ar": [image["ar"]], "fps": [image["fps"]]}
    # The export carries the convention, and fine-tuning it under the other one is refused.
    assert load_stdit2(result.export_path).config.micro_condition_convention == convention
    other = "consistent" if convention == "opensora-1.1" else "opensora-1.1"
    monkeypatch.setattr(train_inputs, "load_preset", lambda name: config.model_copy(update={"micro_condition_convention": other}))
    with pytest.raises(TrainingError, match=f"trained with micro_condition_convention '{convention}'"):
        train_stage(TrainArgs(stage=str(stage_file), data=str(_wide_table(tmp_path)), out=str(tmp_path / "x"),
                              profile=str(test_profile), init=result.export_path, max_steps=1))


def _stage_with(tmp_path: Path, name: str, **fields) -> Path:
    import yaml

    from opensora_core.config import read_stage_data

    data = read_stage_data("tiny/stage1")
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**data, **fields}))
    return path


def test_bf16_stage_on_cpu_follows_the_fp32_loss_curve(tmp_path, training_table, test_profile):
    curves = {}
    for precision in ("fp32", "bf16"):
        stage = _stage_with(tmp_path, precision, mixed_precision=precision)
        result = train_stage(TrainArgs(stage=str(stage), data=str(training_table), out=str(tmp_path / precision),
                                       profile=str(test_profile), max_steps=6, ckpt_every=6))
        curves[precision] = [loss for _, loss in result.loss_curve]
        exported = load_file(str(result.export_path))
        assert all(t.dtype == torch.float32 for t in exported.values())  # fp32 master weights
    fp32, bf16 = torch.tensor(curves["fp32"]), torch.tensor(curves["bf16"])
    assert torch.isfinite(bf16).all()
    # Same data and noise: bf16 rounding moves each step's loss by far less than the
    # loss moves between steps.
    assert (bf16 - fp32).abs().max() < 0.05 * fp32.abs().max(), (curves)
    assert not torch.equal(fp32, bf16)  # the bf16 run really computed in bf16


def test_compiled_blocks_train_as_eager_ones_and_export_the_same_names(tmp_path, training_table, test_profile):
    """The profile's `compile`: each block compiled in place; the loss curve follows the
    eager one and the exported parameter names are unchanged (checkpoints interchange)."""
    import yaml
    from torch._dynamo.utils import counters

    curves, exports = {}, {}
    stage = _stage_with(tmp_path, "bf16", mixed_precision="bf16")
    for compiled in (False, True):
        counters.clear()
        profile = tmp_path / f"profile-{compiled}.yaml"
        profile.write_text(yaml.safe_dump({**yaml.safe_load(test_profile.read_text()), "compile": compiled}))
        result = train_stage(TrainArgs(stage=str(stage), data=str(training_table), out=str(tmp_path / str(compiled)),
                                       profile=str(profile), max_steps=3, ckpt_every=3))
        curves[compiled] = torch.tensor([loss for _, loss in result.loss_curve])
        exports[compiled] = load_file(str(result.export_path))
        assert (counters["stats"]["unique_graphs"] > 0) == compiled  # the blocks really ran compiled
    assert exports[True].keys() == exports[False].keys()
    assert torch.isfinite(curves[True]).all()
    assert (curves[True] - curves[False]).abs().max() < 0.05 * curves[False].abs().max(), curves


def test_a_stage_compile_setting_overrides_the_profiles(tmp_path, training_table, test_profile):
    import yaml
    from torch._dynamo.utils import counters

    profile = tmp_path / "compiling.yaml"
    profile.write_text(yaml.safe_dump({**yaml.safe_load(test_profile.read_text()), "compile": True}))
    counters.clear()
    train_stage(TrainArgs(stage=str(_stage_with(tmp_path, "eager", compile=False)), data=str(training_table),
                          out=str(tmp_path / "eager"), profile=str(profile), max_steps=1, ckpt_every=1))
    assert counters["stats"]["unique_graphs"] == 0


def test_a_second_run_on_a_busy_stage_folder_is_refused_naming_the_holder(tmp_path, training_table, test_profile):
    from opensora_core.utils.folder_lock import FolderLock

    out = tmp_path / "busy"
    args = TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out), profile=str(test_profile),
                     max_steps=1, ckpt_every=1)
    with FolderLock(out, "training stage1"):
        with pytest.raises(TrainingError, match=rf"in use by another run \(training stage1, pid {os.getpid()} on "):
            train_stage(args)
        assert not (out / "checkpoints").exists()
    assert train_stage(args).steps == 1  # free again once the holder lets go


def test_a_run_sweeps_what_a_killed_run_left_in_its_folder(tmp_path, training_table, test_profile):
    out = tmp_path / "s1"
    args = TrainArgs(stage="tiny/stage1", data=str(training_table), out=str(out), profile=str(test_profile),
                     max_steps=1, ckpt_every=1)
    train_stage(args)
    # The same inputs again: the folder's checkpoints are kept; a killed writer's leftovers are not.
    partial = out / "checkpoints" / "step-00000002.partial"
    partial.mkdir(parents=True)
    (partial / "rank0.pt").write_bytes(b"half")
    temporary = out / "export" / ".model.safetensors.abc123.tmp"
    temporary.write_bytes(b"half")
    result = train_stage(args)
    assert result.steps == 1 and (out / "checkpoints" / "step-00000001").is_dir()  # resumed, not reset
    assert not partial.exists() and not temporary.exists()

    # A checkpoint whose pickled `.metadata` changed after the save is never unpickled.
    metadata = out / "checkpoints" / "step-00000001" / ".metadata"
    marker = tmp_path / "payload-ran"
    metadata.write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(TrainingError, match=rf"{metadata} does not match the sha256 in its manifest.json"):
        train_stage(args)
    assert not marker.exists()


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):  # unpickling it creates the marker file
        return (open, (self.marker, "w"))


def test_stages_sharing_a_seed_do_not_replay_each_others_batches_and_draws(tmp_path, training_table):
    """A recipe's stages share a seed and often a bucket config; the draws are keyed by
    step, so without the stage number in their key stage 2 would train its first steps on
    stage 1's exact batches, timesteps and noise."""
    import yaml

    from opensora_core.config import read_stage_data
    from opensora_core.data.buckets import BucketBatchSampler
    from opensora_core.train.inputs import check_inputs
    from opensora_core.train.step import StepDraws

    def streams_of(stage_number: int, seed: int | None = None):
        data = {**read_stage_data("tiny/stage1"), "stage": stage_number}
        path = tmp_path / f"stage{stage_number}.yaml"
        path.write_text(yaml.safe_dump(data))
        checked = check_inputs(TrainArgs(stage=str(path), data=str(training_table), out=str(tmp_path / "out"),
                                         seed=seed))
        order = list(BucketBatchSampler(checked.assigner, checked.rows, seed=checked.streams))
        return checked.streams, order, StepDraws(checked.streams, 0, 2, 0, 2).noise((4,))

    one, two, one_again = streams_of(1), streams_of(2), streams_of(1)
    assert one[0] != two[0] and one[1] != two[1] and not torch.equal(one[2], two[2])
    assert one[0] == one_again[0] and one[1] == one_again[1] and torch.equal(one[2], one_again[2])
    assert streams_of(1, seed=5)[0] != one[0]  # and the seed still counts
