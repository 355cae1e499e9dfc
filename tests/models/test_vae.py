from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from opensora_core.models.autoencoder import VideoAutoencoder
from opensora_core.models.dct_autoencoder import DCTAutoencoder
from opensora_core.models.sd_autoencoder import SDKLAutoencoder
from opensora_core.models.vae import build_vae

# Measured on Megamind.avi, first 8 frames, centre 256x256 crop: smooth decode
# 27.83 dB, flat pseudo-inverse 26.45 dB; without the luma AC term 25.49 / 24.72 dB;
# 8x8 block-mean grey 17.69 dB. Decoding is deterministic, so ~1.3 dB of margin is
# plenty and still catches a lost channel.
DCT_SMOOTH_MIN_PSNR = 26.5
DCT_FLAT_MIN_PSNR = 25.2


def _read_frames(path: Path, num_frames: int) -> torch.Tensor:
    """First ``num_frames`` frames as ``[1, 3, T, H, W]`` in [-1, 1]."""
    import av

    frames = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            frames.append(frame.to_ndarray(format="rgb24"))
            if len(frames) == num_frames:
                break
    video = torch.from_numpy(np.stack(frames)).float() / 127.5 - 1.0
    return video.permute(3, 0, 1, 2)[None]


def _center_crop(x: torch.Tensor, size: int) -> torch.Tensor:
    h, w = x.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return x[..., top : top + size, left : left + size]


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    # Peak-to-peak range of [-1, 1] is 2, so the peak power is 4.
    return float(10 * torch.log10(4.0 / F.mse_loss(a, b)))


@pytest.fixture
def megamind_clip(videos_dir: Path) -> torch.Tensor:
    # videos_dir (tests/conftest.py) skips when ../shared/data/videos is absent.
    return _center_crop(_read_frames(videos_dir / "Megamind.avi", 8), 256)


# ---------------------------------------------------------------------------- DCT


@pytest.mark.real_video
def test_dct_reconstructs_real_video(megamind_clip: torch.Tensor) -> None:
    x = megamind_clip
    smooth, flat = DCTAutoencoder(smooth=True), DCTAutoencoder(smooth=False)
    z = smooth.encode(x)
    assert z.shape == (1, 4, 8, 32, 32)
    # Before latent_scale, block means and the L1-normalised AC term of [-1, 1] data
    # stay in [-1, 1]; natural video then lands near unit scale.
    bound = torch.tensor(DCTAutoencoder.latent_scale)[:, None, None, None]
    assert (z[0].abs() <= bound + 1e-5).all()
    assert 0.2 < z.std().item() < 3.0

    psnr_smooth = _psnr(smooth.decode(z), x)
    psnr_flat = _psnr(flat.decode(z), x)

    # A codec that only kept 8x8 luma block means (no colour, no detail) must fail
    # the threshold, otherwise the threshold proves nothing.
    grey = F.avg_pool3d(x.mean(1, keepdim=True), (1, 8, 8))
    grey = grey.repeat_interleave(8, -1).repeat_interleave(8, -2).expand_as(x)
    psnr_grey = _psnr(grey, x)

    assert psnr_grey < DCT_FLAT_MIN_PSNR
    assert psnr_flat > DCT_FLAT_MIN_PSNR, psnr_flat
    assert psnr_smooth > DCT_SMOOTH_MIN_PSNR, psnr_smooth
    assert psnr_smooth > psnr_flat  # the reason smooth is the default

    # The fourth (luma AC) channel carries real detail.
    no_ac = z.clone()
    no_ac[:, 3] = 0
    assert _psnr(smooth.decode(no_ac), x) < psnr_smooth - 0.5


@pytest.mark.parametrize("smooth", [False, True])
def test_dct_encode_decode_encode_is_identity(smooth: bool) -> None:
    ae = DCTAutoencoder(smooth=smooth)
    z = torch.randn(2, 4, 3, 5, 6)
    # Without the final clamp decode is linear and a right inverse of encode.
    assert torch.allclose(ae.encode(ae.decode(z, clamp=False)), z, atol=1e-5)
    # Latents small enough that the decoded video stays inside [-1, 1]: clamp is a no-op.
    small = 0.2 * torch.rand(2, 4, 3, 5, 6) - 0.1
    decoded = ae.decode(small)
    assert decoded.abs().max() < 1.0
    assert torch.allclose(ae.encode(decoded), small, atol=1e-5)


def test_dct_shapes_range_and_identity() -> None:
    ae = build_vae("dct")
    assert isinstance(ae, VideoAutoencoder)
    assert ae.latent_channels == 4 and ae.spatial_downsample == 8
    assert ae.latent_shape(5, 64, 48) == (4, 5, 8, 6)
    x = torch.rand(2, 3, 5, 64, 48) * 2 - 1
    z = ae.encode(x)
    assert z.shape == (2, 4, 5, 8, 6)
    out = ae.decode(z * 10)
    assert out.shape == x.shape and out.abs().max() <= 1.0
    # Constant colour videos are reproduced exactly (the codec keeps each DC term).
    const = torch.tensor([0.3, -0.5, 0.8]).view(1, 3, 1, 1, 1).expand(1, 3, 2, 16, 16)
    assert torch.allclose(ae.decode(ae.encode(const)), const, atol=1e-5)
    assert ae.identity() == DCTAutoencoder().identity()
    assert ae.identity() != DCTAutoencoder(smooth=False).identity()
    assert list(ae.state_dict()) == []  # nothing to checkpoint


