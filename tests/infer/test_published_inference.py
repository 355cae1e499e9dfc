"""`opensora sample` as Open-Sora 1.1's inference behaves for users of the published
model: no tracking server, refused encoder mismatches, output fps, prompt cleaning and
fp32 T5, per-loop prompts, prompt files, several samples, file names, dtype and
guidance. Tiny random stand-ins throughout; the smoke tests run the real T5 and SD VAE
code on tiny models saved in their real formats."""

from __future__ import annotations

import json
from pathlib import Path

import av
import pytest
import torch
import yaml
from typer.testing import CliRunner

import opensora_core.infer.sample as sample_module
import opensora_core.infer.sample.generator as generator_module
from opensora_core import cli
from opensora_core.config import (
    ConfigError,
    SamplingProfile,
    load_profile,
    load_sampling_profile,
)
from opensora_core.diffusion.samplers import build_sampler, guided_channels
from opensora_core.infer.sample import (
    PromptRequest,
    SampleSettings,
    VideoGenerator,
    check_encoders,
    parse_loop_prompts,
    parse_prompt,
    sample_names,
)
from opensora_core.models import STDiT2
from opensora_core.models.caption_cleaning import clean_caption
from opensora_core.models.checkpoint_io import save_model
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.text_encoder import T5TextEncoder, WordEmbeddingTextEncoder

from ..models.model_fixtures import build_random_model
from ..models.test_published_folder import write_published_folder
from ..models.test_text_encoder import _train_spiece
from ..models.test_vae import TINY_KL

# Open-Sora's published model reads T5-XXL's 4096 channels; a one-layer T5 that wide is small.
XXL_WIDTH = 4096
MAX_TOKENS = 8


@pytest.fixture(scope="module")
def tiny_t5_xxl_width(tmp_path_factory) -> Path:
    """A one-layer T5 encoder as wide as T5-XXL, in the t5-v1_1-xxl folder layout."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("t5-v1_1-xxl")
    config = T5Config(vocab_size=96, d_model=XXL_WIDTH, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                      relative_attention_num_buckets=8, feed_forward_proj="gated-gelu")
    T5EncoderModel(config).save_pretrained(folder)
    _train_spiece(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_sd_vae(tmp_path_factory) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("sd-vae-ft-ema")
    AutoencoderKL(**TINY_KL).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def published_like_checkpoint(tmp_path_factory) -> Path:
    """A tiny STDiT-2 with the published model's caption width (T5-XXL)."""
    folder = tmp_path_factory.mktemp("checkpoint")
    save_model(build_random_model(caption_channels=XXL_WIDTH, model_max_length=MAX_TOKENS),
               folder / "model.safetensors")
    return folder


@pytest.fixture(scope="module")
def published_folder(tmp_path_factory) -> Path:
    """The same kind of tiny model as the published weights ship: a `save_pretrained`
    folder (Open-Sora's config.json keys, model.safetensors without our metadata)."""
    model = build_random_model(caption_channels=XXL_WIDTH, model_max_length=MAX_TOKENS)
    return write_published_folder(tmp_path_factory.mktemp("hub") / "OpenSora-STDiT-v2-stage3", model)


def _sample(*args: str):
    return CliRunner().invoke(cli.app, ["sample", *args])


def _video_fps_and_frames(path: Path) -> tuple[float, int]:
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        return float(stream.average_rate), sum(1 for _ in container.decode(stream))


# 1. Sampling needs no tracking server


