"""Still images through curation as a viewer shows them: EXIF orientation, 16-bit
values, transparency, animation, oversized files; plain ones copied untouched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from opensora_core.curation import partitions
from opensora_core.curation.config import CurationConfig
from opensora_core.curation.runner import curate
from opensora_core.curation.storage import Storage
from opensora_core.data.images import read_image_rgb
from opensora_core.data.synthetic import moving_shape_clip
from opensora_core.data.video_io import write_video

MARKER = 12


def _config() -> CurationConfig:
    return CurationConfig.model_validate({
        "scenes": {"min_frames": 8, "max_frames": 64},
        "scorers": {"flow": {"enabled": False}, "ocr": {"enabled": False}, "quality": {"samples": 2}}})


def _displayed() -> np.ndarray:
    """64 wide, 40 high, grey, a red square in the top-left corner and a blue one in the
    top-right (so that a turn, a mirror and a transposition each move one)."""
    picture = np.full((40, 64, 3), 128, np.uint8)
    picture[:MARKER, :MARKER] = (255, 0, 0)
    picture[:MARKER, -MARKER:] = (0, 0, 255)
    return picture


def _rows(out) -> dict[str, pd.Series]:
    meta = pd.read_csv(out / "meta.csv")
    return {row["source"].rsplit("/", 1)[-1]: row for _, row in meta.iterrows()}


def _plain_read(path) -> np.ndarray:
    """How a loader that knows nothing of EXIF or modes reads a file (Open-Sora's)."""
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _as_displayed(picture: np.ndarray) -> bool:
    """Whether `picture` is :func:`_displayed`'s (after lossy compression)."""
    if picture.shape != (40, 64, 3):
        return False
    left, right = (picture[: MARKER - 2, columns].reshape(-1, 3).mean(0)
                   for columns in (slice(0, MARKER - 2), slice(2 - MARKER, None)))
    return bool((np.abs(left - (255, 0, 0)) < 40).all() and (np.abs(right - (0, 0, 255)) < 40).all())


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_an_exif_oriented_photo_is_a_sample_as_shown(tmp_path, orientation):
    displayed = Image.fromarray(_displayed())
    # Stored so that applying the orientation shows `displayed` (the inverse of its transform).
    inverse = {3: Image.Transpose.ROTATE_180, 6: Image.Transpose.ROTATE_90, 8: Image.Transpose.ROTATE_270,
               2: Image.Transpose.FLIP_LEFT_RIGHT, 4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
               7: Image.Transpose.TRANSVERSE}[orientation]
    exif = Image.Exif()
    exif[0x0112] = orientation
    (tmp_path / "raw").mkdir()
    displayed.transpose(inverse).save(tmp_path / "raw" / "photo.jpg", quality=95, exif=exif)
    assert not _as_displayed(_plain_read(tmp_path / "raw" / "photo.jpg"))

    curate(tmp_path / "raw", tmp_path / "out", _config())
    row = _rows(tmp_path / "out")["photo.jpg"]
    assert (row["width"], row["height"]) == (64, 40)
    assert row["path"].endswith(".jpg")  # written upright, still a JPEG: any loader sees it as shown
    sample = _plain_read(row["path"])
    assert _as_displayed(sample)
    assert np.abs(read_image_rgb(tmp_path / "raw" / "photo.jpg").astype(int) - sample).mean() < 2  # saved again
    assert (tmp_path / "raw" / "photo.jpg").stat().st_size * 0.8 < Path(row["path"]).stat().st_size < \
        (tmp_path / "raw" / "photo.jpg").stat().st_size * 2
    manifest = partitions.read_manifest(Storage(tmp_path / "out"), row["partition"], "clips")
    assert manifest["rewritten"] == f"EXIF orientation {orientation}"
    probe = partitions.read_manifest(Storage(tmp_path / "out"), row["partition"], "raw")["probe"]
    assert (probe["rotation"], probe["mirrored"]) == {3: (180, False), 6: (270, False), 8: (90, False),
                                                      2: (0, True), 4: (180, True), 5: (90, True),
                                                      7: (270, True)}[orientation]


def test_sixteen_bit_transparent_and_animated_images_read_as_shown(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    gradient = np.tile(np.linspace(0, 65535, 64).astype(np.uint16), (48, 1))
    Image.fromarray(gradient).save(raw / "deep.png")  # I;16: PIL's convert("RGB") clips it white
    assert _plain_read(raw / "deep.png").mean() > 250
    deep_cutout = np.full((48, 64), 40000, np.uint16)
    deep_cutout[:, 32:] = 7  # the value PNG's tRNS names transparent
    Image.fromarray(deep_cutout).save(raw / "deep cutout.png", transparency=7)
    rgba = np.zeros((48, 64, 4), np.uint8)
    rgba[..., 0] = 255  # red everywhere, but only the left half is opaque
    rgba[:, :32, 3] = 255
    Image.fromarray(rgba, "RGBA").save(raw / "cutout.png")
    frames = [Image.fromarray(np.full((48, 64, 3), value, np.uint8)) for value in (40, 200)]
    frames[0].save(raw / "moving.webp", save_all=True, append_images=frames[1:], duration=100, lossless=True)

    summary = curate(raw, tmp_path / "out", _config())
    rows = _rows(tmp_path / "out")
    assert summary.kept == 4 and summary.rejected == 0
    deep_cutout = _plain_read(rows["deep cutout.png"]["path"])
    assert (deep_cutout[:, :32] == round(40000 / 65535 * 255)).all() and (deep_cutout[:, 32:] == 255).all()
    deep = _plain_read(rows["deep.png"]["path"])
    np.testing.assert_allclose(deep[0, :, 0], np.rint(np.linspace(0, 255, 64)), atol=1)
    cutout = _plain_read(rows["cutout.png"]["path"])
    assert (cutout[:, :32] == (255, 0, 0)).all() and (cutout[:, 32:] == 255).all()  # over white
    moving = _plain_read(rows["moving.webp"]["path"])
    assert rows["moving.webp"]["path"].endswith(".png") and (moving == 40).all()
    assert any("animated image with 2 frames" in note for note in summary.notes[rows["moving.webp"]["source"]])


def test_a_plain_image_is_copied_byte_for_byte(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(_displayed()).save(raw / "plain.jpg", quality=90)
    Image.fromarray(_displayed()[..., 0]).save(raw / "grey.png")
    curate(raw, tmp_path / "out", _config())
    rows = _rows(tmp_path / "out")
    for name in ("plain.jpg", "grey.png"):
        assert rows[name]["path"].endswith(name[-4:])
        assert rows[name]["sha256"] == hashlib.sha256((raw / name).read_bytes()).hexdigest()


def test_an_image_over_pils_decompression_guard_is_rejected_with_the_reason(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(_displayed()).save(raw / "huge.png")
    Image.fromarray(_displayed()[:8, :8]).save(raw / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 500)  # 64x40 is over twice this; 8x8 is not
    summary = curate(raw, tmp_path / "out", _config())
    rejected = pd.read_csv(tmp_path / "out" / "rejected.csv")
    assert summary.kept == 1 and rejected["path"].str.endswith("huge.png").tolist() == [True]
    assert rejected["reason"].iloc[0].startswith("image too large to decode safely")


def test_the_image_version_redoes_images_only(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(_displayed()).save(raw / "still.png")
    write_video(raw / "clip.mp4", moving_shape_clip(16, 48, 64, "red", "left", "circle", seed=0), fps=8)
    curate(raw, tmp_path / "out", _config())

    def stamps() -> dict[str, str]:
        return {m.parent.parent.name: json.loads(m.read_text())["fingerprint"]
                for m in (tmp_path / "out" / "partitions").glob("*/raw/manifest.json")}

    before = stamps()
    monkeypatch.setattr(partitions, "IMAGE_VERSION", partitions.IMAGE_VERSION + 1)
    curate(raw, tmp_path / "out", _config())
    after = stamps()
    changed = {key for key in before if before[key] != after[key]}
    assert len(before) == 2 and len(changed) == 1 and next(iter(changed)).startswith("still")


def test_a_damaged_exif_block_is_no_orientation(tmp_path):
    """A PNG whose eXIf chunk is not EXIF: viewers ignore it, and so does every reader
    here (PIL's own `exif_transpose` raises on it)."""
    import struct
    import zlib

    raw = tmp_path / "raw"
    raw.mkdir()
    Image.fromarray(_displayed()).save(raw / "plain.png")
    data = (raw / "plain.png").read_bytes()
    chunk = b"eXIf" + b"not a TIFF header at all"
    damaged = data[:33] + struct.pack(">I", len(chunk) - 4) + chunk + struct.pack(">I", zlib.crc32(chunk)) + data[33:]
    (raw / "odd exif.png").write_bytes(damaged)
    with Image.open(raw / "odd exif.png") as image, pytest.raises(SyntaxError):
        from PIL import ImageOps

        ImageOps.exif_transpose(image)  # the fixture is what it claims

    summary = curate(raw, tmp_path / "out", _config())
    assert (summary.kept, summary.rejected) == (2, 0)  # not a duplicate: same pixels, other bytes
    np.testing.assert_array_equal(read_image_rgb(raw / "odd exif.png"), _displayed())
    scores = partitions.read_manifest(Storage(tmp_path / "out"),
                                         _rows(tmp_path / "out")["odd exif.png"]["partition"], "scores")
    assert scores["failures"] == [] and not scores["retry"]


def test_a_phone_jpeg_with_extra_images_is_a_turned_jpeg_with_its_colour_profile(tmp_path):
    """Phone JPEGs carry MPF extras (a gain map, depth: PIL opens them as two-frame
    "MPO"): not animation; turned upright they stay JPEG, colour profile and all."""
    from PIL import ImageCms

    raw = tmp_path / "raw"
    raw.mkdir()
    displayed = Image.fromarray(_displayed())
    stored = displayed.transpose(Image.Transpose.ROTATE_90)  # orientation 6 shows it as displayed
    exif = Image.Exif()
    exif[0x0112] = 6
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    stored.save(raw / "phone.jpg", format="MPO", save_all=True, append_images=[stored.convert("L").convert("RGB")],
                exif=exif, icc_profile=profile, quality=95)
    with Image.open(raw / "phone.jpg") as image:
        assert image.format == "MPO" and image.n_frames == 2  # the fixture is what it claims

    summary = curate(raw, tmp_path / "out", _config())
    row = _rows(tmp_path / "out")["phone.jpg"]
    assert summary.kept == 1 and not summary.notes  # not "animated"
    assert row["path"].endswith(".jpg") and _as_displayed(_plain_read(row["path"]))
    with Image.open(row["path"]) as sample:
        assert sample.info.get("icc_profile") == profile
