from __future__ import annotations

import pytest

from opensora_core.config import RESOLUTION_AREAS
from opensora_core.infer.sizes import aspect_table, decoded_size, image_size, size_problems

NP_RESOLUTIONS = [name for name in RESOLUTION_AREAS if name.endswith("p")]


@pytest.mark.parametrize(
    ("resolution", "ratio", "size"),
    [
        ("240p", "9:16", (240, 426)),  # Open-Sora's published inference size
        ("240p", "0.56", (240, 426)),  # the table key names the same entry
        ("240p", "16:9", (426, 240)),
        ("360p", "9:16", (360, 640)),
        ("480p", "9:16", (480, 854)),
        ("720p", "9:16", (720, 1280)),
        ("240p", "1:1", (320, 320)),
        ("512", "1:1", (512, 512)),
    ],
)
def test_open_sora_sizes(resolution, ratio, size):
    assert image_size(resolution, ratio) == size


@pytest.mark.parametrize("resolution", NP_RESOLUTIONS)
def test_np_tables_keep_the_area_and_the_ratio(resolution):
    table = aspect_table(resolution)
    assert len(table) == 17
    area = RESOLUTION_AREAS[resolution]
    for key, (height, width) in table.items():
        assert height % 2 == 0 and width % 2 == 0, (key, height, width)
        assert abs(height * width / area - 1) < 0.02, (key, height, width)  # even sides: 144p's err most
        assert abs(height / width / key - 1) < 0.01, (key, height, width)


def test_pixart_tables_step_like_pixart():
    for resolution, step in (("256", 16), ("512", 32), ("1024", 64)):
        table = aspect_table(resolution)
        assert len(table) == 40
        assert all(h % step == 0 and w % step == 0 for h, w in table.values())


def test_bad_requests_are_named():
    with pytest.raises(ValueError, match="'1:10'.*not in 240p's table"):
        image_size("240p", "1:10")
    with pytest.raises(ValueError, match="unknown resolution '250p'"):
        image_size("250p", "9:16")
    with pytest.raises(ValueError, match="expected height:width"):
        image_size("240p", "wide")


def test_any_side_of_a_latent_cell_or_more_samples():
    assert size_problems(240, 426) == []  # not a multiple of 8 or 16: Open-Sora takes it
    assert size_problems(8, 8) == []
    assert size_problems(4, 426) == ["height 4 must be at least 8 pixels (one latent cell of the x8 VAE)"]
    assert decoded_size(240, 426) == (240, 424)  # latent 30 x 53, as Open-Sora's video