def test_a_sampling_profile_needs_only_its_encoders(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    path = tmp_path / "mine.yaml"
    path.write_text(yaml.safe_dump({"name": "mine", "vae": {"kind": "sd-kl", "path": "vae"},
                                    "text_encoder": {"kind": "t5", "path": "/abs/t5"}}))
    profile = load_sampling_profile(path)
    assert profile.device == "cpu" and profile.text_encoder.path == "/abs/t5"
    assert Path(profile.vae.path).is_absolute()
    with pytest.raises(ConfigError, match="mlflow_tracking_uri: missing required key"):
        load_profile(path)  # training still requires it
    # A full profile whose tracking URI is an unset variable samples; training refuses it.
    full = yaml.safe_load((Path(__file__).parents[2] / "configs/profiles/published.yaml").read_text())
    full["mlflow_tracking_uri"] = "${MLFLOW_TRACKING_URI}"
    path.write_text(yaml.safe_dump(full))
    assert load_sampling_profile(path).text_encoder.kind == "t5"
    with pytest.raises(ConfigError, match="MLFLOW_TRACKING_URI"):
        load_profile(path)
    path.write_text(yaml.safe_dump({**full, "text_encodr": {"kind": "t5"}}))
    with pytest.raises(ConfigError, match="unknown key 'text_encodr'; did you mean 'text_encoder'"):
        load_sampling_profile(path)


# 2. Encoders a checkpoint cannot have been trained with are refused before any work


def test_embedded_profile_with_a_published_checkpoint_is_refused_before_any_work(
    tmp_path, published_like_checkpoint, monkeypatch
):
    def no_work(*args, **kwargs):
        raise AssertionError("an encoder was built or sampling started")

    monkeypatch.setattr("opensora_core.models.vae.build_vae", no_work)
    monkeypatch.setattr(VideoGenerator, "generate", no_work)
    result = _sample("--checkpoint", str(published_like_checkpoint), "--profile", "embedded", "--prompt", "x",
                     "--height", "16", "--width", "16", "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    message = " ".join(result.output.split())
    for expected in ("t5 with a local t5-v1_1-xxl folder (T5-XXL: caption_channels 4096)",
                     "sd-kl with a local sd-vae-ft-ema folder (Stable Diffusion's KL VAE: in_channels 4)",
                     "profile 'embedded' gives the text encoder word-embedding", "the VAE dct",
                     "--profile published"):
        assert expected in message
    assert not (tmp_path / "out").exists()


def test_encoder_checks_name_what_is_given(tmp_path, tiny_t5_xxl_width):
    config = build_random_model(caption_channels=16).config
    narrow_t5 = SamplingProfile(name="p", vae={"kind": "dct"}, text_encoder={"kind": "t5", "path": str(tiny_t5_xxl_width)})
    with pytest.raises(ValueError, match=r"t5 with d_model 16.*gives the text encoder t5 at .* \(d_model 4096\)"):
        check_encoders(config, narrow_t5, tmp_path / "model.safetensors", None)
    words = SamplingProfile(name="p", vae={"kind": "dct"}, text_encoder={"kind": "word-embedding"})
    check_encoders(config, words, tmp_path / "model.safetensors", {"embedding.weight": torch.zeros(10, 16)})
    with pytest.warns(UserWarning, match="text encoder is random"):
        check_encoders(config, words, tmp_path / "model.safetensors", None)  # a pipeline check's checkpoint
    wide = build_random_model(caption_channels=XXL_WIDTH).config
    with pytest.raises(ValueError, match="no trained text_encoder.safetensors beside the checkpoint"):
        check_encoders(wide, words, tmp_path / "model.safetensors", None)
    with pytest.raises(ValueError, match="word-embedding of width 16"):
        check_encoders(wide, words, tmp_path / "model.safetensors", {"embedding.weight": torch.zeros(10, 16)})


# 3. Output fps: written at fps // frame_interval; the published model is conditioned on
# fps (test_published_profile_samples_...), ours on the rate of the frames they make


def test_our_model_sees_fps_over_frame_interval_and_the_file_plays_at_it(tmp_path, monkeypatch):
    seen = []
    real_forward = sample_module.VideoGenerator.generate_latents

    def recording(self, batch, settings, generator, progress=True):
        forward = self.model.forward

        def spy(*args, **kwargs):
            seen.append(kwargs["fps"])
            return forward(*args, **kwargs)

        self.model.forward = spy
        return real_forward(self, batch, settings, generator, progress)

    monkeypatch.setattr(VideoGenerator, "generate_latents", recording)
    common = ["--preset", "stdit2-tiny", "--prompt", "a red square", "--height", "32", "--width", "32",
              "--num-frames", "4", "--steps", "2", "--sampler", "dpm-solver"]
    assert _sample(*common, "--out", str(tmp_path / "default")).exit_code == 0
    assert set(seen) == {8.0}  # 24 / 3: what "consistent" training conditions 8-fps frames on
    assert _video_fps_and_frames(tmp_path / "default" / "sample_000.mp4") == (8.0, 4)
    sidecar = json.loads((tmp_path / "default" / "sample_000.json").read_text())
    assert sidecar["output_fps"] == 8 and sidecar["settings"]["frame_interval"] == 3
    assert sidecar["settings"]["fps"] == 24
    seen.clear()
    assert _sample(*common, "--frame-interval", "1", "--out", str(tmp_path / "one")).exit_code == 0
    assert _video_fps_and_frames(tmp_path / "one" / "sample_000.mp4")[0] == 24.0 and set(seen) == {24.0}
    result = _sample(*common, "--fps", "2", "--out", str(tmp_path / "slow"))
    assert result.exit_code == 2 and "below 1 frame per second" in result.output


# 4. Prompts are cleaned for T5, which runs in fp32


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("A Red Square moving LEFT.", "a red square moving left."),
        ("a <b>cat</b> &amp; a dog", "a cat a dog"),
        ("a beach https://example.com/beach www.example.org at dusk", "a beach at dusk"),
        ("@filmmaker a city at night 192.168.0.1", "a city at night"),
        ("a “Quoted” — dash ‘single’ now", "a \"quoted\" - dash 'single' now"),
        ("“surrounding quotes go”", "surrounding quotes go"),
        ("a forest 森林 in fog", "a forest in fog"),
        ("sunset over sea IMG_0042.jpg 1920x1080", "sunset over sea"),
        ("  spaces   everywhere  ", "spaces everywhere"),
    ],
)
def test_clean_caption(raw, clean):
    assert clean_caption(raw) == clean
    assert clean_caption(clean) == clean


