"""Samples to files: one mp4 (PNG for one frame) per sample with a JSON sidecar of
everything needed to reproduce it, under names that never collide."""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

import torch

from opensora_core.data.video_io import to_uint8_frames, write_image, write_video
from opensora_core.infer.sample.generator import VideoGenerator
from opensora_core.infer.sample.requests import PromptRequest, SampleSettings
from opensora_core.utils.atomic import write_text_atomic


def write_samples(
    videos: list[torch.Tensor], requests: list[PromptRequest], settings: SampleSettings, out_dir: str | Path,
    provenance: dict, names: list[str] | None = None,
) -> list[Path]:
    """One mp4 at `settings.output_fps()` (PNG for a single frame) per video, each with
    a JSON sidecar; files are `names` (default `sample_000`, `sample_001`, ...)."""
    out_dir = Path(out_dir)
    names = names or [f"sample_{index:03d}" for index in range(len(videos))]
    if not len(videos) == len(requests) == len(names):
        raise ValueError(f"{len(videos)} videos, {len(requests)} requests and {len(names)} names must match")
    written = []
    for video, request, name in zip(videos, requests, names):
        frames = to_uint8_frames(video)
        # Not with_suffix: a prompt used as the name may hold dots.
        if frames.shape[0] == 1:
            path = write_image(out_dir / f"{name}.png", frames[0])
        else:
            path = write_video(out_dir / f"{name}.mp4", frames, fps=settings.output_fps())
        sidecar = {"prompt": request.text, "references": request.references, "mask_strategy": request.mask_strategy,
                   "loop_prompts": [request.text_for_loop(loop) for loop in range(settings.loops)],
                   "settings": asdict(settings), "output": path.name, "frames": int(frames.shape[0]),
                   "output_fps": settings.output_fps() if frames.shape[0] > 1 else None,
                   "height": int(frames.shape[1]), "width": int(frames.shape[2]), **provenance}
        write_text_atomic(out_dir / f"{name}.json", json.dumps(sidecar, indent=2, sort_keys=True))
        written.append(path)
    return written


# Characters that are path separators or refused by common file systems.
_UNSAFE_IN_NAMES = re.compile(r'[\x00-\x1f/\\:*?"<>|]')
MAX_NAME_CHARS = 100


def sample_names(requests: list[PromptRequest], start_index: int = 0, num_sample: int = 1,
                 prompt_as_path: bool = False) -> list[str]:
    """File stems, `num_sample` per request in order: `sample_{start_index + i}` (as
    Open-Sora numbers a `--start-index` shard), or the prompt itself; `-k` per sample
    when `num_sample` > 1. Two samples never share a name."""
    names = []
    for index, request in enumerate(requests):
        if prompt_as_path:
            text = " ".join(request.text_for_loop(0).split())
            base = _UNSAFE_IN_NAMES.sub("_", text)[:MAX_NAME_CHARS].strip().lstrip(".") or "_"
        else:
            base = f"sample_{start_index + index:03d}"
        names += [base] if num_sample == 1 else [f"{base}-{k}" for k in range(num_sample)]
    seen: dict[str, int] = {}
    for index, name in enumerate(names):
        if name in seen:
            raise ValueError(f"samples {seen[name]} and {index} would both be written as {name!r} "
                             "(--prompt-as-path with repeated prompts): give distinct prompts or drop --prompt-as-path")
        seen[name] = index
    return names


def sample_to_files(
    generator: VideoGenerator, requests: list[PromptRequest], settings: SampleSettings, out_dir: str | Path,
    provenance: dict, start_index: int = 0, num_sample: int = 1, prompt_as_path: bool = False,
    progress: bool = True,
) -> list[Path]:
    """`num_sample` videos per request (each from its own noise, the seed's stream
    running on), written with sidecars; every check runs before any sampling."""
    if num_sample < 1:
        raise ValueError(f"num_sample must be >= 1, got {num_sample}")
    names = sample_names(requests, start_index, num_sample, prompt_as_path)
    expanded = [request for request in requests for _ in range(num_sample)]
    generator.check(settings, expanded)
    videos = generator.generate(expanded, settings, progress=progress)
    return write_samples(videos, expanded, settings, out_dir, provenance, names)
