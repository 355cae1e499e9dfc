"""What the Generate tab asks for, turned into the settings and prompt `opensora sample`
takes, and the run itself: `sample_to_files`, the function behind `opensora sample`,
with a step counter that drives the page's progress bar and stops a cancelled run.

Nothing here imports gradio: the page (`app.ui`) is a thin layer over these functions.
"""

from __future__ import annotations

import json
import math
import random
import shlex
import shutil
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from opensora_core.infer.mask_strategy import NAMED_MASK_STRATEGIES, named_mask_strategy
from opensora_core.infer.sample import (
    PromptRequest,
    SampleSettings,
    parse_prompt,
    request_problems,
    sample_to_files,
)
from opensora_core.infer.sizes import image_size, size_problems
from opensora_core.utils.atomic import write_text_atomic

# The mask strategies Open-Sora's app offers by name; "raw" takes the text as given.
# `{window}` is the frames per loop and `{tail}` the frames an extension keeps.
MASK_PRESETS = ("none", *NAMED_MASK_STRATEGIES, "raw")
MAX_SEED = 2**31 - 1
REQUEST_FILE = "app_request.json"  # the form, beside the sample, for History's re-run


@dataclass
class GenerateForm:
    """Everything the Generate tab sends. `model` is `registry:<version>` or a local
    export/checkpoint folder (or its model.safetensors)."""

    prompt: str
    model: str
    profile: str = "embedded"
    resolution: str | None = None  # with aspect_ratio; None: height and width
    aspect_ratio: str = "9:16"
    height: int = 64
    width: int = 64
    length: float = 16  # total, in `length_unit`
    length_unit: str = "frames"  # or "seconds" (of the written file, at fps // frame_interval)
    window: int = 16  # frames per generation loop; longer videos loop
    condition_frame_length: int = 4
    fps: float = 24.0
    frame_interval: int = 3
    sampler: str = "auto"
    steps: int = 30
    cfg_scale: float = 7.0
    seed: int | None = 42  # None: a random one, reported
    references: list[str] = field(default_factory=list)
    mask: str = "none"
    mask_strategy: str = ""  # with mask "raw"

    @classmethod
    def from_dict(cls, values: dict) -> GenerateForm:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        return cls(**known)


@dataclass(frozen=True)
class Plan:
    settings: SampleSettings
    request: PromptRequest
    total_frames: int  # what was asked for (the loops may make a few more)


def _positive_int(name: str, value) -> int:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number) or number != int(number):
        raise ValueError(f"{name} must be a whole number, got {value!r}")
    return int(number)


def loops_for(total: int, window: int, condition: int) -> int:
    """Generation loops for `total` frames, `window` per loop, each later loop
    re-using `condition` frames of the one before (Open-Sora's app loops the same way)."""
    if total <= window:
        return 1
    return 1 + math.ceil((total - window) / (window - condition))


