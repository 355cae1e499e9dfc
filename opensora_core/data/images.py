"""Still images as samples: read as a viewer shows them, as 8-bit RGB.

Three things a plain `Image.open(path).convert("RGB")` (Open-Sora's image loader)
gets wrong, each common in scraped or camera data:

1. A camera's JPEG is often stored sideways with an EXIF orientation tag that every
   viewer applies: read plainly, it trains on sideways pictures whose width and height
   are swapped against what the table says.
2. A 16-bit image (`I;16` PNG, scans and renders) converts by clipping, not scaling:
   almost every pixel turns white.
3. Transparent pixels keep whatever colour they store (often black, or noise).

:func:`upright_rgb` turns and mirrors by the EXIF tag, scales 16-bit and 32-bit
values to 8 bits and composites transparency over white (as a web page shows it).
Curation writes an image that a plain reader would see otherwise as a PNG of that (a
JPEG only turned upright: a JPEG; :func:`write_upright`, :func:`rewrite_reason`), so
the training table's files read the same in any loader; every other image is copied
as it is. The project's own readers go through
:func:`read_image_rgb` too, for images that did not come through curation (inference
references, tables made elsewhere).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

ORIENTATION_TAG = 0x0112  # EXIF Orientation: 1 as stored; 2-8 mirrored and/or turned
# The counterclockwise turn, in degrees, that each orientation asks for (5 and 7 with a mirror).
_ROTATION = {1: 0, 2: 0, 3: 180, 4: 180, 5: 90, 6: 270, 7: 270, 8: 90}
# What shows each orientation as stored the right way round (PIL turns counterclockwise).
_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}
# Modes every loader reads as they are with `convert("RGB")`.
_PLAIN_MODES = ("RGB", "L")
BACKGROUND = (255, 255, 255)  # under transparent pixels


def exif_orientation(image: Image.Image) -> int:
    """The image's EXIF orientation, 1 (as stored) when it has none or an invalid one."""
    try:
        value = image.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # noqa: BLE001 - a damaged EXIF block: taken as no tag, as viewers do
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def displayed_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) as a viewer shows the image (swapped for a quarter turn)."""
    width, height = image.size
    return (height, width) if display_rotation(image) in (90, 270) else (width, height)


def display_rotation(image: Image.Image) -> int:
    """The counterclockwise degrees (0, 90, 180, 270) the EXIF orientation turns by,
    after mirroring left to right where :func:`display_mirrored` (as a video's
    :class:`opensora_core.data.frame_arrays.Orientation`)."""
    return _ROTATION[exif_orientation(image)]


def display_mirrored(image: Image.Image) -> bool:
    """Whether the EXIF orientation mirrors the picture (2, 4, 5 and 7)."""
    return exif_orientation(image) in (2, 4, 5, 7)


def frame_count(image: Image.Image) -> int:
    """Frames of motion in the file (an animated WebP, PNG or GIF has several). A phone
    JPEG's extra images (MPF: a gain map, depth; PIL's format "MPO") are not motion: 1."""
    if image.format == "MPO":
        return 1
    return int(getattr(image, "n_frames", 1) or 1)


def rewrite_reason(image: Image.Image) -> str | None:
    """Why a plain reader would not see this image as :func:`upright_rgb` gives it (its
    sample is then written as that), or None when the file can be used as it is."""
    if (orientation := exif_orientation(image)) != 1:
        return f"EXIF orientation {orientation}"
    if image.mode not in _PLAIN_MODES or "transparency" in image.info:
        return f"mode {image.mode}" + (" with transparency" if "transparency" in image.info else "")
    if (frames := frame_count(image)) > 1:
        return f"animated ({frames} frames; the first is the sample)"
    return None


def _to_8bit(image: Image.Image) -> Image.Image:
    """An `I;16*`, `I` or `F` image scaled to `L` by its type's full range (16-bit:
    0..65535; 32-bit integer and float: their own minimum..maximum, as a viewer would
    stretch them); `LA` where a transparent value (PNG `tRNS`) marks pixels."""
    values = np.asarray(image)
    transparent = image.info.get("transparency")
    alpha = None if not isinstance(transparent, int) else np.where(values == transparent, 0, 255).astype(np.uint8)
    if image.mode.startswith("I;16"):
        scaled = values.astype(np.float32) / 65535.0
    else:
        values = values.astype(np.float64)
        low, high = float(np.nanmin(values)), float(np.nanmax(values))
        scaled = (values - low) / (high - low) if high > low else np.zeros_like(values)
    grey = np.clip(np.rint(np.nan_to_num(scaled) * 255), 0, 255).astype(np.uint8)
    return Image.fromarray(grey, mode="L") if alpha is None else Image.fromarray(np.dstack([grey, alpha]), mode="LA")


def upright_rgb(image: Image.Image) -> Image.Image:
    """The image's first frame as a viewer shows it, in 8-bit RGB (see the module
    docstring)."""
    image.seek(0)
    # From the orientation as read here (a damaged EXIF block is no tag), not PIL's
    # `exif_transpose`, which reads the block again and raises on it.
    if (turn := _TRANSPOSE.get(exif_orientation(image))) is not None:
        image = image.transpose(turn)
    if image.mode.startswith("I") or image.mode == "F":
        image = _to_8bit(image)
    if image.mode == "P" or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB")


JPEG_QUALITY = 95  # a photo turned upright is saved again at this quality: high, so it loses nothing visible


def write_upright(image: Image.Image, folder: Path, stem: str) -> str:
    """Write :func:`upright_rgb` of `image` into `folder` as `stem` + suffix; returns the
    file name. A JPEG whose only change is its orientation (a phone's portrait photo)
    stays a JPEG, at :data:`JPEG_QUALITY` with its own chroma subsampling (a PNG of it
    is several times larger); anything else is a lossless PNG. The colour profile is
    kept."""
    upright = upright_rgb(image)
    icc = {"icc_profile": image.info["icc_profile"]} if image.info.get("icc_profile") else {}
    if image.format in ("JPEG", "MPO") and image.mode in _PLAIN_MODES:  # MPO: a JPEG with MPF extras
        from PIL import JpegImagePlugin

        sampling = JpegImagePlugin.get_sampling(image)
        file = f"{stem}.jpg"
        upright.save(folder / file, format="JPEG", quality=JPEG_QUALITY,
                     **({"subsampling": sampling} if sampling >= 0 else {}), **icc)
        return file
    file = f"{stem}.png"
    upright.save(folder / file, format="PNG", **icc)
    return file


def read_image_rgb(path: str | Path) -> np.ndarray:
    """`[H, W, 3]` uint8: the image at `path` as :func:`upright_rgb` gives it."""
    with Image.open(path) as image:
        return np.array(upright_rgb(image))  # writable (torch.from_numpy warns on a read-only one)
