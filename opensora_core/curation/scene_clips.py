"""Step 2, asset `scene_clips` / `opensora data scene-clips`: cut one raw video into scene
clips (:func:`opensora_core.curation.scenes.cutter.cut_scenes`), an image into a
one-frame sample, into `partitions/<key>/clips/` (mp4 + jpg, `clips.parquet`,
`sample_scores.parquet`).

The video is decoded once: while it is cut, the weights-free scorers (`flow`, `ocr`,
`quality`) score each clip from frames the cutter already has, on a background
thread, into `sample_scores.parquet`, each recorded in the manifest with its
fingerprint (name, version, settings); :func:`opensora_core.curation.scored_clips.scored_clips`
takes those columns as they are while the fingerprints match.
"""

from __future__ import annotations

import logging
import shutil
import time
from pathlib import Path, PurePosixPath

import pandas as pd

from opensora_core.curation.config import CurationConfig
from opensora_core.curation.partitions import (
    CLIPS_TABLE,
    SAMPLE_SCORES,
    clips_fingerprint,
    clips_folder,
    read_manifest,
    step_dir,
    write_manifest,
)
from opensora_core.curation.row_tables import write_rows
from opensora_core.curation.scenes.cutter import Sampler, SceneCut, cut_scenes
from opensora_core.curation.scoring import BackgroundScorer, build_scorers
from opensora_core.curation.storage import FileList, Storage, file_suffix
from opensora_core.data import images
from opensora_core.utils.hashing import file_sha256
from opensora_core.utils.opencv_threads import opencv_threads

log = logging.getLogger(__name__)

# OpenCV's threads while cutting and scoring, which run on threads of their own.
CURATION_OPENCV_THREADS = 1


def _clip_location(out: Storage, key: str, file: str) -> str:
    """Where clip `file` of partition `key` is."""
    return clips_folder(out, key) + file


def _clip_row(out: Storage, key: str, file: str, probe: dict, source_manifest: dict, clip_path: Path,
              **fields) -> dict:
    height, width = fields["height"], fields["width"]
    return {
        "path": _clip_location(out, key, file),
        "aspect_ratio": height / width, "resolution": height * width,
        "partition": key, "source": source_manifest["source"], "source_sha256": source_manifest["sha256"],
        "sha256": file_sha256(clip_path), "media": probe["kind"], **fields,
    }


def _cut_and_score(video: Path, folder: Path, key: str, fps: float | None, config: CurationConfig,
                   progress=None) -> tuple:
    """Cut `video` into `folder` while the scorers that read luma alone score each clip
    from the cutter's frames; their columns go to `sample_scores.parquet`. Returns the
    cut and what the manifest records of those scores (scorer -> version, fingerprint,
    columns). `progress`: see :func:`cut_scenes`."""
    scorers = [s for s in build_scorers(config.scorers)[0] if not s.needs_color]
    if not scorers:
        return cut_scenes(video, folder, key, config.scenes, config.clips, fps=fps, progress=progress), {}
    background = BackgroundScorer(scorers, config.scorers.batch_size)
    try:
        cut = cut_scenes(video, folder, key, config.scenes, config.clips, fps=fps, progress=progress,
                         sampler=Sampler(background.size, background.positions, background.take, background.flush))
        scores = background.results()
    finally:
        background.close()
    for name, error in background.failed.items():
        log.warning("partition %s: scorer %s failed while cutting (%s); scored_clips will decode for it",
                    key, name, error)
    scored = [s for s in scorers if s.name not in background.failed]
    if not cut.clips or not scored:
        return cut, {}
    columns = [c for s in scored for c in s.columns]
    write_rows(folder / SAMPLE_SCORES, [{"clip_id": c.clip_id, **scores[c.clip_id]} for c in cut.clips],
               ["clip_id", *columns])
    return cut, {s.name: {"version": s.version, "fingerprint": s.fingerprint(), "columns": list(s.columns)}
                 for s in scored}


def _image_sample(local: Path, folder: Path, key: str, suffix: str) -> tuple[str, str | None]:
    """Write the one-frame sample of image `local` into `folder`: the file itself, or,
    where a plain reader would see it otherwise (EXIF orientation, 16-bit, transparency,
    animation: :func:`images.rewrite_reason`), the picture as a viewer shows it
    (:func:`images.write_upright`). Returns (file name, why it was rewritten or None)."""
    from PIL import Image

    with Image.open(local) as image:
        reason = images.rewrite_reason(image)
        if reason is not None:
            return images.write_upright(image, folder, f"{key}-0000"), reason
    file = f"{key}-0000{suffix}"
    shutil.copyfile(local, folder / file)
    return file, None


def scene_clips(source: Storage | FileList, out: Storage, key: str, config: CurationConfig,
                progress: bool = False) -> dict:
    """Cut one raw video into scene clips (an image becomes a one-frame sample); the
    weights-free scores are computed on the way (see the module docstring). With
    `progress`, a bar counts the video's frames as they are cut."""
    raw_manifest = read_manifest(out, key, "raw")
    if raw_manifest is None:
        raise FileNotFoundError(f"partition {key}: raw_videos has not been materialized (no probe manifest)")
    probe = raw_manifest["probe"]
    manifest = {"step": "scene_clips", "key": key, "source": raw_manifest["source"],
                "sha256": raw_manifest["sha256"], "fingerprint": clips_fingerprint(config, probe["kind"]),
                "clips": 0, "rejected": raw_manifest["rejected"], "notes": list(probe.get("notes") or [])}
    rows: list[dict] = []
    with out.staging_dir(*step_dir(key, "clips")) as folder:
        if manifest["rejected"] is None and probe["kind"] == "image":
            rows.append(_image_row(source, out, key, raw_manifest, folder, manifest))
        elif manifest["rejected"] is None:
            started = time.perf_counter()
            try:
                cut = _cut_video(source, key, raw_manifest, folder, config, manifest, progress)
            except Exception as err:  # one file the codecs cannot handle must not stop the rest
                log.warning("partition %s: cutting %s failed", key, raw_manifest["path"], exc_info=True)
                _publish_failed_cut(folder, manifest, err)
                return manifest
            rows = _video_rows(out, key, raw_manifest, folder, config, manifest, cut, started)
        manifest["clips"] = len(rows)
        write_rows(folder / CLIPS_TABLE, rows, _clip_columns(rows))
        write_manifest(folder, manifest)
    return manifest


