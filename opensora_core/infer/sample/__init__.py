"""Generation: text-to-video/image, image-to-video, extension, connecting clips, editing
and loop-generated long videos, all through one mask mechanism.

`VideoGenerator.generate` is the Python API; `opensora sample` wraps `sample_to_files`,
which also writes one mp4 per sample (PNG for one frame) with a JSON sidecar of
everything needed to reproduce it. Open-Sora's inference conventions are kept: the
file is written at `fps // frame_interval` and the published weights are conditioned on
`fps` (models of the "consistent" convention on `fps / frame_interval`, the rate of the
frames they generate, as they were trained), a prompt may change per loop
(`|0|first|2|second`), and guidance covers only the first `cfg_channel` channels with
IDDPM (all channels with DPM-Solver and rflow).

Modules: `requests` (settings and prompts, checked before anything loads), `generator`
(the sampling loop), `outputs` (files and sidecars), `stack` (loading the model and
encoders). Every public name is importable from here.
"""

from opensora_core.infer.sample.generator import VideoGenerator, sampling_conditions
from opensora_core.infer.sample.outputs import sample_names, sample_to_files, write_samples
from opensora_core.infer.sample.requests import (
    PromptRequest,
    SampleSettings,
    parse_loop_prompts,
    parse_prompt,
    request_problems,
)
from opensora_core.infer.sample.stack import check_encoders, load_generation_stack

__all__ = [
    "PromptRequest",
    "SampleSettings",
    "VideoGenerator",
    "check_encoders",
    "load_generation_stack",
    "parse_loop_prompts",
    "parse_prompt",
    "request_problems",
    "sample_names",
    "sample_to_files",
    "sampling_conditions",
    "write_samples",
]