def test_t5_encodes_the_cleaned_prompt_in_fp32(tiny_t5_xxl_width):
    encoder = T5TextEncoder(tiny_t5_xxl_width, max_length=MAX_TOKENS)
    assert encoder.model.dtype == torch.float32 and "clean=pixart" in encoder.identity()
    raw, cleaned = encoder.encode(["The <i>CAT</i> runs https://cats.com"]), encoder.encode(["the cat runs"])
    assert raw["y"].dtype == torch.float32
    torch.testing.assert_close(raw["y"], cleaned["y"], rtol=0, atol=0)
    assert torch.equal(raw["mask"], cleaned["mask"])


def test_the_word_encoder_keeps_its_own_tokenizer():
    encoder = WordEmbeddingTextEncoder(output_dim=8)
    # Its tokenizer splits "example.com" into two words; T5's cleaning would drop the URL.
    assert encoder.tokenize(["a example.com"])[1].sum() == 4


# 5. Inference features


def test_parse_loop_prompts():
    assert parse_loop_prompts("a city") == ()
    assert parse_loop_prompts("|0|a city|2|a forest") == ((0, "a city"), (2, "a forest"))
    request = parse_prompt('|0|a city|2|a forest{"mask_strategy": "0"}')
    assert [request.text_for_loop(i) for i in range(4)] == ["a city", "a city", "a forest", "a forest"]
    assert request.mask_strategy == "0"
    for bad, why in (("|1|late start", "start with |0|"), ("|0|a|x|b", "'x' is not a non-negative integer"),
                     ("|0|a|2", "odd number of fields"), ("|0|a|0|b", "must increase"), ("|0| |1|b", "no text")):
        with pytest.raises(ValueError, match=why.replace("|", r"\|")):
            parse_loop_prompts(bad)


@pytest.fixture
def generator() -> VideoGenerator:
    model = build_random_model(class_dropout_prob=0.1)
    return VideoGenerator(model, DCTAutoencoder(), WordEmbeddingTextEncoder(output_dim=16, model_max_length=8))


def _settings(**overrides) -> SampleSettings:
    values = {"num_frames": 4, "height": 32, "width": 32, "steps": 2, "sampler": "dpm-solver", "seed": 7}
    return SampleSettings(**{**values, **overrides})