def plan(form: GenerateForm) -> Plan:
    """The settings and prompt of `opensora sample` for `form`; ValueError naming every
    problem the form alone shows (the model adds its own when it loads)."""
    problems = []
    if not form.prompt or not form.prompt.strip():
        raise ValueError("the prompt is empty: describe the video to generate")
    if form.resolution:
        height, width = image_size(form.resolution, form.aspect_ratio)
    else:
        height, width = _positive_int("height", form.height), _positive_int("width", form.width)
    window = _positive_int("frames per loop", form.window)
    condition = _positive_int("condition frames", form.condition_frame_length)
    frame_interval = _positive_int("frame interval", form.frame_interval)
    fps = float(form.fps)
    if not (math.isfinite(fps) and fps > 0):
        raise ValueError(f"fps must be a positive number, got {form.fps}")
    if form.length_unit == "seconds":
        total = round(float(form.length) * (fps // frame_interval))
    elif form.length_unit == "frames":
        total = _positive_int("length in frames", form.length)
    else:
        raise ValueError(f"length unit {form.length_unit!r}: expected frames or seconds")
    if total < 1:
        raise ValueError(f"the video would have {total} frames: ask for at least one")
    if window < 1:
        raise ValueError(f"frames per loop must be >= 1, got {window}")
    loops = 1
    if total > window:
        if not 1 <= condition < window:
            raise ValueError(f"a video longer than one loop ({total} > {window} frames) needs condition frames in "
                             f"[1, {window}), got {condition}")
        loops = loops_for(total, window, condition)
    num_frames = min(total, window)
    if form.mask not in MASK_PRESETS:
        raise ValueError(f"mask strategy {form.mask!r}: expected one of {', '.join(MASK_PRESETS)}")
    if form.mask == "raw":
        strategy = (form.mask_strategy or "").strip()
    elif form.mask == "none":
        strategy = ""
    else:
        strategy = named_mask_strategy(form.mask, num_frames, tail=max(1, min(8, num_frames // 2)))
    references = [str(p) for p in form.references if p]
    if strategy and not references:
        problems.append(f"mask strategy {form.mask!r} needs a reference image or video")
    if form.mask == "connect" and len(references) < 2:
        problems.append("connect needs two references: the first starts the video, the second ends it")
    for path in references:
        if Path(path).is_file() and not _readable(path):
            problems.append(f"reference {Path(path).name} is not an image or video that can be read")
    seed = random.randint(0, MAX_SEED) if form.seed is None else _positive_int("seed", form.seed)
    settings = SampleSettings(
        num_frames=num_frames, height=height, width=width, fps=fps, frame_interval=frame_interval,
        steps=_positive_int("steps", form.steps), sampler=form.sampler, cfg_scale=float(form.cfg_scale),
        seed=seed, loops=loops, condition_frame_length=condition if loops > 1 else 4)
    request = parse_prompt(form.prompt, references, strategy or None)
    problems += size_problems(height, width) + settings.problems() + request_problems([request], settings)
    if problems:
        raise ValueError("cannot generate:\n  " + "\n  ".join(problems))
    return Plan(settings, request, total)


def _readable(path: str) -> bool:
    """Whether a reference decodes as an image or a video (checked before the model loads)."""
    from opensora_core.data.images import read_image_rgb
    from opensora_core.data.video_io import read_frames
    from opensora_core.infer.sample.generator import IMAGE_SUFFIXES

    try:
        if Path(path).suffix.lower() in IMAGE_SUFFIXES:
            read_image_rgb(path)
        else:
            return len(read_frames(path, 1)) > 0
    except Exception:  # noqa: BLE001 - any decoder error means the same to the user
        return False
    return True


def command_line(plan: Plan, checkpoint: str, profile: str, out: str = "samples") -> str:
    """The `opensora sample` command that writes the same video."""
    s = plan.settings
    args = ["opensora", "sample", "--out", out, "--prompt", plan.request.text, "--checkpoint", checkpoint,
            "--profile", profile, "--num-frames", s.num_frames, "--height", s.height, "--width", s.width,
            "--fps", s.fps, "--frame-interval", s.frame_interval, "--steps", s.steps, "--sampler", s.sampler,
            "--cfg-scale", s.cfg_scale, "--seed", s.seed, "--loops", s.loops]
    if s.loops > 1:
        args += ["--condition-frame-length", s.condition_frame_length]
    for reference in plan.request.references:
        args += ["--reference", reference]
    if plan.request.mask_strategy:
        args += ["--mask-strategy", plan.request.mask_strategy]
    return shlex.join(str(a) for a in args)


class Cancelled(Exception):
    """The user stopped the run; nothing was written."""


@dataclass
class Result:
    video: Path
    sidecar: Path
    folder: Path
    seed: int
    loops: int
    command: str
    seconds: float


class StepCounter:
    """A forward pre-hook on the model: one call per denoising step (guidance runs both
    halves in one batch), so it can report progress and stop a cancelled run at the next
    step without a change to the sampling loop."""

    def __init__(self, total: int, on_step: Callable[[int, int], None] | None, cancel: threading.Event | None):
        self.total, self.done, self.on_step, self.cancel = total, 0, on_step, cancel

    def __call__(self, module, args):
        if self.cancel is not None and self.cancel.is_set():
            raise Cancelled("generation cancelled")
        if self.on_step is not None:
            self.on_step(self.done, self.total)
        self.done += 1


def run_plan(generator, provenance: dict, plan: Plan, out_root: Path, form: GenerateForm | None = None,
             checkpoint: str = "", on_step: Callable[[int, int], None] | None = None,
             cancel: threading.Event | None = None) -> Result:
    """Sample `plan` with `sample_to_files` into a new folder under `out_root` (built
    under a hidden name, renamed when complete), with the form beside it for re-runs."""
    out_root = Path(out_root)
    now = time.time_ns()  # one reading: names sort in creation order within a second too
    name = time.strftime("%Y%m%d-%H%M%S", time.localtime(now // 10**9)) + f"-{now % 10**9:09d}"
    partial = out_root / f".{name}.partial"
    counter = StepCounter(plan.settings.steps * plan.settings.loops, on_step, cancel)
    hook = generator.model.register_forward_pre_hook(counter)
    started = time.perf_counter()
    try:
        written = sample_to_files(generator, [plan.request], plan.settings, partial, provenance, progress=False)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        hook.remove()
    seconds = time.perf_counter() - started
    command = command_line(plan, checkpoint, provenance.get("profile", "embedded"))
    if form is not None:
        record = {"form": {**asdict(form), "seed": plan.settings.seed}, "command": command, "seconds": seconds,
                  "created": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text_atomic(partial / REQUEST_FILE, json.dumps(record, indent=2, sort_keys=True))
    folder = out_root / name
    partial.rename(folder)
    video = folder / written[0].name
    return Result(video, video.with_suffix(".json"), folder, plan.settings.seed, plan.settings.loops, command,
                  seconds)


@dataclass(frozen=True)
class HistoryEntry:
    folder: Path
    created: str
    form: dict
    command: str
    video: Path | None


def history(out_root: Path, limit: int = 50) -> list[HistoryEntry]:
    """What the app generated under `out_root`, newest first."""
    out_root = Path(out_root)
    if not out_root.is_dir():
        return []
    entries = []
    for folder in sorted((p for p in out_root.iterdir() if p.is_dir() and not p.name.startswith(".")),
                         reverse=True)[:limit]:
        record_file = folder / REQUEST_FILE
        if not record_file.is_file():
            continue
        try:
            record = json.loads(record_file.read_text())
        except json.JSONDecodeError:
            continue
        videos = sorted(p for p in folder.iterdir() if p.suffix in (".mp4", ".png"))
        entries.append(HistoryEntry(folder, record.get("created", ""), record.get("form", {}),
                                    record.get("command", ""), videos[0] if videos else None))
    return entries
