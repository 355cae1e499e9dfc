"""Schema of the data-curation configs in `configs/data/*.yaml`.

Validation, error messages (file: key: what was expected) and `${VAR}` expansion are
the project's usual ones from :mod:`opensora_core.config`.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Literal

from pydantic import Field, model_validator

from opensora_core.config import _Strict, find_config, load_config

__all__ = [
    "CaptionsConfig",
    "ClipsConfig",
    "CurationConfig",
    "FiltersConfig",
    "ScenesConfig",
    "ScorersConfig",
    "load_curation_config",
]


class ScenesConfig(_Strict):
    """PySceneDetect's adaptive detector, and what becomes a clip."""

    threshold: float = Field(3.0, gt=0)
    # Frames that must pass after a cut before the next one (PySceneDetect's min_scene_len).
    min_scene_len: int = Field(15, ge=1)
    window_width: int = Field(2, ge=1)
    min_content_val: float = Field(15.0, ge=0)
    # Scenes shorter than this are not cut into clips.
    min_frames: int = Field(16, ge=1)
    # Longer scenes are split into pieces of at most this many frames; also bounds the
    # memory a clip needs while it is cut.
    max_frames: int = Field(256, ge=1)
    # Detection sees wider frames resized to this width, as PySceneDetect's default (256 px) does.
    analysis_width: int = Field(256, ge=16)

    @model_validator(mode="after")
    def _check_lengths(self) -> ScenesConfig:
        if self.min_frames > self.max_frames:
            raise ValueError(f"min_frames: {self.min_frames} exceeds max_frames {self.max_frames}")
        return self


class ClipsConfig(_Strict):
    """How clips are written: files holding exactly the frames of their scene piece,
    copied from the source where that is exact (`stream_copy`: mp4 from mp4/mov, avi
    from AVI), else re-encoded into mp4 (readers decode with PyAV, so any codec and
    container it decodes will do).

    Encoding is the largest cost of cutting. Measured on the 2-core CPU on 720x528
    footage, against x264 `ultrafast` crf 20 (2.80 MB, 43.6 dB PSNR to the source):
    MPEG-4 Part 2 at qscale 3 gives 1.67 MB at 43.8 dB in ~0.7x the time; at qscale 2,
    2.4 MB at 45.3 dB. x264 compresses flat synthetic footage far better, and
    `veryfast` is ~3x slower than `ultrafast` for ~2x fewer bytes at the same crf:
    pick it where storage is dearer than CPU. `preset` and `crf` apply to libx264,
    `qscale` and `gop` to mpeg4.
    """

    codec: Literal["mpeg4", "libx264"] = "mpeg4"
    preset: Literal["ultrafast", "superfast", "veryfast", "faster", "fast", "medium", "slow"] = "ultrafast"
    crf: int = Field(20, ge=0, le=51)
    # MPEG-4 Part 2 constant quantiser: 1 (best) to 31; 2-3 is visually lossless on footage.
    qscale: int = Field(3, ge=1, le=31)
    # Frames between MPEG-4 keyframes (x264 places its own).
    gop: int = Field(12, ge=1)
    # Copy a clip's packets from the source instead of re-encoding, where that is exact:
    # an mp4/mov source (keyframes there are clean random-access points), the clip
    # starting on a keyframe and its frames being one unbroken run of packets; an AVI
    # source (one packet per frame), the clip starting on a keyframe and its copy
    # (an .avi clip) decoding to the same frames, checked on every frame. Encoders put
    # keyframes at scene cuts, so most whole scenes qualify; the clip is then
    # bit-identical to the source and costs no encoding.
    stream_copy: bool = True


class FlowConfig(_Strict):
    enabled: bool = True
    samples: int = Field(4, ge=1)
    # Frames are resized so their longer side is this many pixels before Farneback; the
    # score is reported in px/frame at 256 px whatever this is (128: ~3x cheaper than 256).
    size: int = Field(128, ge=16)