def test_each_loop_is_sampled_with_its_own_prompt(generator, monkeypatch):
    encoded = []
    real_encode = generator.text_encoder.encode
    monkeypatch.setattr(generator.text_encoder, "encode", lambda texts: encoded.append(texts) or real_encode(texts))
    requests = [parse_prompt("|0|a red square|2|a blue square"), parse_prompt("a green square")]
    latents = generator.generate_latents(requests, _settings(loops=3, condition_frame_length=2),
                                         torch.Generator().manual_seed(0), progress=False)
    assert latents.shape[2] == 4 + 2 + 2
    assert encoded == [["a red square", "a green square"], ["a blue square", "a green square"]]
    with pytest.raises(ValueError, match=r"text for loop\(s\) \[2\], but loops=2"):
        generator.check(_settings(loops=2, condition_frame_length=2), requests)


def test_guidance_covers_all_channels_except_with_iddpm(generator, monkeypatch):
    assert guided_channels(build_sampler("iddpm", 4), 3) == 3
    assert guided_channels(build_sampler("dpm-solver", 4), 3) is None
    assert guided_channels(build_sampler("rflow", 4, objective="rflow"), 3) is None
    used = []
    real = generator_module.classifier_free_guidance
    monkeypatch.setattr(generator_module, "classifier_free_guidance",
                        lambda out, scale, channels: used.append(channels) or real(out, scale, channels))
    for sampler in ("dpm-solver", "iddpm"):
        generator.generate_latents([PromptRequest("x")], _settings(sampler=sampler),
                                   torch.Generator().manual_seed(0), progress=False)
    assert used == [None, None, 3, 3]


def test_sample_names():
    requests = [PromptRequest("a cat / a dog?"), PromptRequest("|0|first|1|second", loop_texts=((0, "first"),))]
    assert sample_names(requests) == ["sample_000", "sample_001"]
    assert sample_names(requests, start_index=10, num_sample=2) == [
        "sample_010-0", "sample_010-1", "sample_011-0", "sample_011-1"]
    assert sample_names(requests, prompt_as_path=True) == ["a cat _ a dog_", "first"]
    assert sample_names([PromptRequest("x" * 300)], prompt_as_path=True) == ["x" * 100]
    with pytest.raises(ValueError, match="would both be written as 'same'"):
        sample_names([PromptRequest("same"), PromptRequest("same")], prompt_as_path=True)


def _fake_generate(self, requests, settings, progress=True):
    # One distinct, constant video per request, so files can be matched to prompts.
    return [torch.full((3, settings.num_frames, settings.height, settings.width), i / 10)
            for i in range(len(requests))]


def test_prompt_path_with_start_and_end_index(tmp_path, monkeypatch):
    monkeypatch.setattr(VideoGenerator, "generate", _fake_generate)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("zero\none\n\ntwo\nthree\n")
    base = ["--preset", "stdit2-tiny", "--prompt-path", str(prompts), "--height", "32", "--width", "32",
            "--num-frames", "1"]
    result = _sample(*base, "--start-index", "1", "--end-index", "3", "--out", str(tmp_path / "out"))
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in (tmp_path / "out").glob("*.json"))
    assert written == ["sample_001.json", "sample_002.json"]
    assert [json.loads((tmp_path / "out" / n).read_text())["prompt"] for n in written] == ["one", "two"]
    result = _sample(*base, "--start-index", "4", "--out", str(tmp_path / "none"))
    assert result.exit_code == 2 and "only 4 prompts" in result.output
    result = _sample(*base, "--start-index", "2", "--end-index", "2", "--out", str(tmp_path / "none"))
    assert result.exit_code == 2 and "must be greater than --start-index" in result.output
    result = _sample(*base, "--prompt-as-path", "--out", str(tmp_path / "named"))
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "named").glob("*.png")) == [
        "one.png", "three.png", "two.png", "zero.png"]