@pytest.mark.parametrize("shape", [(1, 3, 2, 20, 16), (1, 3, 2, 16, 12)])
def test_dct_rejects_sizes_not_multiple_of_8(shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="multiples of 8") as err:
        DCTAutoencoder().encode(torch.zeros(shape))
    assert str(tuple(shape)) in str(err.value)


def test_build_vae_rejects_unknown_kind() -> None:
    with pytest.raises(ValueError, match="dct.*sd-kl"):
        build_vae("vqgan")


# -------------------------------------------------------------------------- SD KL

TINY_KL = {
    "in_channels": 3,
    "out_channels": 3,
    "latent_channels": 4,
    "block_out_channels": [8, 16],
    "layers_per_block": 1,
    "norm_num_groups": 4,
    "down_block_types": ["DownEncoderBlock2D"] * 2,
    "up_block_types": ["UpDecoderBlock2D"] * 2,
    "sample_size": 16,
}


@pytest.fixture(scope="module")
def tiny_kl_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-sd-vae")
    AutoencoderKL(**TINY_KL).save_pretrained(path)
    return path


def test_sdkl_micro_batching_and_scaling(tiny_kl_dir: Path) -> None:
    one = SDKLAutoencoder.from_pretrained(tiny_kl_dir, micro_batch_size=1)
    all_frames = SDKLAutoencoder.from_pretrained(tiny_kl_dir, micro_batch_size=8)
    assert one.spatial_downsample == 2 and one.latent_channels == 4
    assert all(not p.requires_grad for p in one.parameters()) and not one.training

    x = torch.rand(2, 3, 4, 16, 16) * 2 - 1
    z1, z8 = one.encode(x), all_frames.encode(x)
    assert z1.shape == (2, 4, 4, 8, 8)
    torch.testing.assert_close(z1, z8, rtol=1e-4, atol=1e-5)

    # Frame (b, t) of the video is image b*T + t of the reference call.
    frames = x.permute(0, 2, 1, 3, 4).reshape(8, 3, 16, 16)
    with torch.no_grad():
        ref = one.model.encode(frames).latent_dist.mean * 0.18215
    torch.testing.assert_close(
        z1.permute(0, 2, 1, 3, 4).reshape(8, 4, 8, 8), ref, rtol=1e-4, atol=1e-5
    )

    # Decode divides by the scaling factor and clamps.
    out = one.decode(z1)
    with torch.no_grad():
        ref_out = one.model.decode(ref / 0.18215).sample.clamp(-1, 1)
    assert out.shape == x.shape
    torch.testing.assert_close(
        out.permute(0, 2, 1, 3, 4).reshape(8, 3, 16, 16), ref_out, rtol=1e-4, atol=1e-5
    )
    torch.testing.assert_close(all_frames.decode(z1), out, rtol=1e-4, atol=1e-5)


def test_sdkl_sample_posterior_uses_generator(tiny_kl_dir: Path) -> None:
    x = torch.rand(1, 3, 2, 16, 16) * 2 - 1

    def sample(seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        vae = SDKLAutoencoder.from_pretrained(tiny_kl_dir, sample_posterior=True, generator=g)
        return vae.encode(x)

    torch.testing.assert_close(sample(1), sample(1))
    assert not torch.allclose(sample(1), sample(2))


def test_sdkl_identity_tracks_weights(tiny_kl_dir: Path) -> None:
    a = SDKLAutoencoder.from_pretrained(tiny_kl_dir)
    b = SDKLAutoencoder.from_pretrained(tiny_kl_dir)
    assert a.identity() == b.identity()
    assert a.identity() != SDKLAutoencoder.from_config(TINY_KL, seed=1).identity()
    assert (
        a.identity()
        != SDKLAutoencoder.from_pretrained(tiny_kl_dir, sample_posterior=True).identity()
    )


def test_sdkl_missing_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        SDKLAutoencoder.from_pretrained(tmp_path / "nope")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model"):
        SDKLAutoencoder.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError):
        build_vae("sd-kl", path=tmp_path / "nope")


def test_sdkl_random_init_warns_and_rejects_bad_shapes() -> None:
    with pytest.warns(UserWarning, match="meaningless"):
        vae = build_vae("sd-kl", config=TINY_KL)
    assert isinstance(vae, SDKLAutoencoder)
    with pytest.raises(ValueError, match="multiples of 2"):
        vae.encode(torch.zeros(1, 3, 1, 15, 16))


def test_sdkl_default_config_is_the_sd_architecture() -> None:
    from opensora_core.models.sd_autoencoder import SD_VAE_CONFIG

    assert SD_VAE_CONFIG["block_out_channels"] == [128, 256, 512, 512]
    assert SD_VAE_CONFIG["latent_channels"] == 4
    assert len(SD_VAE_CONFIG["down_block_types"]) == 4  # -> 8x downsampling