class OCRConfig(_Strict):
    enabled: bool = True
    samples: int = Field(3, ge=1)
    lang: str = "eng"
    # Words below this Tesseract confidence are noise, not text.
    min_confidence: float = Field(60.0, ge=0, le=100)
    # Frames are resized so their longer side is at most this (Tesseract time grows with area).
    max_size: int = Field(640, ge=64)
    # How Tesseract runs: `library` in-process through tesserocr (the `ocr` extra; its
    # model loads once per process), `cli` the tesseract binary through pytesseract (its
    # model loads on every call, ~0.1 s), `auto` the library where it and the language
    # data are found, else the binary.
    backend: Literal["auto", "library", "cli"] = "auto"
    # Folder holding `<lang>.traineddata` for the library backend (default: TESSDATA_PREFIX,
    # then where the tesseract binary and the usual packages keep it).
    tessdata: str | None = None


class QualityConfig(_Strict):
    enabled: bool = True
    samples: int = Field(3, ge=1)


class AestheticConfig(_Strict):
    """The CLIP ViT-L/14 + MLP aesthetic predictor; runs only when both paths are given."""

    clip: str | None = None  # local transformers folder of CLIP ViT-L/14
    mlp: str | None = None  # local .pth/.safetensors of the MLP head
    samples: int = Field(3, ge=1)

    @model_validator(mode="after")
    def _both_or_none(self) -> AestheticConfig:
        if (self.clip is None) != (self.mlp is None):
            raise ValueError("aes: give both clip and mlp weights, or neither")
        return self


class MatchConfig(_Strict):
    """CLIP text-video similarity; runs only when CLIP weights are given."""

    clip: str | None = None
    samples: int = Field(3, ge=1)


class CaptionsConfig(_Strict):
    sidecar: bool = True  # `<video>.txt` or `<video>.json` with a "text"/"caption" key
    import_csv: str | None = None  # Open-Sora (path,text) or Panda-70M (videoID,timestamp,caption)
    model: str | None = None  # local image-text-to-text model folder (transformers)
    prompt: str = "Describe this video frame in one sentence."
    max_new_tokens: int = Field(48, ge=1)


class ScorersConfig(_Strict):
    flow: FlowConfig = FlowConfig()
    ocr: OCRConfig = OCRConfig()
    quality: QualityConfig = QualityConfig()
    aes: AestheticConfig = AestheticConfig()
    match: MatchConfig = MatchConfig()
    captions: CaptionsConfig = CaptionsConfig()
    batch_size: int = Field(16, ge=1)


class FiltersConfig(_Strict):
    """Thresholds; null switches one off. A threshold on a column that was not computed
    is reported as a warning, never silently passed."""

    min_aes: float | None = None
    min_flow: float | None = None  # videos only: images have no motion
    max_flow: float | None = None
    max_ocr: float | None = Field(None, ge=0, le=1)
    min_match: float | None = None
    min_quality: float | None = Field(None, ge=0, le=1)
    min_frames: int | None = Field(None, ge=1)  # videos only
    max_frames: int | None = Field(None, ge=1)
    min_resolution: int | None = Field(None, ge=1)  # height * width in pixels
    require_caption: bool = False


class CurationConfig(_Strict):
    video_extensions: list[str] = Field(
        default_factory=lambda: [".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv"]
    )
    image_extensions: list[str] = Field(default_factory=lambda: [".jpg", ".jpeg", ".png", ".webp"])
    scenes: ScenesConfig = ScenesConfig()
    clips: ClipsConfig = ClipsConfig()
    scorers: ScorersConfig = ScorersConfig()
    filters: FiltersConfig = FiltersConfig()

    def fingerprint(self, *sections: str) -> str:
        """Short hash of the named sections (all when none): a partition's outputs are
        reused only while the settings that made them are unchanged."""
        data = self.model_dump(mode="json")
        chosen = {k: data[k] for k in sections} if sections else data
        return hashlib.sha256(json.dumps(chosen, sort_keys=True).encode()).hexdigest()[:12]


def load_curation_config(name_or_path: str | os.PathLike[str] | None = None) -> CurationConfig:
    """A config by stem under `configs/data` (`default`) or by path; None gives the
    schema's defaults (the settings of `configs/data/default.yaml`, without filters)."""
    if name_or_path is None:
        return CurationConfig()
    return load_config(find_config("data", name_or_path), CurationConfig)
