"""What to sample: the settings of a run and the prompts, each with its references,
mask strategy and per-loop texts, checked before anything loads."""

from __future__ import annotations

import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from opensora_core.infer.mask_strategy import MaskStrategyError, parse_mask_strategy


@dataclass
class SampleSettings:
    num_frames: int = 16
    height: int = 64
    width: int = 64
    fps: float = 24.0  # see sampling_conditions for what the model is conditioned on
    # Open-Sora writes the file at fps // frame_interval (its published config: 24 // 3 = 8).
    frame_interval: int = 1
    steps: int = 100
    sampler: str = "auto"  # the model's own: iddpm, or rflow for rectified-flow models
    cfg_scale: float = 7.0
    cfg_channel: int | None = 3
    seed: int = 42
    loops: int = 1
    condition_frame_length: int = 4
    batch_size: int = 1

    def output_fps(self) -> float:
        return self.fps // self.frame_interval

    def problems(self) -> list[str]:
        """What is wrong with these settings whatever the model: checked before anything
        loads (`VideoGenerator.check` adds what depends on the model)."""
        problems = []
        if self.num_frames < 1:
            problems.append(f"num_frames must be >= 1, got {self.num_frames}")
        if self.steps < 1:
            problems.append(f"steps must be >= 1, got {self.steps}")
        if self.loops < 1:
            problems.append(f"loops must be >= 1, got {self.loops}")
        if not math.isfinite(self.cfg_scale):
            problems.append(f"cfg_scale must be a finite number, got {self.cfg_scale}")
        if not (math.isfinite(self.fps) and self.fps > 0):
            problems.append(f"fps must be a positive number, got {self.fps}")
        elif self.frame_interval < 1:
            problems.append(f"frame_interval must be >= 1, got {self.frame_interval}")
        elif self.num_frames > 1 and self.output_fps() < 1:
            problems.append(f"fps {self.fps} // frame_interval {self.frame_interval} is below 1 frame per second")
        if self.loops > 1 and not 1 <= self.condition_frame_length < self.num_frames:
            problems.append(f"condition_frame_length must be in [1, num_frames) for long videos, "
                            f"got {self.condition_frame_length} with {self.num_frames} frames")
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        return problems


def request_problems(requests: list[PromptRequest], settings: SampleSettings) -> list[str]:
    """Per prompt: loop texts and mask strategies that fit `settings`, references that exist."""
    problems = []
    for request in requests:
        late = [loop for loop, _ in request.loop_texts if loop >= settings.loops]
        if late:
            problems.append(f"prompt {request.text!r}: has text for loop(s) {late}, but loops={settings.loops}")
        try:
            ops = parse_mask_strategy(request.mask_strategy)
        except MaskStrategyError as err:
            problems.append(str(err))
            continue
        available = len(request.references) + (1 if settings.loops > 1 else 0)
        for op in ops:
            if op.ref_id >= available:
                problems.append(f"prompt {request.text!r}: {op} refers to reference {op.ref_id}, "
                                f"but {len(request.references)} reference(s) were given")
            if op.loop >= settings.loops:
                problems.append(f"prompt {request.text!r}: {op} is for loop {op.loop}, but loops={settings.loops}")
        for path in request.references:
            if not Path(path).is_file():
                problems.append(f"prompt {request.text!r}: reference {path} not found")
    return problems


@dataclass
class PromptRequest:
    """One prompt with its own references and mask strategy (Open-Sora's JSON suffix).
    `loop_texts` holds `(first_loop, text)` pairs of a `|0|...|2|...` prompt; empty when
    one text serves every loop."""

    text: str
    references: list[str] = field(default_factory=list)
    mask_strategy: str | None = None
    loop_texts: tuple[tuple[int, str], ...] = ()

    def text_for_loop(self, loop: int) -> str:
        chosen = self.text
        for first, text in self.loop_texts:
            if first <= loop:
                chosen = text
        return chosen


_JSON_SUFFIX = re.compile(r"(\{[^{}]*\})\s*$")


def parse_loop_prompts(text: str) -> tuple[tuple[int, str], ...]:
    """`|0|a city|2|a forest` -> ((0, "a city"), (2, "a forest")): each text holds from
    its loop until the next one's. Text not starting with `|` is one prompt: ()."""
    if not text.startswith("|"):
        return ()
    parts = text.split("|")[1:]
    if len(parts) % 2:
        raise ValueError(f"prompt {text!r}: per-loop prompts alternate |loop|text|, got an odd number of fields")
    pairs = []
    for loop_field, part in zip(parts[::2], parts[1::2]):
        if not loop_field.strip().isdigit():
            raise ValueError(f"prompt {text!r}: loop {loop_field!r} is not a non-negative integer")
        if not part.strip():
            raise ValueError(f"prompt {text!r}: loop {loop_field.strip()} has no text")
        pairs.append((int(loop_field), part.strip()))
    loops = [loop for loop, _ in pairs]
    if loops[0] != 0:
        raise ValueError(f"prompt {text!r}: per-loop prompts start with |0|")
    if any(b <= a for a, b in itertools.pairwise(loops)):
        raise ValueError(f"prompt {text!r}: loop numbers must increase, got {loops}")
    return tuple(pairs)


def parse_prompt(line: str, references: list[str] | None = None, mask_strategy: str | None = None) -> PromptRequest:
    """`a cat{"reference_path": "a.png;b.mp4", "mask_strategy": "0"}` -> request. The
    suffix overrides the command-line references and strategy for that prompt."""
    request = PromptRequest(line.strip(), list(references or []), mask_strategy)
    match = _JSON_SUFFIX.search(line)
    if match:
        try:
            extra = json.loads(match.group(1))
        except json.JSONDecodeError as err:
            raise ValueError(f"prompt {line!r}: the JSON suffix does not parse: {err}") from None
        unknown = set(extra) - {"reference_path", "mask_strategy"}
        if unknown:
            raise ValueError(f"prompt {line!r}: unknown keys {sorted(unknown)} (expected reference_path, mask_strategy)")
        request.text = line[: match.start()].strip()
        if "reference_path" in extra:
            request.references = [p for p in str(extra["reference_path"]).split(";") if p]
        if "mask_strategy" in extra:
            request.mask_strategy = str(extra["mask_strategy"])
    if not request.text:
        raise ValueError(f"prompt {line!r} has no text")
    request.loop_texts = parse_loop_prompts(request.text)
    return request