def test_num_sample_draws_distinct_samples_per_prompt(tmp_path):
    result = _sample("--preset", "stdit2-tiny", "--prompt", "a red square", "--height", "32", "--width", "32",
                     "--num-frames", "1", "--steps", "2", "--sampler", "dpm-solver", "--num-sample", "2",
                     "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    first, second = ((tmp_path / f"sample_000-{k}.png").read_bytes() for k in (0, 1))
    assert first != second


def test_dtype_option(tmp_path, monkeypatch):
    dtypes = []

    def recording(self, requests, settings, progress=True):
        dtypes.append(self.model.dtype)
        return _fake_generate(self, requests, settings, progress)

    monkeypatch.setattr(VideoGenerator, "generate", recording)
    base = ["--preset", "stdit2-tiny", "--prompt", "x", "--height", "32", "--width", "32", "--num-frames", "1"]
    assert _sample(*base, "--out", str(tmp_path / "a")).exit_code == 0
    assert _sample(*base, "--dtype", "bf16", "--out", str(tmp_path / "b")).exit_code == 0
    assert dtypes == [torch.float32, torch.bfloat16]  # fp32 is the CPU default
    assert json.loads((tmp_path / "b" / "sample_000.json").read_text())["dtype"] == "bfloat16"
    result = _sample(*base, "--dtype", "int8", "--out", str(tmp_path / "c"))
    assert result.exit_code == 2 and "unknown dtype" in result.output


def test_real_generation_in_bf16(generator):
    generator.model.to(torch.bfloat16)
    video, = generator.generate([PromptRequest("x")], _settings(), progress=False)
    assert video.dtype == torch.float32 and torch.isfinite(video).all()


# Smoke tests: the real T5 and SD VAE code paths, tiny models in their real formats


def _smoke_args(checkpoint: Path, out: Path, height: int = 16, width: int = 16) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--device", "cpu", "--prompt", "A <b>Red</b> square https://x.com",
            "--prompt", "|0|a cat|1|a dog", "--loops", "2", "--condition-frame-length", "1", "--height", str(height),
            "--width", str(width), "--num-frames", "2", "--steps", "2", "--sampler", "dpm-solver", "--out", str(out)]


def test_published_profile_samples_a_hugging_face_folder_with_local_t5_and_sd_vae(
    tmp_path, monkeypatch, tiny_t5_xxl_width, tiny_sd_vae, published_folder
):
    monkeypatch.setenv("T5_PATH", str(tiny_t5_xxl_width))
    monkeypatch.setenv("SD_VAE_PATH", str(tiny_sd_vae))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    seen = []
    real_forward = STDiT2.forward

    def recording(self, *args, **kwargs):
        seen.append((self.config.micro_condition_convention, kwargs["ar"], kwargs["fps"]))
        return real_forward(self, *args, **kwargs)

    monkeypatch.setattr(STDiT2, "forward", recording)
    result = _sample("--profile", "published", *_smoke_args(published_folder, tmp_path, height=16, width=24))
    assert result.exit_code == 0, result.output
    # Trained on width/height, the published weights are sampled on height/width, as Open-Sora does.
    assert set(seen) == {("opensora-1.1", 16 / 24, 24.0)}
    assert _video_fps_and_frames(tmp_path / "sample_000.mp4") == (8.0, 3)  # 2 + (2 - 1) frames
    sidecar = json.loads((tmp_path / "sample_001.json").read_text())
    assert sidecar["text_encoder"].startswith("t5(") and "dtype=float32" in sidecar["text_encoder"]
    assert sidecar["vae"].startswith("sd-kl(") and sidecar["profile"] == "published"
    assert sidecar["loop_prompts"] == ["a cat", "a dog"] and sidecar["output_fps"] == 8


def test_a_profile_without_tracking_samples(tmp_path, tiny_t5_xxl_width, tiny_sd_vae, published_like_checkpoint):
    profile = tmp_path / "local.yaml"
    profile.write_text(yaml.safe_dump({"name": "local", "vae": {"kind": "sd-kl", "path": str(tiny_sd_vae)},
                                       "text_encoder": {"kind": "t5", "path": str(tiny_t5_xxl_width)}}))
    result = _sample("--profile", str(profile), *_smoke_args(published_like_checkpoint, tmp_path / "out"))
    assert result.exit_code == 0, result.output
    assert (tmp_path / "out" / "sample_000.mp4").is_file()
