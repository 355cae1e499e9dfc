from __future__ import annotations

import itertools
import json

import pytest
import torch
from typer.testing import CliRunner

import opensora_core.infer.sample as sample_module
import opensora_core.infer.sample.generator as generator_module
from opensora_core import cli
from opensora_core.data.synthetic import moving_square_clip
from opensora_core.data.video_io import read_frames, write_image, write_video
from opensora_core.infer.sample import PromptRequest, SampleSettings, VideoGenerator, parse_prompt
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.text_encoder import WordEmbeddingTextEncoder

from ..models.model_fixtures import build_random_model


@pytest.fixture
def generator() -> VideoGenerator:
    model = build_random_model(class_dropout_prob=0.1)
    text_encoder = WordEmbeddingTextEncoder(output_dim=16, model_max_length=8)
    return VideoGenerator(model, DCTAutoencoder(), text_encoder)


@pytest.fixture
def references(tmp_path):
    image = tmp_path / "first frame.png"  # a space in the name on purpose
    write_image(image, moving_square_clip(1, 32, 32, color="red")[0])
    clip = tmp_path / "clip.mp4"
    write_video(clip, moving_square_clip(6, 32, 32, color="blue", direction="down"), fps=8)
    return str(image), str(clip)


def _settings(**overrides) -> SampleSettings:
    values = {"num_frames": 6, "height": 32, "width": 32, "steps": 4, "sampler": "dpm-solver", "cfg_scale": 4.0, "seed": 7}
    values.update(overrides)
    return SampleSettings(**values)


def test_text_to_video_and_image_shapes(generator):
    videos = generator.generate([PromptRequest("a red square"), PromptRequest("a blue square")], _settings(),
                                progress=False)
    assert [tuple(v.shape) for v in videos] == [(3, 6, 32, 32)] * 2
    assert all(v.min() >= -1 and v.max() <= 1 for v in videos)
    image = generator.generate([PromptRequest("a red square")], _settings(num_frames=1, sampler="iddpm"),
                               progress=False)
    assert image[0].shape == (3, 1, 32, 32)


@pytest.mark.parametrize(
    ("strategy", "kept"),
    [
        ("0", {0: ("image", 0)}),                                  # image-to-video
        ("0,1,-2,0,2", {0: ("clip", 4), 1: ("clip", 5)}),          # extend a clip
        ("0;0,1,0,-1,1", {0: ("image", 0), 5: ("clip", 0)}),       # connect two clips
        ("0,1,0,0,6,0", {i: ("clip", i) for i in range(6)}),       # edit ratio 0: untouched
    ],
)
def test_reference_frames_with_edit_ratio_zero_are_kept_exactly(generator, references, strategy, kept):
    request = PromptRequest("a square", list(references), strategy)
    settings = _settings()
    latents = generator.generate_latents([request], settings, torch.Generator().manual_seed(0), progress=False)
    encoded = {"image": generator.encode_reference(references[0], 32, 32),
               "clip": generator.encode_reference(references[1], 32, 32)}
    for target, (name, source) in kept.items():
        torch.testing.assert_close(latents[0, :, target], encoded[name][:, source], rtol=0, atol=0)
    free = [t for t in range(6) if t not in kept]
    if free:
        assert not torch.allclose(latents[0, :, free[0]], encoded["clip"][:, 0])


def test_edit_ratio_reworks_reference_frames(generator, references):
    request = PromptRequest("a square", [references[1]], "0,0,0,0,6,0.5")
    latents = generator.generate_latents([request], _settings(steps=6), torch.Generator().manual_seed(0),
                                         progress=False)
    reference = generator.encode_reference(references[1], 32, 32)
    assert torch.isfinite(latents).all()
    assert not torch.allclose(latents[0], reference, atol=1e-3)


def test_long_video_loops_continue_from_the_previous_tail_without_duplicates(generator, monkeypatch):
    calls = []
    real_denoise = generator_module.denoise

    def recording_denoise(model_fn, sampler, z, frame_mask, reference, generator_, progress):
        out = real_denoise(model_fn, sampler, z, frame_mask, reference, generator_, progress)
        calls.append((frame_mask, reference, out))
        return out

    monkeypatch.setattr(generator_module, "denoise", recording_denoise)
    settings = _settings(loops=3, condition_frame_length=2)
    latents = generator.generate_latents([PromptRequest("a square")], settings, torch.Generator().manual_seed(0),
                                         progress=False)
    assert latents.shape[2] == 6 + 4 + 4
    assert calls[0][0] is None
    for previous, current in itertools.pairwise(calls):
        frame_mask, reference, _out = current
        assert frame_mask[0].tolist() == [0, 0, 1, 1, 1, 1]
        torch.testing.assert_close(reference[0, :, :2], previous[2][0, :, -2:], rtol=0, atol=0)
    torch.testing.assert_close(latents[0, :, 6:10], calls[1][2][0, :, 2:], rtol=0, atol=0)


def test_problems_are_reported_before_any_work(generator, references):
    bad = [PromptRequest("x", [], "0,a"), PromptRequest("y", [], "0,2"), PromptRequest("z", ["/nope.png"], None)]
    with pytest.raises(ValueError) as err:
        generator.check(_settings(height=4, sampler="euler", loops=2, condition_frame_length=6), bad)
    message = str(err.value)
    for expected in ("height 4 must be at least 8 pixels", "unknown sampler 'euler'",
                     "ref_id must be an integer", "refers to reference 2", "/nope.png not found",
                     "condition_frame_length must be in [1, num_frames)"):
        assert expected in message