def _image_row(source: Storage | FileList, out: Storage, key: str, raw_manifest: dict, folder: Path,
               manifest: dict) -> dict:
    """The row of an image's one-frame sample, written into `folder` (why it was
    rewritten, if it was, goes to `manifest`)."""
    probe = raw_manifest["probe"]
    with source.local_copy(raw_manifest["path"]) as local:
        file, manifest["rewritten"] = _image_sample(local, folder, key, file_suffix(raw_manifest["path"]))
    return _clip_row(out, key, file, probe, raw_manifest, folder / file, clip_id=f"{key}-0000",
                     num_frames=1, height=probe["height"], width=probe["width"], fps=float("nan"),
                     start_frame=0, end_frame=1, scene=0, thumbnail=file)


def _cut_video(source: Storage | FileList, key: str, raw_manifest: dict, folder: Path, config: CurationConfig,
               manifest: dict, progress: bool) -> SceneCut:
    """Cut the raw video into `folder` (:func:`_cut_and_score`, its sample scores
    recorded in `manifest`), with a progress bar of its frames when `progress`."""
    from tqdm.auto import tqdm

    probe = raw_manifest["probe"]
    with source.local_copy(raw_manifest["path"]) as local, opencv_threads(CURATION_OPENCV_THREADS), \
            tqdm(total=probe["num_frames"] or None, desc=f"cutting {PurePosixPath(raw_manifest['path']).name}",
                 unit="frame", disable=not progress, leave=False) as bar:
        cut, manifest["sample_scores"] = _cut_and_score(local, folder, key, probe["fps"], config,
                                                        progress=bar.update if progress else None)
    return cut


def _publish_failed_cut(folder: Path, manifest: dict, err: Exception) -> None:
    """A cut that failed with `err`: nothing of it is published, the partition is
    rejected and marked for retry."""
    for written in folder.iterdir():  # no half of a cut is published
        shutil.rmtree(written) if written.is_dir() else written.unlink()
    manifest["rejected"] = {"step": "scene_clips",
                            "reason": f"cutting failed ({type(err).__name__}: {err})"}
    manifest["retry"] = True
    write_rows(folder / CLIPS_TABLE, [], _clip_columns([]))
    write_manifest(folder, manifest)


def _video_rows(out: Storage, key: str, raw_manifest: dict, folder: Path, config: CurationConfig,
                manifest: dict, cut: SceneCut, started: float) -> list[dict]:
    """The rows of `cut`'s clips; what the cut found goes to `manifest` (rejected when
    no clip came out of it)."""
    probe = raw_manifest["probe"]
    manifest.update(scenes=[list(s) for s in cut.scenes], dropped=cut.dropped,
                    decoded_frames=cut.decoded_frames, seconds=round(time.perf_counter() - started, 3),
                    stream_copied=sum(c.stream_copy for c in cut.clips))
    if cut.decode_error:
        manifest["notes"].append(cut.decode_error)
    if probe["num_frames"] and cut.decoded_frames != probe["num_frames"]:
        manifest["notes"].append(f"{cut.decoded_frames} of {probe['num_frames']} probed frames decoded")
    rows = []
    for clip in cut.clips:
        rows.append(_clip_row(out, key, clip.file, probe, raw_manifest, folder / clip.file,
                              clip_id=clip.clip_id, num_frames=clip.num_frames, height=clip.height,
                              width=clip.width, fps=clip.fps, start_frame=clip.start_frame,
                              end_frame=clip.end_frame, scene=clip.scene, thumbnail=clip.thumbnail))
    if not rows:
        if cut.decoded_frames == 0:
            reason = "no frame decoded" + (f" ({cut.decode_error})" if cut.decode_error else "")
        else:
            longest = max((e - s for s, e in cut.scenes), default=0)
            reason = (f"no scene of at least {config.scenes.min_frames} frames (scenes.min_frames): "
                      f"{len(cut.scenes)} scenes, longest {longest} of {cut.decoded_frames} frames")
        manifest["rejected"] = {"step": "scene_clips", "reason": reason}
    return rows


def _clip_columns(rows: list[dict]) -> list[str]:
    return list(rows[0]) if rows else ["path", "clip_id", "num_frames", "height", "width", "fps"]


def clip_origins(out: Storage, keys: list[str]) -> tuple[int, int]:
    """(clips copied from their source video, clips re-encoded) over the partitions
    `keys` whose scenes are cut (images and rejected files count in neither)."""
    copied = encoded = 0
    for key in keys:
        manifest = read_manifest(out, key, "clips") or {}
        if "stream_copied" in manifest:
            copied += manifest["stream_copied"]
            encoded += manifest["clips"] - manifest["stream_copied"]
    return copied, encoded


def read_clips(out: Storage, key: str) -> pd.DataFrame:
    with out.local_copy(*step_dir(key, "clips"), CLIPS_TABLE) as local:
        return pd.read_parquet(local)