def test_prompt_json_suffix():
    request = parse_prompt('a beach at dusk{"reference_path": "a.png;b.mp4", "mask_strategy": "0;0,1,0,-1,1"}',
                           references=["ignored.png"])
    assert request == PromptRequest("a beach at dusk", ["a.png", "b.mp4"], "0;0,1,0,-1,1")
    assert parse_prompt("plain", ["r.png"], "0") == PromptRequest("plain", ["r.png"], "0")
    with pytest.raises(ValueError, match="unknown keys"):
        parse_prompt('x{"seed": 3}')


def _run_cli(out, seed=42, extra=()):
    args = ["sample", "--preset", "stdit2-tiny", "--prompt", "a red square moving left", "--height", "32",
            "--width", "32", "--num-frames", "4", "--steps", "3", "--sampler", "iddpm", "--seed", str(seed),
            "--out", str(out), *extra]
    return CliRunner().invoke(cli.app, args)


def test_cli_same_seed_same_bytes(tmp_path):
    first, second, other = _run_cli(tmp_path / "a"), _run_cli(tmp_path / "b"), _run_cli(tmp_path / "c", seed=1)
    assert first.exit_code == second.exit_code == other.exit_code == 0, first.output
    a, b, c = (read_frames(tmp_path / d / "sample_000.mp4", 4).astype(float) for d in "abc")
    # Decoded frames, not file bytes: a last-bit difference in float maths (which
    # kernels run can depend on buffer alignment) flips a rounded pixel and then
    # every later byte of the entropy-coded stream.
    assert abs(a - b).mean() < 0.5 and abs(a - c).mean() > 10
    sidecar = json.loads((tmp_path / "a" / "sample_000.json").read_text())
    assert sidecar["settings"]["seed"] == 42 and sidecar["prompt"] == "a red square moving left"
    assert sidecar["preset"] == "stdit2-tiny" and sidecar["vae"].startswith("dct")


def test_cli_compiled_blocks_sample_what_eager_ones_do(tmp_path):
    eager, compiled = _run_cli(tmp_path / "eager"), _run_cli(tmp_path / "compiled", extra=["--compile"])
    assert eager.exit_code == compiled.exit_code == 0, compiled.output
    a, b = (read_frames(tmp_path / d / "sample_000.mp4", 4).astype(float) for d in ("eager", "compiled"))
    assert abs(a - b).mean() < 1.0


def test_cli_writes_png_for_one_frame(tmp_path):
    result = _run_cli(tmp_path, extra=["--num-frames", "1"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "sample_000.png").is_file()


def test_cli_bad_input_exits_2_without_output(tmp_path):
    result = _run_cli(tmp_path / "out", extra=["--mask-strategy", "0,,1"])
    assert result.exit_code == 2 and "empty field" in result.output
    result = _run_cli(tmp_path / "out", extra=["--sampler", "plms"])
    assert result.exit_code == 2 and "unknown sampler" in result.output
    assert not (tmp_path / "out").exists()


def test_cli_resolution_and_aspect_ratio(tmp_path, monkeypatch):
    captured = {}

    def fake_generate(self, requests, settings, progress=True):
        captured["size"] = (settings.height, settings.width)
        return [torch.zeros(3, 1, settings.height, settings.width)]

    monkeypatch.setattr(VideoGenerator, "generate", fake_generate)
    result = CliRunner().invoke(cli.app, ["sample", "--preset", "stdit2-tiny", "--prompt", "x", "--resolution",
                                          "240p", "--aspect-ratio", "9:16", "--num-frames", "1", "--out",
                                          str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert captured["size"] == (240, 426)  # height:width as Open-Sora writes it, its table's size


def test_open_sora_sizes_decode_at_the_vae_size(generator):
    # 40x54 pixels: a 5x6 latent (54 // 8), odd for the 2x2 patch: padded inside the model, cropped back.
    video, = generator.generate([PromptRequest("x")], _settings(height=40, width=54, steps=2), progress=False)
    assert video.shape == (3, 6, 40, 48)


def test_sampling_builds_no_autograd_graph(generator):
    """A graph kept across steps grows memory with every step (seen: 0.25 GB/step)."""
    latents = generator.generate_latents([PromptRequest("a square")], _settings(steps=2),
                                         torch.Generator().manual_seed(0), progress=False)
    assert not latents.requires_grad and latents.grad_fn is None


@pytest.mark.parametrize("extra, message", [
    (["--fps", "nan"], "fps must be a positive number, got nan"),
    (["--fps", "0"], "fps must be a positive number, got 0.0"),
    (["--num-frames", "0"], "num_frames must be >= 1, got 0"),
    (["--steps", "0"], "steps must be >= 1, got 0"),
    (["--reference", "/nope.png", "--mask-strategy", "0"], "/nope.png not found"),
])
def test_cli_refuses_bad_settings_before_loading_the_model(tmp_path, monkeypatch, extra, message):
    def must_not_load(*args, **kwargs):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(sample_module, "load_generation_stack", must_not_load)
    result = _run_cli(tmp_path / "out", extra=extra)
    assert result.exit_code == 2 and message in result.output, result.output
    assert not (tmp_path / "out").exists()
